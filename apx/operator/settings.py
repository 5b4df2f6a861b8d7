"""Operator settings from environment variables (``APX_*``) and command-line flags.

Read by ``apx.operator.main`` when the operator starts; passed down to the
reconciler and the appliers. Flags override environment variables.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from apx.contracts.redis_keys import check_instance


class OperatorSettings(BaseModel):
    """Everything the operator can be told at start."""

    namespaces: list[str] = Field(
        default_factory=list, description="Watched namespaces; empty = all namespaces."
    )
    instance: str = Field(
        default="",
        description="Name of this operator instance when several share a cluster, each over its own "
        "namespaces (a DNS label, e.g. the Helm release); it scopes the objects they would share: the "
        "Redis route table, the Envoy snapshot ConfigMaps, the Lease and the webhook configuration. "
        "Empty = the default instance (unscoped names).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for rule sets and route table."
    )
    pubsub_project: str = Field(
        default="apx-local", description="Google Cloud project of the Pub/Sub topics."
    )
    pubsub_emulator_host: str | None = Field(default=None, description="host:port of the Pub/Sub emulator.")
    operator_namespace: str = Field(default="apx-system", description="Namespace of operator-wide objects.")
    resync_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Period of the drift-repairing full resync (stretched so resyncs take under a tenth of the time)."
        ),
    )
    debounce_seconds: float = Field(
        default=0.02, ge=0, description="Coalesce bursts of events into one pass."
    )
    worker_limit: int = Field(default=16, ge=1, description="Concurrent API writes per pass.")
    snapshot_configmap_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Least time between two writes of the Envoy snapshot ConfigMaps (xDS is pushed at once);"
            " stretched so the writes take under a twentieth of the time."
        ),
    )
    liveness_host: str = Field(
        default="0.0.0.0",
        min_length=1,
        description="Address /healthz listens on (kubelet probes the pod IP).",
    )
    liveness_port: int = Field(default=8080, ge=0, le=65535, description="Port of /healthz (0 disables).")
    metrics_host: str = Field(default="0.0.0.0", min_length=1, description="Address /metrics listens on.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Port of /metrics (0 disables).")
    admission: Literal["none", "managed"] = Field(
        default="none",
        description="`managed`: serve the validating webhook and register it with the cluster.",
    )
    webhook_port: int = Field(default=9443, ge=1, le=65535)
    webhook_cert: str | None = Field(default=None, description="TLS certificate for the webhook server.")
    webhook_key: str | None = Field(default=None, description="TLS key for the webhook server.")
    webhook_ca: str | None = Field(default=None, description="CA certificate registered as the caBundle.")
    webhook_service: str = Field(default="apx-webhook", description="Service in the operator namespace.")
    json_logs: bool = Field(default=False, description="Log one JSON object per line.")
    log_level: str = Field(default="INFO")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint for traces; none = no export."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus the canary analysis queries, http(s)://host:port[/prefix]; "
        "none = canary analysis disabled (canaries hold their weight).",
    )
    canary_queries: str | None = Field(
        default=None, description="YAML/JSON file overriding the canary analysis PromQL templates."
    )
    xds_host: str = Field(default="0.0.0.0", min_length=1, description="Address the xDS server listens on.")
    xds_port: int = Field(
        default=18000, ge=0, le=65535, description="Port of the xDS (ADS) server Envoy uses (0 disables)."
    )
    leader_election: bool = Field(
        default=False,
        description="Hold a coordination.k8s.io Lease; only its holder reconciles (several replicas).",
    )
    lease_name: str = Field(default="apx-operator", description="Lease in the operator namespace.")
    lease_duration_seconds: float = Field(
        default=15.0, ge=1, description="A standby takes over when the Lease is not renewed for this long."
    )
    lease_renew_seconds: float = Field(
        default=2.0, gt=0, description="How often the leader renews and a standby retries."
    )

    @field_validator("instance")
    @classmethod
    def _instance_is_a_label(cls, value: str) -> str:
        return check_instance(value)

    @model_validator(mode="before")
    @classmethod
    def _instance_defaults(cls, data: Any) -> Any:
        # A named instance's own Lease and webhook Service unless told otherwise, so two
        # instances in one operator namespace never elect one leader or share a Service.
        if isinstance(data, dict) and isinstance(data.get("instance"), str) and data["instance"]:
            instance = data["instance"]
            data = {
                "lease_name": f"apx-{instance}-operator",
                "webhook_service": f"apx-{instance}-webhook",
                **data,
            }
        return data

    @property
    def webhook_configuration(self) -> str:
        """Name of the ValidatingWebhookConfiguration the leader registers (cluster-scoped)."""
        return f"{self.instance}.apx.dev" if self.instance else "apx.dev"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        return cls.model_validate(cls.env_values(env))

    @classmethod
    def env_values(cls, env: dict[str, str] | None = None) -> dict[str, object]:
        """The settings the environment gives (``APX_*``), unvalidated: flags are laid over them."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = source.get(f"APX_{name.upper()}")
            if raw is None:
                continue
            if field.annotation in (list[str],):
                values[name] = [part for part in raw.split(",") if part]
            else:
                values[name] = raw
        if "pubsub_emulator_host" not in values and source.get("PUBSUB_EMULATOR_HOST"):
            values["pubsub_emulator_host"] = source["PUBSUB_EMULATOR_HOST"]
        return values
