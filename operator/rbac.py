"""The Kubernetes permissions the operator needs, in one place.

Read by the Helm chart's tests (``tests/chart``), which check that the chart's
ClusterRole/Role grants exactly these rules, and by the e2e suite when it runs
against a real cluster. Each rule says why it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_only: bool = False  # only in cluster-wide mode (ClusterRole), never in namespaced mode


RULES: tuple[Rule, ...] = (
    Rule(
        "apx.dev",
        ("products", "routes", "policybundles"),
        ("get", "list", "watch", "patch"),
        "watch the APX objects; kopf patches finalizers",
    ),
    Rule(
        "apx.dev",
        ("products/status", "routes/status", "policybundles/status"),
        ("get", "patch"),
        "write status (conditions, summaries, kopf progress)",
    ),
    Rule(
        "apps",
        ("deployments",),
        ("get", "list", "watch", "create", "patch", "delete"),
        "server-side apply worker Deployments; prune ones no longer wanted",
    ),
    Rule(
        "",
        ("services", "configmaps"),
        ("get", "list", "watch", "create", "patch", "delete"),
        "worker metrics Services, the Envoy snapshot and policy-artifact ConfigMaps",
    ),
    Rule(
        "",
        ("secrets",),
        ("get", "create", "patch"),
        "the apx-dataplane Secret (Redis URL) in namespaces with async Routes; never read others",
    ),
    Rule("", ("events",), ("create", "patch"), "Events on status transitions"),
    Rule("events.k8s.io", ("events",), ("create", "patch"), "kopf posts Events through either API"),
    Rule(
        "",
        ("namespaces",),
        ("get", "list", "watch"),
        "kopf follows namespaces in cluster-wide mode",
        cluster_only=True,
    ),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("get", "list", "watch"),
        "kopf discovers the APX CRDs",
        cluster_only=True,
    ),
    Rule(
        "admissionregistration.k8s.io",
        ("validatingwebhookconfigurations",),
        ("get", "list", "watch", "create", "patch"),
        "kopf manages the validating webhook configuration (admission: managed)",
        cluster_only=True,
    ),
)
