"""The local stack's wait (``python -m e2e.stack wait``) and the addresses its services listen on.

The wait runs against an emulated API holding ``samples/`` plus a user's own
broken Route: only what the manifests applied decides the outcome.
"""

from __future__ import annotations

import copy
import ipaddress
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import yaml
from emuhelpers import Api

from apx.operator.settings import OperatorSettings
from e2e import stack
from e2e.kubeemu.testing import RunningEmulator, running_emulator
from e2e.services import free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


def _collection(ref: stack.ObjectRef) -> str:
    plural = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}[ref.kind]
    return f"/apis/{ref.api_version}/namespaces/{ref.namespace}/{plural}"


def _set_ready(api: Api, path: str, ready: str, reason: str = "Ready", message: str = "") -> None:
    generation = api.get(path).json()["metadata"]["generation"]
    condition = {"type": "Ready", "status": ready, "reason": reason, "message": message}
    response = api.patch(
        f"{path}/status", {"status": {"observedGeneration": generation, "conditions": [condition]}}
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def samples_applied() -> Iterator[tuple[RunningEmulator, Api, list[stack.ObjectRef]]]:
    """An emulated API holding the first occurrence of every object of samples/."""
    with running_emulator(crds=ROOT / "crds") as emu:
        api = Api(emu.url)
        objects = stack.applied_objects([SAMPLES])
        seen: set[stack.ObjectRef] = set()
        for path in sorted(SAMPLES.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                ref = stack.applied_objects([path])[0]
                if ref in seen:
                    continue
                seen.add(ref)
                created = api.post(_collection(ref), doc)
                assert created.status_code == 201, created.text
        yield emu, api, objects


def _broken_user_route(api: Api) -> None:
    route: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((SAMPLES / "05-route-payments-sync.yaml").read_text())
    )
    route["metadata"] = {"name": "my-own-broken-route", "namespace": "default"}
    assert api.post("/apis/apx.dev/v1alpha1/namespaces/default/routes", route).status_code == 201
    path = "/apis/apx.dev/v1alpha1/namespaces/default/routes/my-own-broken-route"
    _set_ready(api, path, "False", "Stalled", "spec.match.headers[0].regex: not accepted by RE2")


def test_applied_objects_are_read_from_folders_once_each_in_the_default_namespace() -> None:
    objects = stack.applied_objects([SAMPLES])
    assert [str(ref) for ref in objects].count("policybundle/default/payments-policy") == 1
    assert {ref.kind for ref in objects} == {"Product", "PolicyBundle", "Route"}
    assert all(ref.namespace == "default" for ref in objects)
    assert stack.applied_objects([SAMPLES], "team-a")[0].namespace == "team-a"


def test_wait_succeeds_on_what_it_applied_despite_a_users_broken_route(
    samples_applied: tuple[RunningEmulator, Api, list[stack.ObjectRef]],
) -> None:
    emu, api, objects = samples_applied
    _broken_user_route(api)
    for ref in objects:
        _set_ready(api, f"{_collection(ref)}/{ref.name}", "True")
    lines: list[str] = []
    missing = stack.wait_ready(emu.url, objects, timeout=10, interval=0.05, progress=lines.append)
    assert missing == {}
    assert len(lines) == len(objects) and all("Ready" in line for line in lines)
    assert not any("my-own-broken-route" in line for line in lines)


def test_wait_names_the_applied_object_that_is_not_ready_with_its_reason(
    samples_applied: tuple[RunningEmulator, Api, list[stack.ObjectRef]],
) -> None:
    emu, api, objects = samples_applied
    late = next(ref for ref in objects if ref.kind == "Route")
    for ref in objects:
        if ref != late:
            _set_ready(api, f"{_collection(ref)}/{ref.name}", "True")
    _set_ready(
        api, f"{_collection(late)}/{late.name}", "False", "WorkersUnavailable", "0/1 workers available"
    )
    missing = stack.wait_ready(emu.url, objects, timeout=0.3, interval=0.05, progress=lambda line: None)
    assert missing == {late: "WorkersUnavailable: 0/1 workers available"}


def test_an_object_is_ready_only_for_its_current_generation() -> None:
    ready = {"type": "Ready", "status": "True"}
    stale = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "conditions": [ready]}}
    assert stack.readiness(stale) == (False, "generation 3 not observed yet (status is for 2)")
    current = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "conditions": [ready]}}
    assert stack.readiness(current) == (True, "")
    assert stack.readiness(None) == (False, "not found")


def test_the_operator_of_the_stack_listens_on_loopback_only() -> None:
    settings = OperatorSettings.from_env(stack.operator_environment({}, 18080, 19090, 18001))
    assert (settings.liveness_host, settings.liveness_port) == ("127.0.0.1", 18080)
    assert (settings.xds_host, settings.xds_port) == ("127.0.0.1", 18001)
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 19090)
    assert settings.admission == "none"  # no webhook server is started


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def _listening_addresses(pid: int) -> set[str]:
    process = psutil.Process(pid)
    found: set[str] = set()
    for member in [process, *process.children(recursive=True)]:
        found |= {c.laddr.ip for c in member.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return found


def test_the_emulated_api_of_the_stack_listens_on_loopback_only(tmp_path: pathlib.Path) -> None:
    port = free_port()
    command = stack.kubeemu_command(sys.executable, port, tmp_path / "kubeconfig")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    with (tmp_path / "log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 30, None, "kubeemu")
        assert _listening_addresses(process.pid) == {"127.0.0.1"}
    finally:
        stop_pid(process.pid)


@pytest.mark.timeout(120)
def test_redis_and_the_pubsub_emulator_of_the_stack_listen_on_loopback_only(tmp_path: pathlib.Path) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        addresses = _listening_addresses(redis.pid)
        assert addresses and all(_is_loopback(address) for address in addresses), addresses
    finally:
        stop_pid(redis.pid)
    pubsub = start_pubsub_emulator(tmp_path / "pubsub")
    try:
        # The JVM listens on the IPv4-mapped form (::ffff:127.0.0.1): still loopback only.
        addresses = _listening_addresses(pubsub.pid)
        assert addresses and all(_is_loopback(address) for address in addresses), addresses
    finally:
        stop_pid(pubsub.pid)
