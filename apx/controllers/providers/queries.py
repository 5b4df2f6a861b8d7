"""PromQL templates of the canary analysis: the defaults per Route mode, overrides, and rendering.

Used by the Prometheus provider (``prometheus.py``) to build its queries and
by ``provider_for`` (``__init__.py``) to load an installation's override file
(``--canary-queries`` / ``APX_CANARY_QUERIES``) at start. Parsing and
rendering are pure; only ``load_queries`` reads a file.

One template per quantity and Route mode:

* ``requests`` and ``errors`` answer one number: requests and 5xx answers of
  one track over the window (an empty answer means no traffic, i.e. 0);
* ``latency`` answers a cumulative histogram over the window, one sample per
  ``le`` bucket bound, in ``latencyUnit`` (``seconds`` or ``milliseconds``).

Placeholders (``string.Template`` syntax; write ``$$`` for a literal ``$``):

=============  ====================================================================
``$route``     ``<namespace>/<name>`` of the Route (the worker's ``route`` label)
``$namespace`` the Route's namespace
``$name``      the Route's name
``$track``     ``stable`` or ``canary``
``$cluster``   sync Routes only: the track's Envoy stat cluster name
               (``names.track_stat_name``)
``$window``    the analysis window as a PromQL duration, e.g. ``60s``
=============  ====================================================================

Every value but ``$window`` is escaped for a double-quoted PromQL string
literal, so templates put them inside ``"…"``.

Async Routes are measured by their workers (``apx/dataplane/worker/metrics.py``:
``apx_requests_total`` and ``apx_request_duration_seconds`` with ``route``,
``track`` and ``code`` labels). Sync Routes are measured by Envoy itself:
``cluster.<stat name>.upstream_rq_total``, ``upstream_rq_5xx`` and the
``upstream_rq_time`` histogram (milliseconds), which Envoy's Prometheus
endpoint (``/stats/prometheus``) exposes as ``envoy_cluster_upstream_rq_total``,
``envoy_cluster_upstream_rq_xx`` (tag ``envoy_response_code_class``) and
``envoy_cluster_upstream_rq_time_bucket``, with the cluster's stat name in the
``envoy_cluster_name`` tag. The renderer gives each track of a sync canary
Route its own cluster (``renderers/envoy/track_clusters.py``), so the two
tracks have distinct ``envoy_cluster_name`` values.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from ..canary.types import RouteTarget, Track

Mode = Literal["sync", "async"]
Quantity = Literal["requests", "errors", "latency"]
LatencyUnit = Literal["seconds", "milliseconds"]

MODES: tuple[Mode, Mode] = ("async", "sync")
QUANTITIES: tuple[Quantity, Quantity, Quantity] = ("requests", "errors", "latency")
LATENCY_UNITS: tuple[LatencyUnit, LatencyUnit] = ("seconds", "milliseconds")
PLACEHOLDERS = frozenset({"route", "namespace", "name", "track", "cluster", "window"})
# Async Routes have no per-track Envoy cluster (both tracks go to the async gateway).
ASYNC_PLACEHOLDERS = PLACEHOLDERS - {"cluster"}


class QueryConfigError(ValueError):
    """The query override file is unusable; the message is one line naming the file and the key."""


@dataclass(frozen=True, slots=True)
class QueryTemplates:
    """The three templates of one Route mode and the unit its latency histogram is in."""

    requests: str
    errors: str
    latency: str
    latency_unit: LatencyUnit

    def template(self, quantity: Quantity) -> str:
        text: str = getattr(self, quantity)
        return text


@dataclass(frozen=True, slots=True)
class QuerySet:
    """Templates for both Route modes."""

    async_: QueryTemplates
    sync: QueryTemplates

    def for_mode(self, mode: Mode) -> QueryTemplates:
        return self.sync if mode == "sync" else self.async_


DEFAULT_ASYNC = QueryTemplates(
    requests='sum(increase(apx_requests_total{route="$route",track="$track"}[$window]))',
    errors='sum(increase(apx_requests_total{route="$route",track="$track",code=~"5.."}[$window]))',
    latency=(
        'sum by (le) (increase(apx_request_duration_seconds_bucket{route="$route",track="$track"}[$window]))'
    ),
    latency_unit="seconds",
)
DEFAULT_SYNC = QueryTemplates(
    requests='sum(increase(envoy_cluster_upstream_rq_total{envoy_cluster_name="$cluster"}[$window]))',
    errors=(
        "sum(increase(envoy_cluster_upstream_rq_xx"
        '{envoy_cluster_name="$cluster",envoy_response_code_class="5"}[$window]))'
    ),
    latency=(
        "sum by (le) (increase("
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="$cluster"}[$window]))'
    ),
    latency_unit="milliseconds",
)
DEFAULT_QUERIES = QuerySet(async_=DEFAULT_ASYNC, sync=DEFAULT_SYNC)


# --- rendering ---------------------------------------------------------------------

_PROMQL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def promql_string(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted PromQL string literal (Go escapes)."""
    return "".join(_PROMQL_ESCAPES.get(char, char) for char in value)


def render_query(template: str, target: RouteTarget, track: Track, window_seconds: int) -> str:
    """The PromQL of ``template`` for one track of one Route over ``window_seconds``."""
    values = {
        "route": promql_string(target.route),
        "namespace": promql_string(target.namespace),
        "name": promql_string(target.name),
        "track": promql_string(track),
        "window": f"{int(window_seconds)}s",
    }
    if target.mode == "sync":
        values["cluster"] = promql_string(target.cluster(track))
    return string.Template(template).substitute(values)


# --- override file -----------------------------------------------------------------


def _check_template(source: str, key: str, template: Any, mode: Mode) -> str:
    if not isinstance(template, str) or not template.strip():
        raise QueryConfigError(f"{source}: {key}: must be a non-empty PromQL string")
    parsed = string.Template(template)
    if not parsed.is_valid():
        raise QueryConfigError(
            f"{source}: {key}: a '$' that starts no placeholder (write '$$' for a literal '$')"
        )
    allowed = PLACEHOLDERS if mode == "sync" else ASYNC_PLACEHOLDERS
    unknown = sorted(set(parsed.get_identifiers()) - allowed)
    if unknown:
        known = ", ".join(f"${p}" for p in sorted(allowed))
        raise QueryConfigError(
            f"{source}: {key}: unknown placeholder ${unknown[0]} (known for {mode} Routes: {known})"
        )
    return template


def _mode_overrides(source: str, mode: Mode, block: Any, defaults: QueryTemplates) -> QueryTemplates:
    if not isinstance(block, Mapping):
        raise QueryConfigError(
            f"{source}: {mode}: must be a mapping of requests, errors, latency, latencyUnit"
        )
    changes: dict[str, Any] = {}
    for key, value in block.items():
        if key in QUANTITIES:
            changes[key] = _check_template(source, f"{mode}.{key}", value, mode)
        elif key == "latencyUnit":
            if value not in LATENCY_UNITS:
                raise QueryConfigError(f"{source}: {mode}.latencyUnit: must be seconds or milliseconds")
            changes["latency_unit"] = value
        else:
            raise QueryConfigError(
                f"{source}: {mode}.{key}: unknown key (expected requests, errors, latency, latencyUnit)"
            )
    return replace(defaults, **changes)


def parse_queries(text: str, source: str = "canary queries") -> QuerySet:
    """Templates from an override document (YAML or JSON); keys left out keep their defaults.

    The document maps ``async`` and/or ``sync`` to ``requests``, ``errors``,
    ``latency`` (templates) and ``latencyUnit``. Raises ``QueryConfigError``
    with a one-line message naming ``source`` and the key at fault.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise QueryConfigError(f"{source}: not valid YAML or JSON{where}") from None
    if document is None:
        return DEFAULT_QUERIES
    if not isinstance(document, Mapping):
        raise QueryConfigError(f"{source}: must be a mapping with the keys async and/or sync")
    result = DEFAULT_QUERIES
    for key, block in document.items():
        if key == "async":
            result = replace(result, async_=_mode_overrides(source, "async", block, result.async_))
        elif key == "sync":
            result = replace(result, sync=_mode_overrides(source, "sync", block, result.sync))
        else:
            raise QueryConfigError(f"{source}: {key}: unknown key (expected async, sync)")
    return result


def load_queries(path: str | None) -> QuerySet:
    """The defaults, or the defaults overridden by the file at ``path``; raises ``QueryConfigError``."""
    if not path:
        return DEFAULT_QUERIES
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise QueryConfigError(f"canary queries file {path}: cannot be read ({reason})") from None
    return parse_queries(text, f"canary queries file {path}")
