"""Command-line flags of the operator and how they combine with ``APX_*`` environment variables.

Used by ``apx.operator.main`` (``apx-operator``) and by the ``apx operator run``
subcommand of ``apx.operator.cli``. Kept free of kopf and client imports so
building the ``apx`` command line stays cheap.
"""

from __future__ import annotations

import argparse

from apx.dataplane.common.flags import add_version_flag

from .settings import OperatorSettings


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="apx-operator", description="Run the APX operator (flags override APX_* environment variables)."
    )
    add_version_flag(parser)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", help="watch this namespace (repeat)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument(
        "--instance",
        help="name of this operator instance when several split the namespaces of a cluster; scopes the "
        "route table, Envoy snapshot ConfigMaps, Lease and webhook configuration (APX_INSTANCE)",
    )
    parser.add_argument("--redis-url", help="Redis URL (APX_REDIS_URL)")
    parser.add_argument("--pubsub-project", help="Google Cloud project (APX_PUBSUB_PROJECT)")
    parser.add_argument("--pubsub-emulator-host", help="Pub/Sub emulator host:port (PUBSUB_EMULATOR_HOST)")
    parser.add_argument(
        "--operator-namespace", help="namespace of operator-wide objects (APX_OPERATOR_NAMESPACE)"
    )
    parser.add_argument("--resync-seconds", type=float, help="full resync period (APX_RESYNC_SECONDS)")
    parser.add_argument(
        "--snapshot-configmap-seconds",
        type=float,
        help="least time between writes of the Envoy snapshot ConfigMaps (APX_SNAPSHOT_CONFIGMAP_SECONDS)",
    )
    parser.add_argument("--worker-limit", type=int, help="concurrent API writes (APX_WORKER_LIMIT)")
    parser.add_argument("--liveness-host", help="address of /healthz (APX_LIVENESS_HOST; default 0.0.0.0)")
    parser.add_argument("--liveness-port", type=int, help="port of /healthz, 0 disables (APX_LIVENESS_PORT)")
    parser.add_argument("--metrics-host", help="address of /metrics (APX_METRICS_HOST; default 0.0.0.0)")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics, 0 disables (APX_METRICS_PORT)")
    parser.add_argument("--xds-host", help="address of the xDS (ADS) server (APX_XDS_HOST; default 0.0.0.0)")
    parser.add_argument("--xds-port", type=int, help="port of the xDS server, 0 disables (APX_XDS_PORT)")
    parser.add_argument(
        "--admission", choices=("none", "managed"), help="validating webhook mode (APX_ADMISSION)"
    )
    parser.add_argument("--webhook-port", type=int, help="webhook server port (APX_WEBHOOK_PORT)")
    parser.add_argument("--webhook-cert", help="webhook TLS certificate file")
    parser.add_argument("--webhook-key", help="webhook TLS key file")
    parser.add_argument("--webhook-ca", help="CA certificate registered as the webhook's caBundle")
    parser.add_argument("--webhook-service", help="Service through which the API server reaches the webhook")
    parser.add_argument(
        "--json-logs", action="store_true", default=None, help="log JSON lines (APX_JSON_LOGS)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (APX_LOG_LEVEL)")
    parser.add_argument("--otlp-endpoint", help="OTLP/HTTP traces endpoint (APX_OTLP_ENDPOINT)")
    parser.add_argument(
        "--prometheus-url", help="Prometheus for the canary analysis; unset disables it (APX_PROMETHEUS_URL)"
    )
    parser.add_argument(
        "--canary-queries", help="YAML/JSON file overriding the canary PromQL templates (APX_CANARY_QUERIES)"
    )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        default=None,
        help="hold a Lease; only its holder reconciles (APX_LEADER_ELECTION)",
    )
    return parser


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address (``::``) in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    overrides: dict[str, object] = {
        name: value
        for name, value in vars(args).items()
        if name in OperatorSettings.model_fields and value is not None
    }
    if getattr(args, "all_namespaces", False):
        overrides["namespaces"] = []
    # Validated together (not copied over validated settings): a flag is checked like its
    # variable, and defaults derived from the instance name follow the flag.
    return OperatorSettings.model_validate({**OperatorSettings.env_values(), **overrides})
