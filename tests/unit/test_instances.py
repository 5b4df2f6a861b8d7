"""Operator instances: the names that keep several operators (one per namespace set) apart.

Covers the ``instance`` setting of the operator (``apx.operator.settings``,
``--instance`` / ``APX_INSTANCE`` in ``apx.operator.flags``), the route-table
keys of ``apx.contracts.redis_keys``, the Envoy snapshot ConfigMap names and
labels (``apx.controllers.renderers.kubernetes.envoy_snapshot``) and the
gateway's ``--instance`` (``apx.dataplane.gateway.config``). The default
instance must keep every name of a single install unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pydantic
import pytest
import yaml

from apx.contracts import redis_keys
from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient
from apx.controllers.pipeline import compile_resources
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.kubernetes.envoy_snapshot import (
    INSTANCE_LABEL,
    decode_configmaps,
    render_envoy_snapshot,
)
from apx.controllers.translate import translate
from apx.dataplane.gateway.config import parse_config
from apx.operator.flags import build_parser, settings_from_args
from apx.operator.main import main as operator_main
from apx.operator.settings import OperatorSettings
from apx.operator.xds.wiring import load_configmap_snapshot

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_instance_keeps_the_names_of_a_single_install() -> None:
    settings = OperatorSettings()
    assert settings.instance == ""
    assert settings.lease_name == "apx-operator"
    assert settings.webhook_service == "apx-webhook"
    assert settings.webhook_configuration == "apx.dev"
    assert redis_keys.route_table_current_key() == "apx:routetable:{routes}:current"
    assert redis_keys.route_table_key("v1") == "apx:routetable:{routes}:v:v1"
    assert redis_keys.route_table_versions_key() == "apx:routetable:{routes}:versions"
    assert names.envoy_snapshot_configmap() == "apx-envoy-snapshot"
    assert names.envoy_snapshot_part_configmap(0) == "apx-envoy-snapshot-0"


def test_a_named_instance_gets_its_own_lease_webhook_and_route_table_under_one_hash_tag() -> None:
    settings = OperatorSettings(instance="team-b")
    assert settings.lease_name == "apx-team-b-operator"
    assert settings.webhook_service == "apx-team-b-webhook"
    assert settings.webhook_configuration == "team-b.apx.dev"
    keys = [
        redis_keys.route_table_current_key("team-b"),
        redis_keys.route_table_key("v1", "team-b"),
        redis_keys.route_table_versions_key("team-b"),
        redis_keys.sequence_key(redis_keys.route_table_versions_key("team-b")),
    ]
    assert all("{routes/team-b}" in key for key in keys)  # one Lua script, one cluster slot
    assert (
        redis_keys.route_table_key("v1", "team-b") == redis_keys.route_table_version_prefix("team-b") + "v1"
    )
    assert not set(keys) & {redis_keys.route_table_current_key(), redis_keys.route_table_key("v1")}


def test_explicit_lease_and_webhook_service_win_over_the_instance_defaults() -> None:
    settings = OperatorSettings(instance="team-b", lease_name="mine", webhook_service="hook")
    assert (settings.lease_name, settings.webhook_service) == ("mine", "hook")


@pytest.mark.parametrize("bad", ["Team-B", "team_b", "-team", "team-", "a" * 41, "a{b}", "x/y"])
def test_an_instance_name_that_is_not_a_short_dns_label_is_refused(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="DNS label"):
        OperatorSettings(instance=bad)


def test_the_instance_flag_wins_over_the_variable_and_its_defaults_follow_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APX_INSTANCE", "team-a")
    monkeypatch.setenv("APX_NAMESPACES", "team-a")
    assert settings_from_args(build_parser().parse_args([])).lease_name == "apx-team-a-operator"
    settings = settings_from_args(build_parser().parse_args(["--instance", "team-b", "-n", "team-b"]))
    assert (settings.instance, settings.namespaces) == ("team-b", ["team-b"])
    assert settings.lease_name == "apx-team-b-operator"


def test_the_operator_refuses_to_start_with_a_bad_instance_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert operator_main(["--instance", "Team_B"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apx-operator: cannot start: instance: ") and "\n" not in err
    assert "Traceback" not in err


def test_snapshot_configmaps_of_two_instances_in_one_namespace_are_told_apart() -> None:
    documents = [
        d for p in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    result = translate(documents)
    document = render_envoy(result.ir).snapshot_document()
    default = render_envoy_snapshot(document, "apx-system")
    named = render_envoy_snapshot(document, "apx-system", "team-b")
    assert {c["metadata"]["name"] for c in default} == {"apx-envoy-snapshot", "apx-envoy-snapshot-0"}
    assert {c["metadata"]["name"] for c in named} == {
        "apx-envoy-snapshot.team-b",
        "apx-envoy-snapshot.team-b.0",
    }
    assert all(INSTANCE_LABEL not in c["metadata"]["labels"] for c in default)
    assert all(c["metadata"]["labels"][INSTANCE_LABEL] == "team-b" for c in named)
    both = [*default, *named]
    assert decode_configmaps(both) == decode_configmaps(default)
    assert decode_configmaps(both, "team-b") == decode_configmaps(named, "team-b")
    assert decode_configmaps(default, "team-b") is None


def test_the_gateway_reads_the_route_table_of_the_instance_it_is_given() -> None:
    assert parse_config(["--redis-url", "redis://r"], environ={}).instance == ""
    assert parse_config(["--redis-url", "redis://r"], environ={"APX_INSTANCE": "team-b"}).instance == "team-b"
    config = parse_config(["--redis-url", "redis://r", "--instance", "team-c"], environ={"APX_INSTANCE": "x"})
    assert config.instance == "team-c"
    with pytest.raises(SystemExit):
        parse_config(["--redis-url", "redis://r", "--instance", "Team_C"], environ={})


def _cluster_hosts(operator_namespace: str) -> dict[str, str]:
    documents = [
        d for p in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    envoy = compile_resources(documents, operator_namespace=operator_namespace).envoy
    hosts = {}
    for cluster in envoy.clusters:
        if cluster.name in (names.RATE_LIMIT_CLUSTER, names.ASYNC_GATEWAY_CLUSTER):
            endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
            hosts[cluster.name] = endpoint.address.socket_address.address
    return hosts


def test_envoy_reaches_the_ratelimit_service_and_gateway_of_its_own_operator_namespace() -> None:
    assert _cluster_hosts("apx-system") == {
        "apx-ratelimit": "apx-ratelimit.apx-system.svc.cluster.local",
        "apx-gateway": "apx-gateway.apx-system.svc.cluster.local",
    }
    assert _cluster_hosts("apx-team-b") == {
        "apx-ratelimit": "apx-ratelimit.apx-team-b.svc.cluster.local",
        "apx-gateway": "apx-gateway.apx-team-b.svc.cluster.local",
    }


def _samples_snapshot(drop_route: str | None = None) -> dict[str, Any]:
    documents = [
        d
        for p in sorted((ROOT / "samples").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and d["metadata"]["name"] != drop_route
    ]
    return render_envoy(translate(documents).ir).snapshot_document()


def test_snapshot_names_of_instances_never_equal_each_others_or_the_defaults() -> None:
    instances = ["", "a", "a-0", "0", "1", "a-1", "envoy-snapshot"]
    digests = ["0123456789abcdef" * 4, "fedcba9876543210" * 4]

    def parts_of(instance: str) -> list[str]:
        return [names.envoy_snapshot_part_configmap(n, instance) for n in range(3)] + [
            names.envoy_snapshot_content_part_configmap(d, instance) for d in digests
        ]

    every = [names.envoy_snapshot_configmap(i) for i in instances] + [
        part for i in instances for part in parts_of(i)
    ]
    assert len(every) == len(set(every))
    assert all(name.startswith("apx-envoy-snapshot") for name in every)  # the prefix readers list by
    for instance in instances:
        prefix = names.envoy_snapshot_part_prefix(instance)
        owners = {i for i in instances for part in parts_of(i) if part.startswith(prefix)}
        assert owners == {instance}


def test_a_reader_without_an_instance_finds_a_named_instance_alone_in_its_namespace() -> None:
    named = render_envoy_snapshot(_samples_snapshot(), "apx-b", "apx-b")
    assert decode_configmaps(named, "apx-b") is not None
    assert decode_configmaps(named) == decode_configmaps(named, "apx-b")
    other = render_envoy_snapshot(_samples_snapshot(), "apx-b", "apx-c")
    assert decode_configmaps([*named, *other]) is None  # two instances: the reader must say which


class _ConfigMaps:
    """Just enough of a KubeClient for ``load_configmap_snapshot``: one namespace's ConfigMaps."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    async def list(self, kind: str, namespace: str | None, **_: Any) -> list[dict[str, Any]]:
        assert kind == "ConfigMap"
        return [c for c in self.items if c["metadata"]["namespace"] == namespace]


@pytest.mark.asyncio
async def test_the_xds_server_of_a_named_instance_serves_and_follows_its_stored_snapshot() -> None:
    # A restarted operator or a standby serves the stored snapshot before its first pass, and a
    # standby follows the leader's rewrites: the chart's layout, one instance per namespace.
    kube = _ConfigMaps(render_envoy_snapshot(_samples_snapshot(), "apx-b", "apx-b"))
    first = await load_configmap_snapshot(cast(KubeClient, kube), "apx-b", instance="apx-b")
    assert first is not None
    kube.items = render_envoy_snapshot(_samples_snapshot(drop_route="payments-legacy"), "apx-b", "apx-b")
    second = await load_configmap_snapshot(cast(KubeClient, kube), "apx-b", first, instance="apx-b")
    assert second is not None and second.version != first.version


@pytest.mark.asyncio
async def test_instances_sharing_an_operator_namespace_each_serve_their_own_stored_snapshot() -> None:
    full, smaller = _samples_snapshot(), _samples_snapshot(drop_route="payments-legacy")
    mine = render_envoy_snapshot(full, "apx-system", "team-a")
    kube = _ConfigMaps(
        [
            *mine,
            *render_envoy_snapshot(smaller, "apx-system", "team-b"),
            *render_envoy_snapshot(smaller, "apx-system"),
        ]
    )
    loaded = {
        instance: await load_configmap_snapshot(cast(KubeClient, kube), "apx-system", instance=instance)
        for instance in ("team-a", "team-b", "")
    }
    assert all(snapshot is not None for snapshot in loaded.values())
    a, b, default = (loaded[i] for i in ("team-a", "team-b", ""))
    assert a is not None and b is not None and default is not None
    assert set(a.route_keys()) > set(b.route_keys()) == set(default.route_keys())
    # Another instance rewriting its ConfigMaps does not change what this one reads.
    kube.items = [*mine, *render_envoy_snapshot(full, "apx-system", "team-b")]
    assert await load_configmap_snapshot(cast(KubeClient, kube), "apx-system", a, "team-a") is a
