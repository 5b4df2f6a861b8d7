"""The PolicyBundle resource: versioned auth, authz, transforms and limits policy.

Read by the translator and by ``apx.controllers.policy_artifacts``, which
compiles each version into an immutable artifact ``name@version@sha256:…``.

How two versions coexist: a PolicyBundle object carries one version in its
spec (N). When the spec moves to a new version, the operator keeps the compiled
previous version (N-1) in ``status.servedVersions`` (and in an immutable
ConfigMap), so Routes pinned to N-1 keep being served during the rollout
window. Offline, ``apx translate`` reads the same history either from that
status or from several documents of the same bundle given in one run (they are
taken as successive applies, ordered by version).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .common import (
    PATH_MESSAGE,
    PATH_PATTERN,
    ApxModel,
    Condition,
    DeletionPolicy,
    Duration,
    HeaderName,
    HttpMethod,
    SemVer,
    cel,
    cel_rules,
    matching,
    shared_default,
)

Compat = Literal["backward", "breaking"]
RateLimitAlgorithm = Literal["sliding-window", "token-bucket", "fixed-window"]
FailureMode = Literal["open", "closed"]

CIDR_PATTERN = (
    r"^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    r"/(3[0-2]|[12]?[0-9])|[0-9a-fA-F:]+:[0-9a-fA-F:]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
)

CIDR_MESSAGE = "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"
JWKS_URI_PATTERN = r"^https?://[^\s/?#]+(/\S*)?$"
JWKS_URI_MESSAGE = "must be an http(s) URL such as https://id.example.com/.well-known/jwks.json"
JWKS_HTTPS_MESSAGE = (
    "jwksUri must use https (keys fetched over plain http can be forged on the way), "
    "or set allowInsecureJwks: true to accept it anyway"
)
# `*` alone, or an origin whose host may start with one `*.` label (a suffix
# wildcard: `https://*.example.com` admits every subdomain of example.com).
CORS_ORIGIN_PATTERN = r"^(\*|https?://(\*\.)?[^\s/*?#]+)$"
CORS_ORIGIN_MESSAGE = (
    "must be * or an origin such as https://shop.example.com or https://*.example.com "
    "(scheme and host, optional port, a wildcard only as the first label, no path)"
)
# Tab is allowed (it is valid inside a header value); CR, LF and the other
# control characters would split or corrupt the header.
HEADER_VALUE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
HEADER_VALUE_MESSAGE = "must not contain control characters such as CR or LF"
AUTHZ_RULE_NAME_PATTERN = r"^[a-z0-9][-a-z0-9]*$"
AUTHZ_RULE_NAME_MESSAGE = "must be a lowercase name of a-z, 0-9 and '-', such as read-charges"
DUPLICATE_RULE_MESSAGE = "authz rule names must be unique"
AUTH_REQUIRED_MESSAGE = "set jwt or apiKey, or allowAnonymous: true"
QUERY_PARAMETER_PATTERN = r"^[A-Za-z0-9_.-]+$"
QUERY_PARAMETER_MESSAGE = (
    "must be a query parameter name of letters, digits, '_', '.' or '-', such as api_key"
)
CREDENTIALS_WILDCARD_MESSAGE = "allowCredentials cannot be used with the wildcard origin '*'"
RESERVED_HEADER_MESSAGE = "headers starting with x-apx- are reserved for APX"


class Jwt(ApxModel):
    """JSON Web Token authentication (Envoy jwt_authn)."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "self.jwksUri.startsWith('https://') || "
                "(has(self.allowInsecureJwks) && self.allowInsecureJwks)",
                JWKS_HTTPS_MESSAGE,
                ".jwksUri",
                got="self.jwksUri",
            )
        )
    }

    issuer: Annotated[str, Field(min_length=1, max_length=512)] = Field(description="Expected `iss`.")
    jwks_uri: Annotated[str, matching(JWKS_URI_PATTERN, JWKS_URI_MESSAGE, max_length=2048)] = Field(
        description="Where the signing keys are published (https, unless allowInsecureJwks is true)."
    )
    # Left out of dumps while false: the digest of every bundle written before
    # this field existed stays the same, so no served version looks changed.
    allow_insecure_jwks: bool = Field(
        default=False,
        exclude_if=lambda value: value is False,
        description="Accept a jwksUri over plain http (only for local testing: the keys can be forged).",
    )
    audiences: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list, description="Accepted `aud` values; empty accepts any."
    )
    tenant_claim: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default="tenant", description="Claim holding the tenant id. The only source of tenant identity."
    )
    tier_claim: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="Claim holding the plan name, when the issuer knows it."
    )
    scopes_claim: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default="scope", description="Claim holding space-separated scopes."
    )
    clock_skew_seconds: int = Field(default=60, ge=0, le=600, description="Allowed clock skew.")
    jwks_cache_duration: Duration = Field(default="300s", description="How long fetched keys are cached.")
    forward_token: bool = Field(default=False, description="Forward the Authorization header upstream.")

    @model_validator(mode="after")
    def _https_jwks(self) -> Jwt:
        if not self.jwks_uri.startswith("https://") and not self.allow_insecure_jwks:
            raise ValueError(f"jwksUri: {JWKS_HTTPS_MESSAGE} (got {self.jwks_uri!r})")
        return self


class ApiKey(ApxModel):
    """API-key authentication; keys map to tenants in the rate-limit service's key table."""

    header: HeaderName = Field(default="x-api-key", description="Header carrying the key.")
    query_parameter: (
        Annotated[str, matching(QUERY_PARAMETER_PATTERN, QUERY_PARAMETER_MESSAGE, max_length=64)] | None
    ) = Field(default=None, description="Query parameter that may carry the key instead.")


class Auth(ApxModel):
    """Who the caller is."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "has(self.jwt) || has(self.apiKey) || (has(self.allowAnonymous) && self.allowAnonymous)",
                AUTH_REQUIRED_MESSAGE,
            )
        )
    }

    jwt: Jwt | None = Field(default=None, description="JWT authentication.")
    api_key: ApiKey | None = Field(default=None, description="API-key authentication.")
    allow_anonymous: bool = Field(
        default=False, description="Admit requests with no credential (tenant `anonymous`)."
    )

    @model_validator(mode="after")
    def _something(self) -> Auth:
        if self.jwt is None and self.api_key is None and not self.allow_anonymous:
            raise ValueError(AUTH_REQUIRED_MESSAGE)
        return self


class AuthzRule(ApxModel):
    """Allow requests on these methods/paths when the caller holds all scopes."""

    name: Annotated[str, matching(AUTHZ_RULE_NAME_PATTERN, AUTHZ_RULE_NAME_MESSAGE, max_length=63)] = Field(
        description="Rule name, unique within the bundle."
    )
    methods: list[HttpMethod] = Field(default_factory=list, description="Methods; empty means any.")
    paths: list[Annotated[str, matching(PATH_PATTERN, PATH_MESSAGE, max_length=1024)]] = Field(
        # Bounded: a CEL rule checks each path (32 covers any real rule).
        default_factory=lambda: ["/"],
        max_length=32,
        description="Path prefixes (at most 32).",
    )
    scopes: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, description="Scopes the caller must hold (all of them)."
    )


class Authz(ApxModel):
    """What the caller may do. Rules are allow rules; anything unmatched gets `defaultAction`."""

    default_action: Literal["allow", "deny"] = Field(
        default="deny", description="Action when no rule matches."
    )
    # A list-map keyed by name: the API server refuses a duplicate name itself
    # (Envoy RBAC keys policies by name, so one would silently replace the other).
    rules: list[AuthzRule] = Field(
        default_factory=list,
        max_length=100,
        description="Allow rules; names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Authz:
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(
                    f"rules[{index}].name: {DUPLICATE_RULE_MESSAGE} ({rule.name!r} is used twice)"
                )
            seen.add(rule.name)
        return self


class HeaderValue(ApxModel):
    """A header to set."""

    name: HeaderName
    value: Annotated[
        str, matching(HEADER_VALUE_PATTERN, HEADER_VALUE_MESSAGE, max_length=4096, show_value=False)
    ]


class HeaderTransform(ApxModel):
    """Headers to set and to remove."""

    set: list[HeaderValue] = Field(
        default_factory=list, max_length=32, description="Set (overwrite) these headers."
    )
    remove: list[HeaderName] = Field(default_factory=list, max_length=32, description="Remove these headers.")

    @model_validator(mode="after")
    def _not_reserved(self) -> HeaderTransform:
        names = [h.name for h in self.set] + list(self.remove)
        for name in names:
            if name.lower().startswith("x-apx-"):
                raise ValueError(f"{RESERVED_HEADER_MESSAGE}: {name}")
        return self


class Headers(ApxModel):
    """Request and response header transforms."""

    request: HeaderTransform = Field(default_factory=shared_default(HeaderTransform))
    response: HeaderTransform = Field(default_factory=shared_default(HeaderTransform))


def _default_cors_methods() -> list[HttpMethod]:
    return ["GET", "POST"]


class Cors(ApxModel):
    """Cross-origin resource sharing."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "!(has(self.allowCredentials) && self.allowCredentials && '*' in self.allowOrigins)",
                CREDENTIALS_WILDCARD_MESSAGE,
                ".allowCredentials",
            )
        )
    }

    # Bounded because a CEL rule scans this list and the API server refuses
    # rules over unbounded lists (64 is Gateway API's CORS limit).
    allow_origins: list[
        Annotated[str, matching(CORS_ORIGIN_PATTERN, CORS_ORIGIN_MESSAGE, max_length=512)]
    ] = Field(
        min_length=1,
        max_length=64,
        description=(
            "Origins allowed: `*`, an exact origin (`https://shop.example.com`) or a subdomain "
            "wildcard (`https://*.example.com`: any subdomain, not example.com itself)."
        ),
    )
    allow_methods: list[HttpMethod] = Field(
        default_factory=_default_cors_methods, description="Methods allowed."
    )
    # Bounded like allowOrigins: each name is checked by a CEL rule.
    allow_headers: list[HeaderName] = Field(
        default_factory=list, max_length=64, description="Request headers allowed."
    )
    expose_headers: list[HeaderName] = Field(
        default_factory=list, max_length=64, description="Response headers exposed."
    )
    max_age_seconds: int = Field(default=600, ge=0, le=86_400, description="Preflight cache time.")
    allow_credentials: bool = Field(default=False, description="Allow cookies/credentials.")

    @model_validator(mode="after")
    def _credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(f"allowCredentials: {CREDENTIALS_WILDCARD_MESSAGE}")
        return self


class RateLimitPolicy(ApxModel):
    """How the rate-limit service counts and what it does when Redis is unreachable."""

    algorithm: RateLimitAlgorithm = Field(
        default="sliding-window",
        description="`sliding-window` (exact), `token-bucket` (GCRA) or `fixed-window` (compatibility).",
    )
    failure_mode: FailureMode = Field(
        default="open", description="Redis unreachable: `open` admits (and counts it), `closed` denies."
    )


class PolicyObservability(ApxModel):
    """Tracing and metric hygiene."""

    sample_rate: float = Field(default=0.01, ge=0.0, le=1.0, description="Trace sampling ratio.")
    pii_fields: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, description="Body/header fields redacted from logs and spans."
    )
    metric_label_budget: int = Field(
        default=1000, ge=1, le=100_000, description="Most distinct label sets a route may add to a metric."
    )


class PolicyBundleSpec(ApxModel):
    """Desired state of a PolicyBundle: one version of the policy."""

    version: SemVer = Field(description="Semantic version of this policy content.")
    compat: Compat = Field(
        default="backward",
        description=(
            "`backward`: callers of the previous version keep working; `breaking` needs a major bump."
        ),
    )
    auth: Auth = Field(description="Authentication.")
    authz: Authz = Field(default_factory=shared_default(Authz), description="Authorization rules.")
    headers: Headers = Field(default_factory=shared_default(Headers), description="Header transforms.")
    cors: Cors | None = Field(default=None, description="CORS; omit to disable.")
    ip_allowlist: list[Annotated[str, matching(CIDR_PATTERN, CIDR_MESSAGE, max_length=64)]] = Field(
        default_factory=list, max_length=256, description="Client CIDRs allowed; empty allows all."
    )
    rate_limit: RateLimitPolicy = Field(
        default_factory=shared_default(RateLimitPolicy), description="Rate-limit behaviour."
    )
    observability: PolicyObservability = Field(
        default_factory=shared_default(PolicyObservability), description="Tracing, PII, labels."
    )
    rollout_window: Duration = Field(
        default="24h",
        description="How long the previous version (N-1) stays served after a new version lands.",
    )
    deletion_policy: DeletionPolicy = Field(
        default="Retain",
        description="`Retain` keeps the artifact ConfigMaps on deletion; `Delete` removes them.",
    )

    # The schema's pattern admits the shape of an IPv6 CIDR only (CEL has no
    # CIDR functions before Kubernetes 1.31); the address itself is checked here.
    @model_validator(mode="after")
    def _real_cidrs(self) -> PolicyBundleSpec:
        for index, cidr in enumerate(self.ip_allowlist):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"ipAllowlist[{index}]: {cidr!r} {CIDR_MESSAGE}") from None
        return self


class ServedVersion(ApxModel):
    """One compiled version of a bundle that Routes may pin to."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    version: str
    digest: str = Field(description="`sha256:…` of the canonical compiled policy.")
    artifact: str = Field(description="`name@version@sha256:…`.")
    compat: Compat = "backward"
    served_since: str | None = None
    spec: dict[str, Any] | None = Field(
        default=None, description="The spec this artifact was compiled from (kept so N-1 can be re-rendered)."
    )
    pinned_by: list[str] | None = Field(
        default=None,
        description=(
            "Routes (`namespace/name`) that pin this version; set only on versions older than N-1, "
            "which stay served while a Route pins them (Ready reason `VersionsPinned`)."
        ),
    )


class PolicyBundleStatus(ApxModel):
    """Observed state of a PolicyBundle."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Reconciling, Stalled.")
    message: str | None = Field(default=None, description="Human summary; names the field at fault.")
    reason: str | None = Field(default=None, description="Reason of the Ready condition (printer column).")
    artifact: str | None = Field(default=None, description="The current (N) artifact.")
    served_versions: list[ServedVersion] = Field(
        default_factory=list,
        description="Compiled versions served: N first, then N-1, then older versions Routes still pin.",
    )
    in_use_by: list[str] | None = Field(
        default=None,
        description=(
            "Routes (`namespace/name`) that still reference this PolicyBundle while it is being deleted: "
            "it keeps serving (Ready, reason `InUse`) and its finalizer holds the deletion until none does."
        ),
    )
