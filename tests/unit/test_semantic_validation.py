"""Specs that are well-formed but mean nothing are refused by the pure path, naming field, value and rule.

The table is ``tests/semantic_cases.py`` (the emulated API checks the same
inputs at admission in ``tests/kubeemu/test_semantic_admission.py``). Here
each case goes through ``translate`` next to the valid samples, as ``apx
translate`` and the operator run it, and through the ``apx translate``
command. Also: the precedence between overlapping Routes, CORS subdomain
wildcards as Envoy matchers, that no message shows a regular expression,
and the kstatus phase of a Route waiting for an object that may still appear.
"""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from apx.controllers.models.common import PATTERN_MESSAGES
from apx.controllers.renderers.envoy.cors import Cors
from apx.controllers.renderers.envoy.route_config import order
from apx.controllers.translate import translate
from apx.operator import cli
from tests.semantic_cases import BUNDLE, CASES, ROUTE, SemanticCase

ROOT = Path(__file__).resolve().parents[2]


def _samples() -> list[dict[str, Any]]:
    return [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["kind"], f"default/{obj['metadata']['name']}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_translate_refuses_the_spec_naming_field_value_and_rule(case: SemanticCase) -> None:
    obj = case.build()
    result = translate([*_samples(), obj])
    status = result.statuses[_key(obj)]
    assert status.phase == "Stalled"
    assert status.reason == "InvalidSpec"
    assert case.translate_message in status.message.split("; "), status.message
    # The mistake stays out of what is served; everything else keeps serving.
    assert obj["metadata"]["name"] not in {r.ref.name for r in result.ir.routes}
    assert {s.phase for k, s in result.statuses.items() if k != _key(obj)} == {"Ready"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_unchanged_base_of_each_case_is_accepted(case: SemanticCase) -> None:
    # Proves the refusal comes from the edit, not from the base object.
    result = translate([*_samples(), copy.deepcopy(case.base)])
    assert result.statuses[_key(case.base)].phase == "Ready", result.statuses[_key(case.base)].message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_apx_translate_prints_the_refusal_and_exits_1(
    case: SemanticCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = tmp_path / "case.yaml"
    document.write_text(yaml.safe_dump_all([*_samples(), case.build()]))
    code = cli.main(["translate", "-o", "json", "--only", "status", "-f", str(document)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_STALLED
    assert case.translate_message in err
    assert "Traceback" not in err


def test_no_refusal_shows_a_regular_expression() -> None:
    regex_marks = re.compile(r"\^\[|\^\(|\]\+\$|\)\?\$|\\s|\{0,|\(\?:|String should match pattern")
    for case in CASES:
        obj = case.build()
        message = translate([*_samples(), obj]).statuses[_key(obj)].message
        assert not regex_marks.search(message), message
    # Every pattern a user types into has words for it, and the words are no regex.
    assert PATTERN_MESSAGES
    for words in PATTERN_MESSAGES.values():
        assert not re.search(r"\^\[|\]\+\$|\(\?:|\[\^", words), words


def test_a_pattern_refusal_from_pydantic_is_rewritten_into_what_is_allowed() -> None:
    obj = copy.deepcopy(ROUTE)
    obj["spec"]["match"]["hosts"] = ["Semantic.Example.com"]
    message = translate([*_samples(), obj]).statuses[_key(obj)].message
    assert message.startswith("spec.match.hosts[0]: 'Semantic.Example.com' must be a lowercase host name")


def test_a_host_port_up_to_65535_is_accepted() -> None:
    obj = copy.deepcopy(ROUTE)
    obj["spec"]["match"]["hosts"] = ["semantic.example.com:65535"]
    assert translate([*_samples(), obj]).statuses[_key(obj)].phase == "Ready"


def test_plain_http_jwks_is_accepted_with_the_explicit_opt_in() -> None:
    obj = copy.deepcopy(BUNDLE)
    obj["spec"]["auth"]["jwt"].update(jwksUri="http://keys.internal:8080/jwks", allowInsecureJwks=True)
    assert translate([obj]).statuses[_key(obj)].phase == "Ready"


def test_the_opt_in_field_leaves_existing_bundle_digests_unchanged() -> None:
    # A field added to the model must not change the artifact digest of bundles
    # that do not use it: the operator would see "content changed without a bump".
    result = translate(_samples())
    artifacts = {p.version: p.artifact for p in result.ir.policies}
    obj = copy.deepcopy(BUNDLE)
    obj["spec"]["auth"]["jwt"]["allowInsecureJwks"] = False
    plain = translate([copy.deepcopy(BUNDLE)]).ir.policies[0].digest
    assert translate([obj]).ir.policies[0].digest == plain
    assert all("@sha256:" in a for a in artifacts.values())


def test_cors_subdomain_wildcards_become_envoy_suffix_regexes() -> None:
    obj = copy.deepcopy(BUNDLE)
    obj["spec"]["cors"] = {"allowOrigins": ["https://*.example.com", "https://shop.example.org"]}
    policy = translate([obj]).ir.policies[0]
    packed = Cors().per_route(policy)
    assert packed is not None
    from envoy.extensions.filters.http.cors.v3 import cors_pb2

    cors = cors_pb2.CorsPolicy()
    packed.Unpack(cors)
    matchers = {m.WhichOneof("match_pattern"): m for m in cors.allow_origin_string_match}
    assert matchers["exact"].exact == "https://shop.example.org"
    pattern = matchers["safe_regex"].safe_regex.regex
    assert re.fullmatch(pattern, "https://api.example.com")
    assert re.fullmatch(pattern, "https://a.b.example.com")
    for foreign in (
        "https://example.com",
        "https://evil.com/.example.com",
        "http://api.example.com",
        "https://api.example.com.evil.com",
    ):
        assert not re.fullmatch(pattern, foreign), foreign


def _route(name: str, created: str | None, prefix: str, methods: list[str]) -> dict[str, Any]:
    obj = copy.deepcopy(ROUTE)
    obj["metadata"] = {"name": name, **({"creationTimestamp": created} if created else {})}
    obj["spec"]["match"] = {"hosts": ["overlap.example.com"], "pathPrefix": prefix, "methods": methods}
    return obj


def test_overlapping_routes_more_specific_first_then_the_older_one() -> None:
    # Same host, /v1/ inside /v1/charges, intersecting methods: Envoy tries the
    # longer prefix first; between equally specific Routes the older one.
    documents = [
        _route("a-newer", "2026-02-01T00:00:00Z", "/v1/", ["GET", "POST"]),
        _route("b-older", "2026-01-01T00:00:00Z", "/v1/", ["POST", "PUT"]),
        _route("c-specific", "2026-03-01T00:00:00Z", "/v1/charges", ["POST"]),
    ]
    result = translate([*_samples(), *documents])
    overlapping = [r for r in result.ir.routes if "overlap.example.com" in r.match.hosts]
    assert [r.ref.name for r in sorted(overlapping, key=order)] == ["c-specific", "b-older", "a-newer"]
    # Without creationTimestamp (offline input), namespace/name decides, the same in both places.
    for document in documents:
        document["metadata"].pop("creationTimestamp")
    offline = [
        r for r in translate([*_samples(), *documents]).ir.routes if "overlap.example.com" in r.match.hosts
    ]
    assert [r.ref.name for r in sorted(offline, key=order)] == ["c-specific", "a-newer", "b-older"]


def test_identical_matches_go_to_the_older_route_by_creation_timestamp_not_by_name() -> None:
    older = _route("z-older", "2026-01-01T00:00:00Z", "/v1/", ["GET"])
    newer = _route("a-newer", "2026-02-01T00:00:00Z", "/v1/", ["GET"])
    result = translate([*_samples(), newer, older])
    assert result.statuses[_key(older)].phase == "Ready"
    loser = result.statuses[_key(newer)]
    assert loser.phase == "Stalled" and loser.reason == "MatchConflict"
    assert "default/z-older" in loser.message


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ((("spec", "productRef", "name"), "not-yet"), "ProductNotFound"),
        ((("spec", "policyRef", "name"), "not-yet"), "PolicyNotFound"),
        ((("spec", "policyRef", "version"), "9.0.0"), "PolicyVersionNotServed"),
    ],
)
def test_a_route_waiting_for_an_object_that_may_still_appear_is_reconciling_not_stalled(
    edit: tuple[tuple[str, ...], str], reason: str
) -> None:
    obj = copy.deepcopy(ROUTE)
    path, value = edit
    target: Any = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    status = translate([*_samples(), obj]).statuses[_key(obj)]
    assert (status.phase, status.reason) == ("Reconciling", reason)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status.to_dict()["conditions"]}
    assert conditions["Stalled"][0] == "False"
    assert conditions["Ready"] == ("False", reason)
    assert conditions["Reconciling"] == ("True", reason)


# --- `apx translate` on hostile input: exit 2, one line, no traceback ---------------------------------


def _bomb() -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, bytes] = {
    "deeply-nested-flow": ("a: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "deeply-nested-block": "".join(" " * i + f"k{i}:\n" for i in range(300)).encode(),
    "binary": bytes(range(256)) * 16,
    "nul-character": b"kind: Route\x00\n",
    "alias-bomb": _bomb().encode(),
    "self-referencing-alias": b"a: &x [*x]\n",
    "unhashable-key": b"? [1, 2]\n: 3\n",
    "not-yaml": b"kind: [unclosed\n",
    "metadata-is-a-list": b"apiVersion: apx.dev/v1alpha1\nkind: Route\nmetadata: [1]\nspec: 3\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_exits_2_with_one_line_and_no_traceback(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.yaml"
    path.write_bytes(HOSTILE[name])
    code = cli.main(["translate", "-o", "json", "-f", str(path)])
    captured = capsys.readouterr()
    assert code == cli.EXIT_UNREADABLE
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_huge_input_is_refused_before_it_is_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("apx.operator.yaml_input.MAX_SOURCE_BYTES", 1024)
    path = tmp_path / "huge.yaml"
    path.write_text("a: " + "x" * 2048 + "\n")
    assert cli.main(["translate", "-f", str(path)]) == cli.EXIT_UNREADABLE
    assert "larger than" in capsys.readouterr().err


def test_unreadable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("a: 1\n")

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    assert cli.main(["translate", "-f", str(path)]) == cli.EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert err.strip() == f"error: {path}: Permission denied"


def test_binary_stdin_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00binary"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    assert cli.main(["translate", "-f", "-"]) == cli.EXIT_UNREADABLE
    assert capsys.readouterr().err.strip() == "error: <stdin>: not UTF-8 text (is it a binary file?)"


def test_status_output_of_hostile_free_input_is_still_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(BUNDLE))
    assert cli.main(["translate", "-o", "json", "--only", "status", "-f", str(path)]) == cli.EXIT_READY
    assert json.loads(capsys.readouterr().out)


def test_yaml_output_of_the_samples_is_written_without_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["translate", "-f", str(ROOT / "samples")]) == cli.EXIT_READY
    captured = capsys.readouterr()
    output = yaml.safe_load(captured.out)
    assert set(output) == {"envoy", "redis", "pubsub", "kubernetes", "status"}
    assert "Traceback" not in captured.err


def test_no_crd_field_is_checked_by_a_pattern_that_would_print_its_regex() -> None:
    from apx.controllers import crdgen

    def patterns(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = [path] if "pattern" in node else []
            return found + [p for key, child in node.items() for p in patterns(child, f"{path}.{key}")]
        if isinstance(node, list):
            return [p for index, child in enumerate(node) for p in patterns(child, f"{path}[{index}]")]
        return []

    for kind, crd in crdgen.build_all().items():
        assert patterns(crd, kind) == []
        text = json.dumps(crd)
        for message in re.findall(r'"message": "((?:[^"\\]|\\.)*)"', text):
            assert not re.search(r"\^\[|\]\+\$|\(\?:", message), message


def test_translate_yaml_output_writes_shared_parts_out_not_as_aliases(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The Pub/Sub plan shares its storage and retry policies between documents; YAML would
    # write the second and later ones as ``*id001`` aliases, which people cannot read.
    case = ROOT / "tests" / "golden" / "pubsub" / "eu-async-route" / "input.yaml"
    assert cli.main(["translate", "--only", "pubsub", "-f", str(case)]) == cli.EXIT_READY
    out = capsys.readouterr().out
    assert "message_storage_policy" in out
    assert "&id" not in out and "*id" not in out
