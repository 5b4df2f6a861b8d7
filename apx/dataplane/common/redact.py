"""Credential redaction: the one function every log line, status message, Event and probe goes through.

``redact_url`` masks the password of one URL (``redis://user:secret@host:6379/0``
→ ``redis://user:***@host:6379/0``, also ``rediss://``, ``http(s)://`` and
bare ``user:secret@host:port`` such as a ``PUBSUB_EMULATOR_HOST``) and the
values of secret-looking query parameters (``?password=``, ``token``,
``access_token``, ``api_key``, ``key``, ``secret``, ``sig``...).
``redact_text`` does the same for every URL inside free text (exception
messages embed them) and for ``Authorization``/``Proxy-Authorization``
header values; ``redact_document`` for every string of a status or manifest
(the operator's status writes). ``RedactingFormatter`` wraps a logging formatter so whatever a
log line carries (message, ``extra`` fields, a traceback) is redacted last.

Why here, in ``apx.dataplane.common``: the dataplane must never import the
operator or the controllers, while the operator and the controllers' appliers
may import the dataplane's dependency-free helpers. A leaf module with only
the standard library, placed on the dataplane side, is the one spot all three
(the services' ``jsonlog``, the operator's ``main`` and ``reconciler``, the
appliers' error messages) can share without breaking a layer rule.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# user:password@ right after a scheme, or at the start of a token (host:port settings have no scheme).
# The password runs to the *last* "@" before the host (as URL parsers read it), so a raw "@" in a
# password is masked whole; it may hold quotes and sub-delimiters, never whitespace, "/", "?", "#"
# or a double quote (the end of a JSON string in a log line).
_USERINFO = re.compile(
    r"(?P<prefix>(?:[A-Za-z][A-Za-z0-9+.-]*://)|(?<![\w.:/@%+-]))"
    r"(?P<user>[^\s:/@?#'\"]*):(?P<password>[^\s/?#\"]+)@(?=[^\s@/?#\"]+(?:[\s/?#\"]|$))"
)
# A scheme followed by a bare secret in the userinfo (redis://:secret@host, https://token@host).
_BARE_USERINFO = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://)(?P<secret>[^\s:/@?#'\"]+)@(?=[^\s@])")
_SECRET_PARAMS = (
    "password|passwd|pwd|pass|secret|token|access_token|refresh_token|id_token|auth|"
    "api_key|apikey|api-key|key|sig|signature|credential|credentials|client_secret"
)
_QUERY = re.compile(rf"(?P<name>[?&;](?:{_SECRET_PARAMS}))=(?P<value>[^&#\s'\"]*)", re.IGNORECASE)
_AUTH_HEADER = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization\b['\"]?\s*[:=]\s*['\"]?)(?P<scheme>(?:bearer|basic|digest|token)\s+)?"
    r"(?P<value>[^\s'\",}]+)",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    password = match.group("password")
    if password == MASK:
        return match.group(0)
    return f"{match.group('prefix')}{match.group('user')}:{MASK}@"


def _mask_bare(match: re.Match[str]) -> str:
    secret = match.group("secret")
    if secret == MASK:
        return match.group(0)
    return f"{match.group('prefix')}{MASK}@"


def redact_text(text: str) -> str:
    """``text`` with every URL password, secret query value and Authorization value replaced by ``***``."""
    if not text:
        return text
    if "@" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
        text = _BARE_USERINFO.sub(_mask_bare, text)
    if "=" in text:
        text = _QUERY.sub(lambda m: f"{m.group('name')}={MASK}", text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(lambda m: f"{m.group('name')}{m.group('scheme') or ''}{MASK}", text)
    return text


def redact_url(url: str | None) -> str:
    """One URL (or ``host:port`` setting) safe to show: the password and secret query values masked."""
    if url is None:
        return ""
    return redact_text(url)


def redact_document(value: Any) -> Any:
    """A copy of a JSON-like document (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_document(item) for item in value]
    return value


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner`` and redacts the finished line (message, extras and traceback alike)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))
