"""The RouteConfiguration: virtual hosts, route matching, actions, timeouts and retries.

Called by the package's ``render_envoy``; uses ``canary`` for weighted
routes, ``cors`` for preflight routes and the context's builders for the
per-route filter configs and headers. Pure.

Virtual hosts. One per distinct host (``vh/<host>``, domains ``[host]``),
sorted by host; a Route with several hosts appears in each. Wildcard hosts
(``*.example.com``) are Envoy suffix wildcards: a request for a host that has
its own virtual host never falls back to the wildcard one (Envoy picks the
most specific domain, then matches routes only there).

Order inside a virtual host, most specific first: exact paths before
prefixes, longer paths before shorter, more header matchers before fewer,
routes restricted to methods before unrestricted ones; ties (overlapping
Routes that are equally specific) go to the older Route (creationTimestamp,
then namespace/name: ``RouteIR.age_order``, the rule the translator also uses
for identical matches), so the output never depends on input order.

Matching: ``path`` → ``path``; ``pathPrefix`` → ``prefix``; ``methods`` → a
``:method`` header matcher (exact for one method, the RE2 alternation
``GET|POST`` for several — Envoy's regexes match the whole value); header
matchers exact / prefix / RE2 regex / present (``present: false`` is
``present_match`` inverted).

Action of a sync route: its backend's cluster, the route ``timeout``, the
retry policy (``retry_on`` joined with commas, ``num_retries``,
``per_try_timeout``, exponential ``retry_back_off``,
``retriable_status_codes``, and a retry never goes to the host that just
failed), ``host_rewrite_literal`` for URL backends, and for a URL with a
path a ``prefix_rewrite`` replacing the matched prefix (or the whole exact
path) with it: URL ``https://h/api`` on prefix ``/v1/`` sends ``/v1/x`` to
``/api/x``. An async route goes to ``names.ASYNC_GATEWAY_CLUSTER`` — never to
its backend, which only its workers call — with the gateway timeout and
retries only on connection failures (a queued request must not be
published twice); the gateway reads ``x-apx-route`` and ``x-apx-track``.
Every host with an async route also gets ``GET /status/…`` to the gateway,
first in its virtual host (see ``status_route``): the path the gateway's
``202 Location`` points at.

Headers and per-filter configs: see ``headers.py`` (what upstreams receive)
and ``jwt.py``/``authz.py``/``cors.py``/``ratelimit.py``.

Errors. A route whose match or policy cannot become valid Envoy config (a
regex RE2 rejects, a header value with CR/LF, a path with ``?``, a zero
back-off, two URL paths on one canary…) is left out and reported in
``errors`` with the field at fault; the rest of the snapshot is unaffected.

Performance. What a route shares with others is built once per render and
kept serialized: the action (per backend, timeout, retries, rewrite), the
policy part (per product and policy: headers and per-filter configs) and,
for canaries, the whole weighted part. A route sets only its name, match and
``x-apx-route`` and merges those fragments with ``MergeFromString`` (protobuf
merges a serialized message field by field). Routes are sorted once and
added to their virtual hosts in place (``routes.add``), never copied.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2

from ... import names
from ...ir import HeaderMatchIR, MatchIR, RetriesIR, RouteIR
from .canary import host_rewrite, weighted_route_kwargs
from .common import (
    JWT_FILTER,
    RenderError,
    duration,
    exact,
    header_matcher,
    header_value_error,
    pack,
    re2_error,
    regex,
    uint32,
)
from .context import RenderContext
from .cors import PREFLIGHT_HEADERS, PREFLIGHT_SUFFIX, needs_preflight_route, preflight_route_kwargs
from .headers import product_header, route_header
from .validate import encoded_problems

PREVIOUS_HOSTS = route_pb.RetryPolicy.RetryHostPredicate(
    name="envoy.retry_host_predicates.previous_hosts",
    typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
)
# Requests to the async gateway are retried only when they cannot have reached it.
ASYNC_RETRY_POLICY = route_pb.RetryPolicy(
    retry_on="connect-failure,refused-stream",
    num_retries=uint32(2),
    retry_host_predicate=[PREVIOUS_HOSTS],
    host_selection_retry_max_attempts=3,
)


# A planned route is a plain tuple: (name, match, x-apx-route header or None,
# fragments, preflight path or None).
PlannedRoute = tuple[str, Any, Any, tuple[bytes, ...], str | None]


# --- matching ----------------------------------------------------------------


def order(route: RouteIR) -> tuple[int, int, int, int, tuple[str, str]]:
    """Sort key putting more specific matches first, ties to the older Route."""
    match = route.match
    if match.path is not None:
        return (0, -len(match.path), -len(match.headers), 0 if match.methods else 1, route.age_order)
    prefix = match.path_prefix or "/"
    return (1, -len(prefix), -len(match.headers), 0 if match.methods else 1, route.age_order)


def _check_path(field: str, value: str) -> None:
    problem = header_value_error(value)
    if problem is None and ("?" in value or "#" in value):
        problem = "must not contain '?' or '#' (Envoy matches the path without the query string)"
    if problem:
        raise RenderError(f"spec.match.{field}: {problem}")


def _header(index: int, header: HeaderMatchIR) -> Any:
    field = f"spec.match.headers[{index}]"
    if header.kind == "present":
        if header.present:
            return route_pb.HeaderMatcher(name=header.name, present_match=True)
        return route_pb.HeaderMatcher(name=header.name, present_match=True, invert_match=True)
    problem = re2_error(header.value) if header.kind == "regex" else header_value_error(header.value)
    if problem:
        raise RenderError(f"{field}.{header.kind}: {problem}")
    if header.kind == "exact":
        return header_matcher(header.name, exact(header.value))
    if header.kind == "prefix":
        if not header.value:
            # Envoy requires a non-empty prefix; an empty one matches any value.
            return route_pb.HeaderMatcher(name=header.name, present_match=True)
        return header_matcher(header.name, string_pb2.StringMatcher(prefix=header.value))
    if header.kind == "regex":
        return header_matcher(header.name, regex(header.value))
    raise RenderError(f"{field}: unknown matcher kind {header.kind!r}")


@lru_cache(maxsize=256)
def method_matcher(methods: tuple[str, ...]) -> Any:
    """``:method`` matcher: exact for one method, an RE2 alternation for several."""
    ordered = sorted(set(methods))
    return header_matcher(":method", exact(ordered[0]) if len(ordered) == 1 else regex("|".join(ordered)))


def route_match(match: MatchIR) -> Any:
    """The ``RouteMatch`` of a route; raises RenderError naming the field at fault."""
    headers = [method_matcher(match.methods)] if match.methods else []
    if match.headers:
        headers.extend(_header(i, h) for i, h in enumerate(match.headers))
    if match.path is not None:
        _check_path("path", match.path)
        return route_pb.RouteMatch(path=match.path, headers=headers)
    prefix = match.path_prefix or "/"
    _check_path("pathPrefix", prefix)
    return route_pb.RouteMatch(prefix=prefix, headers=headers)


def preflight_match(match: MatchIR) -> Any:
    if match.path is not None:
        return route_pb.RouteMatch(path=match.path, headers=PREFLIGHT_HEADERS)
    return route_pb.RouteMatch(prefix=match.path_prefix or "/", headers=PREFLIGHT_HEADERS)


# --- actions -------------------------------------------------------------------


def retry_policy(retries: RetriesIR) -> Any | None:
    if retries.attempts == 0:
        return None
    if retries.base_interval_ms <= 0:
        raise RenderError("spec.retries.backoff.baseInterval: must be greater than 0")
    if retries.max_interval_ms < retries.base_interval_ms:
        raise RenderError("spec.retries.backoff.maxInterval: must not be shorter than baseInterval")
    policy: dict[str, Any] = {
        "retry_on": ",".join(retries.retry_on),
        "num_retries": uint32(retries.attempts),
        "retry_back_off": route_pb.RetryPolicy.RetryBackOff(
            base_interval=duration(retries.base_interval_ms), max_interval=duration(retries.max_interval_ms)
        ),
        "retriable_status_codes": retries.retriable_status_codes,
        "retry_host_predicate": [PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": 3,
    }
    if retries.per_try_timeout_ms is not None:
        policy["per_try_timeout"] = duration(retries.per_try_timeout_ms)
    return route_pb.RetryPolicy(**policy)


def prefix_rewrite(route: RouteIR) -> str | None:
    """The path a URL backend's own path turns the matched prefix into, or None."""
    if route.mode == "async":
        return None
    rewrites = {t.backend.path_prefix for t in route.tracks if t.backend.kind == "url"}
    kinds = {t.backend.kind == "url" and bool(t.backend.path_prefix) for t in route.tracks}
    if len(rewrites) > 1 or len(kinds) > 1:
        raise RenderError(
            "spec.canary.backend.url: the stable and canary backends need different path rewrites, "
            "which Envoy cannot split per track; give both URLs the same path"
        )
    base = next(iter(rewrites), "")
    if not base:
        return None
    if route.match.path is not None:
        return base
    prefix = route.match.path_prefix or "/"
    return base + "/" if prefix.endswith("/") else base


def _action(route: RouteIR, ctx: RenderContext) -> dict[str, Any]:
    """Track-independent RouteAction fields."""
    if route.mode == "async":
        return {"timeout": duration(ctx.settings.gateway_timeout_ms), "retry_policy": ASYNC_RETRY_POLICY}
    action: dict[str, Any] = {"timeout": duration(route.timeout_ms)}
    retry = retry_policy(route.retries)
    if retry is not None:
        action["retry_policy"] = retry
    rewrite = prefix_rewrite(route)
    if rewrite is not None:
        action["prefix_rewrite"] = rewrite
    return action


# --- fragments -------------------------------------------------------------------
# Cache keys use plain values (strings, ints, tuples of them), which hash and
# compare in C, and id() of PolicyIR/ProductIR objects: those are shared by
# every route that uses them and live as long as the IR, so their identities
# are stable for the whole render.


def _retries_key(retries: RetriesIR) -> tuple[Any, ...]:
    return (
        retries.attempts, retries.per_try_timeout_ms, retries.retry_on, retries.retriable_status_codes,
        retries.base_interval_ms, retries.max_interval_ms,
    )  # fmt: skip


def _single_action_fragment(route: RouteIR, ctx: RenderContext) -> bytes:
    """Serialized ``Route`` holding only the action of a single-track route."""
    if route.mode == "async":
        key: tuple[Any, ...] = ("async",)
    else:
        match = route.match
        backend = route.stable.backend
        # The cluster name encodes kind, scheme, host and port; only the URL path is extra.
        key = (
            backend.cluster, backend.path_prefix, route.timeout_ms, _retries_key(route.retries),
            match.path is None, match.path is None and (match.path_prefix or "/").endswith("/"),
        )  # fmt: skip
    cached = ctx.fragments.get(key)
    if cached is None:
        action = _action(route, ctx)
        track = route.stable
        if route.mode == "async":
            action["cluster"] = names.ASYNC_GATEWAY_CLUSTER
        else:
            action["cluster"] = track.backend.cluster
            rewrite = host_rewrite(track)
            if rewrite is not None:
                action["host_rewrite_literal"] = rewrite
        cached = route_pb.Route(route=route_pb.RouteAction(**action)).SerializeToString(deterministic=True)
        ctx.fragments[key] = cached
    return cached


def _single_policy_fragment(route: RouteIR, ctx: RenderContext) -> bytes:
    """Serialized ``Route`` holding the headers and per-filter configs of a single-track route."""
    track = route.stable
    policy = track.policy
    key = ("policy", id(route.product), id(policy))
    cached = ctx.fragments.get(key)
    if cached is None:
        headers = ctx.headers.track(track.name, policy)
        per_filter = {JWT_FILTER: ctx.jwt.per_route([policy])}
        per_filter.update(ctx.track_filter_configs(policy, route.product, per_cluster=False))
        kwargs = headers.kwargs()
        kwargs["request_headers_to_add"] = (product_header(route.product), *headers.request_headers_to_add)
        kwargs["typed_per_filter_config"] = per_filter
        cached = route_pb.Route(**kwargs).SerializeToString(deterministic=True)
        ctx.fragments[key] = cached
    return cached


def _canary_fragment(route: RouteIR, ctx: RenderContext) -> bytes:
    """Serialized ``Route`` with everything of a canary route but name, match and ``x-apx-route``."""
    match = route.match
    tracks = tuple((t.name, t.weight, t.backend, id(t.policy)) for t in route.tracks)
    sticky = route.canary_state is not None and route.canary_state.sticky_by_tenant
    sync = route.mode == "sync"
    # A sync canary's entries name its own per-track clusters, so its fragment is its own.
    key = (
        "canary", route.mode, route.key if sync else None, id(route.product), tracks, sticky,
        match.path is None,
        match.path is None and (match.path_prefix or "/").endswith("/"),
        route.timeout_ms if sync else None, _retries_key(route.retries) if sync else None,
    )  # fmt: skip
    cached = ctx.fragments.get(key)
    if cached is None:
        kwargs = weighted_route_kwargs(route, ctx, _action(route, ctx))
        cached = route_pb.Route(**kwargs).SerializeToString(deterministic=True)
        ctx.fragments[key] = cached
    return cached


def route_fragments(route: RouteIR, ctx: RenderContext) -> tuple[bytes, ...]:
    """Serialized ``Route`` fragments with everything but name, match and ``x-apx-route``.

    Single-track routes merge two fragments, the action (per backend, timeout,
    retries) and the policy part (per product and policy), because their
    combinations are nearly unique per route while each part is shared by many.
    """
    if route.canary is not None:
        return (_canary_fragment(route, ctx),)
    return (_single_policy_fragment(route, ctx), _single_action_fragment(route, ctx))


def _preflight_fragment(route: RouteIR, cors: Any, ctx: RenderContext) -> bytes:
    key = ("preflight", id(route.stable.policy))
    cached = ctx.fragments.get(key)
    if cached is None:
        kwargs = preflight_route_kwargs(cors, ctx.jwt.disabled)
        cached = route_pb.Route(**kwargs).SerializeToString(deterministic=True)
        ctx.fragments[key] = cached
    return cached


def plan_route(route: RouteIR, ctx: RenderContext) -> list[PlannedRoute]:
    """The route, preceded by its CORS preflight route if it needs one; raises RenderError."""
    match = route.match
    fragments = route_fragments(route, ctx)
    name = names.envoy_route_name(route.ref.namespace, route.ref.name)
    main: PlannedRoute = (name, route_match(match), route_header(name), fragments, None)
    cors = ctx.cors.per_route(route.stable.policy)
    if not needs_preflight_route(match.methods, cors):
        return [main]
    path = match.path if match.path is not None else f"prefix:{match.path_prefix or '/'}"
    preflight = _preflight_fragment(route, cors, ctx)
    return [(name + PREFLIGHT_SUFFIX, preflight_match(match), None, (preflight,), path), main]


RouteEntry = tuple[Any, str | None]  # a virtual host's Route message, and its preflight path (or None)


def route_entries(route: RouteIR, ctx: RenderContext) -> list[RouteEntry]:
    """The Route's entries of a virtual host (the same on every host), validated; raises RenderError.

    Each entry is checked as Envoy would check it before accepting the
    snapshot (``validate.py``: protoc-gen-validate rules, typed configs), so
    a Route Envoy would NACK is refused here, with its own name, and served
    from its last good spec instead of reaching a proxy.
    """
    entries: list[RouteEntry] = []
    for name, match, header, fragments, preflight_path in plan_route(route, ctx):
        if preflight_path is None:
            entry = route_pb.Route(name=name, match=match, request_headers_to_add=(header,))
        else:
            entry = route_pb.Route(name=name, match=match)
        for fragment in fragments:
            entry.MergeFromString(fragment)
        problems = entry_problems(entry.SerializeToString(deterministic=True))
        if problems:
            shown = "; ".join(problem.lstrip(".") for problem in problems[:3])
            raise RenderError(f"Envoy would refuse the route: {shown}")
        entries.append((entry, preflight_path))
    return entries


def entry_problems(encoded: bytes) -> tuple[str, ...]:
    """``validate_message`` of a serialized Route, once per distinct encoding (a pure function of it)."""
    return encoded_problems(route_pb.Route.DESCRIPTOR.full_name, encoded)


STATUS_PREFIX = "/status/"


def status_route(host: str) -> Any:
    """``/status/…`` on a host with async routes: the gateway's request status and SSE stream.

    The gateway answers an async request with ``Location: /status/{id}`` on
    the same host, so that path must reach it. First in the virtual host (the
    prefix is reserved on such hosts), GET only, no route timeout (the SSE
    stream stays open while the request runs). No JWT requirement or RBAC:
    request ids are unguessable and the gateway answers only for them.
    """
    return route_pb.Route(
        name=f"apx-status/{host}",
        match=route_pb.RouteMatch(prefix=STATUS_PREFIX, headers=[header_matcher(":method", exact("GET"))]),
        route=route_pb.RouteAction(cluster=names.ASYNC_GATEWAY_CLUSTER, timeout=duration(0)),
    )


def build_route_configuration(
    routes: Iterable[RouteIR], ctx: RenderContext
) -> tuple[Any, list[RouteIR], dict[str, str]]:
    """The RouteConfiguration, the routes that made it in, and errors of those that did not.

    The order inside every virtual host is the global order restricted to that
    host, so routes are sorted once and appended to their hosts as they are
    built; nothing per route outlives its iteration (which keeps the garbage
    collector out of a render that allocates hundreds of thousands of objects).
    """
    ordered = sorted(routes, key=order)
    config = route_pb2.RouteConfiguration(name=names.ROUTE_CONFIG_NAME)
    add_vhost = config.virtual_hosts.add
    vhost_routes = {
        host: add_vhost(name=names.virtual_host_name(host), domains=[host]).routes
        for host in sorted({host for route in ordered for host in route.match.hosts})
    }
    for host in sorted({host for route in ordered if route.mode == "async" for host in route.match.hosts}):
        vhost_routes[host].append(status_route(host))
    rendered: list[RouteIR] = []
    errors: dict[str, str] = {}
    preflights: set[tuple[str, str]] = set()
    for route in ordered:
        try:
            entries = route_entries(route, ctx)
        except RenderError as exc:
            errors[route.key] = exc.message
            continue
        rendered.append(route)
        for host in route.match.hosts:
            host_routes = vhost_routes[host]
            for entry, preflight_path in entries:
                if preflight_path is not None:
                    if (host, preflight_path) in preflights:
                        # Routes sharing a path share one preflight route: the most specific one's.
                        continue
                    preflights.add((host, preflight_path))
                host_routes.append(entry)
    # A host whose every route failed keeps no empty virtual host.
    for index in reversed(range(len(config.virtual_hosts))):
        if not config.virtual_hosts[index].routes:
            del config.virtual_hosts[index]
    return config, rendered, errors
