"""Shared helpers of the Envoy renderer tests: small APX documents, rendering, and lookups.

Also a tiny model of what Envoy does with the rendered config on the request
path (early header mutation, jwt_authn's claim_to_headers, rate-limit
actions), so tests can follow a request through the messages instead of only
asserting their shape.
"""

from __future__ import annotations

import copy
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from google.protobuf import any_pb2

from apx.controllers.renderers.envoy import EnvoyOutput, render_envoy
from apx.controllers.renderers.envoy.listener import STRIP_RESERVED_HEADERS
from apx.controllers.translate import translate

JWT = {"issuer": "https://auth.example.com/", "jwksUri": "https://auth.example.com/jwks", "tierClaim": "plan"}


def product(name: str = "shop", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Product",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "residency": "GLOBAL",
            "regions": ["us-central1"],
            "plans": [{"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 10}}],
        },
    }


def policy(
    name: str = "pol", version: str = "1.0.0", namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"version": version, "auth": {"jwt": JWT}, "authz": {"defaultAction": "allow"}}
    body.update(spec)
    return {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "PolicyBundle",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def route(
    name: str,
    *,
    hosts: tuple[str, ...] = ("api.example.com",),
    policy_name: str = "pol",
    version: str = "1.0.0",
    status: dict[str, Any] | None = None,
    namespace: str = "default",
    product_name: str = "shop",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "productRef": {"name": product_name},
        "policyRef": {"name": policy_name, "version": version},
        "match": {"hosts": list(hosts), "pathPrefix": f"/{name}/"},
        "backend": {"service": {"name": name, "port": 8080}},
    }
    body.update(spec)
    document: dict[str, Any] = {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }
    if status is not None:
        document["status"] = status
    return document


def render(*documents: dict[str, Any]) -> EnvoyOutput:
    result = translate([copy.deepcopy(d) for d in documents])
    assert not result.stalled, [s.message for s in result.stalled]
    return render_envoy(result.ir)


def routes_of(output: EnvoyOutput, host: str = "api.example.com") -> list[Any]:
    (config,) = output.route_configurations
    for vhost in config.virtual_hosts:
        if vhost.domains == [host]:
            return list(vhost.routes)
    raise AssertionError(f"no virtual host for {host}")


def find_route(output: EnvoyOutput, name: str, host: str = "api.example.com") -> Any:
    for entry in routes_of(output, host):
        if entry.name == name:
            return entry
    raise AssertionError(f"no route {name} on {host}")


def unpack(packed: Any, message_type: type) -> Any:
    assert isinstance(packed, any_pb2.Any)
    message = message_type()
    assert packed.Unpack(message), f"{packed.type_url} is not {message_type.DESCRIPTOR.full_name}"
    return message


def connection_manager(output: EnvoyOutput) -> Any:
    (listener,) = output.listeners
    return unpack(listener.filter_chains[0].filters[0].typed_config, hcm_pb.HttpConnectionManager)


def http_filter(output: EnvoyOutput, name: str) -> Any:
    for entry in connection_manager(output).http_filters:
        if entry.name == name:
            return entry
    raise AssertionError(f"no http filter {name}")


def jwt_config(output: EnvoyOutput) -> Any:
    return unpack(http_filter(output, "envoy.filters.http.jwt_authn").typed_config, jwt_pb.JwtAuthentication)


# --- a model of Envoy on the request path ------------------------------------------


def apply_early_header_mutation(output: EnvoyOutput, headers: dict[str, str]) -> dict[str, str]:
    """What the connection manager's early header mutations leave of the client's headers."""
    manager = connection_manager(output)
    result = dict(headers)
    for extension in manager.early_header_mutation_extensions:
        assert extension.name == STRIP_RESERVED_HEADERS
        config = unpack(extension.typed_config, header_mutation_pb2.HeaderMutation)
        for mutation in config.mutations:
            if mutation.HasField("remove_on_match"):
                prefix = mutation.remove_on_match.key_matcher.prefix
                assert prefix, "only prefix matchers are modelled"
                result = {k: v for k, v in result.items() if not k.startswith(prefix)}
            elif mutation.remove:
                result.pop(mutation.remove, None)
    return result


def apply_claim_to_headers(provider: Any, claims: dict[str, str], headers: dict[str, str]) -> dict[str, str]:
    """jwt_authn after verifying a token with ``claims``: claims copied into headers (overwriting)."""
    result = dict(headers)
    for mapping in provider.claim_to_headers:
        if mapping.claim_name in claims:
            result[mapping.header_name] = claims[mapping.claim_name]
    return result


def rate_limit_descriptors(
    config: Any, headers: dict[str, str], query: dict[str, str] | None = None
) -> list[Any]:
    """Descriptors a ``RateLimitPerRoute`` produces for a request, as Envoy builds them."""
    per_route = unpack(config, rate_limit_pb2.RateLimitPerRoute)
    descriptors = []
    for limit in per_route.rate_limits:
        entries: list[tuple[str, str]] = []
        for action in limit.actions:
            kind = action.WhichOneof("action_specifier")
            if kind == "generic_key":
                entries.append((action.generic_key.descriptor_key, action.generic_key.descriptor_value))
            elif kind == "request_headers":
                spec = action.request_headers
                if spec.header_name in headers:
                    entries.append((spec.descriptor_key, headers[spec.header_name]))
                elif not spec.skip_if_absent:
                    entries = []
                    break
            elif kind == "query_parameters":
                spec = action.query_parameters
                if query and spec.query_parameter_name in query:
                    entries.append((spec.descriptor_key, query[spec.query_parameter_name]))
                elif not spec.skip_if_absent:
                    entries = []
                    break
            else:
                raise AssertionError(f"action {kind} is not modelled")
        if entries:
            descriptors.append(entries)
    return descriptors
