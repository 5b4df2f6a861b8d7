"""Generated CRDs: in sync with the models, structural, valid apiextensions v1, admitting the right objects.

There is no real kube-apiserver on these machines, so the API server's own
checks are reproduced here: the structural-schema rules (``structural_problems``),
the apiextensions.k8s.io/v1 OpenAPI schema of a CRD (``kubernetes_validate``),
and object validation with strict field validation (``kubectl``'s default since
1.27: unknown fields are errors), emulated with ``jsonschema`` by closing every
object that does not preserve unknown fields.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from apx.controllers import celcheck, crdgen
from apx.controllers.models.resources import RESOURCE_MODELS

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
SAMPLES = ROOT / "samples"
KINDS = sorted(RESOURCE_MODELS)

Node = dict[str, Any]


def openapi_schema(crd: Node) -> Node:
    schema: Node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{*}}")


def structural_problems(schema: Node) -> list[str]:
    """Why ``schema`` is not a structural schema the API server accepts (empty when it is).

    Stricter than the API server in one way: logical junctors (anyOf, allOf,
    oneOf, not) are refused outright, since the generator never needs them.
    """
    problems = []
    for path, node in walk(schema):
        where = path or "<root>"
        for keyword in ("$ref", "$defs", "definitions", "title", "anyOf", "oneOf", "allOf", "not", "const"):
            if keyword in node:
                problems.append(f"{where}: has {keyword}")
        open_node = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        if not node.get("type") and not open_node:
            problems.append(f"{where}: has no type")
        if node.get("x-kubernetes-preserve-unknown-fields") is False:
            problems.append(f"{where}: x-kubernetes-preserve-unknown-fields: false says nothing")
        extra = node.get("additionalProperties")
        if extra is not None and not isinstance(extra, dict):
            problems.append(f"{where}: additionalProperties: {extra}")
        if isinstance(extra, dict) and "properties" in node:
            problems.append(f"{where}: additionalProperties next to properties")
        if "default" in node and node["default"] is None:
            problems.append(f"{where}: default: null")
        if "nullable" in node:
            problems.append(f"{where}: nullable (not needed by any model)")
        if node.get("uniqueItems"):
            problems.append(f"{where}: uniqueItems")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{where}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node["items"].get("required", []))
            for key in node.get("x-kubernetes-list-map-keys", []):
                item_property = node["items"].get("properties", {}).get(key, {})
                if key not in required and "default" not in item_property:
                    problems.append(f"{where}: list-map key {key!r} is neither required nor defaulted")
    metadata = schema.get("properties", {}).get("metadata")
    if metadata is not None and metadata != {"type": "object"}:
        problems.append("metadata: only `type: object` is allowed at the root")
    return problems


def closed(schema: Node) -> Node:
    """``schema`` with unknown fields refused where the API server refuses them (strict field validation)."""
    result = copy.deepcopy(schema)
    for _, node in walk(result):
        is_object = node.get("type") == "object" and "properties" in node
        if is_object and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    return result


def schema_errors(crd: Node, obj: Node) -> list[str]:
    validator = jsonschema.Draft4Validator(closed(openapi_schema(crd)))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def admission_errors(crd: Node, obj: Node) -> list[str]:
    """Everything the API server would refuse on create: schema, list keys, CEL (after defaulting)."""
    schema = openapi_schema(crd)
    errors = schema_errors(crd, obj)
    errors += [str(v) for v in celcheck.list_key_violations(schema, obj)]
    errors += [str(v) for v in celcheck.validate(schema, obj)]
    return errors


@pytest.fixture(scope="module")
def crds() -> dict[str, Node]:
    return crdgen.build_all()


# --- in sync with the models -------------------------------------------------------------------------


def test_committed_crds_equal_what_the_models_generate_now() -> None:
    expected = crdgen.render_all()
    committed = {path.name: path.read_text(encoding="utf-8") for path in CRDS.glob("apx.dev_*.yaml")}
    assert sorted(committed) == sorted(expected), (
        f"crds/ holds {sorted(committed)} but the models define {sorted(expected)}: run `make gen`"
    )
    for name, text in expected.items():
        if committed[name] != text:
            diff = "".join(
                difflib.unified_diff(
                    committed[name].splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"crds/{name} (committed)",
                    f"crds/{name} (from the models)",
                    n=2,
                )
            )
            pytest.fail(
                f"crds/{name} is out of date with apx/controllers/models: run `make gen`\n{diff[:4000]}"
            )


def test_rendering_is_deterministic_and_round_trips(crds: dict[str, Node]) -> None:
    for crd in crds.values():
        text = crdgen.render_yaml(crd)
        assert text == crdgen.render_yaml(crdgen.build_crd(crd["spec"]["names"]["kind"]))
        assert text.startswith("# Generated by `make gen` from apx/controllers/models — do not edit.\n")
        assert "&id" not in text and "*id" not in text, "YAML anchors/aliases in a CRD"
        assert yaml.safe_load(text) == crd


def test_main_writes_every_crd_under_the_given_root_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "apx.dev_widgets.yaml").write_text("stale")
    (tmp_path / "crds" / "README.md").write_text("kept")
    assert crdgen.main([str(tmp_path)]) == 0
    written = {path.name: path.read_text(encoding="utf-8") for path in (tmp_path / "crds").glob("*.yaml")}
    assert written == crdgen.render_all()
    assert (tmp_path / "crds" / "README.md").read_text() == "kept"


# --- accepted by the API server ----------------------------------------------------------------------


def test_structural_checker_rejects_non_structural_schemas() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "b": {"$ref": "#/$defs/B"},
            "c": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False},
            "d": {"type": "string", "title": "D", "default": None},
            "e": {"type": "array"},
        },
    }
    problems = "\n".join(structural_problems(bad))
    for expected in (
        "a: has anyOf",
        "a: has no type",
        "b: has $ref",
        "c: additionalProperties: False",
        "d: has title",
        "d: default: null",
        "e: array without items",
    ):
        assert expected in problems


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(crds: dict[str, Node], kind: str) -> None:
    assert structural_problems(openapi_schema(crds[kind])) == []


@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_apiextensions_v1_object(crds: dict[str, Node], kind: str) -> None:
    # kubernetes_validate ships the API server's OpenAPI schema of
    # CustomResourceDefinition; strict mode refuses unknown keywords anywhere in
    # the nested JSONSchemaProps, so a typo such as `x-kubernetes-validation` fails.
    kubernetes_validate.validate(crds[kind], "1.30", strict=True)
    broken = copy.deepcopy(crds[kind])
    openapi_schema(broken)["properties"]["spec"]["maxLenght"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


@pytest.mark.parametrize("kind", KINDS)
def test_every_default_validates_against_its_own_schema(crds: dict[str, Node], kind: str) -> None:
    # The API server refuses a CRD whose defaults do not validate (after pruning).
    for path, node in walk(openapi_schema(crds[kind])):
        if "default" in node:
            without_default = {key: value for key, value in node.items() if key != "default"}
            errors = list(jsonschema.Draft4Validator(closed(without_default)).iter_errors(node["default"]))
            assert not errors, f"{path}: default {node['default']!r}: {errors[0].message}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_field_path_and_self_field_exist_on_the_rule_s_object(
    crds: dict[str, Node], kind: str
) -> None:
    # A rule on the wrong object would read fields that are not there; the API
    # server also refuses a fieldPath that names no field.
    for path, node in walk(openapi_schema(crds[kind])):
        for rule in node.get("x-kubernetes-validations", []):
            properties = node.get("properties", {})
            # `self.matches(...)` is a method call on a string, not a field.
            for name in re.findall(r"\bself\.(\w+)\b(?!\()", rule["rule"]):
                assert name in properties, f"{path}: rule reads self.{name}, which {path} does not have"
            field_path = rule.get("fieldPath")
            if field_path:
                target = node
                for step in field_path.lstrip(".").split("."):
                    assert step in target.get("properties", {}), (
                        f"{path}: fieldPath {field_path} names no field"
                    )
                    target = target["properties"][step]


# --- names, columns, shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_names_scope_and_version(crds: dict[str, Node], kind: str) -> None:
    crd, envelope = crds[kind], RESOURCE_MODELS[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{envelope.plural}.apx.dev"
    assert spec["group"] == "apx.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": envelope.plural,
        "singular": envelope.singular,
        "shortNames": list(envelope.short_names),
        "categories": ["apx"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert crdgen.file_name(crd) == f"apx.dev_{envelope.plural}.yaml"


def test_printer_columns_per_kind(crds: dict[str, Node]) -> None:
    # The default `kubectl get` columns (priority 0); tests/unit/test_printer_columns.py
    # covers the `-o wide` ones.
    def columns(kind: str) -> list[tuple[str, str, str]]:
        version = crds[kind]["spec"]["versions"][0]
        return [
            (c["name"], c["type"], c["jsonPath"])
            for c in version["additionalPrinterColumns"]
            if not c.get("priority")
        ]

    ready = ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status')
    reason = ("Reason", "string", ".status.reason")
    age = ("Age", "date", ".metadata.creationTimestamp")
    assert columns("Product") == [ready, reason, ("Residency", "string", ".spec.residency"), age]
    assert columns("Route") == [
        ready,
        reason,
        ("Canary %", "integer", ".status.canaryWeight"),
        ("Version", "string", ".spec.policyRef.version"),
        age,
    ]
    assert columns("PolicyBundle") == [ready, reason, ("Version", "string", ".spec.version"), age]


@pytest.mark.parametrize("kind", KINDS)
def test_every_printer_column_points_at_a_declared_field(crds: dict[str, Node], kind: str) -> None:
    schema = openapi_schema(crds[kind])
    for column in crds[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = schema
        for step in re.sub(r"\[\?.*?\]", "", column["jsonPath"]).strip(".").split("."):
            node = node.get("items", node)
            assert step in node.get("properties", {}), (
                f"{column['name']}: {column['jsonPath']} is not declared"
            )
            node = node["properties"][step]
        if column["type"] == "integer":
            assert node["type"] == "integer"


@pytest.mark.parametrize("kind", KINDS)
def test_spec_is_required_and_status_declares_fields_and_kopf_storage(
    crds: dict[str, Node], kind: str
) -> None:
    schema = openapi_schema(crds[kind])
    assert schema["required"] == ["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in schema
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["spec"]
    status = schema["properties"]["status"]
    assert {"observedGeneration", "conditions", "message", "reason"} <= set(status["properties"])
    assert status["properties"]["kopf"] == {
        "type": "object",
        "description": status["properties"]["kopf"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_property_names_are_the_yaml_aliases(crds: dict[str, Node], kind: str) -> None:
    for path, node in walk(openapi_schema(crds[kind])):
        for name in node.get("properties", {}):
            assert "_" not in name, f"{path}.{name}: a Python field name leaked into the CRD"


def test_route_async_block_uses_its_alias(crds: dict[str, Node]) -> None:
    spec = openapi_schema(crds["Route"])["properties"]["spec"]
    assert "async" in spec["properties"] and "async_" not in spec["properties"]
    assert spec["properties"]["async"]["x-kubernetes-validations"][0]["fieldPath"] == ".maximumBackoff"


def test_factory_defaults_are_concrete_and_object_defaults_are_left_to_the_models(
    crds: dict[str, Node],
) -> None:
    route_spec = openapi_schema(crds["Route"])["properties"]["spec"]["properties"]
    assert route_spec["canary"]["properties"]["steps"]["default"] == [10, 25, 50, 100]
    assert route_spec["retries"]["properties"]["retryOn"]["default"] == ["5xx", "reset", "connect-failure"]
    assert route_spec["match"]["properties"]["headers"]["default"] == []
    assert route_spec["timeout"]["default"] == "30s"
    for name in ("retries", "async", "canary", "worker"):
        assert "default" not in route_spec[name]
    product_spec = openapi_schema(crds["Product"])["properties"]["spec"]["properties"]
    assert product_spec["tenants"]["default"] == []
    assert "default" not in product_spec["observability"]


def test_extra_allow_models_and_free_form_dicts_preserve_unknown_fields(crds: dict[str, Node]) -> None:
    status = openapi_schema(crds["PolicyBundle"])["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    served = status["properties"]["servedVersions"]["items"]
    assert served["x-kubernetes-preserve-unknown-fields"] is True
    assert served["properties"]["spec"] == {
        "type": "object",
        "description": served["properties"]["spec"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert status["properties"]["conditions"]["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_tenant_ids_are_unique_through_a_list_map(crds: dict[str, Node]) -> None:
    tenants = openapi_schema(crds["Product"])["properties"]["spec"]["properties"]["tenants"]
    assert tenants["x-kubernetes-list-type"] == "map"
    assert tenants["x-kubernetes-list-map-keys"] == ["id"]


def test_optional_fields_are_plain_types_without_nulls(crds: dict[str, Node]) -> None:
    spec = openapi_schema(crds["Route"])["properties"]["spec"]["properties"]
    assert spec["canary"]["type"] == "object"
    assert spec["canary"]["properties"]["policyVersion"]["type"] == "string"
    assert spec["canary"]["properties"]["policyVersion"]["maxLength"] == 64
    # The field's own description wins over the referenced type's.
    assert spec["canary"]["properties"]["policyVersion"]["description"].startswith("New PolicyBundle version")


def test_generator_refuses_what_a_structural_schema_cannot_say() -> None:
    from pydantic import BaseModel

    class Union(BaseModel):
        value: int | str

    with pytest.raises(crdgen.CrdGenerationError, match="anyOf"):
        crdgen._model_schema(Union, "spec")

    class WithSet(BaseModel):
        values: set[str]

    with pytest.raises(crdgen.CrdGenerationError, match="uniqueItems"):
        crdgen._model_schema(WithSet, "spec")


# --- objects: accepted and refused ---------------------------------------------------------------------

VALID: dict[str, Node] = {
    "Product": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Product",
        "metadata": {"name": "payments", "namespace": "shop", "labels": {"team": "pay"}},
        "spec": {
            "displayName": "Payments API",
            "residency": "EU",
            "regions": ["europe-west1", "europe-north1"],
            "defaultPlan": "free",
            "plans": [
                {"name": "free", "tier": "free", "rateLimit": {"requestsPerSecond": 5, "burst": 10}},
                {
                    "name": "pro",
                    "tier": "pro",
                    "rateLimit": {"requestsPerSecond": 100},
                    "apiKeyRateLimit": {"requestsPerSecond": 20, "burst": 20},
                    "quota": {"requests": 1_000_000, "period": "month"},
                    "concurrency": 50,
                    "isolation": "dedicated",
                    "credits": {"costPerRequest": 2},
                },
            ],
            "tenants": [{"id": "acme", "plan": "pro", "region": "europe-west1"}],
            "observability": {"logSampleRate": 0.5},
            "deletionPolicy": "Delete",
        },
        "status": {
            "observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "seenBy": "x"}],
            "reason": "Reconciled",
            "plans": ["free", "pro"],
            "kopf": {"progress": {"create": {"retries": 1}}},
            "fieldAddedByANewerOperator": {"any": "thing"},
        },
    },
    "Route": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": "payments-async"},
        "spec": {
            "productRef": {"name": "payments"},
            "policyRef": {"name": "payments-policy", "version": "1.3.0"},
            "match": {
                "hosts": ["api.example.com", "*.example.eu"],
                "pathPrefix": "/v1/charges",
                "methods": ["POST"],
                "headers": [{"name": "x-tenant", "exact": "acme"}, {"name": "x-debug", "present": False}],
            },
            "mode": "async",
            "backend": {"service": {"name": "charges", "port": 8080}},
            "worker": {
                "image": "registry.example.com/charges:1.2.0",
                "resources": {"limits": {"cpu": "500m"}},
            },
            "timeout": "45s",
            "retries": {"attempts": 3, "retryOn": ["5xx"], "backoff": {"baseInterval": "50ms"}},
            "async": {"minimumBackoff": "10s", "maximumBackoff": "1m30s", "ordering": False},
            "canary": {
                "worker": {"image": "registry.example.com/charges:1.3.0"},
                "policyVersion": "1.4.0",
                "steps": [5, 50, 100],
                "analysis": {"minSuccessRate": 0.995, "maxLatencyRatio": 2},
            },
        },
        "status": {
            "canaryWeight": 5,
            "canary": {"phase": "Progressing", "weight": 5, "lastDecision": {"result": "advance"}},
            "topics": ["apx.shop.payments.europe-west1"],
            "kopf": {},
        },
    },
    "PolicyBundle": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "PolicyBundle",
        "metadata": {"name": "payments-policy"},
        "spec": {
            "version": "1.3.0",
            "compat": "backward",
            "auth": {
                "jwt": {"issuer": "https://id.example.com", "jwksUri": "https://id.example.com/jwks"},
                "apiKey": {"header": "x-api-key"},
            },
            "authz": {
                "rules": [
                    {"name": "charges", "methods": ["POST"], "paths": ["/v1/charges"], "scopes": ["pay"]}
                ]
            },
            "headers": {"request": {"set": [{"name": "x-env", "value": "prod"}], "remove": ["x-debug"]}},
            "cors": {"allowOrigins": ["https://shop.example.com"], "allowCredentials": True},
            "ipAllowlist": ["10.0.0.0/8", "2001:db8::/32"],
            "rateLimit": {"algorithm": "token-bucket", "failureMode": "closed"},
            "observability": {"sampleRate": 0.1, "piiFields": ["card.number"]},
        },
        "status": {
            "artifact": "payments-policy@1.3.0@sha256:abc",
            "servedVersions": [
                {"version": "1.3.0", "digest": "sha256:abc", "artifact": "a", "spec": {"version": "1.3.0"}}
            ],
        },
    },
}

UNKNOWN_FIELDS: dict[str, list[tuple[str, ...]]] = {
    "Product": [("bogus",), ("spec", "bogus"), ("spec", "plans", 0, "rateLimit", "bogus")],
    "Route": [
        ("spec", "retries", "bogus"),
        ("spec", "match", "headers", 0, "bogus"),
        ("spec", "canary", "bogus"),
    ],
    "PolicyBundle": [
        ("spec", "auth", "jwt", "bogus"),
        ("spec", "cors", "bogus"),
        ("spec", "authz", "rules", 0, "x"),
    ],
}


def _set(obj: Any, path: tuple[str | int, ...], value: Any) -> None:
    for step in path[:-1]:
        obj = obj[step]
    obj[path[-1]] = value


@pytest.mark.parametrize("kind", KINDS)
def test_valid_object_is_admitted_and_parses(crds: dict[str, Node], kind: str) -> None:
    assert admission_errors(crds[kind], VALID[kind]) == []
    RESOURCE_MODELS[kind].model_validate(VALID[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_spec_fields_are_refused_and_unknown_status_fields_kept(
    crds: dict[str, Node], kind: str
) -> None:
    for path in UNKNOWN_FIELDS[kind]:
        obj = copy.deepcopy(VALID[kind])
        _set(obj, path, "surprise")
        errors = schema_errors(crds[kind], obj)
        assert any("'bogus' was unexpected" in e or "'x' was unexpected" in e for e in errors), (path, errors)
    obj = copy.deepcopy(VALID[kind])
    obj["status"]["somethingNew"] = {"deep": [1, 2]}
    obj["status"]["kopf"] = {"progress": {"handler/one": {"started": "now"}}}
    assert schema_errors(crds[kind], obj) == []


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("Product", ("spec", "plans"), [], "should be non-empty"),
        ("Product", ("spec", "plans", 0, "tier"), "gold", "is not one of"),
        ("Route", ("spec", "canary", "steps"), [10, 101], "is greater than the maximum"),
        ("Route", ("spec", "async", "maxDeliveryAttempts"), 4, "is less than the minimum"),
        # Durations, regions, versions and ipAllowlist items are checked by CEL rules that say
        # what is allowed (tests/unit/test_cel_rules.py), not by patterns that print a regex.
    ],
)
def test_schema_constraints_from_the_models_are_enforced(
    crds: dict[str, Node], kind: str, path: tuple[str | int, ...], value: Any, expected: str
) -> None:
    obj = copy.deepcopy(VALID[kind])
    _set(obj, path, value)
    errors = schema_errors(crds[kind], obj)
    assert any(expected in e for e in errors), errors


def test_missing_spec_is_refused(crds: dict[str, Node]) -> None:
    obj = {key: value for key, value in VALID["Product"].items() if key != "spec"}
    assert any("'spec' is a required property" in e for e in schema_errors(crds["Product"], obj))


def _sample_documents() -> list[tuple[str, Node]]:
    documents = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") in RESOURCE_MODELS:
                documents.append((f"{path.name}:{document['metadata']['name']}", document))
    return documents


SAMPLE_DOCUMENTS = _sample_documents()


@pytest.mark.skipif(not SAMPLE_DOCUMENTS, reason="no samples/*.yaml yet")
@pytest.mark.parametrize(
    "document", [d for _, d in SAMPLE_DOCUMENTS] or [{}], ids=[n for n, _ in SAMPLE_DOCUMENTS] or ["none"]
)
def test_every_valid_sample_would_be_admitted(crds: dict[str, Node], document: Node) -> None:
    assert admission_errors(crds[document["kind"]], document) == []


def test_generator_translates_newer_json_schema_keywords_to_openapi_v3() -> None:
    from pydantic import BaseModel, Field

    class Model(BaseModel):
        ratio: float = Field(gt=0, lt=1, examples=[0.5, 0.9])
        names: list[str] = Field(default_factory=lambda: ["a"])

    schema = crdgen._model_schema(Model, "spec")
    assert schema["properties"]["ratio"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
        "example": 0.5,
    }
    assert schema["properties"]["names"]["default"] == ["a"]
    assert structural_problems(schema) == []
