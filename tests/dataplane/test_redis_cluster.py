"""APX on a real Redis Cluster (3 primaries, ``redis-server --cluster-enabled yes``): every Lua script
without CROSSSLOT, the operator's rule sets and route table, exact rate-limit decisions, leases and
credits, a decision that survives its slot being resharded (ASK, then MOVED), and an async request
carried by the gateway and a worker to its result.

The cluster is the session fixture ``redis_cluster`` (``tests/conftest.py``); everything is pointed
at it with its ``redis+cluster://`` URL, the one documented switch. Rule sets are rendered and
published exactly as the operator does (``publish_rule_sets``: translate → render → ``RedisApplier``).
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

import apx.controllers
import apx.dataplane
from apx.controllers import names
from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.renderers.redis_rules import render_redis
from apx.controllers.translate import translate
from apx.dataplane.common import redisconn
from apx.dataplane.common.clusterpipe import ClusterPipe, command_key, open_pipe
from apx.dataplane.common.pipe import PipelinedRedis, encode_command
from apx.dataplane.common.requeststate import SCRIPTS, ScriptRunner, backlog_key, request_key
from apx.dataplane.common.routetable import RouteTableReader
from apx.dataplane.common.rulesets import RuleSetReader
from apx.dataplane.ratelimit.leases import ConcurrencyLeases, Credits
from e2e.services import RedisClusterService, Service
from tests.dataplane.conftest import (
    Jwks,
    RlClock,
    add_api_key,
    apx_docs,
    deploy,
    publish_rule_sets,
    ratelimit_docs,
    rls_service,
    running_gateway,
    running_worker,
    upstream_stub,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

OK = 1
OVER_LIMIT = 2


def plan(name: str, burst: int = 5, **extra: Any) -> dict[str, Any]:
    return {"name": name, "tier": "pro", "rateLimit": {"requestsPerSecond": 1, "burst": burst}, **extra}


def _node_ids(cluster: RedisClusterService) -> dict[str, str]:
    """address → cluster node id."""
    out = {}
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            out[node.address] = client.execute_command("CLUSTER", "MYID").decode()
    return out


def _slot_owner(cluster: RedisClusterService, slot: int) -> str:
    """Address of the primary serving ``slot`` (asked of the first node)."""
    with redis.Redis(port=cluster.nodes[0].port) as client:
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return f"127.0.0.1:{int(primary[1])}"
    raise AssertionError(f"no owner for slot {slot}")


def _tag_slot(tag_content: str) -> int:
    return int(key_slot(("{" + tag_content + "}").encode()))


def _spread(
    cluster: RedisClusterService, candidates: Iterator[str], make_tag: Callable[[str], str]
) -> list[str]:
    """One candidate per primary: names whose hash tags land on three different nodes."""
    chosen: dict[str, str] = {}
    for candidate in candidates:
        owner = _slot_owner(cluster, _tag_slot(make_tag(candidate)))
        chosen.setdefault(owner, candidate)
        if len(chosen) == len(cluster.nodes):
            return list(chosen.values())
    raise AssertionError("candidates never covered every primary")


def _names(prefix: str) -> Iterator[str]:
    return (f"{prefix}{i}" for i in range(200))


# --- every script, no CROSSSLOT ---------------------------------------------------------------------


def _registered_lua_sources() -> dict[str, str]:
    """Every Lua script APX registers: module-level strings (and dicts of them) that call ``redis.call``.

    Found by walking the packages that talk to Redis, so a script added later without a line in the
    test below fails ``test_every_lua_script...`` instead of going untested on a cluster.
    """
    found: dict[str, str] = {}
    for package in (apx.controllers, apx.dataplane):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue  # importing it would run the program
            module = importlib.import_module(info.name)
            for attr, value in vars(module).items():
                values = value.values() if isinstance(value, dict) else [value]
                for item in values:
                    if isinstance(item, str) and "redis.call(" in item:
                        found[hashlib.sha1(item.encode()).hexdigest()] = f"{info.name}.{attr}"
    return found


def test_the_operator_package_holds_no_lua_script_of_its_own() -> None:
    # The discovery above imports controllers and dataplane only (importing the operator registers
    # kopf handlers); the operator must reach Redis through the controllers' applier.
    root = Path(apx.controllers.__path__[0]).parent / "operator"
    for path in root.glob("*.py"):
        text = path.read_text()
        for marker in ("redis.call(", "register_script", "EVALSHA", "SCRIPT LOAD"):
            assert marker not in text, f"{path.name} runs Lua ({marker}): cover it in this module"


@pytest.mark.asyncio
async def test_every_lua_script_of_apx_runs_on_the_cluster_with_real_keys_and_no_crossslot(
    redis_cluster: RedisClusterService, namespace: str, rl_clock: RlClock
) -> None:
    url = redis_cluster.url
    ran: set[str] = set()

    def record(source: str) -> None:
        ran.add(hashlib.sha1(source.encode()).hexdigest())

    # Operator: publish (old versions deleted inside the script: keep 1 of 3) and drop.
    from apx.controllers.appliers import redis_rules as applier_module

    applier = RedisApplier(url, keep_versions=1)
    try:
        product = f"{namespace}/scripts"
        keys = VersionedKeys(
            names.ruleset_key(product, ""),
            names.ruleset_current_key(product),
            names.ruleset_versions_key(product),
        )
        for version in ("v1", "v2", "v3"):
            assert await applier.publish(keys, version, {"meta": "{}", "n": version})
        assert await applier.current_version(keys) == "v3"
        # A new version as the changes from the current one (COPY on the node of the slot), then
        # one whose base is gone (trimmed): published whole.
        whole = {"meta": "{}", "n": "v4", "added": "x"}
        assert await applier.publish_changes(keys, "v4", "v3", {"n": "v4", "added": "x"}, [], whole)
        client = redisconn.cluster_client(url, max_connections=4, decode_responses=True)
        try:
            assert await client.hgetall(keys.version_key("v4")) == whole
            assert await applier.publish_changes(keys, "v5", "v3", {"n": "v5"}, ["added"], {"n": "v5"})
            assert await client.hgetall(keys.version_key("v5")) == {"n": "v5"}
        finally:
            await client.aclose()
        assert await applier.drop(keys) >= 1
        assert await applier.current_version(keys) is None
        record(applier_module._PUBLISH)
        record(applier_module._PUBLISH_DELTA)
        record(applier_module._DROP)
    finally:
        await applier.close()

    # Rate-limit service: DECIDE with every dimension (rate, API-key rate, quota, concurrency,
    # credits), for each algorithm (fixed windows append their index inside the script).
    from apx.dataplane.ratelimit import scripts

    for algorithm in ("sliding-window", "token-bucket", "fixed-window"):
        full = plan(
            "full",
            burst=3,
            apiKeyRateLimit={"requestsPerSecond": 1, "burst": 3},
            quota={"requests": 100, "period": "hour"},
            concurrency=5,
            credits={"costPerRequest": 1},
        )
        product_name = f"all-{algorithm}"
        docs = ratelimit_docs(namespace, [full], algorithm=algorithm, product=product_name)
        await publish_rule_sets(url, docs)
        product = f"{namespace}/{product_name}"
        await add_api_key(url, product, "key-1", "acme")
        client = redisconn.connect(url)
        try:
            await Credits(client).top_up(product, "acme", 100)
        finally:
            await client.aclose()
        async with rls_service(url, clock=rl_clock) as rls:
            assert isinstance(rls.running.pipe, ClusterPipe)
            assert await rls.allowed(product, 5, tenant="acme", api_keys=("key-1",)) == 3
    record(scripts.DECIDE)

    # Leases and credits (the gateway's and worker's side).
    client = redisconn.connect(url)
    try:
        leases = ConcurrencyLeases(client)
        lease = await leases.acquire(f"{namespace}/shop", "acme", limit=1, lease_ms=5_000)
        assert lease is not None
        assert await leases.renew(lease, 10_000)
        assert await leases.release(lease)
        credits = Credits(client)
        await credits.top_up(f"{namespace}/shop", "acme", 5)
        assert (await credits.spend(f"{namespace}/shop", "acme", 3)).spent
        record(scripts.LEASE_ACQUIRE)
        record(scripts.LEASE_RENEW)
        record(scripts.CREDITS_SPEND)

        # Request state: every script, in one batch whose keys live in different slots — through
        # redis-py's cluster client (the gateway) and through the ClusterPipe (the worker).
        pipe = open_pipe(url, timeout=5)
        try:
            for runner in (ScriptRunner(client), ScriptRunner(client, pipe)):
                request_id = uuid.uuid4().hex
                request = request_key(request_id)
                backlog = backlog_key(f"{namespace}/jobs", "stable")
                results = await runner.run(
                    [
                        ("create", [request], ["acme", "r", "stable", "pro", "1", "60000"]),
                        ("admit", [backlog], ["100"]),
                        (
                            "claim",
                            [request],
                            ["w1", "2", "9999999", "1", "60000", "acme", "r", "stable", "pro"],
                        ),
                        ("release", [request], ["w1", "3", "retry", "60000"]),
                        (
                            "claim",
                            [request],
                            ["w1", "4", "9999999", "2", "60000", "acme", "r", "stable", "pro"],
                        ),
                        ("finish", [request], ["done", "5", "60000", "200", "text/plain", "ok", "", "0"]),
                        ("retire", [backlog], ["1"]),
                    ]
                )
                problems = [r for r in results if isinstance(r, Exception)]
                assert not problems, problems
                assert results[-2] == 1  # finish made it terminal
            for source in SCRIPTS.values():
                record(source)
        finally:
            await pipe.close()
    finally:
        await client.aclose()

    registered = _registered_lua_sources()
    untested = {where for sha, where in registered.items() if sha not in ran}
    assert not untested, f"Lua scripts never run against the cluster here: {sorted(untested)}"
    assert len(registered) >= 12


@pytest.mark.asyncio
async def test_the_cluster_really_refuses_a_script_whose_keys_span_two_slots(
    redis_cluster: RedisClusterService,
) -> None:
    # The control for the test above: the server refuses a script with keys of two tags (CROSSSLOT),
    # so the absence of that error there means something. Sent through the ClusterPipe, which checks
    # nothing itself: the refusal is the server's (redis-py's client would refuse before sending).
    pipe = ClusterPipe(redis_cluster.url, timeout=5)
    try:
        command = encode_command([b"EVAL", b"return 1", b"2", b"apx:{a}:x", b"apx:{b}:x"])
        with pytest.raises(ResponseError, match=r"^CROSSSLOT"):
            await pipe.execute(command)
    finally:
        await pipe.close()


def test_command_key_reads_the_routing_key_of_encoded_commands() -> None:
    evalsha = encode_command([b"EVALSHA", b"f" * 40, b"2", b"apx:{t}:a", b"apx:{t}:b", b"arg"])
    assert command_key(evalsha) == b"apx:{t}:a"
    assert command_key(encode_command([b"EVALSHA", b"f" * 40, b"0", b"arg"])) is None
    assert command_key(encode_command([b"ZREM", b"apx:{t}:cc", b"lease"])) == b"apx:{t}:cc"
    assert command_key(encode_command([b"PING"])) is None
    assert isinstance(open_pipe("redis://127.0.0.1:1/0", 1.0), PipelinedRedis)
    assert not isinstance(open_pipe("redis://127.0.0.1:1/0", 1.0), ClusterPipe)
    assert isinstance(open_pipe("redis+cluster://127.0.0.1:1/0", 1.0), ClusterPipe)


@pytest.mark.asyncio
async def test_cluster_pipe_with_no_node_reachable_fails_like_a_lost_connection() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from e2e.services import free_port

    pipe = ClusterPipe(f"redis+cluster://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(RedisConnectionError, match="no Redis Cluster node answered"):
            await pipe.execute(encode_command([b"GET", b"apx:{t}:x"]))
    finally:
        await pipe.close()


# --- operator output and readers --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_operator_publishes_rule_sets_and_route_table_into_the_cluster_and_readers_see_them(
    redis_cluster: RedisClusterService, namespace: str
) -> None:
    url = redis_cluster.url
    products = _spread(redis_cluster, _names("shop"), lambda name: f"{namespace}/{name}")
    docs: list[dict[str, Any]] = []
    for index, name in enumerate(products):
        for doc in ratelimit_docs(namespace, [plan("free", burst=index + 2)], product=name):
            if doc["kind"] == "PolicyBundle" and index:
                continue  # one bundle for all products
            if doc["kind"] == "Route":
                doc["metadata"]["name"] = f"{name}-api"
            docs.append(doc)
    result = translate(docs)
    assert not result.stalled, [s.message for s in result.stalled]
    output = render_redis(result.ir)
    applier = RedisApplier(url, keep_versions=3)
    try:
        for rule_set in output.rule_sets:
            keys = VersionedKeys(
                rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
            )
            assert await applier.publish(keys, rule_set.version, dict(rule_set.fields))
        table = output.route_table
        table_keys = VersionedKeys(
            table.key[: -len(table.version)], table.current_key, names.route_table_versions_key()
        )
        assert await applier.publish(table_keys, table.version, dict(table.entries))
        # Idempotent, as on one server.
        assert not await applier.publish(table_keys, table.version, dict(table.entries))
    finally:
        await applier.close()

    # The rule sets landed on three different primaries.
    owners = {
        _slot_owner(redis_cluster, key_slot(names.ruleset_current_key(f"{namespace}/{p}").encode()))
        for p in products
    }
    assert owners == set(redis_cluster.addresses)

    client = redisconn.connect(url)
    try:
        reader = RuleSetReader(client)
        for index, name in enumerate(products):
            match = await reader.lookup(f"{namespace}/{name}", "someone", None)
            assert match is not None
            assert match.rule.rate.burst == index + 2
        await reader.close()
        routes = RouteTableReader(client)
        snapshot = await routes.snapshot()
        assert snapshot.version == table.version
        assert {f"{namespace}/{name}-api" for name in products} <= set(snapshot.entries)
        await routes.close()
        # Deleting a product's counters scans every primary.
        product = f"{namespace}/{products[0]}"
        for tenant in ("a", "b", "c"):
            await client.set(names.counter_key(product, tenant, "quota"), 1)
        applier = RedisApplier(url)
        try:
            assert await applier.delete_pattern(f"apx:c:{{{product}/*") == 3
        finally:
            await applier.close()
    finally:
        await client.aclose()


# --- rate-limit decisions ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_service_on_the_cluster_admits_exactly_the_burst_of_each_tenant(
    redis_cluster: RedisClusterService, namespace: str, rl_clock: RlClock
) -> None:
    import asyncio

    url = redis_cluster.url
    await publish_rule_sets(url, ratelimit_docs(namespace, [plan("free", burst=5)]))
    product = f"{namespace}/shop"
    # Tenants whose counters live on each of the three primaries.
    tenants = _spread(redis_cluster, _names("tenant-"), lambda tenant: f"{product}/{tenant}")
    async with rls_service(url, clock=rl_clock) as rls:
        for tenant in tenants:
            assert await rls.allowed(product, 8, tenant=tenant) == 5
        # Concurrent calls of three tenants on three nodes at once: still exact.
        rl_clock.advance(60_000)
        answers = await asyncio.gather(*(rls.ask(product, tenant=t) for t in tenants for _ in range(9)))
        for index, tenant in enumerate(tenants):
            codes = [a.overall_code for a in answers[index * 9 : (index + 1) * 9]]
            assert codes.count(OK) == 5, (tenant, codes)
        pipe = rls.running.pipe
        assert isinstance(pipe, ClusterPipe)
        assert len(pipe._nodes) == 3


@pytest.mark.asyncio
async def test_leases_and_credits_hold_their_caps_on_the_cluster(
    redis_cluster: RedisClusterService, namespace: str, rl_clock: RlClock
) -> None:
    url = redis_cluster.url
    await publish_rule_sets(url, ratelimit_docs(namespace, [plan("capped", burst=100, concurrency=2)]))
    product = f"{namespace}/shop"
    client = redisconn.connect(url)
    try:
        async with rls_service(url, clock=rl_clock) as rls:
            leases = ConcurrencyLeases(client, rls.running.reader, clock_ms=rl_clock.ms)
            first = await leases.acquire_for(product, "acme")
            second = await leases.acquire_for(product, "acme")
            assert first is not None and second is not None
            assert await leases.acquire_for(product, "acme") is None
            assert await leases.active(product, "acme") == 2
            # The service reads the same cluster key: the tenant is at its cap.
            refused = await rls.ask(product, tenant="acme")
            assert refused.overall_code == OVER_LIMIT
            assert await leases.release(first)
            assert (await rls.ask(product, tenant="acme")).overall_code == OK
        credits = Credits(client)
        await credits.top_up(product, "acme", 5)
        assert (await credits.spend(product, "acme", 4)).spent
        spend = await credits.spend(product, "acme", 4)
        assert not spend.spent and spend.balance == 1
    finally:
        await client.aclose()


# --- resharding during decisions --------------------------------------------------------------------


def _cluster_call(port: int, *args: Any) -> Any:
    with redis.Redis(port=port) as client:
        return client.execute_command(*args)


@pytest.mark.asyncio
async def test_decisions_survive_ask_and_moved_while_the_tenants_slot_is_resharded(
    redis_cluster: RedisClusterService, namespace: str, rl_clock: RlClock
) -> None:
    url = redis_cluster.url
    await publish_rule_sets(url, ratelimit_docs(namespace, [plan("free", burst=6)]))
    product = f"{namespace}/shop"
    tenant = "moving"
    # The contract's key of the tenant's sliding-window counter (REDIS_KEYS.md, "Counters").
    counter = names.counter_key(product, tenant, "tenant:sw")
    slot = key_slot(counter.encode())
    ids = _node_ids(redis_cluster)
    source = _slot_owner(redis_cluster, slot)
    target = next(address for address in redis_cluster.addresses if address != source)
    source_port, target_port = int(source.rsplit(":", 1)[1]), int(target.rsplit(":", 1)[1])
    async with rls_service(url, clock=rl_clock) as rls:
        pipe = rls.running.pipe
        assert isinstance(pipe, ClusterPipe)
        codes = [(await rls.ask(product, tenant=tenant)).overall_code for _ in range(2)]
        try:
            _cluster_call(target_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            _cluster_call(source_port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            # Migrating, the key still on the source: served there as usual.
            codes.append((await rls.ask(product, tenant=tenant)).overall_code)
            keys = _cluster_call(source_port, "CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert counter.encode() in keys
            _cluster_call(source_port, "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
            # Moved to the target, slot not yet handed over: the source answers ASK. The target has
            # never run the script (flushed): it is loaded there on the way.
            _cluster_call(target_port, "SCRIPT", "FLUSH")
            before = pipe.redirects
            codes.append((await rls.ask(product, tenant=tenant)).overall_code)
            assert pipe.redirects > before
        finally:
            for address in redis_cluster.addresses:
                port = int(address.rsplit(":", 1)[1])
                _cluster_call(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        # Handed over: the pipe's map still says source, which answers MOVED.
        before = pipe.redirects
        codes += [(await rls.ask(product, tenant=tenant)).overall_code for _ in range(4)]
        assert pipe.redirects > before
        assert codes == [OK] * 6 + [OVER_LIMIT] * 2, codes
        assert _slot_owner(redis_cluster, slot) == target


# --- the async path ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gateway_and_worker_carry_an_async_request_to_its_result_on_the_cluster(
    redis_cluster: RedisClusterService, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    # The request hash ({<id>}) and the backlog counter ({<ns>/<route>}) live in different slots: the
    # gateway's calls go through redis-py's cluster client, the worker's batches through the ClusterPipe.
    url = redis_cluster.url
    async with upstream_stub() as upstream:
        compiled = await deploy(apx_docs(namespace, jwks, upstream.url), project=project, redis_url=url)
        token = jwks.token("acme")
        async with running_gateway(url, project) as gw:
            response = await gw.submit(b'{"rows": 3}', token=token)
            assert response.status == 202, await response.text()
            request_id = (await response.json())["request_id"]
            async with running_worker(url, project, compiled) as processor:
                assert isinstance(processor.runner.pipe, ClusterPipe)

                async def done() -> bool:
                    _, state = await gw.status(request_id, token)
                    return bool(state["state"] == "done")

                await wait_for(done)
            status, state = await gw.status(request_id, token)
            assert status == 200 and state["code"] == 200
            assert state["result"] == {"echo": '{"rows": 3}', "path": "/backend/export"}
            backlog = await gw.gateway.redis.get(backlog_key(f"{namespace}/jobs", "stable"))
            assert int(backlog or 0) == 0
