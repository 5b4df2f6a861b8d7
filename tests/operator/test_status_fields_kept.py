"""Status fields the operator writes survive the emulated API's schema enforcement.

The operator's own status write (``KubeClient.patch_status``: a merge-patch of
the status subresource) sends ``workers`` and ``canaryPolicyArtifact`` on a
Route, ``inUseBy`` on a Product and a PolicyBundle and ``pinnedBy`` in a
bundle's ``servedVersions``, to the emulated API serving the generated CRDs.
The emulator prunes and validates custom resources as a real API server does,
status included, so each field must come back as written. It runs twice: with
the CRDs as generated (their status schemas keep unknown fields), and with
status schemas made exact (unknown fields pruned, as on a server whose schema
is strict) — where only declared fields can survive. A mistyped value is
refused with 422, and a key sent as null is removed, as the reconciler relies on.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from apx.controllers.appliers.kube import Connection, Invalid, KubeClient
from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.operator.conftest import samples

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ["default/ledger-exports", "default/payments-charges"]
ARTIFACT = "payments-policy@1.2.0@sha256:" + "0" * 64


def _exact_status(crd: dict[str, Any]) -> dict[str, Any]:
    """``crd`` whose status schema prunes every field it does not declare."""
    result = copy.deepcopy(crd)
    for version in result["spec"]["versions"]:
        stack = [version["schema"]["openAPIV3Schema"]["properties"]["status"]]
        while stack:
            node = stack.pop()
            if "properties" in node:
                node.pop("x-kubernetes-preserve-unknown-fields", None)
                stack.extend(node["properties"].values())
            if isinstance(node.get("items"), dict):
                stack.append(node["items"])
    return result


@pytest.fixture(params=["generated", "exact-status"])
def emulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningEmulator]:
    crds = ROOT / "crds"
    if request.param == "exact-status":
        crds = tmp_path / "crds"
        crds.mkdir()
        for source in sorted((ROOT / "crds").glob("*.yaml")):
            exact = _exact_status(yaml.safe_load(source.read_text()))
            (crds / source.name).write_text(yaml.safe_dump(exact))
    with running_emulator(crds=crds) as running:
        yield running


@pytest_asyncio.fixture
async def kube(emulator: RunningEmulator) -> AsyncIterator[KubeClient]:
    async with KubeClient(Connection(server=emulator.url)) as client:
        created: set[tuple[str, str]] = set()
        for document in samples():
            identity = (document["kind"], document["metadata"]["name"])
            if identity not in created:  # the samples hold two versions of one PolicyBundle
                await client.create(document)
                created.add(identity)
        yield client


def _merge_patched(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _merge_patched(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_merge_patched(v) for v in value]
    return value


WRITTEN: dict[tuple[str, str], dict[str, Any]] = {
    ("Route", "ledger-exports"): {
        "reason": "WorkersUnavailable",
        # What ``WorkerAvailability.summary`` gives: a canary Deployment not observed yet is null.
        "workers": {"stable": {"available": 0, "desired": 2}, "canary": {"available": None, "desired": 1}},
        "deployments": ["apx-worker-ledger-exports-stable", "apx-worker-ledger-exports-canary"],
    },
    ("Route", "payments-charges"): {"canaryPolicyArtifact": ARTIFACT, "canaryWeight": 10},
    ("Product", "payments"): {"reason": "InUse", "inUseBy": ROUTES},
    ("PolicyBundle", "payments-policy"): {
        "reason": "VersionsPinned",
        "inUseBy": ROUTES,
        "servedVersions": [
            {
                "version": "1.2.0",
                "digest": "sha256:" + "0" * 64,
                "artifact": ARTIFACT,
                "compat": "backward",
                "pinnedBy": ROUTES,
            }
        ],
    },
}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_workers_in_use_by_pinned_by_and_canary_artifact_written_as_status_are_kept(
    kube: KubeClient,
) -> None:
    for (kind, name), status in WRITTEN.items():
        returned = await kube.patch_status(kind, "default", name, status)
        stored = await kube.get(kind, "default", name)
        assert stored is not None
        expected = _merge_patched(status)
        for body in (returned, stored):
            kept = {key: value for key, value in body["status"].items() if key in expected}
            assert kept == expected, (kind, name, body["status"])
    route = await kube.get("Route", "default", "ledger-exports")
    assert route is not None
    # Unknown (null) availability is stored as an absent key, never as 0.
    assert route["status"]["workers"]["canary"] == {"desired": 1}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_key_sent_as_null_is_removed_as_the_reconciler_relies_on(kube: KubeClient) -> None:
    await kube.patch_status("Product", "default", "payments", {"inUseBy": ROUTES})
    await kube.patch_status("Product", "default", "payments", {"inUseBy": None, "reason": "Ready"})
    stored = await kube.get("Product", "default", "payments")
    assert stored is not None and "inUseBy" not in stored["status"]
    assert stored["status"]["reason"] == "Ready"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "name", "status", "field"),
    [
        (
            "Route",
            "ledger-exports",
            {"workers": {"stable": {"desired": "two"}}},
            "status.workers.stable.desired",
        ),
        (
            "Route",
            "ledger-exports",
            {"workers": {"stable": {"available": -1}}},
            "status.workers.stable.available",
        ),
        ("Product", "payments", {"inUseBy": "default/payments-charges"}, "status.inUseBy"),
        (
            "PolicyBundle",
            "payments-policy",
            {"servedVersions": [{"version": "1.2.0", "digest": "d", "artifact": "a", "pinnedBy": [1]}]},
            "status.servedVersions[0].pinnedBy[0]",
        ),
    ],
)
async def test_a_mistyped_status_field_is_refused_naming_it(
    kube: KubeClient, kind: str, name: str, status: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as refused:
        await kube.patch_status(kind, "default", name, status)
    assert field in refused.value.message


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_undeclared_status_fields_are_kept_only_where_the_schema_preserves_them(
    kube: KubeClient, emulator: RunningEmulator, request: pytest.FixtureRequest
) -> None:
    # Shows that the exact-status run is strict: what is not declared does not survive there.
    await kube.patch_status("Route", "default", "payments-legacy", {"undeclared": "x", "canaryWeight": 0})
    stored = await kube.get("Route", "default", "payments-legacy")
    assert stored is not None and stored["status"]["canaryWeight"] == 0
    strict = request.node.callspec.params["emulator"] == "exact-status"
    assert ("undeclared" in stored["status"]) is not strict
