"""Structural-schema admission in isolation: the constraints and CEL features the Widget CRD does not use."""

from __future__ import annotations

from typing import Any

from e2e.kubeemu.schema import admit


def root(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": properties}}}


def messages(schema: dict[str, Any], spec: Any, old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "x"}, "spec": spec}
    _, causes = admit(obj, schema, old)
    return [(cause.field, cause.message) for cause in causes]


def test_min_items_unique_items_and_list_type_set() -> None:
    schema = root(
        a={"type": "array", "minItems": 1, "items": {"type": "string"}},
        b={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
    )
    assert messages(schema, {"a": []}) == [
        ("spec.a", "Invalid value: 0: spec.a in body should have at least 1 items")
    ]
    assert messages(schema, {"b": ["x", "x"]}) == [("spec.b[1]", 'Duplicate value: "x"')]


def test_list_type_map_keys_must_be_unique() -> None:
    schema = root(
        plans={
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        }
    )
    assert messages(schema, {"plans": [{"name": "a"}, {"name": "a"}]}) == [
        ("spec.plans[1]", 'Duplicate value: {"name": "a"}')
    ]


def test_nullable_int_or_string_and_number_bounds() -> None:
    schema = root(
        port={"x-kubernetes-int-or-string": True},
        ratio={"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        note={"type": "string", "nullable": True},
    )
    assert messages(schema, {"port": 80, "ratio": 0.5, "note": None}) == []
    assert messages(schema, {"port": "http"}) == []
    assert messages(schema, {"ratio": 1}) == [
        ("spec.ratio", "Invalid value: 1: spec.ratio in body should be less than 1")
    ]


def test_nulls_of_non_nullable_fields_are_pruned_before_defaulting() -> None:
    schema = root(mode={"type": "string", "default": "sync"})
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "x"}, "spec": {"mode": None}}
    stored, causes = admit(obj, schema, None)
    assert causes == [] and stored["spec"] == {"mode": "sync"}


def test_any_of_one_of_and_not() -> None:
    schema = root(
        value={"anyOf": [{"type": "integer"}, {"type": "string"}]},
        choice={
            "type": "object",
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        },
        word={"type": "string", "not": {"enum": ["forbidden"]}},
    )
    assert messages(schema, {"value": 1, "choice": {"a": "x"}, "word": "ok"}) == []
    fields = [
        field
        for field, _ in messages(schema, {"value": 1.5, "choice": {"a": "x", "b": "y"}, "word": "forbidden"})
    ]
    assert fields == ["spec.value", "spec.choice", "spec.word"]


def test_embedded_resources_keep_their_metadata() -> None:
    schema = root(
        template={
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }
    )
    obj = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "junk": 1,
                "spec": {"any": 1},
            }
        },
    }
    stored, causes = admit(obj, schema, None)
    assert causes == []
    assert stored["spec"]["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"any": 1},
    }


def test_cel_message_expression_reason_and_evaluation_errors() -> None:
    schema = root(
        limits={
            "type": "object",
            "properties": {"low": {"type": "integer"}, "high": {"type": "integer"}},
            "x-kubernetes-validations": [
                {
                    "rule": "self.low <= self.high",
                    "messageExpression": "'low ' + string(self.low) + ' > high'",
                },
                {
                    "rule": "self.high < 100",
                    "message": "too high",
                    "reason": "FieldValueForbidden",
                    "fieldPath": ".high",
                },
                {"rule": "self.missing == 1"},
            ],
        }
    )
    found = messages(schema, {"limits": {"low": 300, "high": 200}})
    assert ("spec.limits", 'Invalid value: "object": low 300 > high') in found
    assert ("spec.limits.high", "Forbidden: too high") in found
    error = next(message for field, message in found if "evaluating rule" in message)
    assert error == 'Invalid value: "object": no such key: missing evaluating rule: self.missing == 1'


def test_transition_rules_see_the_old_value_of_map_list_items() -> None:
    schema = root(
        plans={
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "tier": {"type": "string"}},
                "x-kubernetes-validations": [
                    {"rule": "self.tier == oldSelf.tier", "message": "tier is immutable"}
                ],
            },
        }
    )
    old = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "x"},
        "spec": {"plans": [{"name": "a", "tier": "free"}]},
    }
    assert (
        messages(schema, {"plans": [{"name": "a", "tier": "free"}, {"name": "b", "tier": "pro"}]}, old) == []
    )
    assert messages(schema, {"plans": [{"name": "a", "tier": "pro"}]}, old) == [
        ("spec.plans[0]", 'Invalid value: "object": tier is immutable')
    ]


def test_default_message_names_the_rule() -> None:
    schema = root(n={"type": "integer", "x-kubernetes-validations": [{"rule": "self > 1"}]})
    assert messages(schema, {"n": 0}) == [("spec.n", 'Invalid value: "integer": failed rule: self > 1')]


def test_cel_rules_ratchet_an_unchanged_value_and_still_judge_a_changed_one() -> None:
    # A rule added after the object was stored (or a status write beside an old spec): like the
    # real API server (validation ratcheting), an unchanged value is not judged again.
    schema = root(
        size={"type": "integer", "x-kubernetes-validations": [{"rule": "self <= 3", "message": "too big"}]},
        name={"type": "string"},
    )
    stored = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "x"}, "spec": {"size": 5, "name": "a"}}
    assert messages(schema, {"size": 5, "name": "b"}, old=stored) == []
    assert messages(schema, {"size": 6, "name": "a"}, old=stored) == [
        ("spec.size", 'Invalid value: "integer": too big')
    ]
    assert messages(schema, {"size": 5, "name": "a"}) == [("spec.size", 'Invalid value: "integer": too big')]
