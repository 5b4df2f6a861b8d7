"""The chart's Envoy (envoy.enabled): a bootstrap Envoy accepts, pointed at the operator's ADS port.

The bootstrap is parsed the way Envoy parses it (YAML → JSON → proto3 JSON into
``envoy.config.bootstrap.v3.Bootstrap`` from xds-protos, every typed config
resolved through its extension's message), then checked field by field: ADS
at the operator Service's xds port, admin on loopback only, the stats listener
exposing only GET /ready and GET /stats/prometheus, the overload manager and
the connection limits. The operator side (APX_XDS_PORT, the Service port, the
NetworkPolicy) is checked against the same values.
"""

from __future__ import annotations

import json
import os
from typing import Any

import helm_python
import pytest
import yaml
from chartkit import ENVOY, NAMESPACE, RELEASE, Rendered, container, env_of, merged, pod_spec, render, selects

# Every typed config of the bootstrap resolves through these (Any needs the message registered).
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from apx.controllers import names
from apx.operator.main import build_parser, settings_from_args

ENVOY_NAME = f"{RELEASE}-envoy"


def _bootstrap(rendered: Rendered) -> Any:
    text = rendered.get("ConfigMap", f"{ENVOY_NAME}-bootstrap")["data"]["bootstrap.yaml"]
    bootstrap = bootstrap_pb2.Bootstrap()
    # ignore_unknown_fields=False: a misspelt field fails here as it would fail Envoy.
    json_format.Parse(json.dumps(yaml.safe_load(text)), bootstrap)
    return bootstrap


def _envoy(rendered: Rendered) -> dict[str, Any]:
    return rendered.get("Deployment", ENVOY_NAME)


def test_envoy_is_off_by_default_and_the_operator_still_serves_xds() -> None:
    rendered = render()
    assert ENVOY_NAME not in rendered.names("Deployment")
    assert f"{ENVOY_NAME}-bootstrap" not in rendered.names("ConfigMap")
    assert env_of(container(rendered.operator()))["APX_XDS_PORT"] == "18000"


def test_bootstrap_parses_into_the_bootstrap_message_with_ads_at_the_operator_service() -> None:
    rendered = render(ENVOY)
    bootstrap = _bootstrap(rendered)
    ads = bootstrap.dynamic_resources.ads_config
    assert ads.api_type == config_source_pb2.ApiConfigSource.DELTA_GRPC
    assert ads.transport_api_version == config_source_pb2.V3
    (service,) = ads.grpc_services
    for source in (bootstrap.dynamic_resources.lds_config, bootstrap.dynamic_resources.cds_config):
        assert source.WhichOneof("config_source_specifier") == "ads"
        assert source.resource_api_version == config_source_pb2.V3
    cluster = next(
        c for c in bootstrap.static_resources.clusters if c.name == service.envoy_grpc.cluster_name
    )
    (endpoint,) = [e.endpoint for group in cluster.load_assignment.endpoints for e in group.lb_endpoints]
    address = endpoint.address.socket_address
    operator_service = rendered.get("Service", f"{RELEASE}-operator-metrics")
    assert address.address == f"{RELEASE}-operator-metrics.{NAMESPACE}.svc.cluster.local"
    xds_port = next(p for p in operator_service["spec"]["ports"] if p["name"] == "xds")
    assert address.port_value == xds_port["port"] == 18000
    assert xds_port["targetPort"] == "xds"
    assert "xds" in {p["name"] for p in container(rendered.operator())["ports"]}
    assert selects(
        operator_service["spec"]["selector"], rendered.operator()["spec"]["template"]["metadata"]["labels"]
    )
    # gRPC needs HTTP/2 to the ADS cluster, with keepalive to notice a dead operator pod.
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(
        options
    )
    assert options.explicit_http_config.http2_protocol_options.connection_keepalive.interval.seconds > 0


def test_state_of_the_world_ads_is_a_value_away() -> None:
    bootstrap = _bootstrap(render(merged(ENVOY, {"envoy": {"xdsApiType": "GRPC"}})))
    assert bootstrap.dynamic_resources.ads_config.api_type == config_source_pb2.ApiConfigSource.GRPC


def test_admin_listens_on_loopback_only_and_is_not_in_any_service() -> None:
    rendered = render(ENVOY)
    admin = _bootstrap(rendered).admin.address.socket_address
    assert admin.address == "127.0.0.1" and admin.port_value == 9901
    ports = {p["containerPort"] for p in container(_envoy(rendered))["ports"]}
    assert 9901 not in ports
    service = rendered.get("Service", ENVOY_NAME)
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]


def test_stats_listener_exposes_only_get_ready_and_get_prometheus_stats_of_the_admin() -> None:
    rendered = render(ENVOY)
    bootstrap = _bootstrap(rendered)
    (listener,) = bootstrap.static_resources.listeners
    assert listener.address.socket_address.port_value == 19001
    assert listener.ignore_global_conn_limit  # probes answer when traffic has used every connection
    manager = hcm_pb.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (host,) = manager.route_config.virtual_hosts
    forwarded = [r for r in host.routes if r.route.cluster]
    assert [r.match.path for r in forwarded] == ["/ready", "/stats/prometheus"]
    for route in forwarded:
        (method,) = route.match.headers
        assert (method.name, method.string_match.exact) == (":method", "GET")
        admin = next(c for c in bootstrap.static_resources.clusters if c.name == route.route.cluster)
        (endpoint,) = [e.endpoint for g in admin.load_assignment.endpoints for e in g.lb_endpoints]
        assert endpoint.address.socket_address.address == "127.0.0.1"
        assert endpoint.address.socket_address.port_value == bootstrap.admin.address.socket_address.port_value
    (rest,) = [r for r in host.routes if not r.route.cluster]
    assert rest.match.prefix == "/" and rest.direct_response.status == 404


def test_probes_use_the_admin_ready_endpoint_through_the_stats_listener() -> None:
    envoy = container(_envoy(render(ENVOY)))
    stats = next(p for p in envoy["ports"] if p["name"] == "stats")
    assert stats["containerPort"] == 19001
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"] == {"path": "/ready", "port": "stats"}
    assert envoy["command"] == ["/usr/local/bin/envoy"]
    assert envoy["args"][:2] == ["--config-path", "/etc/envoy/bootstrap.yaml"]
    assert "--service-node" in envoy["args"] and env_of(envoy)["POD_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_overload_manager_bounds_heap_and_downstream_connections() -> None:
    rendered = render(
        merged(ENVOY, {"envoy": {"overload": {"maxHeapSizeMiB": 512, "maxDownstreamConnections": 1234}}})
    )
    overload = _bootstrap(rendered).overload_manager
    monitors = {m.name: m for m in overload.resource_monitors}
    heap = fixed_heap_pb2.FixedHeapConfig()
    monitors["envoy.resource_monitors.fixed_heap"].typed_config.Unpack(heap)
    assert heap.max_heap_size_bytes == 512 * 1024 * 1024
    connections = downstream_connections_pb2.DownstreamConnectionsConfig()
    monitors["envoy.resource_monitors.global_downstream_max_connections"].typed_config.Unpack(connections)
    assert connections.max_active_downstream_connections == 1234
    actions = {a.name: a.triggers[0].threshold.value for a in overload.actions}
    assert actions == {
        "envoy.overload_actions.shrink_heap": pytest.approx(0.90),
        "envoy.overload_actions.disable_http_keepalive": pytest.approx(0.92),
        "envoy.overload_actions.stop_accepting_requests": pytest.approx(0.95),
    }


def test_the_traffic_listener_the_operator_renders_gets_its_own_connection_limit() -> None:
    rendered = render(merged(ENVOY, {"envoy": {"listenerConnectionLimit": 777}}))
    (layer,) = _bootstrap(rendered).layered_runtime.layers
    static = json_format.MessageToDict(layer.static_layer)
    assert static[f"envoy.resource_limits.listener.{names.LISTENER_NAME}.connection_limit"] == 777
    assert static["envoy.resource_limits.listener.apx-envoy-stats.connection_limit"] > 0
    # The listener port the operator renders is the container port the Service targets.
    envoy = container(_envoy(rendered))
    assert next(p for p in envoy["ports"] if p["name"] == "http")["containerPort"] == 8080


def test_envoy_runs_with_the_restricted_security_context_and_a_read_only_root() -> None:
    deployment = _envoy(render(ENVOY))
    pod = pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False


def test_image_is_the_official_envoy_pinned_at_1_32_or_later() -> None:
    assert container(_envoy(render(ENVOY)))["image"] == "envoyproxy/envoy:v1.32.5"
    digest = "sha256:" + "a" * 64
    pinned = render(merged(ENVOY, {"envoy": {"image": {"digest": digest}}}))
    assert container(_envoy(pinned))["image"] == f"envoyproxy/envoy@{digest}"
    with pytest.raises(helm_python.HelmValuesError, match="/envoy/image/tag"):
        render(merged(ENVOY, {"envoy": {"image": {"tag": "v1.28.0"}}}))
    with pytest.raises(helm_python.HelmValuesError, match="/envoy/image/tag"):
        render(merged(ENVOY, {"envoy": {"image": {"tag": "latest"}}}))


def test_a_bootstrap_change_rolls_the_envoy_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(
            _envoy(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/bootstrap"]
        )

    assert checksum(ENVOY) != checksum(merged(ENVOY, {"envoy": {"listenerConnectionLimit": 10}}))


def test_disruption_budget_only_with_more_than_one_replica() -> None:
    rendered = render(ENVOY)
    budget = rendered.get("PodDisruptionBudget", ENVOY_NAME)
    assert budget["spec"]["maxUnavailable"] == 1
    assert selects(
        budget["spec"]["selector"]["matchLabels"], _envoy(rendered)["spec"]["template"]["metadata"]["labels"]
    )
    single = render(merged(ENVOY, {"envoy": {"replicas": 1}}))
    assert ENVOY_NAME not in single.names("PodDisruptionBudget")


def test_prometheus_scrapes_envoy_stats_by_annotation_and_pod_monitor() -> None:
    rendered = render(merged(ENVOY, {"metrics": {"podMonitor": {"enabled": True}}}))
    annotations = _envoy(rendered)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    assert annotations["prometheus.io/port"] == "19001"
    monitor = rendered.get("PodMonitor", ENVOY_NAME)
    assert monitor["spec"]["podMetricsEndpoints"][0] | {"interval": None, "scrapeTimeout": None} == {
        "port": "stats",
        "path": "/stats/prometheus",
        "interval": None,
        "scrapeTimeout": None,
    }
    assert selects(
        monitor["spec"]["selector"]["matchLabels"], _envoy(rendered)["spec"]["template"]["metadata"]["labels"]
    )
    # The release-wide PodMonitor scrapes ports named "metrics": Envoy has none, so no double scrape.
    assert "metrics" not in {p["name"] for p in container(_envoy(rendered))["ports"]}
    assert ENVOY_NAME not in render(ENVOY).names("PodMonitor")


def test_network_policy_lets_the_chart_envoy_and_listed_peers_reach_the_xds_port() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"name": "edge"}}}
    rendered = render(merged(ENVOY, {"networkPolicy": {"enabled": True, "ingress": {"xdsFrom": [peer]}}}))
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-operator")["spec"]
    (rule,) = [r for r in policy["ingress"] if {"port": "xds", "protocol": "TCP"} in r["ports"]]
    envoy_labels = _envoy(rendered)["spec"]["template"]["metadata"]["labels"]
    assert selects(rule["from"][0]["podSelector"]["matchLabels"], envoy_labels)
    assert rule["from"][1:] == [peer]
    # Without the chart's Envoy and without peers, any Envoy may connect (as for the metrics port).
    open_policy = render({"networkPolicy": {"enabled": True}}).get("NetworkPolicy", f"{RELEASE}-operator")
    (open_rule,) = [
        r for r in open_policy["spec"]["ingress"] if {"port": "xds", "protocol": "TCP"} in r["ports"]
    ]
    assert "from" not in open_rule


def test_xds_port_reaches_the_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    operator = container(render({"xds": {"port": 18555}}).operator())
    for name in [n for n in os.environ if n.startswith("APX_")]:
        monkeypatch.delenv(name)
    for entry in operator["env"]:
        monkeypatch.setenv(entry["name"], entry.get("value", "redis://placeholder:6379/0"))
    settings = settings_from_args(build_parser().parse_args(operator["args"]))
    assert settings.xds_port == 18555


def test_envoy_without_the_xds_server_or_with_colliding_ports_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"xds\.port"):
        render(merged(ENVOY, {"xds": {"port": 0}}))
    with pytest.raises(helm_python.HelmRenderError, match="cannot share a port"):
        render(merged(ENVOY, {"envoy": {"statsPort": 9901}}))
    assert "xds" not in {p["name"] for p in container(render({"xds": {"port": 0}}).operator())["ports"]}
