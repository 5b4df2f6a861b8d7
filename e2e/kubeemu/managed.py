"""``metadata.managedFields`` bookkeeping for server-side apply and updates.

A simplified version of the real server's field ownership: every manager's
entry records the set of leaf paths it owns (``fieldsV1``). Maps are followed
key by key; lists and scalars are leaves (lists are owned atomically, as with
``x-kubernetes-list-type: atomic``; merge-by-key list ownership is not
modelled). What this buys: when a manager re-applies a configuration without a
field it applied before, the field is removed unless another manager owns it;
when a write changes a field, its ownership moves to the writer (other
entries lose it); setting a field to the value it already has shares it.
Conflicts between managers are never reported: every apply behaves as if
``force=true`` (the ``force`` parameter is accepted and has no effect). Called by :mod:`.store`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Path = tuple[str, ...]

# Identity and server-owned metadata is never part of a manager's field set.
_IGNORED_ROOT = {"apiVersion", "kind"}
_IGNORED_META = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
}


def _leaves(value: Any, prefix: Path) -> Iterable[Path]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*prefix, key))
    else:
        yield prefix


def fields_of(obj: dict[str, Any], subresource: str | None = None) -> set[Path]:
    """The leaf paths an applied configuration (or an object) sets."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in _IGNORED_ROOT:
            continue
        if subresource == "status" and key != "status":
            continue
        if key == "metadata" and isinstance(value, dict):
            for meta_key, meta_value in value.items():
                if meta_key not in _IGNORED_META:
                    paths.update(_leaves(meta_value, ("metadata", meta_key)))
        else:
            paths.update(_leaves(value, (key,)))
    return paths


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> set[Path]:
    """Leaf paths whose values differ between two objects (added, changed, removed)."""
    return {path for path in fields_of(old) | fields_of(new) if _get(old, path) != _get(new, path)}


_MISSING = object()


def _get(obj: Any, path: Path) -> Any:
    node = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Any, prefix: Path = ()) -> set[Path]:
    if not isinstance(tree, dict):
        return set()
    children = {key: value for key, value in tree.items() if key.startswith("f:")}
    if not children:
        return {prefix} if prefix else set()
    paths: set[Path] = set()
    for key, value in children.items():
        paths |= from_fields_v1(value, (*prefix, key[2:]))
    return paths


def _overlaps(path: Path, owned: set[Path]) -> bool:
    return any(path[: len(other)] == other or other[: len(path)] == path for other in owned)


def remove_path(obj: dict[str, Any], path: Path, keep: set[Path]) -> None:
    """Delete a leaf and then its parents left empty (unless still applied)."""
    parents: list[tuple[dict[str, Any], str]] = []
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for depth in range(len(parents) - 1, -1, -1):
        parent, key = parents[depth]
        prefix = path[: depth + 1]
        still_applied = any(owned[: len(prefix)] == prefix for owned in keep)
        if parent.get(key) == {} and not still_applied:
            del parent[key]
        else:
            break


def _entry_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    return (str(entry.get("manager", "")), str(entry.get("operation", "")), str(entry.get("subresource", "")))


def stale_apply_fields(
    entries: list[dict[str, Any]], manager: str, subresource: str | None, applied: set[Path]
) -> set[Path]:
    """Fields the manager applied last time, no longer applies and nobody else owns."""
    mine = (manager, "Apply", subresource or "")
    previous: set[Path] = set()
    others: set[Path] = set()
    for entry in entries:
        paths = from_fields_v1(entry.get("fieldsV1"))
        if _entry_key(entry) == mine:
            previous |= paths
        else:
            others |= paths
    return {
        path for path in previous - applied if not _overlaps(path, others) and not _overlaps(path, applied)
    }


def record(
    entries: list[dict[str, Any]],
    *,
    manager: str,
    operation: str,
    api_version: str,
    subresource: str | None,
    paths: set[Path],
    changed: set[Path],
    now: str,
) -> list[dict[str, Any]]:
    """Return the new managedFields after ``manager`` applied/updated ``paths``.

    An Apply entry is replaced by the newly applied set; an Update entry grows
    by the fields it changed. Fields whose values changed move to ``manager``:
    other entries lose them (and disappear when they own nothing any more),
    which is what the real server does for updates and for forced applies.
    Fields set to the same value stay shared.
    """
    key = (manager, operation, subresource or "")
    result: list[dict[str, Any]] = []
    previous: set[Path] = set()
    for entry in entries:
        owned = from_fields_v1(entry.get("fieldsV1"))
        if _entry_key(entry) == key:
            previous = owned
            continue
        kept = {path for path in owned if not _overlaps(path, changed)}
        if not kept:
            continue
        if kept != owned:
            entry = {**entry, "fieldsV1": to_fields_v1(kept)}
        result.append(entry)
    owned = paths if operation == "Apply" else previous | paths
    if not owned:
        return result
    new_entry: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(owned),
    }
    if subresource:
        new_entry["subresource"] = subresource
    result.append(new_entry)
    return result
