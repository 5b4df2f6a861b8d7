"""Envoy resources: validation before a snapshot, JSON round trip, clusters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, json_format

from apx.controllers import names
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.envoy.validate import validate_message
from apx.controllers.translate import translate
from tests.envoy_helpers import policy, product, render, route, unpack

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))
GOLDEN_INPUTS = sorted((ROOT / "tests" / "golden" / "envoy").glob("*/input.yaml"))


def _load(*files: Path) -> list[dict[str, Any]]:
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def _samples_output() -> Any:
    result = translate(_load(*SAMPLES))
    assert not result.stalled
    return render_envoy(result.ir)


def test_sample_output_validates_and_round_trips() -> None:
    output = _samples_output()
    assert output.errors == {}
    assert output.validate_resources() == []


@pytest.mark.parametrize("input_file", GOLDEN_INPUTS, ids=lambda p: p.parent.name)
def test_every_golden_case_validates(input_file: Path) -> None:
    result = translate(_load(input_file))
    assert render_envoy(result.ir).validate_resources() == []


def test_benchmark_workload_validates() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from workload import generate_documents
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result = translate(generate_documents(300, 20))
    assert not result.stalled
    output = render_envoy(result.ir)
    assert output.errors == {}
    assert output.validate_resources() == []


def test_json_output_parses_back_into_the_same_messages() -> None:
    output = _samples_output()
    document = output.to_json()
    assert document["version"] == output.version
    resources = document["resources"]
    for messages, dumped in (
        (output.listeners, resources["listeners"]),
        (output.route_configurations, resources["routes"]),
        (output.clusters, resources["clusters"]),
    ):
        assert len(messages) == len(dumped)
        for message, data in zip(messages, dumped, strict=True):
            # Nested Any payloads are re-encoded by the parser (map order may
            # differ), so compare what they mean, not their bytes.
            parsed = unpack(json_format.ParseDict(data, any_pb2.Any()), type(message))
            assert json_format.MessageToDict(parsed) == json_format.MessageToDict(message)


def test_validator_reports_what_envoy_would_nack() -> None:
    no_action = route_pb.Route(name="r", match=route_pb.RouteMatch(prefix="/"))
    empty_split = route_pb.Route(
        match=route_pb.RouteMatch(prefix="/"),
        route=route_pb.RouteAction(weighted_clusters=route_pb.WeightedCluster()),
    )
    bad_header = route_pb.Route(
        match=route_pb.RouteMatch(prefix="/"),
        route=route_pb.RouteAction(cluster="c"),
        request_headers_to_remove=["bad\nname"],
    )
    unknown_any = route_pb.Route(
        match=route_pb.RouteMatch(prefix="/"),
        route=route_pb.RouteAction(cluster="c"),
        typed_per_filter_config={"x": any_pb2.Any(type_url="type.googleapis.com/not.a.Type", value=b"")},
    )
    config = route_pb2.RouteConfiguration(
        virtual_hosts=[
            route_pb.VirtualHost(
                name="v", domains=["a"], routes=[no_action, empty_split, bad_header, unknown_any]
            )
        ]
    )
    problems = validate_message(config, "rc")
    joined = "\n".join(problems)
    assert "routes[0]: one of action" in joined
    assert "weighted_clusters.clusters: needs at least 1 items" in joined
    assert "request_headers_to_remove[0]: must be a valid HTTP header name" in joined
    assert "unknown type 'type.googleapis.com/not.a.Type'" in joined
    assert validate_message(cluster_pb2.Cluster(), "c") != []  # a cluster needs a name


def _clusters(output: Any) -> dict[str, Any]:
    return {c.name: c for c in output.clusters}


def test_one_cluster_per_distinct_backend_and_the_platform_clusters() -> None:
    documents = [
        product(),
        policy(),
        route("a", backend={"service": {"name": "shared", "port": 8080}}),
        route("b", backend={"service": {"name": "shared", "port": 8080}}),
        route("c", backend={"url": "https://partner.example.net/api"}),
        route("d", backend={"url": "http://plain.example.net:8000"}),
    ]
    clusters = _clusters(render(*documents))
    assert sorted(clusters) == [
        names.ASYNC_GATEWAY_CLUSTER,
        names.RATE_LIMIT_CLUSTER,
        names.jwks_cluster("https", "auth.example.com", 443),
        names.service_cluster("default", "shared", 8080),
        names.url_cluster("http", "plain.example.net", 8000),
        names.url_cluster("https", "partner.example.net", 443),
    ]
    service = clusters[names.service_cluster("default", "shared", 8080)]
    assert service.type == cluster_pb2.Cluster.STRICT_DNS
    endpoint = service.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("shared.default.svc.cluster.local", 8080)
    assert not service.HasField("transport_socket")
    assert (
        clusters[names.url_cluster("http", "plain.example.net", 8000)].type == cluster_pb2.Cluster.LOGICAL_DNS
    )


def test_https_url_backend_verifies_the_server_name() -> None:
    documents = [product(), policy(), route("c", backend={"url": "https://partner.example.net/api"})]
    cluster = _clusters(render(*documents))[names.url_cluster("https", "partner.example.net", 443)]
    context = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    assert context.sni == "partner.example.net"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename
    assert validation.match_typed_subject_alt_names[0].matcher.exact == "partner.example.net"


def test_rate_limit_cluster_speaks_http2_and_backends_http1() -> None:
    clusters = _clusters(render(product(), policy(), route("a")))
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    options = http_protocol_options_pb2.HttpProtocolOptions
    rls = unpack(clusters[names.RATE_LIMIT_CLUSTER].typed_extension_protocol_options[key], options)
    assert rls.explicit_http_config.HasField("http2_protocol_options")
    backend = unpack(
        clusters[names.service_cluster("default", "a", 8080)].typed_extension_protocol_options[key], options
    )
    assert backend.explicit_http_config.HasField("http_protocol_options")
    socket = clusters[names.RATE_LIMIT_CLUSTER].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert socket.socket_address.address == "apx-ratelimit.apx-system.svc.cluster.local"
    assert socket.socket_address.port_value == 8081
