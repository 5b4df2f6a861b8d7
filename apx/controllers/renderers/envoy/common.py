"""Shared pieces of the Envoy renderer: settings, filter names and small cached message builders.

Imported by every feature module of ``apx.controllers.renderers.envoy``. Holds
no Envoy feature of its own: the settings that are not in the IR (addresses of
the APX services, timeouts), the HTTP filter names the listener and the
per-route configs must agree on, and helpers that turn plain values into
protobuf messages. Pure.

Performance note: a large snapshot has tens of thousands of routes that share
a few hundred distinct durations, matchers and typed configs. Helpers called
with few distinct values are memoised; the messages they return are treated
as immutable (protobuf copies a message when it is assigned to a field or
passed to a constructor, so sharing them is safe as long as nobody mutates
them in place, and nobody does).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

# --- HTTP filter names ---------------------------------------------------------
# The listener's HTTP filter chain and the routes' ``typed_per_filter_config``
# keys must be the same strings. Envoy looks a per-route config up by the
# filter's *config name* first and then falls back to the extension's canonical
# name, so the two rate-limit filter instances use names that are not the
# canonical ``envoy.filters.http.ratelimit``: a config meant for one instance
# can never be picked up by the other through that fallback.
CORS_FILTER = "envoy.filters.http.cors"
JWT_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
RATELIMIT_FAIL_OPEN_FILTER = "apx.ratelimit.fail_open"
RATELIMIT_FAIL_CLOSED_FILTER = "apx.ratelimit.fail_closed"
ROUTER_FILTER = "envoy.filters.http.router"

# The jwt_authn filter writes verified payloads into dynamic metadata under
# this namespace (its canonical name), which RBAC matches on.
JWT_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"

# Python's regex parser, used to approximate RE2's syntax check. ``sre_parse``
# is deprecated; its home since Python 3.11 is the private ``re._parser``.
_re_parser: Any = importlib.import_module("re._parser")
_re_constants: Any = importlib.import_module("re._constants")

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class EnvoySettings:
    """Deployment facts the IR does not carry: where the APX services run, timeouts, trust.

    The defaults match the Helm chart's ``apx-system`` namespace.
    """

    listener_address: str = "0.0.0.0"
    stat_prefix: str = "apx"
    ratelimit_host: str = "apx-ratelimit.apx-system.svc.cluster.local"
    ratelimit_port: int = 8081
    ratelimit_timeout_ms: int = 100
    gateway_host: str = "apx-gateway.apx-system.svc.cluster.local"
    gateway_port: int = 8080
    # The async gateway only enqueues and answers 202; the route's own timeout
    # is the worker's upstream call timeout, not this hop's.
    gateway_timeout_ms: int = 10_000
    connect_timeout_ms: int = 5_000
    jwks_timeout_ms: int = 5_000
    # CA bundle used to verify https URL backends and JWKS hosts.
    trusted_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    # Proxies in front of Envoy whose X-Forwarded-For entries are trusted
    # (for IP allowlists behind a cloud load balancer).
    xff_num_trusted_hops: int = 0


DEFAULT_SETTINGS = EnvoySettings()


class RenderError(Exception):
    """A route cannot be rendered; ``message`` starts with the field at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- messages ------------------------------------------------------------------


def pack(message: Message) -> Any:
    """``message`` packed into ``google.protobuf.Any`` with deterministic bytes (maps sorted)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


@lru_cache(maxsize=4096)
def duration(ms: int) -> Any:
    """A ``google.protobuf.Duration`` of ``ms`` milliseconds."""
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


@lru_cache(maxsize=1024)
def uint32(value: int) -> Any:
    return wrappers_pb2.UInt32Value(value=value)


TRUE = wrappers_pb2.BoolValue(value=True)


def header_option(name: str, value: str) -> Any:
    """A header to set, overwriting any value the client (or an earlier filter) sent."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=OVERWRITE
    )


def exact(value: str) -> Any:
    return string_pb2.StringMatcher(exact=value)


def regex(pattern: str) -> Any:
    """A string matcher using RE2 (Envoy's only regex engine); RE2 matches the whole string."""
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def re2_escape(text: str) -> str:
    """``text`` as a literal inside an RE2 pattern (only RE2's metacharacters are escaped)."""
    return _RE2_META.sub(r"\\\1", text)


def header_matcher(name: str, matcher: Any) -> Any:
    return route_pb.HeaderMatcher(name=name, string_match=matcher)


# --- checks that keep a bad value from NACKing a whole snapshot ------------------

_ILLEGAL_HEADER_VALUE = re.compile(r"[\x00\r\n]")
# Constructs Python's ``re`` accepts but RE2 rejects (RE2 guarantees linear time).
_NOT_RE2 = {
    _re_constants.GROUPREF: "backreferences",
    _re_constants.GROUPREF_EXISTS: "conditional groups",
    _re_constants.ASSERT: "lookaround assertions",
    _re_constants.ASSERT_NOT: "lookaround assertions",
    _re_constants.ATOMIC_GROUP: "atomic groups",
    _re_constants.POSSESSIVE_REPEAT: "possessive quantifiers",
}


def header_value_error(value: str) -> str | None:
    """Why ``value`` cannot go into an HTTP header (Envoy NACKs NUL, CR and LF), or None."""
    if _ILLEGAL_HEADER_VALUE.search(value):
        return "must not contain NUL, CR or LF characters"
    return None


def _walk(parsed: Any) -> list[Any]:
    found: list[Any] = []
    for op, arg in parsed:
        found.append(op)
        items = arg if isinstance(arg, (list, tuple)) else (arg,)
        for item in items:
            if isinstance(item, _re_parser.SubPattern):
                found.extend(_walk(item))
            elif isinstance(item, (list, tuple)):
                for sub in item:
                    if isinstance(sub, _re_parser.SubPattern):
                        found.extend(_walk(sub))
    return found


@lru_cache(maxsize=4096)
def re2_error(pattern: str) -> str | None:
    """Why RE2 would reject ``pattern``, or None.

    An approximation with Python's parser: syntax errors, plus the constructs
    Python supports and RE2 does not (backreferences, lookaround, conditional
    and atomic groups, possessive quantifiers). RE2's program-size limit is
    not checked.
    """
    try:
        parsed = _re_parser.parse(pattern)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    for op in _walk(parsed):
        if op in _NOT_RE2:
            return f"RE2 does not support {_NOT_RE2[op]}"
    return None
