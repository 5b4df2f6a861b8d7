"""`kubectl get … -o wide` on the samples: the wide columns show mode, product, hosts and
canary phase, and no printer column is blank where the value is known.

kubectl 1.32 talks to the emulated Kubernetes API (e2e/kubeemu) serving the generated
CRDs from crds/; the API server renders the table from the CRDs' additionalPrinterColumns.
The samples are applied, then given the status `apx translate` computes for them (what the
operator writes), plus the canary phase the canary controller writes for the Route with a
canary. kubectl prints ``<none>`` for an empty cell.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.kubeemu.emuhelpers import Api

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
PLURALS = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}
APX = pathlib.Path(sys.executable).with_name("apx")


def sample_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((ROOT / "samples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def translated_statuses() -> dict[tuple[str, str], dict[str, Any]]:
    done = subprocess.run(
        [str(APX), "translate", "-f", str(ROOT / "samples"), "--only", "status", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 3), done.stderr
    return {(s["kind"], s["metadata"]["name"]): s["status"] for s in json.loads(done.stdout)["status"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningEmulator, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("kubectl")
    with running_emulator(crds=ROOT / "crds") as emu:
        api = Api(emu.url)
        statuses = translated_statuses()
        canary_routes = []
        for doc in sample_documents():
            kind, name = doc["kind"], doc["metadata"]["name"]
            base = f"/apis/apx.dev/v1alpha1/namespaces/default/{PLURALS[kind]}/{name}"
            applied = api.request(
                "PATCH",
                base,
                data=yaml.safe_dump(doc),
                content_type="application/apply-patch+yaml",
                params={"fieldManager": "tests", "force": "true"},
            )
            assert applied.status_code in (200, 201), applied.text
            status = dict(statuses.get((kind, name), {}))
            if kind == "Route" and doc["spec"].get("canary"):
                status.update(canary={"phase": "Progressing", "weight": 10}, canaryWeight=10)
                canary_routes.append(name)
            if status:
                patched = api.patch(f"{base}/status", {"status": status})
                assert patched.status_code == 200, patched.text
        assert canary_routes, "the samples have no Route with a canary"
        env = {
            **os.environ,
            "KUBECONFIG": str(emu.kubeconfig),
            "KUBECACHEDIR": str(workdir / "cache"),
            "HOME": str(workdir),
        }
        yield emu, env


def wide_table(env: dict[str, str], plural: str) -> list[dict[str, str]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "get", plural, "-n", "default", "-o", "wide"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    # Columns are separated by at least 3 spaces; headers may hold one space ("CANARY %").
    starts = [0] + [
        i + 3 for i in range(len(header) - 3) if header[i : i + 3] == "   " and header[i + 3] != " "
    ]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {name: row[a:b].strip() for name, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for row in rows
    ]


def test_routes_wide_shows_mode_product_hosts_and_canary_phase(
    cluster: tuple[RunningEmulator, dict[str, str]],
) -> None:
    _, env = cluster
    routes = {row["NAME"]: row for row in wide_table(env, "routes")}
    samples = {d["metadata"]["name"]: d for d in sample_documents() if d["kind"] == "Route"}
    assert set(routes) == set(samples)
    for name, doc in samples.items():
        row = routes[name]
        assert row["MODE"] == doc["spec"].get("mode", "sync")
        assert row["PRODUCT"] == doc["spec"]["productRef"]["name"]
        assert doc["spec"]["match"]["hosts"][0] in row["HOSTS"]
        if doc["spec"].get("canary"):
            assert (row["CANARY PHASE"], row["CANARY %"]) == ("Progressing", "10")
        else:
            assert row["CANARY PHASE"] in ("", "<none>")


@pytest.mark.parametrize("plural", sorted(PLURALS.values()))
def test_no_printer_column_is_blank_where_the_value_is_known(
    cluster: tuple[RunningEmulator, dict[str, str]], plural: str
) -> None:
    _, env = cluster
    rows = wide_table(env, plural)
    assert rows
    for row in rows:
        blank = sorted(column for column, cell in row.items() if cell in ("", "<none>"))
        # The phase is unknown (not blank by mistake) for a Route without a canary.
        allowed = {"CANARY PHASE"} if plural == "routes" else set()
        assert set(blank) <= allowed, f"{plural}/{row['NAME']}: blank {blank} in {row}"
