"""The Prometheus metrics provider of the canary analysis (I/O, aiohttp).

Created by ``provider_for`` (``__init__.py``) when ``--prometheus-url`` /
``APX_PROMETHEUS_URL`` is set; called by the operator's canary loop
(``apx.operator.canary``) through the ``MetricsProvider`` protocol.

``query`` runs a track's three templates (``queries.py``) as instant queries
(``POST /api/v1/query``; the templates carry the ``[<window>s]`` range),
concurrently, each with its own timeout, all three at one evaluation time
(the operator's clock): ``increase()`` extrapolates to the end of the window,
so queries evaluated even milliseconds apart would disagree, and errors
could exceed requests. Returns a ``TrackWindow``:

* ``requests`` and ``errors``: the sum of the answer's samples; an empty
  answer is no traffic (0), never an error;
* ``latency_buckets``: one sample per ``le`` bound, converted to milliseconds
  and sorted, ``+Inf`` last. ``increase()`` extrapolates each bucket series
  on its own, so a bucket can come out a hair below the one before it; the
  counts are made non-decreasing (a cumulative histogram by definition).

Anything that is not an answer — server unreachable, timeout, HTTP error,
``status: error``, NaN or infinite values, a body that is not Prometheus JSON
— raises ``MetricsUnavailable`` with one line naming "Prometheus at
host:port". Credentials in the URL (``http://user:password@host``) are sent
as HTTP basic auth and never appear in a message.

``healthy()`` asks ``/-/ready``. The provider owns one ``ClientSession``,
created on first use inside the running loop; ``close()`` releases it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import urllib.parse
from typing import Any

import aiohttp

from ..canary.types import MetricsUnavailable, RouteTarget, Track, TrackWindow
from .queries import DEFAULT_QUERIES, QuerySet, render_query

DEFAULT_TIMEOUT_SECONDS = 5.0
# Prometheus' own error text can be long (it may quote the whole query).
MAX_REASON_CHARS = 300


class PrometheusProvider:
    """``MetricsProvider`` over the Prometheus HTTP API."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        queries: QuerySet = DEFAULT_QUERIES,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError("the Prometheus URL must be http(s)://host[:port][/path]")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        address = f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"
        # RFC 7617 basic auth, sent as a default header of the session (aiohttp's
        # BasicAuth helper is deprecated and its replacement needs aiohttp 3.14).
        self._headers: dict[str, str] = {}
        if parts.username is not None or parts.password is not None:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            self._headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            )
        # Without user info, query or fragment; a path prefix (Prometheus behind
        # ``--web.route-prefix`` or a proxy) is kept.
        self._base = f"{parts.scheme}://{address}{parts.path.rstrip('/')}"
        self.queries = queries
        self.timeout_seconds = timeout_seconds
        self.display_name = f"Prometheus at {address}"
        self._session: aiohttp.ClientSession | None = None

    def _endpoint(self, path: str) -> str:
        return self._base + path

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout_seconds)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _unavailable(self, reason: str) -> MetricsUnavailable:
        one_line = " ".join(reason.split())
        if len(one_line) > MAX_REASON_CHARS:
            one_line = one_line[: MAX_REASON_CHARS - 1] + "…"
        return MetricsUnavailable(f"{self.display_name}: {one_line}")

    # --- MetricsProvider ---------------------------------------------------------------

    async def query(self, target: RouteTarget, track: Track, window_seconds: int) -> TrackWindow:
        templates = self.queries.for_mode(target.mode)
        at = f"{time.time():.3f}"
        try:
            rendered = [
                render_query(templates.template(q), target, track, window_seconds)
                for q in ("requests", "errors", "latency")
            ]
        except (KeyError, ValueError) as exc:
            raise self._unavailable(f"cannot render the query template ({exc})") from None
        # The first failure is raised; gather retrieves the others' outcomes, and
        # each of them ends within its own timeout.
        requests, errors, latency = await asyncio.gather(*(self._vector(q, at) for q in rendered))
        scale = 1000.0 if templates.latency_unit == "seconds" else 1.0
        return TrackWindow(
            requests=self._total(requests),
            errors=self._total(errors),
            latency_buckets=self._buckets(latency, scale),
        )

    async def healthy(self) -> bool:
        try:
            async with self._client().get(self._endpoint("/-/ready")) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    # --- HTTP API ----------------------------------------------------------------------

    async def _vector(self, promql: str, at: str) -> list[dict[str, Any]]:
        """The samples of an instant query's vector answer; raises ``MetricsUnavailable``."""
        try:
            # POST (a long query fits in no URL limit) and no redirects: a client
            # following a 301/302 repeats a POST as a GET without its query.
            async with self._client().post(
                self._endpoint("/api/v1/query"), data={"query": promql, "time": at}, allow_redirects=False
            ) as response:
                status = response.status
                text = await response.text()
        except TimeoutError:
            raise self._unavailable(f"no answer within {self.timeout_seconds:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise self._unavailable(f"unreachable ({exc.os_error.strerror or type(exc).__name__})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(f"request failed ({type(exc).__name__})") from None
        try:
            body = _json(text)
        except ValueError:
            raise self._unavailable(f"HTTP {status} with a body that is not Prometheus JSON") from None
        if body.get("status") != "success":
            error = body.get("error") or f"HTTP {status}"
            kind = body.get("errorType")
            raise self._unavailable(f"query failed ({kind}: {error})" if kind else f"query failed ({error})")
        if status != 200:
            raise self._unavailable(f"HTTP {status}")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            kind = data.get("resultType") if isinstance(data, dict) else None
            raise self._unavailable(f"expected an instant vector, got {kind or 'no data field'}")
        result = data.get("result")
        if not isinstance(result, list) or not all(isinstance(s, dict) for s in result):
            raise self._unavailable("malformed result")
        return result

    def _value(self, sample: dict[str, Any]) -> float:
        value = sample.get("value")
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
            raise self._unavailable("malformed sample value")
        try:
            number = float(value[1])
        except ValueError:
            raise self._unavailable("malformed sample value") from None
        if not math.isfinite(number):
            raise self._unavailable(f"the query answered {value[1]} (no usable value)")
        return number

    def _total(self, samples: list[dict[str, Any]]) -> float:
        return sum((self._value(s) for s in samples), 0.0)

    def _buckets(self, samples: list[dict[str, Any]], scale: float) -> tuple[tuple[float, float], ...]:
        counts: dict[float, float] = {}
        for sample in samples:
            metric = sample.get("metric")
            raw_bound = metric.get("le") if isinstance(metric, dict) else None
            try:
                bound = float(raw_bound) if isinstance(raw_bound, str) else math.nan
            except ValueError:
                bound = math.nan
            if math.isnan(bound):
                raise self._unavailable("the latency query answered a sample without a numeric 'le' label")
            bound = bound if math.isinf(bound) else round(bound * scale, 9)
            counts[bound] = counts.get(bound, 0.0) + self._value(sample)
        if not counts:
            return ()
        if math.inf not in counts:
            raise self._unavailable('the latency query answered no le="+Inf" bucket')
        buckets: list[tuple[float, float]] = []
        running = 0.0
        for bound in sorted(counts):
            running = max(running, counts[bound])
            buckets.append((bound, running))
        return tuple(buckets)


def _json(text: str) -> dict[str, Any]:
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ValueError("not an object")
    return body
