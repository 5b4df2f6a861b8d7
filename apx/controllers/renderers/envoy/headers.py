"""Header manipulation of routes and canary tracks.

Called by ``route_config`` (per-route identity headers, and per-track headers
of single-track routes) and by ``canary`` (per-track headers on each weighted
cluster). Pure; one set of messages per (track, policy artifact).

What upstreams (backends, the async gateway, workers) receive:

* ``x-apx-route`` (``<namespace>/<route>``) and ``x-apx-product`` — on the route;
* ``x-apx-track`` (``stable``/``canary``) and ``x-apx-policy-version`` (the
  version of the policy that track serves) — on the route, or on each weighted
  cluster when there is a canary, so they always name the track that was picked;
* the policy's ``headers.request.set`` (overwrite) and ``headers.request.remove``;
* on the response, ``headers.response.set`` (overwrite) and ``headers.response.remove``;
* ``x-apx-tenant``/``x-apx-plan`` from the verified JWT (set by jwt_authn, see ``jwt.py``);
* ``x-request-id`` — generated or preserved by the connection manager (``listener.py``).

Every header APX sets uses ``OVERWRITE_IF_EXISTS_OR_ADD``, and the listener has
already deleted client-sent ``x-apx-*`` headers, so none of them can be
smuggled in by a client. Route-level ``request_headers_to_remove`` is applied
by the router, i.e. *after* jwt_authn: it must never list ``x-apx-tenant`` or
``x-apx-plan``, or the verified values would be dropped too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ... import names
from ...ir import PolicyIR, ProductIR
from .common import RenderError, header_option, header_value_error

# Envoy refuses to remove these with request_headers_to_remove (config NACK).
_UNREMOVABLE = frozenset({"host"})


@dataclass(frozen=True, slots=True)
class TrackHeaders:
    """Header mutations of one track, as constructor kwargs of a Route or a ClusterWeight."""

    request_headers_to_add: tuple[Any, ...]
    request_headers_to_remove: tuple[str, ...]
    response_headers_to_add: tuple[Any, ...]
    response_headers_to_remove: tuple[str, ...]

    def kwargs(self) -> dict[str, Any]:
        return {
            "request_headers_to_add": self.request_headers_to_add,
            "request_headers_to_remove": self.request_headers_to_remove,
            "response_headers_to_add": self.response_headers_to_add,
            "response_headers_to_remove": self.response_headers_to_remove,
        }


def route_header(route_name: str) -> Any:
    """``x-apx-route: <namespace>/<route>`` (the Envoy route name, ``names.envoy_route_name``)."""
    return header_option(names.ROUTE_HEADER, route_name)


def product_header(product: ProductIR) -> Any:
    """``x-apx-product: <namespace>/<product>``."""
    return header_option(names.PRODUCT_HEADER, product.key)


class Headers:
    """Per-track header mutations for one render."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], TrackHeaders] = {}

    def track(self, track_name: str, policy: PolicyIR) -> TrackHeaders:
        key = (track_name, policy.key)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._build(track_name, policy)
            self._cache[key] = cached
        return cached

    @staticmethod
    def _build(track_name: str, policy: PolicyIR) -> TrackHeaders:
        transforms = policy.spec.headers
        for direction, transform in (("request", transforms.request), ("response", transforms.response)):
            for index, header in enumerate(transform.set):
                problem = header_value_error(header.value)
                if problem:
                    raise RenderError(
                        f"PolicyBundle {policy.key}: spec.headers.{direction}.set[{index}].value: {problem}"
                    )
            for index, name in enumerate(transform.remove):
                if direction == "request" and name.lower() in _UNREMOVABLE:
                    raise RenderError(
                        f"PolicyBundle {policy.key}: spec.headers.{direction}.remove[{index}]: "
                        f"Envoy cannot remove the {name!r} header"
                    )
        return TrackHeaders(
            request_headers_to_add=(
                header_option(names.TRACK_HEADER, track_name),
                header_option(names.POLICY_VERSION_HEADER, policy.version),
                *(header_option(h.name.lower(), h.value) for h in transforms.request.set),
            ),
            request_headers_to_remove=tuple(n.lower() for n in transforms.request.remove),
            response_headers_to_add=tuple(
                header_option(h.name.lower(), h.value) for h in transforms.response.set
            ),
            response_headers_to_remove=tuple(n.lower() for n in transforms.response.remove),
        )
