"""The Kubernetes permissions the operator needs, in one place.

Read by the Helm chart's tests (``tests/chart``), which check that the chart's
ClusterRole/Role grants exactly these rules, and by the e2e suite when it runs
against a real cluster. Each rule says why it is needed.

Least privilege, checked by those tests:

* ``delete`` only on the kinds the reconciler prunes (``PRUNABLE_KINDS``:
  Deployments, Services, ConfigMaps it labelled and owns);
* Secrets only by name (``resourceNames``: the ``apx-dataplane`` Secret it
  server-side applies; an apply that creates the object is authorised as
  ``create`` *with* its name, so the name restriction holds for creation too);
  the operator never reads a Secret;
* the ValidatingWebhookConfiguration only by name for ``patch``. kopf creates
  it with a plain POST (try-create, then patch), and Kubernetes cannot restrict
  a POST ``create`` by name (the name is not part of the request path), so that
  one verb is granted without names; nothing is granted to read, list or
  delete webhook configurations.
"""

from __future__ import annotations

from dataclasses import dataclass

from apx.controllers import names

# The ValidatingWebhookConfiguration kopf manages (``settings.admission.managed`` in ``main``).
WEBHOOK_CONFIGURATION = "apx.dev"


@dataclass(frozen=True, slots=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_only: bool = False  # only in cluster-wide mode (ClusterRole), never in namespaced mode
    resource_names: tuple[str, ...] = ()  # empty: every object of the resources
    admission_only: bool = False  # only with the managed validating webhook (admission: managed)


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
        ("create", "patch"),
        "server-side apply the apx-dataplane Secret (Redis URL) in namespaces with async Routes; no other",
        resource_names=(names.dataplane_secret(),),
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
        ("create",),
        "kopf creates the validating webhook configuration if absent (a POST: no name to restrict by)",
        cluster_only=True,
        admission_only=True,
    ),
    Rule(
        "admissionregistration.k8s.io",
        ("validatingwebhookconfigurations",),
        ("patch",),
        "kopf keeps its webhooks and caBundle current (admission: managed); only its own configuration",
        cluster_only=True,
        admission_only=True,
        resource_names=(WEBHOOK_CONFIGURATION,),
    ),
)
