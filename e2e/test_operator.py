"""End-to-end: the operator process against a Kubernetes API, real Redis and the real Pub/Sub emulator.

Each test starts its own Redis, Pub/Sub emulator and ``apx-operator``
subprocess (watching the test's namespace) and drives everything through
kubectl, as a user would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
import yaml
from google.cloud import pubsub_v1

from apx.contracts import redis_keys
from e2e.harness import condition, eventually
from e2e.services import start_pubsub_emulator, start_redis

from .conftest import Stack

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
# Invalid samples that refer to an object that may still appear (samples/README.md).
WAITING_SAMPLES = {
    "12-route-missing-product",
    "13-route-policy-version-not-served",
    "14-route-missing-policy",
    "25-route-canary-policy-not-served",
}
NAMES = {
    ("Product", "payments"),
    ("Product", "ledger"),
    ("PolicyBundle", "payments-policy"),
    ("Route", "payments-charges"),
    ("Route", "payments-legacy"),
    ("Route", "ledger-exports"),
}


def _apply_samples(stack: Stack, namespace: str) -> None:
    # 1.2.0 first and served, then everything (1.3.0 becomes N, 1.2.0 stays N-1).
    stack.kubectl.apply(SAMPLES / "03-policybundle-payments-1.2.0.yaml", namespace)
    eventually(
        lambda: condition(stack.kubectl.get("policybundle", "payments-policy", namespace), "Ready") == "True",
        what="PolicyBundle 1.2.0 Ready",
    )
    stack.kubectl.apply(SAMPLES, namespace)
    _wait_all_ready(stack, namespace)


def _wait_all_ready(
    stack: Stack, namespace: str, names: set[tuple[str, str]] = NAMES, timeout: float = 60
) -> None:
    def all_ready() -> bool:
        for kind, name in names:
            body = stack.kubectl.get(kind.lower(), name, namespace)
            if condition(body, "Ready") != "True":
                raise AssertionError(f"{kind} {name}: {(body or {}).get('status')}")
            if body and body["status"].get("observedGeneration") != body["metadata"].get("generation"):
                raise AssertionError(f"{kind} {name}: observedGeneration behind")
        return True

    eventually(all_ready, timeout=timeout, what="every sample Ready")


def _topics(stack: Stack) -> set[str]:
    import os

    os.environ["PUBSUB_EMULATOR_HOST"] = stack.pubsub.address
    publisher = pubsub_v1.PublisherClient()
    return {
        t.name.rsplit("/", 1)[1]
        for t in publisher.list_topics(request={"project": f"projects/{stack.project}"})
    }


def _subscriptions(stack: Stack) -> dict[str, Any]:
    import os

    os.environ["PUBSUB_EMULATOR_HOST"] = stack.pubsub.address
    subscriber = pubsub_v1.SubscriberClient()
    return {
        s.name.rsplit("/", 1)[1]: s
        for s in subscriber.list_subscriptions(request={"project": f"projects/{stack.project}"})
    }


def test_samples_become_ready_with_topics_rules_and_workers(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)

    route = stack.kubectl.get("route", "ledger-exports", namespace)
    assert route is not None
    topics = set(route["status"]["topics"])
    existing = _topics(stack)
    assert topics <= existing
    assert {f"{t}.dlq" for t in topics} <= existing
    subscriptions = _subscriptions(stack)
    for topic in topics:
        subscription = subscriptions[f"{topic}.workers"]
        assert subscription.enable_message_ordering
        assert subscription.dead_letter_policy.max_delivery_attempts == 5
        assert subscription.dead_letter_policy.dead_letter_topic.endswith(f"{topic}.dlq")

    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    product = stack.kubectl.get("product", "payments", namespace)
    assert product is not None
    assert (
        client.get(redis_keys.ruleset_current_key(f"{namespace}/payments"))
        == product["status"]["ruleSetVersion"]
    )

    deployments = {d["metadata"]["name"] for d in stack.kubectl.list("deployments", namespace)}
    assert set(route["status"]["deployments"]) <= deployments
    configmaps = {c["metadata"]["name"] for c in stack.kubectl.list("configmaps", namespace)}
    assert any(name.startswith("apx-policy-payments-policy-1-2-0") for name in configmaps)
    assert any(name.startswith("apx-policy-payments-policy-1-3-0") for name in configmaps)
    assert stack.kubectl.get("configmap", "apx-envoy-snapshot", "apx-system") is not None
    assert "controller_runtime_reconcile_total" in stack.operator.metrics()
    # The operator keeps no copy of the spec in the object (kopf's diff base):
    # nothing reads it, and writing it cost an API write per change.
    for kind in ("route", "product", "policybundle"):
        for item in stack.kubectl.list(kind, namespace):
            assert "diffbase" not in (item.get("status") or {}).get("kopf", {}), item["metadata"]["name"]

    # SIGTERM ends the operator promptly and cleanly (a rolling update waits for it): its loops
    # stop during kopf's cleanup instead of kopf waiting 5 s for their tasks.
    started = time.monotonic()
    assert stack.operator.stop() == 0
    assert time.monotonic() - started < 3
    assert "Traceback" not in stack.operator.log.read_text()


def test_plan_limit_update_reaches_redis_without_a_resync(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    key = redis_keys.ruleset_current_key(f"{namespace}/payments")
    before = client.get(key)

    product = yaml.safe_load((SAMPLES / "01-product-payments.yaml").read_text())
    product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] = 9
    stack.kubectl.apply(yaml.safe_dump(product), namespace)

    after = eventually(
        lambda: (v := client.get(key)) != before and v, timeout=10, what="new rule-set version"
    )
    assert isinstance(after, str)
    rule = client.hget(redis_keys.ruleset_key(f"{namespace}/payments", after), "plan:free")
    assert rule is not None and '"requests_per_second":9' in rule
    eventually(
        lambda: (
            (stack.kubectl.get("product", "payments", namespace) or {})["status"]["ruleSetVersion"] == after
        ),
        what="status shows the new version",
    )


def test_invalid_documents_are_rejected_or_stalled_and_nothing_applied_changes(
    stack: Stack, namespace: str
) -> None:
    _apply_samples(stack, namespace)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    rules_before = client.get(redis_keys.ruleset_current_key(f"{namespace}/payments"))
    topics_before = _topics(stack)

    outcomes: dict[str, str] = {}
    for sample in sorted((SAMPLES / "invalid").glob("*.yaml")):
        # The documented messages are written for the default namespace.
        expected = (
            sample.with_suffix(".error")
            .read_text()
            .strip()
            .replace("'default'", f"'{namespace}'")
            .replace("default/", f"{namespace}/")
        )
        field = expected.split(":", 1)[0].split(";")[0]
        document = yaml.safe_load(sample.read_text())
        # A document that carries a served history in its status describes an
        # object that served those versions first: apply them, as a user would have.
        for served in reversed((document.get("status") or {}).get("servedVersions") or []):
            earlier = {**document, "spec": served["spec"]}
            earlier.pop("status")
            stack.kubectl.apply(yaml.safe_dump(earlier), namespace)
            kind_name, object_name = document["kind"].lower(), document["metadata"]["name"]

            def earlier_served(kind_name: str = kind_name, object_name: str = object_name) -> bool:
                return condition(stack.kubectl.get(kind_name, object_name, namespace), "Ready") == "True"

            eventually(earlier_served, what=f"{sample.name}: earlier version served")
        output = stack.kubectl.apply(sample, namespace, check=False)
        if "Invalid" in output or "invalid" in output or "error" in output.lower():
            assert field.split("[")[0] in output, (
                f"{sample.name}: admission error does not name {field}: {output}"
            )
            outcomes[sample.name] = "rejected"
            continue
        kind = document["kind"].lower()
        name = document["metadata"]["name"]

        # kstatus: a Route whose Product or PolicyBundle version is missing waits
        # (Reconciling) for it; everything else must change its own spec (Stalled).
        waiting = sample.stem in WAITING_SAMPLES

        def stalled_with_message(
            kind: str = kind, name: str = name, expected: str = expected, waiting: bool = waiting
        ) -> bool:
            body = stack.kubectl.get(kind, name, namespace)
            blocking = "Reconciling" if waiting else "Stalled"
            assert body is not None and condition(body, blocking) == "True", (body or {}).get("status")
            assert condition(body, "Ready") == "False", body["status"]
            assert expected in body["status"]["message"], body["status"]["message"]
            return True

        eventually(stalled_with_message, timeout=20, what=f"{sample.name} Stalled")
        outcomes[sample.name] = "stalled"

    assert set(outcomes.values()) == {"rejected", "stalled"}, outcomes
    # What was applied keeps serving: the valid routes stay Ready, rules and topics are untouched.
    _wait_all_ready(stack, namespace, {n for n in NAMES if n[0] == "Route"})
    assert client.get(redis_keys.ruleset_current_key(f"{namespace}/payments")) == rules_before
    assert topics_before <= _topics(stack)


def test_delete_cleans_up_per_deletion_policy(stack: Stack, namespace: str) -> None:
    _apply_samples(stack, namespace)
    retained = stack.kubectl.get("route", "ledger-exports", namespace)
    assert retained is not None
    retained_topics = set(retained["status"]["topics"])

    # A second async route that asks for its topics to be deleted with it.
    route = yaml.safe_load((SAMPLES / "07-route-ledger-async.yaml").read_text())
    route["metadata"]["name"] = "ledger-imports"
    route["spec"]["match"]["path"] = "/v1/imports"
    route["spec"]["deletionPolicy"] = "Delete"
    stack.kubectl.apply(yaml.safe_dump(route), namespace)
    _wait_all_ready(stack, namespace, {("Route", "ledger-imports")})
    deleted_route = stack.kubectl.get("route", "ledger-imports", namespace)
    assert deleted_route is not None
    deleted_topics = set(deleted_route["status"]["topics"])
    assert deleted_topics <= _topics(stack)

    stack.kubectl.run("delete", "route", "ledger-imports", "ledger-exports", "-n", namespace, "--timeout=60s")
    remaining = _topics(stack)
    assert not deleted_topics & remaining
    assert retained_topics <= remaining
    # Children go by ownerReference (the emulated API garbage-collects like a real one).
    eventually(
        lambda: (
            not any(
                d["metadata"]["name"].startswith("apx-worker-ledger-")
                for d in stack.kubectl.list("deployments", namespace)
            )
        ),
        what="worker Deployments garbage-collected",
    )


def _generated_routes(count: int, namespace: str) -> str:
    documents = []
    for index in range(count):
        asynchronous = index % 5 == 0
        spec: dict[str, Any] = {
            "productRef": {"name": "ledger" if asynchronous else "payments"},
            "policyRef": {"name": "payments-policy", "version": "1.3.0"},
            "match": {"hosts": [f"r{index}.example.com"], "pathPrefix": "/"},
            "backend": {"service": {"name": f"svc-{index}", "port": 8080}},
        }
        if asynchronous:
            spec["mode"] = "async"
            spec["worker"] = {"image": "example.com/worker:1", "replicas": 1}
        documents.append(
            {
                "apiVersion": "apx.dev/v1alpha1",
                "kind": "Route",
                "metadata": {"name": f"bulk-{index:03d}"},
                "spec": spec,
            }
        )
    return yaml.safe_dump_all(documents)


def test_operator_killed_mid_reconcile_converges_without_orphans_or_duplicates(
    stack: Stack, namespace: str
) -> None:
    _apply_samples(stack, namespace)
    stack.kubectl.apply(_generated_routes(50, namespace), namespace)
    time.sleep(0.3)
    stack.operator.kill()  # SIGKILL while the 50 routes are being reconciled
    stack.operator.start()

    names = {("Route", f"bulk-{i:03d}") for i in range(50)}
    _wait_all_ready(stack, namespace, names | NAMES, timeout=120)

    expected_deployments: set[str] = set()
    expected_topics: set[str] = set()
    for _, name in names | {("Route", "ledger-exports")}:
        body = stack.kubectl.get("route", name, namespace)
        assert body is not None
        expected_deployments |= set(body["status"].get("deployments") or [])
        expected_topics |= set(body["status"].get("topics") or [])
    deployments = [d["metadata"]["name"] for d in stack.kubectl.list("deployments", namespace)]
    assert len(deployments) == len(set(deployments))
    assert set(deployments) == expected_deployments
    topics = {t for t in _topics(stack) if not t.endswith(".dlq")}
    assert topics == expected_topics


def test_dependency_outages_show_in_status_and_recover_without_restart(
    stack: Stack, namespace: str, tmp_path: Path
) -> None:
    _apply_samples(stack, namespace)
    redis_port = stack.redis.port
    stack.redis.stop()
    product = yaml.safe_load((SAMPLES / "02-product-ledger-eu.yaml").read_text())
    product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] = 60
    stack.kubectl.apply(yaml.safe_dump(product), namespace)

    def reports_redis() -> bool:
        body = stack.kubectl.get("product", "ledger", namespace)
        assert body is not None and body["status"].get("reason") == "RedisUnavailable", (body or {}).get(
            "status"
        )
        assert condition(body, "Reconciling") == "True"
        return True

    eventually(reports_redis, timeout=30, what="RedisUnavailable in status")
    assert stack.operator.process is not None and stack.operator.process.poll() is None

    stack.redis = start_redis(tmp_path / "redis-again", port=redis_port)
    _wait_all_ready(stack, namespace, timeout=90)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    assert client.get(redis_keys.ruleset_current_key(f"{namespace}/ledger")) is not None

    pubsub_port = stack.pubsub.port
    stack.pubsub.stop()
    route = yaml.safe_load((SAMPLES / "07-route-ledger-async.yaml").read_text())
    route["spec"]["async"]["ackDeadlineSeconds"] = 90
    stack.kubectl.apply(yaml.safe_dump(route), namespace)

    def reports_pubsub() -> bool:
        body = stack.kubectl.get("route", "ledger-exports", namespace)
        assert body is not None and body["status"].get("reason") == "PubSubUnavailable", (body or {}).get(
            "status"
        )
        return True

    eventually(reports_pubsub, timeout=60, what="PubSubUnavailable in status")
    stack.pubsub = start_pubsub_emulator(tmp_path / "pubsub-again", port=pubsub_port)
    _wait_all_ready(stack, namespace, timeout=120)
    # The emulator lost its state when it stopped: the operator recreated everything.
    body = stack.kubectl.get("route", "ledger-exports", namespace)
    assert body is not None and set(body["status"]["topics"]) <= _topics(stack)
