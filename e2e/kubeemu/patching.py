"""The patch formats of the Kubernetes API, applied to plain JSON objects.

* ``application/json-patch+json`` — RFC 6902 via the ``jsonpatch`` package; a
  failed ``test`` or a bad path is a 422 like on the real server.
* ``application/merge-patch+json`` — RFC 7386: maps merge, lists are replaced,
  ``null`` removes a key.
* ``application/strategic-merge-patch+json`` — treated as a merge patch, because
  the emulator has no Go struct tags telling which lists merge by which key.
  The directives kubectl emits are honoured where they describe themselves:
  ``$setElementOrder/<list>`` names the merge key of a list (its entries carry
  only that key), so such lists merge item by item instead of being replaced;
  ``$patch: delete|replace`` on maps and keyed list items,
  ``$deleteFromPrimitiveList/<list>`` and ``$retainKeys`` work too. Lists sent
  without ``$setElementOrder`` are replaced, as with a merge patch.
* ``application/apply-patch+yaml`` — server-side apply merges like a merge patch
  (maps merge, lists are replaced atomically); removal of fields a manager no
  longer applies is done by :mod:`.managed`.

Called by :mod:`.store`.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from .errors import unprocessable

_DIRECTIVE_PREFIXES = ("$setElementOrder/", "$deleteFromPrimitiveList/")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch; returns a new value, the inputs are not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result


def _merge_into(result: dict[str, Any], patch: dict[str, Any]) -> None:
    """Merge ``patch`` into ``result`` (already the caller's own copy): one copy per write, not per level."""
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            if not isinstance(current, dict):
                current = result[key] = {}
            _merge_into(current, value)
        else:
            result[key] = copy.deepcopy(value)


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply an RFC 6902 patch; any failure is a 422 like on the real server."""
    if not isinstance(operations, list):
        raise unprocessable(
            "the server rejected our request due to an error in our request: "
            "json patch must be a list of operations"
        )
    try:
        patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(target))
    except jsonpatch.JsonPatchTestFailed as exc:
        raise unprocessable(
            f"the server rejected our request due to an error in our request: {exc}"
        ) from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, TypeError) as exc:
        raise unprocessable(
            f"the server rejected our request due to an error in our request: {exc or type(exc).__name__}"
        ) from None
    if not isinstance(patched, dict):
        raise unprocessable(
            "the server rejected our request due to an error in our request: "
            "the patched document is not an object"
        )
    return patched


def _merge_key(order: list[Any], items: list[Any]) -> str | None:
    """Infer a list's merge key: the one key of its ``$setElementOrder`` entries
    (or, when that list is empty, of the items carrying a ``$patch`` directive)."""
    entries = order or [
        {key: value for key, value in item.items() if key != "$patch"}
        for item in items
        if isinstance(item, dict) and "$patch" in item
    ]
    keys = {key for entry in entries if isinstance(entry, dict) for key in entry}
    if len(keys) == 1 and all(isinstance(entry, dict) for entry in entries):
        return str(next(iter(keys)))
    return None


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _strip_directives(item)
            for key, item in value.items()
            if key not in ("$patch", "$retainKeys") and not key.startswith(_DIRECTIVE_PREFIXES)
        }
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value


def _merge_keyed_list(current: list[Any], patch: list[Any], order: list[Any], key: str) -> list[Any]:
    by_key: dict[Any, Any] = {item.get(key): item for item in current if isinstance(item, dict)}
    deleted: set[Any] = set()
    for item in patch:
        if not isinstance(item, dict):
            continue
        ident = item.get(key)
        if item.get("$patch") == "delete":
            deleted.add(ident)
            by_key.pop(ident, None)
        elif item.get("$patch") == "replace":
            by_key[ident] = _strip_directives(item)
        else:
            by_key[ident] = strategic_merge_patch(by_key.get(ident, {}), item)
    result: list[Any] = []
    placed: set[Any] = set()
    for entry in order:
        ident = entry.get(key) if isinstance(entry, dict) else None
        if ident in by_key and ident not in placed:
            result.append(by_key[ident])
            placed.add(ident)
    # Items the server has but the patch does not mention keep their place after
    # the ordered ones, as the real server does for server-only list items.
    for ident, item in by_key.items():
        if ident not in placed and ident not in deleted:
            result.append(item)
    return result


def _merge_primitive_list(
    current: list[Any], patch: list[Any], order: list[Any], drop: list[Any]
) -> list[Any]:
    values = [value for value in current if value not in drop]
    values += [value for value in patch if value not in values and value not in drop]
    ordered = [value for value in order if value in values]
    return ordered + [value for value in values if value not in ordered]


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch plus the self-describing strategic-merge directives (see module doc)."""
    if not isinstance(patch, dict):
        return _strip_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return _strip_directives(copy.deepcopy(patch))
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders = {
        key.split("/", 1)[1]: value for key, value in patch.items() if key.startswith("$setElementOrder/")
    }
    drops = {
        key.split("/", 1)[1]: value
        for key, value in patch.items()
        if key.startswith("$deleteFromPrimitiveList/")
    }
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(_DIRECTIVE_PREFIXES):
            continue
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and key in orders:
            current = result.get(key) if isinstance(result.get(key), list) else []
            merge_key = _merge_key(orders[key], value)
            if merge_key is not None:
                result[key] = _merge_keyed_list(current or [], value, orders[key], merge_key)
            else:
                result[key] = _merge_primitive_list(current or [], value, orders[key], drops.get(key, []))
        elif isinstance(value, list):
            result[key] = _strip_directives(copy.deepcopy(value))
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    # Lists only re-ordered or only shrunk carry no list of their own in the patch.
    for key, order in orders.items():
        if key in patch or not isinstance(result.get(key), list):
            continue
        merge_key = _merge_key(order, [])
        if merge_key is not None:
            result[key] = _merge_keyed_list(result[key], [], order, merge_key)
        else:
            result[key] = _merge_primitive_list(result[key], [], order, drops.get(key, []))
    for key, drop in drops.items():
        if key not in orders and isinstance(result.get(key), list):
            result[key] = [value for value in result[key] if value not in drop]
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {key: value for key, value in result.items() if key in retain}
    return result


def apply_merge(target: Any, applied: Any) -> Any:
    """The merge of a server-side apply configuration: maps merge, lists replace."""
    return merge_patch(target, applied)
