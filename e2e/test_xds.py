"""End-to-end: an xDS client subscribed to the operator's ADS server sees what ``apx translate`` renders.

The operator runs as in ``test_operator.py`` (its own Redis, Pub/Sub
emulator and process, watching the test's namespace) with its xDS port on a
free loopback port. The client is built only from the official protos (a
synchronous grpcio stream): it subscribes to clusters, listeners and the
route configuration over SotW, checks the routes against ``apx translate``
of the same documents, sees a Route edit arrive, and NACKs one update — which
must show on the Route as ``Programmed=False`` / ``Rejected`` and as a
Warning Event.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import envoy.extensions
import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2  # type: ignore[import-untyped]

from e2e.harness import eventually

from .conftest import Stack
from .test_operator import SAMPLES, _apply_samples

RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


class SyncAds:
    """One SotW ADS stream: requests through a queue, responses read by a thread."""

    def __init__(self, port: int, node_id: str) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.node = base_pb2.Node(id=node_id, cluster="e2e", user_agent_name="e2e-client")
        self.first = True
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(iter(self.requests.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError:
            pass

    def send(
        self, type_url: str, names: list[str], version: str = "", nonce: str = "", error: str = ""
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self.first:
            request.node.CopyFrom(self.node)
            self.first = False
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put(request)

    def next(self, type_url: str, timeout: float = 30) -> Any:
        while True:
            response = self.responses.get(timeout=timeout)
            if response.type_url == type_url:
                return response
            self.send(response.type_url, [] if response.type_url != RDS else ["apx-routes"],
                      response.version_info, response.nonce)  # fmt: skip

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def _translated_routes(namespace: str) -> dict[str, Any]:
    """``apx translate`` of the samples in ``namespace``: the route configuration as proto3 JSON."""
    documents = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                document.setdefault("metadata", {})["namespace"] = namespace
                documents.append(document)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "apx"), "translate", "-f", "-", "-o", "json", "--only", "envoy"],
        input=yaml.safe_dump_all(documents),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    routes: dict[str, Any] = json.loads(result.stdout)["envoy"]["resources"]["routes"][0]
    return routes


def _load_extension_protos() -> None:
    """Register every Envoy extension message, so the JSON form of typed configs can be printed."""
    for module in pkgutil.walk_packages(envoy.extensions.__path__, "envoy.extensions."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


def _as_json(response: Any) -> dict[str, Any]:
    config = route_pb2.RouteConfiguration.FromString(response.resources[0].value)
    packed = json_format.MessageToDict(response.resources[0])
    assert packed["@type"] == RDS
    return {"@type": RDS, **json_format.MessageToDict(config)}


def _without_weights(config: Any) -> Any:
    """The route configuration without canary weights: the operator's canary loop moves them (status),
    which ``apx translate`` of the bare documents does not know; everything else must be equal."""
    if isinstance(config, dict):
        return {k: _without_weights(v) for k, v in config.items() if not (k == "weight" and "name" in config)}
    if isinstance(config, list):
        return [_without_weights(v) for v in config]
    return config


def _route_timeout(response: Any, host: str) -> str:
    config = route_pb2.RouteConfiguration.FromString(response.resources[0].value)
    virtual_host = next(vh for vh in config.virtual_hosts if host in vh.domains)
    return str(json_format.MessageToDict(virtual_host.routes[-1])["route"]["timeout"])


def test_ads_client_gets_translated_routes_then_an_edit_and_a_nack_reaches_the_route(
    stack: Stack, namespace: str
) -> None:
    _apply_samples(stack, namespace)
    _load_extension_protos()
    client = SyncAds(stack.operator.xds_port, "e2e-proxy")
    try:
        client.send(CDS, [])
        client.send(LDS, [])
        client.send(RDS, ["apx-routes"])

        expected = _translated_routes(namespace)
        deadline = time.monotonic() + 60
        accepted = client.next(RDS)
        client.send(RDS, ["apx-routes"], accepted.version_info, accepted.nonce)
        while (
            _without_weights(_as_json(accepted)) != _without_weights(expected) and time.monotonic() < deadline
        ):
            # The operator may still be serving an earlier pass's routes: a newer push follows.
            try:
                accepted = client.next(RDS, timeout=max(0.5, deadline - time.monotonic()))
            except queue.Empty:
                break
            client.send(RDS, ["apx-routes"], accepted.version_info, accepted.nonce)
        assert _without_weights(_as_json(accepted)) == _without_weights(expected)

        stack.kubectl.run("patch", "route", "payments-legacy", "-n", namespace, "--type=merge",
                          "-p", '{"spec": {"timeout": "12s"}}')  # fmt: skip
        edited = client.next(RDS, timeout=60)
        assert _route_timeout(edited, "legacy.payments.example.com") == "12s"
        # The proxy rejects this update.
        client.send(
            RDS, ["apx-routes"], accepted.version_info, edited.nonce, error="rejected by the e2e proxy"
        )

        def rejected() -> bool:
            route = stack.kubectl.get("route", "payments-legacy", namespace)
            conditions = {c["type"]: c for c in (route or {}).get("status", {}).get("conditions", [])}
            programmed = conditions.get("Programmed")
            assert programmed is not None, conditions
            assert programmed["status"] == "False" and programmed["reason"] == "Rejected"
            assert "rejected by the e2e proxy" in programmed["message"]
            # Its Product too, naming the Route.
            product = stack.kubectl.get("product", "payments", namespace)
            product_conditions = {
                c["type"]: c for c in (product or {}).get("status", {}).get("conditions", [])
            }
            assert product_conditions.get("Programmed", {}).get("status") == "False", product_conditions
            assert "payments-legacy" in product_conditions["Programmed"]["message"]
            events = stack.kubectl.list("events", namespace)
            assert any(
                e.get("reason") == "Rejected" and e.get("involvedObject", {}).get("name") == "payments-legacy"
                for e in events
            ), [e.get("reason") for e in events]
            return True

        eventually(
            rejected, timeout=60, what="Programmed=False on the Route and its Product, and a Rejected event"
        )
        assert 'apx_xds_nacks_total{type="RouteConfiguration"} 1.0' in stack.operator.metrics()
    finally:
        client.close()
