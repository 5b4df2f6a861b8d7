"""The operator's reconciler against a real 3-primary Redis Cluster: the samples become Ready, their rule
sets and route table are current in the cluster, and a flushed cluster is repaired by a full resync.

Same path as ``test_reconciler`` (emulated Kubernetes API, real Pub/Sub emulator), with the cluster's
``redis+cluster://`` URL as the operator's only Redis setting.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient
from apx.dataplane.common.redisconn import seed_url
from e2e.services import RedisClusterService, Service
from tests.operator.conftest import samples
from tests.operator.test_reconciler import _apply_samples, _make_reconciler

pytestmark = pytest.mark.timeout(120)


@pytest.mark.asyncio
async def test_operator_publishes_rule_sets_and_route_table_into_a_redis_cluster_and_repairs_a_flush(
    kube: KubeClient,
    redis_cluster: RedisClusterService,
    pubsub_service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = f"apx-test-{uuid.uuid4().hex[:8]}"
    reconciler = _make_reconciler(kube, redis_cluster.url, project, monkeypatch, pubsub_service)
    await _apply_samples(kube, reconciler)
    products = [d["metadata"]["name"] for d in samples() if d["kind"] == "Product"]
    client = redis.RedisCluster.from_url(seed_url(redis_cluster.url), decode_responses=True)
    try:
        versions = {}
        for name in products:
            body = await kube.get("Product", "default", name)
            assert body is not None
            conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
            assert conditions.get("Ready") == "True", body["status"]
            versions[name] = body["status"]["ruleSetVersion"]
            assert client.get(names.ruleset_current_key(f"default/{name}")) == versions[name]
            assert client.hget(names.ruleset_key(f"default/{name}", versions[name]), "meta")
        table = client.get(names.route_table_current_key())
        assert table and client.hlen(names.route_table_key(table)) >= 1

        # Drift repair on a cluster: every primary flushed, a full resync writes it all again.
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as direct:
                direct.flushall()
        await reconciler.reconcile_once(full=True)
        for name in products:
            assert client.get(names.ruleset_current_key(f"default/{name}")) == versions[name]
        assert client.get(names.route_table_current_key()) == table
    finally:
        client.close()
