"""Label and field selectors of list and watch requests.

Parses ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x,y)``, ``a``, ``!a``, ``a>1``, ``a<1``; comma-separated, all must
hold) and ``fieldSelector`` (``path=value``, ``path==value``,
``path!=value``). The real API server accepts only a few field paths per kind
(``metadata.name`` and ``metadata.namespace`` everywhere); the emulator accepts
any dotted path, which is a superset (``kubectl describe`` needs
``involvedObject.*`` on Events). Called by :mod:`.store` and :mod:`.emulator`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import bad_request

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SET_EXPR = re.compile(r"^\s*(!?)\s*([^\s!=<>()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP_EXPR = re.compile(r"^\s*([^\s!=<>()]+)\s*(==|=|!=|<|>)\s*([^\s,()]*)\s*$")
_EXISTS_EXPR = re.compile(r"^\s*(!?)\s*([^\s!=<>()]+)\s*$")


@attrs.frozen
class Requirement:
    """One clause of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return present
            case "!":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case ">" | "<":
                try:
                    number = int(value or "")
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op == ">" else number < bound
        raise AssertionError(f"unknown operator {self.op!r}")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )`` of a set expression."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _check_key(key: str, selector: str) -> None:
    if not _LABEL_KEY.match(key):
        raise bad_request(f'unable to parse requirement: invalid label key "{key}" in selector "{selector}"')


@attrs.frozen
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse the string form; raise a 400 ``ApiError`` if it is malformed."""
        if not text:
            return cls()
        reqs: list[Requirement] = []
        for clause in _split_top_level(text):
            reqs.append(cls._parse_clause(clause, text))
        return cls(tuple(reqs))

    @staticmethod
    def _parse_clause(clause: str, text: str) -> Requirement:
        if match := _SET_EXPR.match(clause):
            negated, key, op, raw_values = match.groups()
            if negated:
                raise bad_request(f'unable to parse requirement: "{clause.strip()}" in selector "{text}"')
            _check_key(key, text)
            values = tuple(value.strip() for value in raw_values.split(",") if value.strip())
            return Requirement(key, op, values)
        if match := _CMP_EXPR.match(clause):
            key, op, value = match.groups()
            _check_key(key, text)
            if op in "<>":
                try:
                    int(value)
                except ValueError:
                    raise bad_request(
                        f'unable to parse requirement: for "{op}" operator, the value must be an integer'
                        f' in selector "{text}"'
                    ) from None
            return Requirement(key, "=" if op == "==" else op, (value,))
        if match := _EXISTS_EXPR.match(clause):
            negated, key = match.groups()
            _check_key(key, text)
            return Requirement(key, "!" if negated else "exists")
        raise bad_request(f'unable to parse requirement: "{clause.strip()}" in selector "{text}"')

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req.matches(labels) for req in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@attrs.frozen
class FieldSelector:
    clauses: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if not text:
            return cls()
        clauses: list[tuple[str, bool, str]] = []
        for clause in text.split(","):
            if not clause.strip():
                continue
            if "!=" in clause:
                path, value = clause.split("!=", 1)
                clauses.append((path.strip(), False, value.strip()))
            elif "==" in clause:
                path, value = clause.split("==", 1)
                clauses.append((path.strip(), True, value.strip()))
            elif "=" in clause:
                path, value = clause.split("=", 1)
                clauses.append((path.strip(), True, value.strip()))
            else:
                raise bad_request(f'invalid selector: "{text}"; can\'t understand "{clause}"')
        return cls(tuple(clauses))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.clauses:
            actual = _field_value(obj, path)
            # The real server compares metadata.namespace of cluster objects as "".
            actual = "" if actual is None else actual
            if (actual == value) != equal:
                return False
        return True

    def exact(self, path: str) -> str | None:
        """The value required by a ``path=value`` clause, if there is one."""
        for clause_path, equal, value in self.clauses:
            if clause_path == path and equal:
                return value
        return None

    def __bool__(self) -> bool:
        return bool(self.clauses)


__all__ = ["FieldSelector", "LabelSelector", "Requirement"]
