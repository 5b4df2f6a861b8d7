"""The chart grants the operator exactly the rules of apx/operator/rbac.py, and no more.

Compared as sets of (apiGroup, resource, verb, resourceName) tuples, both ways: a rule
missing from the chart breaks the operator, an extra one breaks least privilege (a rule
without ``resourceNames`` where rbac.py names the objects is an extra, broader grant).
Namespaced mode leaves out the cluster-only rules and binds a Role in every watched
namespace; the webhook-configuration rules exist only with admission.mode=managed. On top,
the least-privilege promises are checked directly: no wildcard, ``delete`` only on the kinds
the reconciler prunes, Secrets and the webhook configuration only by name.
"""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import NAMESPACE, RELEASE, VALUE_SETS, render

from apx.controllers.appliers.kube import KINDS
from apx.operator.rbac import RULES, WEBHOOK_CONFIGURATION
from apx.operator.reconciler import PRUNABLE_KINDS

# (apiGroup, resource, verb, resourceName); "" as the name: every object of the resource.
Grant = tuple[str, str, str, str]
# Named objects only: a grant on any of these without resourceNames is too broad.
NAMED_ONLY = {("", "secrets"), ("admissionregistration.k8s.io", "validatingwebhookconfigurations")}


def _expected(cluster: bool, admission: bool = False) -> set[Grant]:
    return {
        (rule.api_group, resource, verb, name)
        for rule in RULES
        if (cluster or not rule.cluster_only) and (admission or not rule.admission_only)
        for resource in rule.resources
        for verb in rule.verbs
        for name in rule.resource_names or ("",)
    }


def _granted(role: dict[str, Any]) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    for name in rule.get("resourceNames") or [""]:
                        assert name != "*", f"wildcard in {rule}"
                        grants.add((group, resource, verb, name))
    return grants


def _operator_objects(rendered: Any, kind: str) -> list[dict[str, Any]]:
    """The operator's own RBAC objects of ``kind`` (others, e.g. leader election, are checked apart)."""
    return [o for o in rendered.of_kind(kind) if o["metadata"]["name"] == f"{RELEASE}-operator"]


def _admission(values: dict[str, Any]) -> bool:
    return bool(values.get("admission", {}).get("mode") == "managed")


def _cluster_sets() -> list[str]:
    return [
        name for name, values in VALUE_SETS.items() if values.get("rbac", {}).get("scope") != "namespaced"
    ]


def _namespaced_sets() -> list[str]:
    return [
        name for name, values in VALUE_SETS.items() if values.get("rbac", {}).get("scope") == "namespaced"
    ]


def test_rbac_py_has_cluster_only_and_admission_only_rules_to_leave_out() -> None:
    assert _expected(cluster=True) > _expected(cluster=False)
    assert _expected(cluster=True, admission=True) > _expected(cluster=True)


@pytest.mark.parametrize("set_name", _cluster_sets())
def test_cluster_role_grants_exactly_the_operator_rules(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    (role,) = _operator_objects(rendered, "ClusterRole")
    assert _granted(role) == _expected(cluster=True, admission=_admission(VALUE_SETS[set_name]))
    assert _operator_objects(rendered, "Role") == [] and _operator_objects(rendered, "RoleBinding") == []


@pytest.mark.parametrize("set_name", _cluster_sets())
def test_cluster_role_is_bound_to_the_operator_service_account_only(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    (binding,) = _operator_objects(rendered, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": _operator_objects(rendered, "ClusterRole")[0]["metadata"]["name"],
    }
    account = rendered.of_kind("ServiceAccount")[0]["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("set_name", _namespaced_sets())
def test_namespaced_roles_grant_exactly_the_non_cluster_only_rules(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    assert (
        _operator_objects(rendered, "ClusterRole") == []
        and _operator_objects(rendered, "ClusterRoleBinding") == []
    )
    roles = _operator_objects(rendered, "Role")
    assert roles
    for role in roles:
        assert _granted(role) == _expected(cluster=False)


@pytest.mark.parametrize("set_name", _namespaced_sets())
def test_namespaced_mode_binds_a_role_in_each_watched_namespace_and_the_release_namespace(
    set_name: str,
) -> None:
    rendered = render(VALUE_SETS[set_name])
    wanted = {"team-a", "team-b", NAMESPACE}
    assert {r["metadata"]["namespace"] for r in _operator_objects(rendered, "Role")} == wanted
    bindings = _operator_objects(rendered, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == wanted
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
        ]


def test_release_namespace_is_not_duplicated_when_it_is_also_watched() -> None:
    rendered = render({"rbac": {"scope": "namespaced"}, "watchNamespaces": [NAMESPACE, "team-a"]})
    assert sorted(r["metadata"]["namespace"] for r in _operator_objects(rendered, "Role")) == sorted(
        [NAMESPACE, "team-a"]
    )


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    rendered = render(
        {"rbac": {"create": False, "scope": "cluster"}, "serviceAccount": {"create": False, "name": "apx"}}
    )
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert rendered.of_kind(kind) == []
    assert rendered.operator()["spec"]["template"]["spec"]["serviceAccountName"] == "apx"


# --- least privilege, stated directly --------------------------------------------------------------


def _all_roles() -> list[tuple[str, dict[str, Any]]]:
    roles = []
    for set_name, values in VALUE_SETS.items():
        rendered = render(values)
        roles += [
            (set_name, role)
            for role in _operator_objects(rendered, "ClusterRole") + _operator_objects(rendered, "Role")
        ]
    assert roles
    return roles


def test_delete_is_granted_only_on_the_kinds_the_operator_prunes() -> None:
    prunable = {(KINDS[kind].api_version.rpartition("/")[0], KINDS[kind].plural) for kind in PRUNABLE_KINDS}
    assert prunable == {("apps", "deployments"), ("", "services"), ("", "configmaps")}
    for set_name, role in _all_roles():
        deletable = {(g, r) for g, r, verb, _ in _granted(role) if verb in ("delete", "deletecollection")}
        assert deletable == prunable, (set_name, deletable)
        assert not any(verb == "deletecollection" for _, _, verb, _ in _granted(role))


def test_secrets_are_granted_only_by_name_and_never_read_or_listed() -> None:
    for set_name, role in _all_roles():
        secret_grants = {g for g in _granted(role) if (g[0], g[1]) == ("", "secrets")}
        assert secret_grants == {
            ("", "secrets", "create", "apx-dataplane"),
            ("", "secrets", "patch", "apx-dataplane"),
        }, (
            set_name,
            secret_grants,
        )


def test_the_webhook_configuration_is_patched_only_by_name_and_only_with_managed_admission() -> None:
    webhook = ("admissionregistration.k8s.io", "validatingwebhookconfigurations")
    for set_name, role in _all_roles():
        grants = {g for g in _granted(role) if (g[0], g[1]) == webhook}
        if _admission(VALUE_SETS[set_name]):
            # kopf creates it with a POST, which Kubernetes cannot restrict by name; everything
            # else is by name, and nothing reads, lists, watches or deletes webhook configurations.
            assert grants == {(*webhook, "create", ""), (*webhook, "patch", WEBHOOK_CONFIGURATION)}
        else:
            assert grants == set(), (set_name, grants)


def test_named_only_resources_have_no_unnamed_grant_but_create() -> None:
    for set_name, role in _all_roles():
        for group, resource, verb, name in _granted(role):
            if (group, resource) in NAMED_ONLY and verb != "create":
                assert name, f"{set_name}: {verb} on every {resource}"


def test_a_broader_rule_would_be_caught() -> None:
    # The comparison is by (group, resource, verb, name): dropping a resourceNames list adds a grant.
    broad = {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]}]}
    named = {
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["patch"],
                "resourceNames": ["apx-dataplane"],
            }
        ]
    }
    assert _granted(broad) != _granted(named)
    assert _granted(broad) - _expected(cluster=True, admission=True)
    with pytest.raises(AssertionError, match="wildcard"):
        _granted({"rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]})


def test_the_chart_other_roles_grant_no_delete_no_secrets_and_no_wildcard() -> None:
    for set_name, values in VALUE_SETS.items():
        rendered = render(values)
        operator_roles = _operator_objects(rendered, "ClusterRole") + _operator_objects(rendered, "Role")
        others = [
            r for r in rendered.of_kind("ClusterRole") + rendered.of_kind("Role") if r not in operator_roles
        ]
        for role in others:
            for group, resource, verb, _ in _granted(role):
                assert verb not in ("delete", "deletecollection", "escalate", "bind", "impersonate"), (
                    set_name,
                    role,
                )
                assert (group, resource) != ("", "secrets"), (set_name, role)
