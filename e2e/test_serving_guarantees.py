"""End-to-end: what is serving keeps serving, with the operator process and kubectl as a user drives them.

Each test applies the samples, then does one of the things that used to stop
live traffic without warning (a spec Envoy refuses, worker names that
collide, a new PolicyBundle version, deleting a Product Routes use) and
checks that the Envoy snapshot and the Redis route table keep serving what
they served, while status says what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import redis
import yaml

from apx.controllers.names import route_table_current_key, route_table_key
from e2e.harness import condition, eventually

from .conftest import Stack
from .test_operator import SAMPLES, _apply_samples, _wait_all_ready


def _sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return document


def _serving(stack: Stack, namespace: str) -> tuple[str, dict[str, Any]]:
    """(Envoy snapshot version, this namespace's route table entries)."""
    snapshot = stack.kubectl.get("configmap", "apx-envoy-snapshot", "apx-system")
    assert snapshot is not None
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    version = client.get(route_table_current_key())
    assert version, "no route table published"
    table: dict[str, str] = client.hgetall(route_table_key(str(version)))  # type: ignore[assignment]
    entries = {key: json.loads(value) for key, value in table.items() if key.startswith(f"{namespace}/")}
    return str(snapshot["data"]["version"]), entries


def _stalled_naming(stack: Stack, namespace: str, kind: str, name: str, text: str) -> dict[str, Any]:
    def stalled() -> dict[str, Any]:
        body = stack.kubectl.get(kind, name, namespace)
        assert body is not None and condition(body, "Stalled") == "True", json.dumps(
            {"spec": (body or {}).get("spec"), "status": (body or {}).get("status")}
        )
        assert text in body["status"]["message"], body["status"]["message"]
        return body

    return eventually(stalled, timeout=30, what=f"{kind} {name} Stalled naming {text}")


def test_header_regex_envoy_refuses_keeps_the_last_good_route_serving(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    before = _serving(stack, namespace)
    route = _sample("06-route-payments-legacy.yaml")
    route["spec"]["match"]["headers"] = [{"name": "x-client", "regex": "(?=abc)abc"}]  # RE2: no lookahead
    output = stack.kubectl.apply(yaml.safe_dump(route), namespace, check=False)
    if "invalid" in output.lower() or "error" in output.lower():
        # Refused at admission: even better, nothing changed.
        assert "spec.match.headers[0]" in output, output
    else:
        _stalled_naming(stack, namespace, "route", "payments-legacy", "spec.match.headers[0]")
    assert _serving(stack, namespace) == before
    _wait_all_ready(stack, namespace, {("Route", "payments-charges"), ("Route", "ledger-exports")})


def test_worker_names_that_collide_keep_the_last_good_route_serving(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    jobs = _sample("07-route-ledger-async.yaml")
    jobs["metadata"]["name"] = "jobs"
    jobs["spec"]["match"]["hosts"] = ["jobs.example.eu"]
    twin = yaml.safe_load(yaml.safe_dump(jobs))
    twin["metadata"]["name"] = "jobs-enterprise"
    twin["spec"]["match"]["hosts"] = ["jobs-enterprise.example.eu"]
    stack.kubectl.apply(yaml.safe_dump_all([jobs, twin]), namespace)
    _wait_all_ready(stack, namespace, {("Route", "jobs"), ("Route", "jobs-enterprise")})
    before = _serving(stack, namespace)
    # On a product with a dedicated "enterprise" plan, "jobs" would render the
    # Deployment apx-worker-jobs-enterprise-stable, which is the twin's.
    jobs["spec"]["productRef"]["name"] = "payments"
    stack.kubectl.apply(yaml.safe_dump(jobs), namespace)
    _stalled_naming(stack, namespace, "route", "jobs", "apx-worker-jobs-enterprise-stable")
    assert _serving(stack, namespace) == before
    _wait_all_ready(stack, namespace, {("Route", "jobs-enterprise")})


def test_new_bundle_version_keeps_pinned_versions_served_and_says_so(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    before = _serving(stack, namespace)
    bundle = _sample("04-policybundle-payments-1.3.0.yaml")
    bundle["spec"]["version"] = "1.4.0"
    stack.kubectl.apply(yaml.safe_dump(bundle), namespace)

    def pinned_warning() -> dict[str, Any]:
        body = stack.kubectl.get("policybundle", "payments-policy", namespace)
        assert body is not None and body["status"].get("reason") == "VersionsPinned", (body or {}).get(
            "status"
        )
        return body

    body = eventually(pinned_warning, timeout=30, what="PolicyBundle VersionsPinned")
    assert condition(body, "Ready") == "True"
    served = {v["version"]: v for v in body["status"]["servedVersions"]}
    assert f"{namespace}/payments-legacy" in served["1.2.0"]["pinnedBy"]
    _wait_all_ready(stack, namespace, {("Route", "payments-charges"), ("Route", "payments-legacy")})
    after = _serving(stack, namespace)
    for route in ("payments-charges", "payments-legacy"):
        assert after[1][f"{namespace}/{route}"] == before[1][f"{namespace}/{route}"]


def test_deleting_a_product_routes_use_waits_until_no_route_uses_it(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    before = _serving(stack, namespace)
    stack.kubectl.run("delete", "product", "ledger", "-n", namespace, "--wait=false")

    def protected() -> dict[str, Any]:
        body = stack.kubectl.get("product", "ledger", namespace)
        assert body is not None and body["metadata"].get("deletionTimestamp"), body
        assert body["status"].get("reason") == "InUse", body.get("status")
        return body

    body = eventually(protected, timeout=30, what="Product ledger InUse")
    assert body["status"]["inUseBy"] == [f"{namespace}/ledger-exports"]
    assert condition(body, "Ready") == "True"
    _wait_all_ready(stack, namespace, {("Route", "ledger-exports")})
    assert _serving(stack, namespace)[1] == before[1]
    events = stack.kubectl.list("events", namespace)
    assert any(e.get("reason") == "InUse" for e in events), [e.get("reason") for e in events]

    stack.kubectl.run("delete", "route", "ledger-exports", "-n", namespace, "--timeout=60s")
    eventually(
        lambda: stack.kubectl.get("product", "ledger", namespace) is None,
        timeout=30,
        what="Product ledger deleted once no Route uses it",
    )


def test_async_route_is_not_ready_while_its_workers_have_no_available_replica(
    stack: Stack, namespace: str
) -> None:
    _apply_samples(stack, namespace)
    route = stack.kubectl.get("route", "ledger-exports", namespace)
    assert route is not None
    deployments = route["status"]["deployments"]

    def report(status: dict[str, Any]) -> None:
        # What the Deployment controller and kubelet would write; the emulated API runs neither.
        for name in deployments:
            stack.kubectl.run(
                "patch", "deployment", name, "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}),
            )  # fmt: skip

    report({"observedGeneration": 1, "replicas": 2, "unavailableReplicas": 2})

    def waiting() -> dict[str, Any]:
        body = stack.kubectl.get("route", "ledger-exports", namespace)
        assert body is not None and body["status"].get("reason") == "WorkersUnavailable", (body or {}).get(
            "status"
        )
        return body

    body = eventually(waiting, timeout=30, what="ledger-exports WorkersUnavailable")
    assert condition(body, "Ready") == "False"
    assert body["status"]["workers"]["stable"]["available"] == 0

    report({"observedGeneration": 1, "replicas": 2, "availableReplicas": 2, "unavailableReplicas": None})
    _wait_all_ready(stack, namespace, {("Route", "ledger-exports")})
    ready = stack.kubectl.get("route", "ledger-exports", namespace)
    assert ready is not None and ready["status"]["workers"]["stable"]["available"] >= 2
