"""The generated CRDs refuse at admission what their schema and CEL rules can say, in words.

Same table as ``tests/unit/test_semantic_validation.py`` (``tests/semantic_cases.py``),
applied to the emulated API with ``crds/`` loaded, as ``kubectl apply`` would:
each case the CRD can express is refused with HTTP 422, the field (with its
index) and the message of the rule; a case only the models can judge (quantity
comparison, IPv6 address validity: CEL functions newer than Kubernetes 1.27)
is admitted here and refused by the operator, which the unit test checks.
No message carries a regular expression.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import pytest
import requests
import yaml

from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.kubeemu.emuhelpers import Api
from tests.kubeemu.test_real_crds import CRDS, apply
from tests.semantic_cases import CASES, SemanticCase

# Signs of a regular expression in a message: anchors with classes or groups.
REGEX_MARKS = re.compile(r"\^\[|\^\(|\]\+\$|\)\?\$|\\s|\{0,|\(\?:|should match '")


@pytest.fixture(scope="module")
def apx() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        emu.load_crds(CRDS)
        yield emu


def _causes(response: requests.Response) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in response.json()["details"]["causes"]]


def _unique(obj: dict[str, object], name: str) -> dict[str, object]:
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    meta["name"] = name
    return obj


@pytest.mark.parametrize("case", [c for c in CASES if c.admission_field], ids=lambda c: c.name)
def test_refused_at_admission_with_the_field_and_the_rule_in_words(
    apx: RunningEmulator, case: SemanticCase
) -> None:
    response = apply(Api(apx.url), _unique(case.build(), f"refused-{case.name}"))
    assert response.status_code == 422, response.text
    causes = _causes(response)
    assert any(
        field == case.admission_field and str(case.admission_message) in message for field, message in causes
    ), causes
    for _, message in causes:
        assert not REGEX_MARKS.search(message), message


@pytest.mark.parametrize("case", [c for c in CASES if not c.admission_field], ids=lambda c: c.name)
def test_what_cel_cannot_judge_before_1_29_is_admitted_and_left_to_the_operator(
    apx: RunningEmulator, case: SemanticCase
) -> None:
    response = apply(Api(apx.url), _unique(case.build(), f"admitted-{case.name}"))
    assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_base_of_each_case_is_admitted(apx: RunningEmulator, case: SemanticCase) -> None:
    response = apply(Api(apx.url), _unique(case.base, f"base-{case.name}"))
    assert response.status_code in (200, 201), response.text


def test_a_pattern_field_is_refused_with_the_value_and_no_regex(apx: RunningEmulator) -> None:
    route = yaml.safe_load(
        """
apiVersion: apx.dev/v1alpha1
kind: Route
metadata: {name: shouting-host}
spec:
  productRef: {name: payments}
  policyRef: {name: payments-policy, version: 1.2.0}
  match: {hosts: [api.example.com, API.Example.com]}
  backend: {service: {name: svc, port: 80}}
"""
    )
    response = apply(Api(apx.url), route)
    assert response.status_code == 422
    [(field, message)] = _causes(response)
    assert field == "spec.match.hosts[1]"
    assert "'API.Example.com' must be a lowercase host name" in message
    assert not REGEX_MARKS.search(message)
