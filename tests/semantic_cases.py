"""One table of specs that are well-formed but mean nothing, with the refusal each must get.

Shared by ``tests/unit/test_semantic_validation.py`` (the pure path that
``apx translate``, the operator and the webhook run) and
``tests/kubeemu/test_semantic_admission.py`` (the API server's schema and CEL
rules, through the emulated API with the generated CRDs), so both paths are
checked against the same inputs and the same words.

Every object refers to the valid samples (Product ``payments``, PolicyBundle
``payments-policy`` 1.2.0/1.3.0), so it translates next to them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from apx.controllers.models import common, policy, route

Edit = tuple[tuple[str | int, ...], Any]

ROUTE: dict[str, Any] = {
    "apiVersion": "apx.dev/v1alpha1",
    "kind": "Route",
    "metadata": {"name": "semantic"},
    "spec": {
        "productRef": {"name": "payments"},
        "policyRef": {"name": "payments-policy", "version": "1.2.0"},
        "match": {"hosts": ["semantic.example.com"], "pathPrefix": "/v1/"},
        "backend": {"service": {"name": "svc", "port": 8080}},
    },
}
ASYNC: tuple[Edit, ...] = (
    (("spec", "mode"), "async"),
    (("spec", "worker"), {"image": "registry.example.com/worker:1.0.0"}),
)
BUNDLE: dict[str, Any] = {
    "apiVersion": "apx.dev/v1alpha1",
    "kind": "PolicyBundle",
    "metadata": {"name": "semantic-policy"},
    "spec": {
        "version": "1.0.0",
        "auth": {"jwt": {"issuer": "https://id.example.com/", "jwksUri": "https://id.example.com/jwks"}},
    },
}


@dataclass(frozen=True)
class SemanticCase:
    """A spec, what ``apx translate`` says about it, and what admission says (None: CEL cannot say it)."""

    name: str
    base: dict[str, Any]
    edits: tuple[Edit, ...]
    translate_message: str
    admission_field: str | None
    admission_message: str | None

    def build(self) -> dict[str, Any]:
        obj = copy.deepcopy(self.base)
        for path, value in self.edits:
            target: Any = obj
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = copy.deepcopy(value)
        return obj


def case(
    name: str,
    base: dict[str, Any],
    edits: tuple[Edit, ...],
    translate_message: str,
    admission: tuple[str, str] | None,
) -> SemanticCase:
    field, message = admission if admission else (None, None)
    return SemanticCase(name, base, edits, translate_message, field, message)


CASES = [
    case(
        "canary-same-backend",
        ROUTE,
        ((("spec", "canary"), {"backend": {"service": {"name": "svc", "port": 8080}}}),),
        f"spec.canary.backend: {route.CANARY_SAME_BACKEND_MESSAGE}",
        ("spec.canary.backend", route.CANARY_SAME_BACKEND_MESSAGE),
    ),
    case(
        "canary-same-image",
        ROUTE,
        (*ASYNC, (("spec", "canary"), {"worker": {"image": "registry.example.com/worker:1.0.0"}})),
        f"spec.canary.worker.image: {route.CANARY_SAME_IMAGE_MESSAGE} "
        "(got 'registry.example.com/worker:1.0.0')",
        (
            "spec.canary.worker.image",
            f"{route.CANARY_SAME_IMAGE_MESSAGE} (got 'registry.example.com/worker:1.0.0')",
        ),
    ),
    case(
        "canary-same-policy-version",
        ROUTE,
        ((("spec", "canary"), {"policyVersion": "1.2.0"}),),
        f"spec.canary.policyVersion: {route.CANARY_SAME_POLICY_MESSAGE} (got '1.2.0')",
        ("spec.canary.policyVersion", f"{route.CANARY_SAME_POLICY_MESSAGE} (got '1.2.0')"),
    ),
    case(
        "async-settings-on-sync-route",
        ROUTE,
        ((("spec", "async"), {"resultTtl": "1h"}),),
        f"spec.async: {route.SYNC_FORBIDS_ASYNC_MESSAGE}",
        ("spec.async", route.SYNC_FORBIDS_ASYNC_MESSAGE),
    ),
    case(
        "host-with-impossible-port",
        ROUTE,
        ((("spec", "match", "hosts"), ["semantic.example.com:70000"]),),
        f"spec.match.hosts[0]: 'semantic.example.com:70000' {route.HOST_MESSAGE}",
        ("spec.match.hosts[0]", f"'semantic.example.com:70000' {route.HOST_MESSAGE}"),
    ),
    case(
        "timeout-zero",
        ROUTE,
        ((("spec", "timeout"), "0s"),),
        f"spec.timeout: {route.TIMEOUT_POSITIVE_MESSAGE} (got '0s')",
        ("spec.timeout", f"{route.TIMEOUT_POSITIVE_MESSAGE} (got '0s')"),
    ),
    case(
        "per-try-timeout-above-timeout",
        ROUTE,
        ((("spec", "timeout"), "5s"), (("spec", "retries"), {"perTryTimeout": "10s"})),
        f"spec.retries.perTryTimeout: {route.PER_TRY_WITHIN_TIMEOUT_MESSAGE} (got '10s', timeout '5s')",
        ("spec.retries.perTryTimeout", f"{route.PER_TRY_WITHIN_TIMEOUT_MESSAGE} (got '10s', timeout '5s')"),
    ),
    case(
        "canary-interval-zero",
        ROUTE,
        ((("spec", "canary"), {"policyVersion": "1.3.0", "interval": "0s"}),),
        f"spec.canary.interval: {route.INTERVAL_POSITIVE_MESSAGE} (got '0s')",
        ("spec.canary.interval", f"{route.INTERVAL_POSITIVE_MESSAGE} (got '0s')"),
    ),
    case(
        "result-ttl-zero",
        ROUTE,
        (*ASYNC, (("spec", "async"), {"resultTtl": "0s"})),
        f"spec.async.resultTtl: {route.RESULT_TTL_MINIMUM_MESSAGE} (got '0s')",
        ("spec.async.resultTtl", f"{route.RESULT_TTL_MINIMUM_MESSAGE} (got '0s')"),
    ),
    case(
        # CEL compares quantities only from Kubernetes 1.29: refused by the models, not at admission.
        "worker-requests-above-limits",
        ROUTE,
        (
            *ASYNC,
            (
                ("spec", "worker"),
                {
                    "image": "registry.example.com/worker:1.0.0",
                    "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
                },
            ),
        ),
        f"spec.worker.resources.requests.cpu: '2' {route.REQUESTS_WITHIN_LIMITS_MESSAGE} "
        "'1500m' of limits.cpu",
        None,
    ),
    case(
        "backend-url-with-query",
        ROUTE,
        ((("spec", "backend"), {"url": "https://svc.example.com/v1?key=1"}),),
        f"spec.backend.url: 'https://svc.example.com/v1?key=1' {route.URL_MESSAGE}",
        ("spec.backend.url", "and no query string (?) or fragment (#)"),
    ),
    case(
        "cpu-not-a-quantity",
        ROUTE,
        (
            *ASYNC,
            (
                ("spec", "worker"),
                {"image": "registry.example.com/worker:1.0.0", "resources": {"limits": {"cpu": "1 core"}}},
            ),
        ),
        f"spec.worker.resources.limits.cpu: '1 core' {route.CPU_MESSAGE}",
        ("spec.worker.resources.limits.cpu", f"'1 core' {route.CPU_MESSAGE}"),
    ),
    case(
        "header-name-with-space",
        ROUTE,
        ((("spec", "match", "headers"), [{"name": "x tenant", "exact": "acme"}]),),
        f"spec.match.headers[0].name: 'x tenant' {common.HEADER_NAME_MESSAGE}",
        ("spec.match.headers[0].name", f"'x tenant' {common.HEADER_NAME_MESSAGE}"),
    ),
    case(
        "jwks-over-http",
        BUNDLE,
        ((("spec", "auth", "jwt", "jwksUri"), "http://id.example.com/jwks"),),
        f"spec.auth.jwt.jwksUri: {policy.JWKS_HTTPS_MESSAGE} (got 'http://id.example.com/jwks')",
        ("spec.auth.jwt.jwksUri", f"{policy.JWKS_HTTPS_MESSAGE} (got 'http://id.example.com/jwks')"),
    ),
    case(
        # The schema checks the shape of an IPv6 CIDR; the address itself only the models can.
        "invalid-ipv6-cidr",
        BUNDLE,
        ((("spec", "ipAllowlist"), ["10.0.0.0/8", "2001:db8:::1/64"]),),
        f"spec.ipAllowlist[1]: '2001:db8:::1/64' {policy.CIDR_MESSAGE}",
        None,
    ),
    case(
        "cors-origin-with-inner-wildcard",
        BUNDLE,
        ((("spec", "cors"), {"allowOrigins": ["https://api.*.example.com"]}),),
        f"spec.cors.allowOrigins[0]: 'https://api.*.example.com' {policy.CORS_ORIGIN_MESSAGE}",
        ("spec.cors.allowOrigins[0]", f"'https://api.*.example.com' {policy.CORS_ORIGIN_MESSAGE}"),
    ),
    case(
        "header-value-with-crlf",
        BUNDLE,
        ((("spec", "headers"), {"request": {"set": [{"name": "x-region", "value": "eu\r\nx-admin: 1"}]}}),),
        f"spec.headers.request.set[0].value: 'eu\\r\\nx-admin: 1' {policy.HEADER_VALUE_MESSAGE}",
        ("spec.headers.request.set[0].value", policy.HEADER_VALUE_MESSAGE),
    ),
    case(
        "duplicate-authz-rule-names",
        BUNDLE,
        ((("spec", "authz"), {"rules": [{"name": "read", "methods": ["GET"]}, {"name": "read"}]}),),
        f"spec.authz.rules[1].name: {policy.DUPLICATE_RULE_MESSAGE} ('read' is used twice)",
        ("spec.authz.rules[1]", 'Duplicate value: {"name": "read"}'),
    ),
]
