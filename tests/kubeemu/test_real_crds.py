"""The generated APX CRDs in ``crds/`` served by the emulator (skipped when they are not there yet).

Valid samples must be admitted; a set of invalid samples whose error is a
schema or CEL rule must be refused at admission, naming the same field as
their ``.error`` file.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import pytest
import requests
import yaml

from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.kubeemu.emuhelpers import Api

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
SAMPLES = ROOT / "samples"
HAVE_CRDS = CRDS.is_dir() and any(CRDS.glob("*.yaml"))
pytestmark = pytest.mark.skipif(not HAVE_CRDS, reason="crds/ has no generated CRDs yet")

PLURALS = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}
# Invalid samples whose error is one a schema or CEL rule in the CRDs catches.
ADMISSION_ERRORS = [
    "01-product-no-plans",
    "02-product-unknown-tier",
    "04-product-eu-with-us-region",
    "10-product-zero-rate",
    "11-product-bad-region-name",
    "16-route-async-without-worker",
    "21-route-bad-timeout",
    "30-policybundle-bad-semver",
]


@pytest.fixture(scope="module")
def apx() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        emu.load_crds(CRDS)
        yield emu


def apply(api: Api, doc: dict[str, object]) -> requests.Response:
    meta = doc["metadata"]
    assert isinstance(meta, dict)
    path = f"/apis/apx.dev/v1alpha1/namespaces/default/{PLURALS[str(doc['kind'])]}/{meta['name']}"
    return api.request(
        "PATCH",
        path,
        data=yaml.safe_dump(doc),
        content_type="application/apply-patch+yaml",
        params={"fieldManager": "tests"},
    )


def test_every_crd_registers_with_its_category_and_short_names(apx: RunningEmulator) -> None:
    resources = Api(apx.url).get("/apis/apx.dev/v1alpha1").json()["resources"]
    main = {r["name"]: r for r in resources if "/" not in r["name"]}
    assert set(main) == {
        yaml.safe_load(p.read_text())["spec"]["names"]["plural"] for p in CRDS.glob("*.yaml")
    }
    for resource in main.values():
        assert "apx" in resource["categories"]
        assert resource["shortNames"]
        assert f"{resource['name']}/status" in {r["name"] for r in resources}


def test_valid_samples_are_admitted(apx: RunningEmulator) -> None:
    api = Api(apx.url)
    docs = [
        doc for path in sorted(SAMPLES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]
    if not docs:
        pytest.skip("samples/ has no documents")
    for doc in docs:
        response = apply(api, doc)
        assert response.status_code in (200, 201), f"{doc['kind']}/{doc['metadata']['name']}: {response.text}"


def _field_of(error_text: str) -> str:
    return error_text.strip().split(":", 1)[0]


def _related(cause_field: str, expected: str) -> bool:
    strip = re.compile(r"\[\d+\]$")
    return expected.startswith(cause_field) or strip.sub("", expected) == strip.sub("", cause_field)


@pytest.mark.parametrize("name", ADMISSION_ERRORS)
def test_invalid_samples_are_refused_at_admission_naming_the_field(apx: RunningEmulator, name: str) -> None:
    sample = SAMPLES / "invalid" / f"{name}.yaml"
    error = SAMPLES / "invalid" / f"{name}.error"
    if not sample.exists() or not error.exists():
        pytest.skip(f"{sample.name} is not in samples/invalid")
    doc = yaml.safe_load(sample.read_text())
    response = apply(Api(apx.url), doc)
    assert response.status_code == 422, response.text
    fields = [cause["field"] for cause in response.json()["details"]["causes"]]
    expected = _field_of(error.read_text())
    assert any(_related(field, expected) for field in fields), (fields, expected)
