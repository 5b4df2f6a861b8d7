"""Every CEL rule in the generated CRDs, run by a real CEL evaluator, accepts and rejects what it should.

Each case starts from a valid object of its kind, changes a few fields, and
names the rule it is about (by where the rule sits and its message). A
rejecting case must produce exactly one error, from that rule, with that
rule's message at the expected field; an accepting case must make that rule
evaluate to true and leave the object valid. Both go through the pydantic
models too, which must agree (same verdict, same message text), so the CEL rule
and its Python mirror cannot drift apart. A rule with no accepting and no
rejecting case fails ``test_every_rule_in_the_crds_has_an_accepting_and_a_rejecting_case``.
"""

from __future__ import annotations

import copy
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pydantic
import pytest

from apx.controllers import celcheck, crdgen
from apx.controllers.models import common, policy, product, route
from apx.controllers.models.resources import RESOURCE_MODELS
from apx.controllers.translate import format_validation_error

Node = dict[str, Any]
Path = tuple[str | int, ...]
DELETE = object()

CRDS = crdgen.build_all()


def schema_of(kind: str) -> Node:
    schema: Node = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def all_rule_sites() -> Iterator[tuple[str, str, int, str]]:
    """``(kind, schema path, index, message)`` of every rule, found by walking each CRD's schema."""

    def walk(node: Node, path: str) -> Iterator[tuple[str, int, str]]:
        for index, rule in enumerate(node.get("x-kubernetes-validations", [])):
            yield path, index, rule["message"]
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{name}" if path else name)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}[*]")

    for kind in CRDS:
        for path, index, message in walk(schema_of(kind), ""):
            yield kind, path, index, message


def total_rule_count() -> int:
    """Rules anywhere in the CRD documents, counted without knowing the schema's shape."""

    def count(value: Any) -> int:
        if isinstance(value, dict):
            own = len(value.get("x-kubernetes-validations", []))
            return own + sum(count(v) for k, v in value.items() if k != "x-kubernetes-validations")
        if isinstance(value, list):
            return sum(count(v) for v in value)
        return 0

    return sum(count(crd) for crd in CRDS.values())


BASE: dict[str, Node] = {
    "Product": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Product",
        "metadata": {"name": "payments"},
        "spec": {
            "residency": "EU",
            "regions": ["europe-west1", "europe-north1"],
            "defaultPlan": "free",
            "plans": [
                {"name": "free", "tier": "free", "rateLimit": {"requestsPerSecond": 5, "burst": 10}},
                {
                    "name": "pro",
                    "tier": "pro",
                    "rateLimit": {"requestsPerSecond": 100},
                    "apiKeyRateLimit": {"requestsPerSecond": 20},
                },
            ],
            "tenants": [
                {
                    "id": "acme",
                    "plan": "pro",
                    "region": "europe-west1",
                    "rateLimit": {"requestsPerSecond": 200, "burst": 400},
                }
            ],
        },
    },
    "Route": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": "charges"},
        "spec": {
            "productRef": {"name": "payments"},
            "policyRef": {"name": "payments-policy", "version": "1.3.0"},
            "match": {
                "hosts": ["api.example.com"],
                "pathPrefix": "/v1",
                "headers": [{"name": "x-tenant", "exact": "acme"}],
            },
            "backend": {"service": {"name": "charges", "port": 8080}},
            "canary": {"backend": {"url": "https://canary.example.com"}, "steps": [10, 50, 100]},
        },
    },
    "PolicyBundle": {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "PolicyBundle",
        "metadata": {"name": "payments-policy"},
        "spec": {
            "version": "1.3.0",
            "auth": {"jwt": {"issuer": "https://id.example.com", "jwksUri": "https://id.example.com/jwks"}},
            "cors": {"allowOrigins": ["https://shop.example.com"], "allowCredentials": True},
        },
    },
}

WORKER = {"image": "registry.example.com/charges:1.2.0"}
# Edits that make BASE["Route"] an async Route (async settings need mode async).
ASYNC: tuple[tuple[Path, Any], ...] = ((("spec", "mode"), "async"), (("spec", "worker"), WORKER))


@dataclass(frozen=True)
class Case:
    """One object built from ``BASE[kind]`` and its verdict on one rule."""

    name: str
    kind: str
    site: str
    message: str
    edits: tuple[tuple[Path, Any], ...]
    rejected_at: str | None = None
    # What the API server prints when the rule has a messageExpression (the
    # message with the refused value); ``message`` otherwise.
    shown: str | None = None

    @property
    def accepts(self) -> bool:
        return self.rejected_at is None

    def build(self) -> Node:
        obj = copy.deepcopy(BASE[self.kind])
        for path, value in self.edits:
            target: Any = obj
            for step in path[:-1]:
                target = target[step]
            if value is DELETE:
                del target[path[-1]]
            else:
                target[path[-1]] = copy.deepcopy(value)
        return obj


def accept(name: str, kind: str, site: str, message: str, *edits: tuple[Path, Any]) -> Case:
    return Case(name, kind, site, message, edits)


def reject(
    name: str, kind: str, site: str, message: str, at: str, *edits: tuple[Path, Any], got: str | None = None
) -> Case:
    """``got``: the refused value the rule's messageExpression appends (`` (got '<value>')``)."""
    shown = f"{message} (got '{got}')" if got is not None else None
    return Case(name, kind, site, message, edits, rejected_at=at, shown=shown)


def pattern_cases(
    name: str,
    kind: str,
    site: str,
    message: str,
    at: str,
    edit: Any,
    good: str,
    bad: str,
    *extra: tuple[Path, Any],
    show_value: bool = True,
) -> list[Case]:
    """Accept ``good`` and reject ``bad`` at a field declared with ``matching`` (``edit(value)`` sets it)."""
    return [
        Case(f"{name}-allowed", kind, site, message, (*extra, *edit(good))),
        Case(
            f"{name}-refused",
            kind,
            site,
            message,
            (*extra, *edit(bad)),
            rejected_at=at,
            shown=f"'{bad}' {message}" if show_value else message,
        ),
    ]


def _set(*path: str | int) -> Any:
    return lambda value: ((path, value),)


P, R, B = "Product", "Route", "PolicyBundle"

CASES = [
    # --- Product: residency ---
    accept("eu-regions-in-eu", P, "spec", product.RESIDENCY_MESSAGE),
    accept(
        "asia-allows-australia",
        P,
        "spec",
        product.RESIDENCY_MESSAGE,
        (("spec", "residency"), "ASIA"),
        (("spec", "regions"), ["asia-east1", "australia-southeast1"]),
        (("spec", "tenants", 0, "region"), "asia-east1"),
    ),
    accept(
        "residency-defaults-to-global",
        P,
        "spec",
        product.RESIDENCY_MESSAGE,
        (("spec", "residency"), DELETE),
        (("spec", "regions"), ["us-east1", "europe-west1"]),
    ),
    reject(
        "us-region-in-eu",
        P,
        "spec",
        product.RESIDENCY_MESSAGE,
        "spec.regions",
        (("spec", "regions"), ["europe-west1", "us-central1"]),
    ),
    # --- Product: unique plans / regions ---
    accept("distinct-plans", P, "spec", product.UNIQUE_PLANS_MESSAGE),
    reject(
        "two-plans-named-pro",
        P,
        "spec",
        product.UNIQUE_PLANS_MESSAGE,
        "spec.plans",
        (("spec", "plans", 0, "name"), "pro"),
        (("spec", "defaultPlan"), "pro"),
    ),
    accept("distinct-regions", P, "spec", product.UNIQUE_REGIONS_MESSAGE),
    reject(
        "region-twice",
        P,
        "spec",
        product.UNIQUE_REGIONS_MESSAGE,
        "spec.regions",
        (("spec", "regions"), ["europe-west1", "europe-west1"]),
    ),
    # --- Product: tenants ---
    accept(
        "tenant-on-free-plan",
        P,
        "spec",
        product.TENANT_PLAN_MESSAGE,
        (("spec", "tenants", 0, "plan"), "free"),
    ),
    reject(
        "tenant-on-unknown-plan",
        P,
        "spec",
        product.TENANT_PLAN_MESSAGE,
        "spec.tenants",
        (("spec", "tenants", 0, "plan"), "gold"),
    ),
    accept(
        "tenant-without-region",
        P,
        "spec",
        product.TENANT_REGION_MESSAGE,
        (("spec", "tenants", 0, "region"), DELETE),
    ),
    reject(
        "tenant-region-not-served",
        P,
        "spec",
        product.TENANT_REGION_MESSAGE,
        "spec.tenants",
        (("spec", "tenants", 0, "region"), "europe-west9"),
    ),
    accept("no-default-plan", P, "spec", product.DEFAULT_PLAN_MESSAGE, (("spec", "defaultPlan"), DELETE)),
    reject(
        "default-plan-unknown",
        P,
        "spec",
        product.DEFAULT_PLAN_MESSAGE,
        "spec.defaultPlan",
        (("spec", "defaultPlan"), "gold"),
    ),
    # --- Product: burst, at each of the three places a RateLimit appears ---
    accept(
        "plan-burst-equals-rate",
        P,
        "spec.plans[*].rateLimit",
        product.BURST_MESSAGE,
        (("spec", "plans", 0, "rateLimit", "burst"), 5),
    ),
    reject(
        "plan-burst-below-rate",
        P,
        "spec.plans[*].rateLimit",
        product.BURST_MESSAGE,
        "spec.plans[0].rateLimit.burst",
        (("spec", "plans", 0, "rateLimit", "burst"), 2),
    ),
    accept("api-key-burst-absent", P, "spec.plans[*].apiKeyRateLimit", product.BURST_MESSAGE),
    reject(
        "api-key-burst-below-rate",
        P,
        "spec.plans[*].apiKeyRateLimit",
        product.BURST_MESSAGE,
        "spec.plans[1].apiKeyRateLimit.burst",
        (("spec", "plans", 1, "apiKeyRateLimit", "burst"), 19),
    ),
    accept("tenant-burst-above-rate", P, "spec.tenants[*].rateLimit", product.BURST_MESSAGE),
    reject(
        "tenant-burst-below-rate",
        P,
        "spec.tenants[*].rateLimit",
        product.BURST_MESSAGE,
        "spec.tenants[0].rateLimit.burst",
        (("spec", "tenants", 0, "rateLimit", "burst"), 1),
    ),
    # --- Route: mode and worker ---
    accept(
        "async-with-worker",
        R,
        "spec",
        route.ASYNC_NEEDS_WORKER_MESSAGE,
        (("spec", "mode"), "async"),
        (("spec", "worker"), WORKER),
    ),
    reject(
        "async-without-worker",
        R,
        "spec",
        route.ASYNC_NEEDS_WORKER_MESSAGE,
        "spec.worker",
        (("spec", "mode"), "async"),
    ),
    accept("sync-without-worker", R, "spec", route.SYNC_FORBIDS_WORKER_MESSAGE),
    reject(
        "sync-with-worker",
        R,
        "spec",
        route.SYNC_FORBIDS_WORKER_MESSAGE,
        "spec.worker",
        (("spec", "worker"), WORKER),
    ),
    accept(
        "async-canary-worker",
        R,
        "spec",
        route.SYNC_CANARY_WORKER_MESSAGE,
        (("spec", "mode"), "async"),
        (("spec", "worker"), WORKER),
        (("spec", "canary", "worker"), {"image": "registry.example.com/charges:1.3.0"}),
    ),
    reject(
        "sync-canary-worker",
        R,
        "spec",
        route.SYNC_CANARY_WORKER_MESSAGE,
        "spec.canary.worker",
        (("spec", "canary", "worker"), {"image": "registry.example.com/charges:1.3.0"}),
    ),
    # --- Route: Pub/Sub back-off ---
    accept(
        "compound-durations-in-order",
        R,
        "spec.async",
        route.MAX_BACKOFF_MESSAGE,
        *ASYNC,
        (("spec", "async"), {"minimumBackoff": "500ms", "maximumBackoff": "1m30s"}),
    ),
    accept(
        "backoff-defaults-in-order",
        R,
        "spec.async",
        route.MAX_BACKOFF_MESSAGE,
        *ASYNC,
        (("spec", "async"), {}),
    ),
    reject(
        "maximum-below-minimum",
        R,
        "spec.async",
        route.MAX_BACKOFF_MESSAGE,
        "spec.async.maximumBackoff",
        *ASYNC,
        (("spec", "async"), {"minimumBackoff": "2m", "maximumBackoff": "90s"}),
    ),
    # --- Route: backends ---
    accept(
        "url-backend",
        R,
        "spec.backend",
        route.ONE_BACKEND_MESSAGE,
        (("spec", "backend"), {"url": "https://charges.example.com/v1"}),
    ),
    reject(
        "service-and-url",
        R,
        "spec.backend",
        route.ONE_BACKEND_MESSAGE,
        "spec.backend",
        (("spec", "backend", "url"), "https://charges.example.com"),
    ),
    reject(
        "no-backend", R, "spec.backend", route.ONE_BACKEND_MESSAGE, "spec.backend", (("spec", "backend"), {})
    ),
    accept(
        "canary-service-backend",
        R,
        "spec.canary.backend",
        route.ONE_BACKEND_MESSAGE,
        (("spec", "canary", "backend"), {"service": {"name": "charges-canary", "port": 8080}}),
    ),
    reject(
        "canary-backend-empty",
        R,
        "spec.canary.backend",
        route.ONE_BACKEND_MESSAGE,
        "spec.canary.backend",
        (("spec", "canary", "backend"), {}),
    ),
    # --- Route: canary ---
    accept(
        "canary-policy-version-only",
        R,
        "spec.canary",
        route.CANARY_CHANGES_SOMETHING_MESSAGE,
        (("spec", "canary"), {"policyVersion": "1.4.0"}),
    ),
    reject(
        "canary-changes-nothing",
        R,
        "spec.canary",
        route.CANARY_CHANGES_SOMETHING_MESSAGE,
        "spec.canary",
        (("spec", "canary"), {"steps": [50, 100]}),
    ),
    accept("steps-increasing", R, "spec.canary", route.STEPS_INCREASING_MESSAGE),
    accept(
        "steps-default-increasing",
        R,
        "spec.canary",
        route.STEPS_INCREASING_MESSAGE,
        (("spec", "canary", "steps"), DELETE),
    ),
    reject(
        "steps-repeated",
        R,
        "spec.canary",
        route.STEPS_INCREASING_MESSAGE,
        "spec.canary.steps",
        (("spec", "canary", "steps"), [10, 10, 100]),
    ),
    reject(
        "steps-decreasing",
        R,
        "spec.canary",
        route.STEPS_INCREASING_MESSAGE,
        "spec.canary.steps",
        (("spec", "canary", "steps"), [50, 25]),
    ),
    # --- Route: canary analysis clocks ---
    accept(
        "window-longer-than-check-interval",
        R,
        "spec.canary.analysis",
        route.WINDOW_COVERS_CHECK_INTERVAL_MESSAGE,
        (("spec", "canary", "analysis"), {"checkInterval": "15s", "window": "2m"}),
    ),
    reject(
        "window-shorter-than-check-interval",
        R,
        "spec.canary.analysis",
        route.WINDOW_COVERS_CHECK_INTERVAL_MESSAGE,
        "spec.canary.analysis.window",
        (("spec", "canary", "analysis"), {"checkInterval": "30s", "window": "20s"}),
    ),
    accept(
        "check-interval-one-second",
        R,
        "spec.canary.analysis",
        route.CHECK_INTERVAL_MINIMUM_MESSAGE,
        (("spec", "canary", "analysis"), {"checkInterval": "1s"}),
    ),
    reject(
        "check-interval-below-one-second",
        R,
        "spec.canary.analysis",
        route.CHECK_INTERVAL_MINIMUM_MESSAGE,
        "spec.canary.analysis.checkInterval",
        (("spec", "canary", "analysis"), {"checkInterval": "500ms"}),
    ),
    # --- Route: match ---
    accept(
        "exact-path-only",
        R,
        "spec.match",
        route.PATH_XOR_PREFIX_MESSAGE,
        (("spec", "match", "pathPrefix"), DELETE),
        (("spec", "match", "path"), "/v1/charges"),
    ),
    reject(
        "path-and-prefix",
        R,
        "spec.match",
        route.PATH_XOR_PREFIX_MESSAGE,
        "spec.match.path",
        (("spec", "match", "path"), "/v1/charges"),
    ),
    accept(
        "header-absent-matcher",
        R,
        "spec.match.headers[*]",
        route.ONE_HEADER_MATCHER_MESSAGE,
        (("spec", "match", "headers"), [{"name": "x-debug", "present": False}]),
    ),
    reject(
        "header-exact-and-prefix",
        R,
        "spec.match.headers[*]",
        route.ONE_HEADER_MATCHER_MESSAGE,
        "spec.match.headers[1]",
        (
            ("spec", "match", "headers"),
            [{"name": "a", "regex": "^x"}, {"name": "b", "exact": "1", "prefix": "1"}],
        ),
    ),
    reject(
        "header-without-matcher",
        R,
        "spec.match.headers[*]",
        route.ONE_HEADER_MATCHER_MESSAGE,
        "spec.match.headers[0]",
        (("spec", "match", "headers"), [{"name": "x-tenant"}]),
    ),
    # --- PolicyBundle ---
    accept("api-key-only", B, "spec.auth", policy.AUTH_REQUIRED_MESSAGE, (("spec", "auth"), {"apiKey": {}})),
    accept(
        "anonymous-allowed",
        B,
        "spec.auth",
        policy.AUTH_REQUIRED_MESSAGE,
        (("spec", "auth"), {"allowAnonymous": True}),
    ),
    reject(
        "no-auth-at-all", B, "spec.auth", policy.AUTH_REQUIRED_MESSAGE, "spec.auth", (("spec", "auth"), {})
    ),
    reject(
        "anonymous-refused-and-nothing-else",
        B,
        "spec.auth",
        policy.AUTH_REQUIRED_MESSAGE,
        "spec.auth",
        (("spec", "auth"), {"allowAnonymous": False}),
    ),
    accept("credentials-with-listed-origins", B, "spec.cors", policy.CREDENTIALS_WILDCARD_MESSAGE),
    accept(
        "wildcard-without-credentials",
        B,
        "spec.cors",
        policy.CREDENTIALS_WILDCARD_MESSAGE,
        (("spec", "cors"), {"allowOrigins": ["*"]}),
    ),
    reject(
        "wildcard-with-credentials",
        B,
        "spec.cors",
        policy.CREDENTIALS_WILDCARD_MESSAGE,
        "spec.cors.allowCredentials",
        (("spec", "cors"), {"allowOrigins": ["https://a.example.com", "*"], "allowCredentials": True}),
    ),
]


# --- Semantic rules: values that are well-formed but mean nothing (issue 12) ---
CANARY_WORKER = {"image": "registry.example.com/charges:1.3.0"}
CASES += [
    accept(
        "async-settings-on-async-route",
        R,
        "spec",
        route.SYNC_FORBIDS_ASYNC_MESSAGE,
        *ASYNC,
        (("spec", "async"), {}),
    ),
    reject(
        "async-settings-on-sync-route",
        R,
        "spec",
        route.SYNC_FORBIDS_ASYNC_MESSAGE,
        "spec.async",
        (("spec", "async"), {"resultTtl": "1h"}),
    ),
    accept("timeout-positive", R, "spec", route.TIMEOUT_POSITIVE_MESSAGE, (("spec", "timeout"), "250ms")),
    reject(
        "timeout-zero",
        R,
        "spec",
        route.TIMEOUT_POSITIVE_MESSAGE,
        "spec.timeout",
        (("spec", "timeout"), "0s"),
        got="0s",
    ),
    accept(
        "per-try-within-timeout",
        R,
        "spec",
        route.PER_TRY_WITHIN_TIMEOUT_MESSAGE,
        (("spec", "timeout"), "10s"),
        (("spec", "retries"), {"perTryTimeout": "10s"}),
    ),
    reject(
        "per-try-above-timeout",
        R,
        "spec",
        route.PER_TRY_WITHIN_TIMEOUT_MESSAGE,
        "spec.retries.perTryTimeout",
        (("spec", "timeout"), "5s"),
        (("spec", "retries"), {"perTryTimeout": "6s"}),
        got="6s', timeout '5s",
    ),
    accept("canary-other-backend", R, "spec", route.CANARY_SAME_BACKEND_MESSAGE),
    reject(
        "canary-same-backend",
        R,
        "spec",
        route.CANARY_SAME_BACKEND_MESSAGE,
        "spec.canary.backend",
        (("spec", "canary", "backend"), {"service": {"name": "charges", "port": 8080}}),
    ),
    accept(
        "canary-other-image",
        R,
        "spec",
        route.CANARY_SAME_IMAGE_MESSAGE,
        *ASYNC,
        (("spec", "canary", "worker"), CANARY_WORKER),
    ),
    reject(
        "canary-same-image",
        R,
        "spec",
        route.CANARY_SAME_IMAGE_MESSAGE,
        "spec.canary.worker.image",
        *ASYNC,
        (("spec", "canary", "worker"), {"image": WORKER["image"], "replicas": 1}),
        got="registry.example.com/charges:1.2.0",
    ),
    accept(
        "canary-other-policy-version",
        R,
        "spec",
        route.CANARY_SAME_POLICY_MESSAGE,
        (("spec", "canary", "policyVersion"), "1.4.0"),
    ),
    reject(
        "canary-same-policy-version",
        R,
        "spec",
        route.CANARY_SAME_POLICY_MESSAGE,
        "spec.canary.policyVersion",
        (("spec", "canary", "policyVersion"), "1.3.0"),
        got="1.3.0",
    ),
    accept("canary-interval-positive", R, "spec.canary", route.INTERVAL_POSITIVE_MESSAGE),
    reject(
        "canary-interval-zero",
        R,
        "spec.canary",
        route.INTERVAL_POSITIVE_MESSAGE,
        "spec.canary.interval",
        (("spec", "canary", "interval"), "0s"),
        got="0s",
    ),
    accept(
        "result-ttl-one-second",
        R,
        "spec.async",
        route.RESULT_TTL_MINIMUM_MESSAGE,
        *ASYNC,
        (("spec", "async"), {"resultTtl": "1s"}),
    ),
    reject(
        "result-ttl-zero",
        R,
        "spec.async",
        route.RESULT_TTL_MINIMUM_MESSAGE,
        "spec.async.resultTtl",
        *ASYNC,
        (("spec", "async"), {"resultTtl": "0s"}),
        got="0s",
    ),
    accept("jwks-over-https", B, "spec.auth.jwt", policy.JWKS_HTTPS_MESSAGE),
    accept(
        "jwks-over-http-with-opt-in",
        B,
        "spec.auth.jwt",
        policy.JWKS_HTTPS_MESSAGE,
        (("spec", "auth", "jwt", "jwksUri"), "http://keys.internal:8080/jwks"),
        (("spec", "auth", "jwt", "allowInsecureJwks"), True),
    ),
    reject(
        "jwks-over-http",
        B,
        "spec.auth.jwt",
        policy.JWKS_HTTPS_MESSAGE,
        "spec.auth.jwt.jwksUri",
        (("spec", "auth", "jwt", "jwksUri"), "http://keys.internal:8080/jwks"),
        got="http://keys.internal:8080/jwks",
    ),
]

# --- Pattern rules: each says what is allowed instead of printing its regex ---
_RESOURCES = ("spec", "worker", "resources")
_HEADERS = ("spec", "headers")
CASES += [
    *pattern_cases(
        "host-port",
        R,
        "spec.match.hosts[*]",
        route.HOST_MESSAGE,
        "spec.match.hosts[0]",
        lambda v: ((("spec", "match", "hosts"), [v]),),
        "api.example.com:65535",
        "api.example.com:65536",
    ),
    *pattern_cases(
        "backend-url",
        R,
        "spec.backend.url",
        route.URL_MESSAGE,
        "spec.backend.url",
        lambda v: ((("spec", "backend"), {"url": v}),),
        "https://charges.example.com/v1",
        "https://charges.example.com/v1?key=1",
    ),
    *pattern_cases(
        "canary-url",
        R,
        "spec.canary.backend.url",
        route.URL_MESSAGE,
        "spec.canary.backend.url",
        _set("spec", "canary", "backend", "url"),
        "https://canary.example.com/v2",
        "https://canary.example.com/#x",
    ),
    *pattern_cases(
        "match-header-name",
        R,
        "spec.match.headers[*].name",
        common.HEADER_NAME_MESSAGE,
        "spec.match.headers[0].name",
        _set("spec", "match", "headers", 0, "name"),
        "x-tenant",
        "x tenant",
    ),
    *pattern_cases(
        "request-cpu",
        R,
        "spec.worker.resources.requests.cpu",
        route.CPU_MESSAGE,
        "spec.worker.resources.requests.cpu",
        lambda v: (((*_RESOURCES,), {"requests": {"cpu": v}}),),
        "250m",
        "250 m",
        *ASYNC,
    ),
    *pattern_cases(
        "request-memory",
        R,
        "spec.worker.resources.requests.memory",
        route.MEMORY_MESSAGE,
        "spec.worker.resources.requests.memory",
        lambda v: (((*_RESOURCES,), {"requests": {"memory": v}}),),
        "64Mi",
        "64MB",
        *ASYNC,
    ),
    *pattern_cases(
        "limit-cpu",
        R,
        "spec.worker.resources.limits.cpu",
        route.CPU_MESSAGE,
        "spec.worker.resources.limits.cpu",
        lambda v: (((*_RESOURCES,), {"limits": {"cpu": v}}),),
        "2",
        "two",
        *ASYNC,
    ),
    *pattern_cases(
        "limit-memory",
        R,
        "spec.worker.resources.limits.memory",
        route.MEMORY_MESSAGE,
        "spec.worker.resources.limits.memory",
        lambda v: (((*_RESOURCES,), {"limits": {"memory": v}}),),
        "1Gi",
        "1 GiB",
        *ASYNC,
    ),
    *pattern_cases(
        "tenant-id",
        P,
        "spec.tenants[*].id",
        product.TENANT_ID_MESSAGE,
        "spec.tenants[0].id",
        _set("spec", "tenants", 0, "id"),
        "acme.eu_1",
        "-acme",
    ),
    *pattern_cases(
        "jwks-uri",
        B,
        "spec.auth.jwt.jwksUri",
        policy.JWKS_URI_MESSAGE,
        "spec.auth.jwt.jwksUri",
        _set("spec", "auth", "jwt", "jwksUri"),
        "https://id.example.com/keys",
        "https://",
    ),
    *pattern_cases(
        "cors-origin",
        B,
        "spec.cors.allowOrigins[*]",
        policy.CORS_ORIGIN_MESSAGE,
        "spec.cors.allowOrigins[0]",
        lambda v: ((("spec", "cors", "allowOrigins"), [v]),),
        "https://*.example.com",
        "https://*example.com",
    ),
    *pattern_cases(
        "cors-allow-header",
        B,
        "spec.cors.allowHeaders[*]",
        common.HEADER_NAME_MESSAGE,
        "spec.cors.allowHeaders[0]",
        lambda v: ((("spec", "cors", "allowHeaders"), [v]),),
        "x-tenant",
        "x:tenant",
    ),
    *pattern_cases(
        "cors-expose-header",
        B,
        "spec.cors.exposeHeaders[*]",
        common.HEADER_NAME_MESSAGE,
        "spec.cors.exposeHeaders[0]",
        lambda v: ((("spec", "cors", "exposeHeaders"), [v]),),
        "x-trace",
        "x trace",
    ),
    *pattern_cases(
        "ip-allowlist",
        B,
        "spec.ipAllowlist[*]",
        policy.CIDR_MESSAGE,
        "spec.ipAllowlist[0]",
        lambda v: ((("spec", "ipAllowlist"), [v]),),
        "2001:db8::/32",
        "10.0.0.0/33",
    ),
    *pattern_cases(
        "api-key-header",
        B,
        "spec.auth.apiKey.header",
        common.HEADER_NAME_MESSAGE,
        "spec.auth.apiKey.header",
        lambda v: ((("spec", "auth", "apiKey"), {"header": v}),),
        "x-api-key",
        "x api key",
    ),
    *pattern_cases(
        "authz-rule-name",
        B,
        "spec.authz.rules[*].name",
        policy.AUTHZ_RULE_NAME_MESSAGE,
        "spec.authz.rules[0].name",
        lambda v: ((("spec", "authz"), {"rules": [{"name": v}]}),),
        "read-charges",
        "Read_Charges",
    ),
]
# Names, versions, paths and images: the same words instead of the regex.
CASES += [
    *pattern_cases(
        "plan-name",
        P,
        "spec.plans[*].name",
        common.DNS_LABEL_MESSAGE,
        "spec.plans[0].name",
        _set("spec", "plans", 0, "name"),
        "basic",
        "Basic",
        (("spec", "defaultPlan"), DELETE),
    ),
    *pattern_cases(
        "region-name",
        P,
        "spec.regions[*]",
        product.REGION_MESSAGE,
        "spec.regions[1]",
        _set("spec", "regions", 1),
        "europe-west4",
        "europe-north",
    ),
    *pattern_cases(
        "product-ref",
        R,
        "spec.productRef.name",
        common.DNS_LABEL_MESSAGE,
        "spec.productRef.name",
        _set("spec", "productRef", "name"),
        "payments-eu",
        "Payments",
    ),
    *pattern_cases(
        "policy-ref",
        R,
        "spec.policyRef.name",
        common.DNS_LABEL_MESSAGE,
        "spec.policyRef.name",
        _set("spec", "policyRef", "name"),
        "payments-policy-v2",
        "payments_policy",
    ),
    *pattern_cases(
        "policy-version",
        R,
        "spec.policyRef.version",
        common.SEMVER_MESSAGE,
        "spec.policyRef.version",
        _set("spec", "policyRef", "version"),
        "1.3.1-rc.1",
        "1.3",
    ),
    *pattern_cases(
        "path-prefix",
        R,
        "spec.match.pathPrefix",
        common.PATH_MESSAGE,
        "spec.match.pathPrefix",
        _set("spec", "match", "pathPrefix"),
        "/v2",
        "v2",
    ),
    *pattern_cases(
        "exact-path",
        R,
        "spec.match.path",
        common.PATH_MESSAGE,
        "spec.match.path",
        _set("spec", "match", "path"),
        "/v1/charges",
        "v1/charges",
        (("spec", "match", "pathPrefix"), DELETE),
    ),
    *pattern_cases(
        "service-name",
        R,
        "spec.backend.service.name",
        common.DNS_LABEL_MESSAGE,
        "spec.backend.service.name",
        _set("spec", "backend", "service", "name"),
        "charges-v1",
        "Charges",
    ),
    *pattern_cases(
        "canary-service-name",
        R,
        "spec.canary.backend.service.name",
        common.DNS_LABEL_MESSAGE,
        "spec.canary.backend.service.name",
        lambda v: ((("spec", "canary", "backend"), {"service": {"name": v, "port": 8080}}),),
        "charges-v2",
        "charges_v2",
    ),
    *pattern_cases(
        "worker-image",
        R,
        "spec.worker.image",
        route.IMAGE_MESSAGE,
        "spec.worker.image",
        _set("spec", "worker", "image"),
        "registry.example.com/charges:2",
        "charges 2",
        *ASYNC,
    ),
    *pattern_cases(
        "canary-worker-image",
        R,
        "spec.canary.worker.image",
        route.IMAGE_MESSAGE,
        "spec.canary.worker.image",
        lambda v: ((("spec", "canary", "worker"), {"image": v}),),
        "registry.example.com/charges:3",
        "charges 3",
        *ASYNC,
    ),
    *pattern_cases(
        "canary-policy-version",
        R,
        "spec.canary.policyVersion",
        common.SEMVER_MESSAGE,
        "spec.canary.policyVersion",
        _set("spec", "canary", "policyVersion"),
        "1.4.0",
        "v1.4.0",
    ),
    *pattern_cases(
        "bundle-version",
        B,
        "spec.version",
        common.SEMVER_MESSAGE,
        "spec.version",
        _set("spec", "version"),
        "2.0.0",
        "2.0",
    ),
    *pattern_cases(
        "api-key-query-parameter",
        B,
        "spec.auth.apiKey.queryParameter",
        policy.QUERY_PARAMETER_MESSAGE,
        "spec.auth.apiKey.queryParameter",
        lambda v: ((("spec", "auth", "apiKey"), {"queryParameter": v}),),
        "api_key",
        "api key",
    ),
    *pattern_cases(
        "authz-path",
        B,
        "spec.authz.rules[*].paths[*]",
        common.PATH_MESSAGE,
        "spec.authz.rules[0].paths[0]",
        lambda v: ((("spec", "authz"), {"rules": [{"name": "read", "paths": [v]}]}),),
        "/v1/",
        "v1/",
    ),
]
# Durations: the words instead of the regex, and no second error from rules
# that read the malformed duration with duration() (they are guarded).
_DURATIONS: list[tuple[str, str, Path, str, tuple[tuple[Path, Any], ...]]] = [
    (R, "spec.timeout", ("spec", "timeout"), "15s", ()),
    (
        R,
        "spec.retries.perTryTimeout",
        ("spec", "retries", "perTryTimeout"),
        "3s",
        ((("spec", "retries"), {}),),
    ),
    (
        R,
        "spec.retries.backoff.baseInterval",
        ("spec", "retries", "backoff", "baseInterval"),
        "50ms",
        ((("spec", "retries"), {"backoff": {}}),),
    ),
    (
        R,
        "spec.retries.backoff.maxInterval",
        ("spec", "retries", "backoff", "maxInterval"),
        "1s",
        ((("spec", "retries"), {"backoff": {}}),),
    ),
    (
        R,
        "spec.async.minimumBackoff",
        ("spec", "async", "minimumBackoff"),
        "5s",
        (*ASYNC, (("spec", "async"), {})),
    ),
    (
        R,
        "spec.async.maximumBackoff",
        ("spec", "async", "maximumBackoff"),
        "60s",
        (*ASYNC, (("spec", "async"), {})),
    ),
    (R, "spec.async.resultTtl", ("spec", "async", "resultTtl"), "2h", (*ASYNC, (("spec", "async"), {}))),
    (
        R,
        "spec.async.messageRetention",
        ("spec", "async", "messageRetention"),
        "24h",
        (*ASYNC, (("spec", "async"), {})),
    ),
    (R, "spec.canary.interval", ("spec", "canary", "interval"), "2m", ()),
    (
        R,
        "spec.canary.analysis.checkInterval",
        ("spec", "canary", "analysis", "checkInterval"),
        "15s",
        ((("spec", "canary", "analysis"), {}),),
    ),
    (
        R,
        "spec.canary.analysis.window",
        ("spec", "canary", "analysis", "window"),
        "2m",
        ((("spec", "canary", "analysis"), {}),),
    ),
    (B, "spec.auth.jwt.jwksCacheDuration", ("spec", "auth", "jwt", "jwksCacheDuration"), "600s", ()),
    (B, "spec.rolloutWindow", ("spec", "rolloutWindow"), "48h", ()),
]
for _kind, _site, _path, _good, _extra in _DURATIONS:
    CASES += pattern_cases(
        f"duration-{_site.rsplit('.', 1)[-1]}",
        _kind,
        _site,
        common.DURATION_MESSAGE,
        _site,
        lambda v, path=_path: ((path, v),),
        _good,
        "30 seconds",
        *_extra,
    )
for _direction in ("request", "response"):
    CASES += [
        *pattern_cases(
            f"{_direction}-set-name",
            B,
            f"spec.headers.{_direction}.set[*].name",
            common.HEADER_NAME_MESSAGE,
            f"spec.headers.{_direction}.set[0].name",
            lambda v, d=_direction: (((*_HEADERS,), {d: {"set": [{"name": v, "value": "1"}]}}),),
            "x-region",
            "x region",
        ),
        *pattern_cases(
            f"{_direction}-set-value",
            B,
            f"spec.headers.{_direction}.set[*].value",
            policy.HEADER_VALUE_MESSAGE,
            f"spec.headers.{_direction}.set[0].value",
            lambda v, d=_direction: (((*_HEADERS,), {d: {"set": [{"name": "x-region", "value": v}]}}),),
            "eu\tone",
            "eu\r\nx-admin: 1",
            show_value=False,
        ),
        *pattern_cases(
            f"{_direction}-remove",
            B,
            f"spec.headers.{_direction}.remove[*]",
            common.HEADER_NAME_MESSAGE,
            f"spec.headers.{_direction}.remove[0]",
            lambda v, d=_direction: (((*_HEADERS,), {d: {"remove": [v]}}),),
            "server",
            "x(server)",
        ),
    ]


def target_outcomes(case: Case, outcomes: list[celcheck.RuleOutcome]) -> list[celcheck.RuleOutcome]:
    return [o for o in outcomes if o.site.schema_path == case.site and o.site.message == case.message]


def pydantic_errors(kind: str, obj: Node) -> list[str] | None:
    """The model's error messages for ``obj`` as ``apx translate`` prints them, or None when it accepts it."""
    try:
        RESOURCE_MODELS[kind].model_validate(obj)
    except pydantic.ValidationError as error:
        return format_validation_error(error)
    return None


def test_cases_have_unique_names() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_rule_verdict_matches_case(case: Case) -> None:
    schema = schema_of(case.kind)
    obj = case.build()
    # The case must be about the rule, not about a schema error next to it.
    assert list(jsonschema.Draft4Validator(schema).iter_errors(obj)) == []

    outcomes = celcheck.evaluate(schema, obj)
    mine = target_outcomes(case, outcomes)
    assert mine, f"rule {case.site!r} / {case.message!r} was not evaluated"
    violations = celcheck.validate(schema, obj)
    if case.accepts:
        assert all(o.passed for o in mine)
        assert violations == []
    else:
        assert [(v.field, v.message) for v in violations] == [(case.rejected_at, case.shown or case.message)]
        assert [o.site.key for o in mine if not o.passed] == [mine[0].site.key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_pydantic_mirror_agrees_with_the_cel_rule(case: Case) -> None:
    obj = case.build()
    # The operator reads objects as the API server stores them (defaulted);
    # `apx translate` reads them as written. Both must get the same verdict.
    for variant in (obj, celcheck.apply_defaults(schema_of(case.kind), obj)):
        errors = pydantic_errors(case.kind, variant)
        if case.accepts:
            assert errors is None, errors
        else:
            assert errors is not None, "pydantic accepted what the CEL rule rejects"
            assert any(case.message in message for message in errors), (case.message, errors)


def test_every_rule_in_the_crds_has_an_accepting_and_a_rejecting_case() -> None:
    accepted: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    rejected: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for case in CASES:
        outcomes = celcheck.evaluate(schema_of(case.kind), case.build())
        for outcome in target_outcomes(case, outcomes):
            key = (case.kind, outcome.site.schema_path, outcome.site.index)
            if case.accepts and outcome.passed:
                accepted[key].add(case.name)
            if not case.accepts and not outcome.passed:
                rejected[key].add(case.name)

    sites = {(kind, path, index): message for kind, path, index, message in all_rule_sites()}
    assert len(sites) == total_rule_count()
    missing_accept = sorted(f"{k[0]} {k[1]}: {sites[k]}" for k in sites if not accepted.get(k))
    missing_reject = sorted(f"{k[0]} {k[1]}: {sites[k]}" for k in sites if not rejected.get(k))
    assert not missing_accept, f"rules without an accepting case: {missing_accept}"
    assert not missing_reject, f"rules without a rejecting case: {missing_reject}"
    covered = {k for k in sites if accepted.get(k) and rejected.get(k)}
    assert len(covered) == total_rule_count()


def test_celcheck_finds_every_rule_the_crds_hold() -> None:
    found = {
        (kind, site.schema_path, site.index)
        for kind in CRDS
        for site in celcheck.iter_rule_sites(schema_of(kind))
    }
    assert found == {(kind, path, index) for kind, path, index, _ in all_rule_sites()}


# --- Kubernetes semantics the helper emulates -----------------------------------------------------------


def test_defaults_are_applied_before_rules_run() -> None:
    # Without the API server's defaulting, `self.residency` would not exist and
    # the residency rule would fail to evaluate instead of passing.
    obj = Case("", P, "", "", ((("spec", "residency"), DELETE),)).build()
    schema = schema_of(P)
    raw = [
        o
        for o in celcheck.evaluate(schema, obj, defaults=False)
        if o.site.message == product.RESIDENCY_MESSAGE
    ]
    assert not raw[0].passed
    assert raw[0].violation is not None
    assert raw[0].violation.message.startswith("failed rule: self.residency == 'GLOBAL'")
    assert "no such key: residency" in raw[0].violation.message
    assert celcheck.validate(schema, obj) == []
    assert "residency" not in obj["spec"], "apply_defaults must not touch its input"


def test_absent_fields_without_defaults_stay_absent() -> None:
    defaulted = celcheck.apply_defaults(
        schema_of(R),
        Case(
            "", R, "", "", ((("spec", "backend"), {}), (("spec", "async"), {"minimumBackoff": "10s"}))
        ).build(),
    )
    assert defaulted["spec"]["backend"] == {}
    assert defaulted["spec"]["mode"] == "sync"
    assert "worker" not in defaulted["spec"]
    # Object defaults are left to the models, but a written object gets its scalar defaults.
    assert "retries" not in defaulted["spec"]
    assert defaulted["spec"]["async"]["ackDeadlineSeconds"] == 60


SYNTHETIC: Node = {
    "type": "object",
    "properties": {
        "ratio": {"type": "number"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.n > 0", "message": "n must be positive"}],
            },
        },
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "x-kubernetes-validations": [
                    {"rule": "self.size() < 4", "messageExpression": "'label too long: ' + self"}
                ],
            },
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "type(self.ratio) == double",
            "message": "ratio must be a double",
            "reason": "FieldValueForbidden",
        },
        {"rule": "!has(self.old) || self.old == oldSelf.old", "message": "transition rule"},
        {"rule": "self.missing.size() > 0", "message": "never shown"},
    ],
}


def test_numbers_are_doubles_rules_run_per_item_and_map_value_and_message_expressions_apply() -> None:
    violations = celcheck.validate(
        SYNTHETIC, {"ratio": 1, "items": [{"n": 1}, {"n": 0}], "labels": {"a": "long"}}
    )
    assert [str(v) for v in violations] == [
        '<root>: Invalid value: "object": failed rule: self.missing.size() > 0: no such key: missing',
        'items[1]: Invalid value: "object": n must be positive',
        'labels[a]: Invalid value: "string": label too long: long',
    ]


def test_transition_rules_are_skipped_as_on_create() -> None:
    outcomes = celcheck.evaluate(SYNTHETIC, {"ratio": 1.5})
    assert "transition rule" not in [o.site.message for o in outcomes]


def test_reason_changes_the_wording_like_the_api_server() -> None:
    violation = celcheck.CelViolation("spec.x", "nope", "false", "FieldValueForbidden")
    assert str(violation) == "spec.x: Forbidden: nope"
    assert str(celcheck.CelViolation("spec.x", "nope", "false")) == 'spec.x: Invalid value: "object": nope'


def test_duplicate_tenant_ids_are_refused_by_the_list_map_and_by_pydantic() -> None:
    obj = copy.deepcopy(BASE[P])
    obj["spec"]["tenants"].append({"id": "acme", "plan": "free"})
    schema = schema_of(P)
    assert celcheck.validate(schema, obj) == []
    assert [str(v) for v in celcheck.list_key_violations(schema, obj)] == [
        'spec.tenants[1]: Duplicate value: {"id": "acme"}'
    ]
    errors = pydantic_errors(P, obj)
    assert errors is not None and any(product.UNIQUE_TENANTS_MESSAGE in e for e in errors)
    assert celcheck.list_key_violations(schema, BASE[P]) == []


# --- CEL cost: what the API server checks when the CRD itself is applied ------------------------------
#
# The API server estimates the worst-case cost of every rule from the schema's
# maxItems/maxLength and refuses the whole CRD when one rule exceeds 1e7 units
# (or all rules together 1e8). No API server runs here, so these tests check
# the two things that estimate depends on, for the rule shapes APX uses: every
# list and string a rule reads is bounded, and nested iteration stays small.
# One comprehension step costs roughly ten units (selects, a comparison, the
# accumulator), so a budget of 1e5 iterations keeps a 10x margin; the pairwise
# tenant-id check over 1,000 tenants this replaced was 1e6 iterations (~1.3e7).

MACRO = re.compile(r"([A-Za-z_][\w.]*)\.(all|exists_one|exists|filter|map)\((\w+),")
CHAIN = re.compile(r"(duration\()?\b([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)")
SCANS = re.compile(r"(?:\bin\s+([A-Za-z_][\w.]*))|(?:([A-Za-z_][\w.]*)\.isSorted\(\))")
ITERATION_BUDGET = 100_000


def rule_nodes() -> Iterator[tuple[str, str, Node, int, str]]:
    """``(kind, schema path, node, cardinality, rule)``; cardinality: how often the node can occur."""

    def walk(node: Node, path: str, cardinality: int) -> Iterator[tuple[str, Node, int, str]]:
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, cardinality, rule["rule"]
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{name}" if path else name, cardinality)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}[*]", cardinality * int(node.get("maxItems", 10**6)))

    for kind in CRDS:
        for path, node, cardinality, rule in walk(schema_of(kind), "", 1):
            yield kind, path, node, cardinality, rule


def _resolve(env: dict[str, Node], dotted: str) -> list[Node]:
    """Schema nodes along ``var.field.field``; stops at the first name that is not a field (a method)."""
    head, *steps = dotted.split(".")
    if head not in env:
        return []
    nodes = [env[head]]
    for step in steps:
        properties = nodes[-1].get("properties", {})
        if step not in properties:
            break
        nodes.append(properties[step])
    return nodes


def _span(rule: str, open_paren: int) -> int:
    depth = 0
    for index in range(open_paren, len(rule)):
        depth += {"(": 1, ")": -1}.get(rule[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {rule!r}")


def analyse(node: Node, rule: str) -> tuple[list[str], int]:
    """(unbounded lists/strings the rule reads, worst-case comprehension iterations) of one rule."""
    env: dict[str, Node] = {"self": node}
    loops: list[tuple[int, int, int]] = []  # (start, end, size) of each comprehension or scan
    for match in MACRO.finditer(rule):
        ranged = _resolve(env, match.group(1))
        # Comprehensions over list literals ([has(self.a), ...].filter) do not
        # match MACRO and cost a constant; anything else must resolve to a list.
        assert ranged and ranged[-1].get("type") == "array", (
            f"cannot tell what {match.group(1)} is in {rule!r}"
        )
        env[match.group(3)] = ranged[-1]["items"]
        size = int(ranged[-1].get("maxItems", 10**6))
        loops.append((match.start(), _span(rule, match.end() - len(match.group(3)) - 2), size))
    for match in SCANS.finditer(rule):
        ranged = _resolve(env, match.group(1) or match.group(2))
        if ranged and ranged[-1].get("type") == "array":
            loops.append((match.start(), match.end(), int(ranged[-1].get("maxItems", 10**6))))

    unbounded = []
    for match in CHAIN.finditer(rule):
        for reached in _resolve(env, f"{match.group(2)}{match.group(3)}")[1:]:
            if reached.get("type") == "array" and "maxItems" not in reached:
                unbounded.append(f"{match.group(0)}: list without maxItems")
            bounded_string = "maxLength" in reached or "enum" in reached
            # duration() parses in constant cost; any other string use scales with its length.
            if reached.get("type") == "string" and not bounded_string and not match.group(1):
                unbounded.append(f"{match.group(0)}: string without maxLength")

    iterations = 0
    for start, end, size in loops:
        enclosing = [s for (s0, e0, s) in loops if s0 < start and end <= e0]
        iterations += size * math.prod(enclosing)
    return unbounded, iterations


def test_every_list_and_string_a_rule_reads_is_bounded() -> None:
    problems = []
    for kind, path, node, _, rule in rule_nodes():
        unbounded, _ = analyse(node, rule)
        problems += [f"{kind} {path}: {problem}" for problem in unbounded]
    assert not problems, problems


def test_rules_iterate_within_budget_counting_every_place_the_rule_runs() -> None:
    over = []
    for kind, path, node, cardinality, rule in rule_nodes():
        _, iterations = analyse(node, rule)
        if max(iterations, 1) * cardinality > ITERATION_BUDGET:
            over.append(f"{kind} {path}: {iterations} iterations x {cardinality} places: {rule}")
    assert not over, over


def test_cost_analysis_flags_pairwise_checks_over_large_lists() -> None:
    tenants = schema_of(P)["properties"]["spec"]
    unbounded, iterations = analyse(tenants, "self.tenants.all(t, self.tenants.exists_one(u, u.id == t.id))")
    assert iterations > ITERATION_BUDGET
    # Tenant ids are bounded (maxLength 63), so only the pairwise loop is flagged.
    assert unbounded == []
    assert analyse(tenants, "self.regions.all(r, r in self.regions)")[1] == 16 + 16 * 16
