"""Render the Helm chart charts/apx with helm-python-sdk and look into the result.

Used by the tests in tests/chart. Rendering goes through Helm's own Go engine
(``helm_python`` binds libhelm), offline: ``lookup`` returns nothing, as in
``helm template``. The named value sets below are the configurations every
generic check (validation, securityContext, RBAC, Service ports) runs over.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "apx"
RELEASE = "apx"
NAMESPACE = "apx-system"

NAMESPACED = {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]}
ADMISSION = {"admission": {"mode": "managed"}}
MONITORING = {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
PDB = {"podDisruptionBudget": {"enabled": True}}
NETWORK_POLICY = {
    "networkPolicy": {
        "enabled": True,
        "ingress": {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "egress": {
            "apiServer": {"cidrs": ["172.18.0.2/32"], "ports": [6443]},
            "redis": {"cidrs": ["10.20.0.0/16"], "ports": [6379]},
            "pubsub": {"cidrs": [], "ports": [443, 8085]},
            "dns": {"cidrs": [], "ports": [53]},
            "extra": [{"ports": [{"port": 4318, "protocol": "TCP"}]}],
        },
    }
}
DATAPLANE = {"dataplane": {"ratelimit": {"enabled": True}, "gateway": {"enabled": True}}}
PLAIN_LOGS = {"operator": {"jsonLogs": False, "logLevel": "DEBUG"}}
ENVOY = {"envoy": {"enabled": True}}
REDIS_SECRET = {"redis": {"existingSecret": {"name": "apx-redis", "key": "url"}}}
EMULATOR = {"pubsub": {"project": "apx-local", "emulatorHost": "pubsub-emulator.apx-system.svc:8085"}}
CANARY = {
    "canary": {
        "prometheus": {"url": "http://prometheus-operated.monitoring:9090"},
        "queries": {
            "sync": {
                "errors": 'sum(increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name="$cluster",'
                'envoy_response_code_class=~"4|5"}[$window]))'
            },
            "async": {"latencyUnit": "seconds"},
        },
    }
}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge value dictionaries, later ones winning."""
    result: dict[str, Any] = {}
    for part in parts:
        _merge_into(result, copy.deepcopy(part))
    return result


def _merge_into(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced-rbac-two-namespaces": NAMESPACED,
    "admission-managed": ADMISSION,
    "monitoring-on": MONITORING,
    "pdb-on": PDB,
    "network-policy-on": merged(NETWORK_POLICY, ADMISSION),
    "dataplane-on": DATAPLANE,
    "json-logs-off": PLAIN_LOGS,
    "redis-url-from-secret": merged(REDIS_SECRET, DATAPLANE),
    "pubsub-emulator": EMULATOR,
    "canary-analysis": merged(CANARY, NETWORK_POLICY),
    "namespaced-everything": merged(NAMESPACED, MONITORING, PDB, NETWORK_POLICY, DATAPLANE, REDIS_SECRET),
    "cluster-everything": merged(ADMISSION, MONITORING, PDB, NETWORK_POLICY, DATAPLANE, PLAIN_LOGS, EMULATOR),
    "envoy-on": ENVOY,
    "envoy-everything": merged(ENVOY, MONITORING, PDB, NETWORK_POLICY, DATAPLANE),
    "envoy-one-replica-state-of-the-world": {"envoy": {"enabled": True, "replicas": 1, "xdsApiType": "GRPC"}},
}


@dataclass
class Rendered:
    """One render of the chart: its manifests (parsed) and NOTES.txt."""

    templates: dict[str, str]
    manifests: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> dict[str, Any]:
        for manifest in self.of_kind(kind):
            meta = manifest["metadata"]
            if meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
                return manifest
        raise LookupError(f"no {kind} {namespace}/{name} in the render")

    def names(self, kind: str) -> list[str]:
        return sorted(m["metadata"]["name"] for m in self.of_kind(kind))

    def workloads(self) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]

    def operator(self) -> dict[str, Any]:
        return self.get("Deployment", f"{RELEASE}-operator")


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(str(CHART_DIR))


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> Rendered:
    """Render like ``helm install`` would (offline); raises helm_python errors on bad values."""
    return _render(json.dumps(values or {}, sort_keys=True), namespace)


@functools.cache
def _render(values_json: str, namespace: str) -> Rendered:
    templates = chart().render(json.loads(values_json), name=RELEASE, namespace=namespace, is_install=True)
    rendered = Rendered(templates)
    for path, text in sorted(templates.items()):
        if path.endswith("NOTES.txt"):
            rendered.notes = text
            continue
        rendered.manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return rendered


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any], index: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = pod_spec(workload)["containers"][index]
    return result


def env_of(container_spec: dict[str, Any]) -> dict[str, Any]:
    """Env as {name: value} (or the valueFrom dict)."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container_spec.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
