"""Server-side ``Table`` rendering for ``kubectl get`` (``Accept: ...;as=Table``).

kubectl asks the server for tables; the emulator answers with a
``meta.k8s.io/v1 Table``: ``Name`` plus the CRD's ``additionalPrinterColumns``
(evaluated with a JSONPath subset: ``.a.b``, ``['k']``, ``[0]``, ``[*]`` and
``[?(@.f=="v")]`` filters), the usual columns of built-in kinds
(:mod:`.printers`), or ``Age`` for other kinds.
Columns of type ``date`` are rendered as ages (``5m``), as the real server
does. Called by :mod:`.emulator` for get, list and watch responses.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from . import printers
from .registry import Kind

_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z0-9_\-/]+)
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-/]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\]]+)\)\]
      | \[(?P<index>-?\d+|\*)\]
      | \['(?P<key>[^']*)'\]
    """,
    re.VERBOSE,
)


def _walk(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def jsonpath(obj: Any, expression: str) -> list[Any]:
    """Evaluate the JSONPath subset used by printer columns; all matches in order."""
    expression = expression.strip()
    if expression.startswith("{") and expression.endswith("}"):
        expression = expression[1:-1]
    expression = expression.lstrip("$")
    nodes: list[Any] = [obj]
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            return []
        position = match.end()
        found: list[Any] = []
        for node in nodes:
            if match.group("name") is not None or match.group("key") is not None:
                key = match.group("name") if match.group("name") is not None else match.group("key")
                if isinstance(node, dict) and key in node:
                    found.append(node[key])
            elif match.group("index") is not None:
                if not isinstance(node, list):
                    continue
                if match.group("index") == "*":
                    found.extend(node)
                else:
                    index = int(match.group("index"))
                    if -len(node) <= index < len(node):
                        found.append(node[index])
            else:
                wanted = match.group("fval").strip().strip("\"'")
                equal = match.group("fop") == "=="
                for item in node if isinstance(node, list) else []:
                    actual = _walk(item, match.group("fpath"))
                    shown = str(actual).lower() if isinstance(actual, bool) else str(actual)
                    if actual is not None and (shown == wanted) == equal:
                        found.append(item)
        nodes = found
    return nodes


def human_age(timestamp: str, now: datetime.datetime) -> str:
    """kubectl's HumanDuration of the time since ``timestamp``."""
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<unknown>"
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time "
    "when this object was created.",
    "priority": 0,
    "jsonPath": ".metadata.creationTimestamp",
}


def _jsonpath_cell(column: dict[str, Any]) -> printers.Cell:
    def cell(obj: dict[str, Any], now: datetime.datetime) -> Any:
        if column is _NAME_COLUMN:
            return (obj.get("metadata") or {}).get("name", "")
        found = jsonpath(obj, str(column.get("jsonPath", "")))
        if not found or found[0] is None:
            return None
        value = found[0]
        match column.get("type"):
            case "date":
                return human_age(str(value), now)
            case "integer" | "number" | "boolean":
                return value
        if isinstance(value, str):
            return value
        return str(value).lower() if isinstance(value, bool) else str(value)

    return cell


def _columns(kind: Kind) -> list[tuple[dict[str, Any], printers.Cell]]:
    """Each column's definition and the function computing its cell."""
    if not kind.printer_columns and kind.crd is None:
        builtin = printers.builtin_columns(kind.group, kind.plural, human_age)
        if builtin is not None:
            return [(column.definition(), column.cell) for column in builtin]
    columns = [_NAME_COLUMN, *kind.printer_columns] if kind.printer_columns else [_NAME_COLUMN, _AGE_COLUMN]
    return [
        (
            {key: column.get(key, "") for key in ("name", "type", "format", "description")}
            | {"priority": int(str(column.get("priority", 0)))},
            _jsonpath_cell(column),
        )
        for column in columns
    ]


def table(
    kind: Kind,
    objects: list[dict[str, Any]],
    *,
    resource_version: str | None,
    now: datetime.datetime,
    continue_token: str | None = None,
    remaining: int | None = None,
    with_columns: bool = True,
) -> dict[str, Any]:
    columns = _columns(kind)
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
        metadata["remainingItemCount"] = remaining
    result: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
    if with_columns:
        result["columnDefinitions"] = [definition for definition, _ in columns]
    result["rows"] = [{"cells": [cell(obj, now) for _, cell in columns], "object": obj} for obj in objects]
    return result
