"""kubectl 1.32 with the emulator's OpenAPI documents: apply validates, explain explains, get prints columns.

No ``--validate=false`` anywhere here: kubectl reads ``/openapi/v3``, sees
that PATCH accepts ``fieldValidation`` and sends ``fieldValidation=Strict``,
so unknown fields come back as the real server's strict decoding errors.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from e2e.kubeemu.testing import RunningEmulator, running_emulator

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kubectl tests need it")

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a", "image": "img:1"}, {"name": "b", "image": "side:1"}]},
        },
    },
}


class Kubectl:
    def __init__(self, emu: RunningEmulator, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.env = {
            **os.environ,
            "KUBECONFIG": str(emu.kubeconfig),
            "KUBECACHEDIR": str(workdir / "cache"),
            "HOME": str(workdir),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run(
            [KUBECTL, *args], env=self.env, capture_output=True, text=True, timeout=60, cwd=self.workdir
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def file(self, name: str, *docs: object) -> str:
        path = self.workdir / name
        path.write_text(yaml.safe_dump_all(docs))
        return str(path)


@pytest.fixture
def kubectl(tmp_path: pathlib.Path) -> Iterator[Kubectl]:
    with running_emulator(crds=ROOT / "crds") as emu:
        yield Kubectl(emu, tmp_path)


def test_apply_of_the_samples_validates_without_the_validate_flag(kubectl: Kubectl) -> None:
    applied = kubectl("apply", "-f", str(ROOT / "samples"))
    assert "route.apx.dev/" in applied.stdout and "created" in applied.stdout
    assert "unchanged" in kubectl("apply", "-f", str(ROOT / "samples")).stdout


def test_unknown_field_of_a_custom_resource_is_refused_as_by_a_real_server(kubectl: Kubectl) -> None:
    product = {"apiVersion": "apx.dev/v1alpha1", "kind": "Product", "metadata": {"name": "p"}}
    product["spec"] = {"bogusField": 1}
    done = kubectl("apply", "-f", kubectl.file("p.yaml", product), check=False)
    assert done.returncode != 0
    assert (
        'Product in version "v1alpha1" cannot be handled as a Product: '
        'strict decoding error: unknown field "spec.bogusField"'
    ) in done.stderr


def test_unknown_field_of_a_built_in_kind_is_refused_on_create_and_on_update(kubectl: Kubectl) -> None:
    wrong = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "dat": {"a": "b"}}
    done = kubectl("apply", "-f", kubectl.file("c.yaml", wrong), check=False)
    assert done.returncode != 0
    assert 'ConfigMap in version "v1" cannot be handled as a ConfigMap' in done.stderr
    assert 'unknown field "dat"' in done.stderr

    kubectl("apply", "-f", kubectl.file("d.yaml", DEPLOYMENT))
    typo = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    done = kubectl("apply", "-f", kubectl.file("d.yaml", typo), check=False)
    assert done.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolcy"' in done.stderr


def test_client_side_apply_merges_containers_by_name_from_the_published_patch_metadata(
    kubectl: Kubectl,
) -> None:
    kubectl("apply", "-f", kubectl.file("d.yaml", DEPLOYMENT))
    changed = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "img:2"
    assert "configured" in kubectl("apply", "-f", kubectl.file("d.yaml", changed)).stdout
    images = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image}")
    assert images.stdout.split() == ["img:2", "side:1"]


def test_explain_prints_the_crd_field_descriptions(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "route.spec.canary").stdout
    assert "KIND:       Route" in explained and "FIELD: canary <Object>" in explained
    for field in ("steps", "interval", "analysis", "stickiness"):
        assert f"  {field}\t" in explained
    assert "Canary traffic weights in percent" in explained


def test_explain_shows_the_status_fields_the_operator_writes(kubectl: Kubectl) -> None:
    workers = kubectl("explain", "route.status.workers").stdout
    assert "FIELD: workers <Object>" in workers and "Ready only when every worker Deployment" in workers
    assert "  canary\t<Object>" in workers and "  stable\t<Object>" in workers
    track = kubectl("explain", "route.status.workers.stable").stdout
    assert "  available\t<integer>" in track and "  desired\t<integer>" in track
    for kind in ("product", "policybundle"):
        assert "FIELD: inUseBy <[]string>" in kubectl("explain", f"{kind}.status.inUseBy").stdout
    pinned = kubectl("explain", "policybundle.status.servedVersions.pinnedBy").stdout
    assert "FIELD: pinnedBy <[]string>" in pinned and "older" in pinned
    assert (
        "FIELD: canaryPolicyArtifact <string>"
        in kubectl("explain", "route.status.canaryPolicyArtifact").stdout
    )


def test_explain_of_built_in_kinds_and_from_the_v2_protobuf_document(kubectl: Kubectl) -> None:
    replicas = kubectl("explain", "deployment.spec.replicas").stdout
    assert "FIELD: replicas <integer>" in replicas and "Number of desired pods" in replicas
    legacy = kubectl("explain", "route.spec.canary", "--output", "plaintext-openapiv2").stdout
    assert "RESOURCE: canary <Object>" in legacy and "Canary traffic weights in percent" in legacy
    ports = kubectl(
        "explain", "deploy.spec.template.spec.containers.ports", "--output", "plaintext-openapiv2"
    )
    assert "RESOURCE: ports <[]Object>" in ports.stdout


def test_get_prints_the_usual_columns_of_built_in_kinds(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("d.yaml", DEPLOYMENT))
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"a": "1", "b": "2"},
    }
    kubectl("apply", "-f", kubectl.file("c.yaml", configmap))
    deployments = kubectl("get", "deployments").stdout.splitlines()
    assert deployments[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert deployments[1].split()[:4] == ["web", "0/2", "0", "0"]
    wide = kubectl("get", "deployments", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide[1].split()[-3:] == ["a,b", "img:1,side:1", "app=web"]
    configmaps = kubectl("get", "configmap", "c").stdout.splitlines()
    assert configmaps[0].split() == ["NAME", "DATA", "AGE"] and configmaps[1].split()[:2] == ["c", "2"]
    namespaces = kubectl("get", "namespace", "default").stdout.splitlines()
    assert namespaces[0].split() == ["NAME", "STATUS", "AGE"] and namespaces[1].split()[:2] == [
        "default",
        "Active",
    ]
