"""Command-line flags every dataplane service shares, with their ``APX_*`` environment defaults.

Used by ``apx.dataplane.gateway.config`` and ``apx.dataplane.worker.config``
so logging, tracing, event-loop and Pub/Sub flags are spelled and defaulted
the same way in every service. ``HelpFormatter`` shows each flag's default
(taken from the environment) redacted: ``--help`` in a pod must not print the
password of ``APX_REDIS_URL``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from .eventloop import CHOICES
from .jsonlog import env_flag
from .redact import redact_text

DEFAULT_PROJECT = "apx-local"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-showing formatter, with every help line redacted."""

    def _expand_help(self, action: argparse.Action) -> str:
        return redact_text(super()._expand_help(action))


def env_value(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when it is unset or empty."""
    value = environ.get(name)
    return value if value not in (None, "") else default


def distribution_version() -> str:
    """The installed ``apx`` distribution's version (pyproject.toml; the image tag and appVersion)."""
    try:
        return version("apx")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` and exit 0. Every console script has it."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")


def add_pubsub_flags(parser: argparse.ArgumentParser, env: Mapping[str, str], project_help: str) -> None:
    parser.add_argument(
        "--pubsub-project",
        default=env_value(env, "APX_PUBSUB_PROJECT", DEFAULT_PROJECT),
        help=f"{project_help} (APX_PUBSUB_PROJECT)",
    )
    parser.add_argument(
        "--pubsub-emulator-host",
        default=env_value(env, "PUBSUB_EMULATOR_HOST"),
        help="host:port of the Pub/Sub emulator; unset for real Pub/Sub (PUBSUB_EMULATOR_HOST)",
    )


def add_service_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """``--version``, logging, tracing and event-loop flags."""
    add_version_flag(parser)
    parser.add_argument(
        "--log-level", default=env_value(env, "APX_LOG_LEVEL", "INFO"), help="log level (APX_LOG_LEVEL)"
    )
    parser.add_argument(
        "--json-logs",
        action=argparse.BooleanOptionalAction,
        default=env_flag(env.get("APX_JSON_LOGS"), True),
        help="log JSON lines (APX_JSON_LOGS)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=env_value(env, "APX_OTLP_ENDPOINT"),
        help="OTLP/HTTP endpoint for traces; unset: spans propagate but are not exported (APX_OTLP_ENDPOINT)",
    )
    parser.add_argument(
        "--event-loop",
        choices=CHOICES,
        default=env_value(env, "APX_EVENT_LOOP", "auto"),
        help="asyncio event loop: auto (uvloop when installed), uvloop or asyncio (APX_EVENT_LOOP)",
    )
