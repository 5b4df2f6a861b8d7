"""kubectl 1.32 against the emulator: apply (client- and server-side), get, -A, -w, describe, wait, delete.

No ``--validate=false``: the emulator publishes its OpenAPI documents, so
kubectl validates as against a real server (``test_openapi_kubectl``).
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import yaml

from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.kubeemu.emuhelpers import WIDGET_CRD, WIDGETS, Api, widget

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kubectl tests need it")


class Kubectl:
    def __init__(self, emu: RunningEmulator, workdir: pathlib.Path) -> None:
        self.emu = emu
        self.workdir = workdir
        self.env = {
            **os.environ,
            "KUBECONFIG": str(emu.kubeconfig),
            "KUBECACHEDIR": str(workdir / "cache"),
            "HOME": str(workdir),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run(
            [KUBECTL, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.workdir
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        assert KUBECTL is not None
        return subprocess.Popen(
            [KUBECTL, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def file(self, name: str, *docs: dict[str, object]) -> str:
        path = self.workdir / name
        path.write_text(yaml.safe_dump_all(docs))
        return str(path)


@pytest.fixture
def kubectl(tmp_path: pathlib.Path) -> Iterator[Kubectl]:
    with running_emulator(bookmark_interval=0.5) as emu:
        Api(emu.url).create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", copy.deepcopy(WIDGET_CRD)
        )
        yield Kubectl(emu, tmp_path)


CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {"a": "1"}}


def test_client_side_apply_creates_then_configures(kubectl: Kubectl) -> None:
    manifest = kubectl.file("m.yaml", widget("w1", size=2), CONFIGMAP)
    first = kubectl("apply", "-f", manifest)
    assert "widget.test.kubeemu.dev/w1 created" in first.stdout
    assert "configmap/cm1 created" in first.stdout
    changed = kubectl.file("m.yaml", widget("w1", size=3), {**CONFIGMAP, "data": {"b": "2"}})
    second = kubectl("apply", "-f", changed)
    assert "widget.test.kubeemu.dev/w1 configured" in second.stdout
    got = yaml.safe_load(kubectl("get", "wd", "w1", "-o", "yaml").stdout)
    assert got["spec"]["size"] == 3 and got["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    assert yaml.safe_load(kubectl("get", "cm", "cm1", "-o", "yaml").stdout)["data"] == {"b": "2"}
    assert "unchanged" in kubectl("apply", "-f", changed).stdout


def test_server_side_apply(kubectl: Kubectl) -> None:
    manifest = kubectl.file("m.yaml", widget("w1", size=2))
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", manifest).stdout
    got = yaml.safe_load(kubectl("get", "wd", "w1", "-o", "yaml", "--show-managed-fields").stdout)
    managers = {(e["manager"], e["operation"]) for e in got["metadata"]["managedFields"]}
    assert ("kubectl", "Apply") in managers


def test_invalid_objects_are_reported_with_the_field(kubectl: Kubectl) -> None:
    manifest = kubectl.file("bad.yaml", widget("bad", residency="EU", regions=["us-1"]))
    done = kubectl("apply", "-f", manifest, check=False)
    assert done.returncode != 0
    assert 'is invalid: spec.regions: Invalid value: "object": regions must satisfy residency' in done.stderr


def test_get_tables_short_names_categories_and_all_namespaces(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "team-a")
    kubectl("apply", "-f", kubectl.file("m.yaml", widget("w1", size=4)))
    kubectl("apply", "-n", "team-a", "-f", kubectl.file("n.yaml", widget("w2")))
    table = kubectl("get", "widgets").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SIZE", "AGE"]
    assert table[1].split()[:2] == ["w1", "4"]
    assert "w1" in kubectl("get", "wd").stdout
    by_category = kubectl("get", "widgetry").stdout.splitlines()
    assert by_category[0].split() == ["NAME", "READY", "SIZE", "AGE"] and by_category[1].split()[0] == "w1"
    everywhere = kubectl("get", "wd", "-A").stdout.splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE"
    assert sorted(line.split()[0] + "/" + line.split()[1] for line in everywhere[1:]) == [
        "default/w1",
        "team-a/w2",
    ]
    assert "default" in kubectl("get", "namespaces").stdout


def test_get_watch_receives_events(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("m.yaml", widget("w1")))
    watcher = kubectl.popen("get", "wd", "-w", "--request-timeout=20s")
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split()[0] == "NAME"
        assert watcher.stdout.readline().split()[0] == "w1"
        Api(kubectl.emu.url).patch(f"{WIDGETS}/w1", {"spec": {"size": 7}})
        # The READY column is empty, so the new row reads "w1  7  <age>".
        assert watcher.stdout.readline().split()[:2] == ["w1", "7"]
    finally:
        watcher.kill()
        watcher.wait()


def test_describe(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("m.yaml", widget("w1", size=5), CONFIGMAP))
    described = kubectl("describe", "wd", "w1").stdout
    assert "Name:         w1" in described and "Size:" in described
    assert "Data" in kubectl("describe", "configmap", "cm1").stdout


def test_wait_for_a_condition_set_later(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("m.yaml", widget("w1")))

    def become_ready() -> None:
        time.sleep(0.5)
        status = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Done"}]}}
        Api(kubectl.emu.url).patch(f"{WIDGETS}/w1/status", status)

    thread = threading.Thread(target=become_ready)
    thread.start()
    done = kubectl("wait", "--for=condition=Ready", "wd/w1", "--timeout=15s")
    thread.join()
    assert "condition met" in done.stdout
    assert "True" in kubectl("get", "wd", "w1").stdout


def test_delete_waits_for_finalizers_and_removes(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("m.yaml", widget("w1")))
    assert 'widget.test.kubeemu.dev "w1" deleted' in kubectl("delete", "wd", "w1").stdout
    gone = kubectl("get", "wd", "w1", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr

    held = widget("w2")
    held["metadata"]["finalizers"] = ["x.dev/hold"]
    kubectl("apply", "-f", kubectl.file("h.yaml", held))
    kubectl("delete", "wd", "w2", "--wait=false")
    deletion = kubectl("get", "wd", "w2", "-o", "jsonpath={.metadata.deletionTimestamp}").stdout
    assert deletion
    kubectl("patch", "wd", "w2", "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    assert kubectl("get", "wd", "w2", check=False).returncode != 0


def test_create_generators_send_protobuf_and_work(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "team-b")
    kubectl("create", "configmap", "c", "-n", "team-b", "--from-literal=a=b")
    kubectl("create", "secret", "generic", "s", "-n", "team-b", "--from-literal=p=q")
    assert yaml.safe_load(kubectl("get", "cm", "c", "-n", "team-b", "-o", "yaml").stdout)["data"] == {
        "a": "b"
    }
    secret = yaml.safe_load(kubectl("get", "secret", "s", "-n", "team-b", "-o", "yaml").stdout)
    assert secret["data"] == {"p": "cQ=="}
    kubectl("delete", "namespace", "team-b")
    assert kubectl("get", "namespace", "team-b", check=False).returncode != 0
