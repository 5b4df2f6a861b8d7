"""Canonical JSON and content versions of the documents APX writes to Redis (and hashes elsewhere).

Called by the operator's renderers (``redis_rules``: rule sets and the route
table; ``policy_artifacts``: artifact digests) and by the encoders of
``rule_set`` and ``route_table``. Canonical means sorted keys, no spaces and
UTF-8 text as is, so the same document always gives the same bytes and hence
the same version: re-applying unchanged objects writes nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# A version is this many hex characters of the sha256 of the documents' canonical JSON.
VERSION_LENGTH = 16


def canonical_json(data: Any) -> str:
    """The canonical text of ``data``: sorted keys, no whitespace, non-ASCII kept as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_version(documents: Mapping[str, Any]) -> str:
    """Version of a set of documents: sha256 prefix of their canonical JSON (the bytes written)."""
    return hashlib.sha256(canonical_json(documents).encode()).hexdigest()[:VERSION_LENGTH]
