"""Validation errors as people read them: one line per error, starting with the full field path.

Called by the parse step (``translation.parse``) for every object that fails
its model, and by the operator's validating webhook (``apx.operator.handlers``)
so admission and status say the same words. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from ..models.common import PATTERN_MESSAGES

# A model validator's message that names a field below the one it is attached
# to ("plans[0].quota: …") is re-rooted onto the full path.
_RELATIVE_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*): (.*)$", re.S)


# What each pattern allows, in words: pydantic's "String should match pattern
# '…'" is never shown. Fields declared with ``matching`` register their text in
# ``models.common.PATTERN_MESSAGES`` (the CRD's CEL rules say the same words).


def _pattern_message(pattern: str) -> str:
    known = PATTERN_MESSAGES.get(pattern)
    if known is None:
        # A pattern nobody described: still no regex in front of a user.
        return "has characters or a shape this field does not allow"
    return known


def _join_loc(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or "-" in part or "," in part:
            # pydantic inserts validator/union labels (e.g. "function-after[...]"); not field names.
            continue
        else:
            path += f".{part}" if path else part
    return path


def format_validation_error(exc: ValidationError) -> list[str]:
    """Human messages, each starting with the full field path (``spec.plans[0].rateLimit.burst: …``)."""
    messages: list[str] = []
    for error in exc.errors(include_url=False):
        path = _join_loc(error["loc"])
        message = str(error["msg"])
        kind = error["type"]
        if kind == "value_error":
            message = message.removeprefix("Value error, ")
            relative = _RELATIVE_FIELD.match(message)
            if relative:
                path = f"{path}.{relative.group(1)}" if path else relative.group(1)
                message = relative.group(2)
        elif kind == "string_pattern_mismatch":
            pattern = str((error.get("ctx") or {}).get("pattern", ""))
            message = f"{_shown(error.get('input'))} {_pattern_message(pattern)}"
        elif kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required field is missing"
        elif isinstance(error.get("input"), str | int | float | bool):
            # Type, enum and bound errors: name the refused value too.
            message = f"{message} (got {_shown(error.get('input'))})"
        messages.append(f"{path}: {message}" if path else message)
    return messages


def _shown(value: Any) -> str:
    """The refused value, quoted and shortened: a message names the value but stays one line."""
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}…' ({len(str(value))} characters)"
