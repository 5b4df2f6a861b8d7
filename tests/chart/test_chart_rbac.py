"""The chart grants the operator exactly the rules of operator/rbac.py, and no more.

Compared as sets of (apiGroup, resource, verb) triples, both ways: a rule missing from
the chart breaks the operator, an extra one breaks least privilege. Namespaced mode
leaves out the cluster-only rules and binds a Role in every watched namespace.
"""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import NAMESPACE, RELEASE, VALUE_SETS, render

from apx.operator.rbac import RULES

Triple = tuple[str, str, str]


def _expected(cluster: bool) -> set[Triple]:
    return {
        (rule.api_group, resource, verb)
        for rule in RULES
        if cluster or not rule.cluster_only
        for resource in rule.resources
        for verb in rule.verbs
    }


def _granted(role: dict[str, Any]) -> set[Triple]:
    triples: set[Triple] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    triples.add((group, resource, verb))
    return triples


def _cluster_sets() -> list[str]:
    return [
        name for name, values in VALUE_SETS.items() if values.get("rbac", {}).get("scope") != "namespaced"
    ]


def _namespaced_sets() -> list[str]:
    return [
        name for name, values in VALUE_SETS.items() if values.get("rbac", {}).get("scope") == "namespaced"
    ]


def test_rbac_py_has_cluster_only_rules_to_leave_out() -> None:
    assert _expected(cluster=True) > _expected(cluster=False)


@pytest.mark.parametrize("set_name", _cluster_sets())
def test_cluster_role_grants_exactly_the_operator_rules(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    (role,) = rendered.of_kind("ClusterRole")
    assert _granted(role) == _expected(cluster=True)
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []


@pytest.mark.parametrize("set_name", _cluster_sets())
def test_cluster_role_is_bound_to_the_operator_service_account_only(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    (binding,) = rendered.of_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rendered.of_kind("ClusterRole")[0]["metadata"]["name"],
    }
    account = rendered.of_kind("ServiceAccount")[0]["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("set_name", _namespaced_sets())
def test_namespaced_roles_grant_exactly_the_non_cluster_only_rules(set_name: str) -> None:
    rendered = render(VALUE_SETS[set_name])
    assert rendered.of_kind("ClusterRole") == [] and rendered.of_kind("ClusterRoleBinding") == []
    roles = rendered.of_kind("Role")
    assert roles
    for role in roles:
        assert _granted(role) == _expected(cluster=False)


@pytest.mark.parametrize("set_name", _namespaced_sets())
def test_namespaced_mode_binds_a_role_in_each_watched_namespace_and_the_release_namespace(
    set_name: str,
) -> None:
    rendered = render(VALUE_SETS[set_name])
    wanted = {"team-a", "team-b", NAMESPACE}
    assert {r["metadata"]["namespace"] for r in rendered.of_kind("Role")} == wanted
    bindings = rendered.of_kind("RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == wanted
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
        ]


def test_release_namespace_is_not_duplicated_when_it_is_also_watched() -> None:
    rendered = render({"rbac": {"scope": "namespaced"}, "watchNamespaces": [NAMESPACE, "team-a"]})
    assert sorted(r["metadata"]["namespace"] for r in rendered.of_kind("Role")) == sorted(
        [NAMESPACE, "team-a"]
    )


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    rendered = render(
        {"rbac": {"create": False, "scope": "cluster"}, "serviceAccount": {"create": False, "name": "apx"}}
    )
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert rendered.of_kind(kind) == []
    assert rendered.operator()["spec"]["template"]["spec"]["serviceAccountName"] == "apx"
