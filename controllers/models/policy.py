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

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .common import (
    ApxModel,
    Condition,
    DeletionPolicy,
    Duration,
    HeaderName,
    HttpMethod,
    SemVer,
    cel,
    cel_rules,
    shared_default,
)

Compat = Literal["backward", "breaking"]
RateLimitAlgorithm = Literal["sliding-window", "token-bucket", "fixed-window"]
FailureMode = Literal["open", "closed"]

CIDR_PATTERN = (
    r"^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    r"/(3[0-2]|[12]?[0-9])|[0-9a-fA-F:]+:[0-9a-fA-F:]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
)

AUTH_REQUIRED_MESSAGE = "set jwt or apiKey, or allowAnonymous: true"
CREDENTIALS_WILDCARD_MESSAGE = "allowCredentials cannot be used with the wildcard origin '*'"
RESERVED_HEADER_MESSAGE = "headers starting with x-apx- are reserved for APX"


class Jwt(ApxModel):
    """JSON Web Token authentication (Envoy jwt_authn)."""

    issuer: Annotated[str, Field(min_length=1, max_length=512)] = Field(description="Expected `iss`.")
    jwks_uri: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)] = Field(
        description="Where the signing keys are published."
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


class ApiKey(ApxModel):
    """API-key authentication; keys map to tenants in the rate-limit service's key table."""

    header: HeaderName = Field(default="x-api-key", description="Header carrying the key.")
    query_parameter: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)] | None = Field(
        default=None, description="Query parameter that may carry the key instead."
    )


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

    name: Annotated[str, Field(pattern=r"^[a-z0-9][-a-z0-9]*$", max_length=63)] = Field(
        description="Rule name."
    )
    methods: list[HttpMethod] = Field(default_factory=list, description="Methods; empty means any.")
    paths: list[Annotated[str, Field(pattern=r"^/", max_length=1024)]] = Field(
        default_factory=lambda: ["/"], description="Path prefixes."
    )
    scopes: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, description="Scopes the caller must hold (all of them)."
    )


class Authz(ApxModel):
    """What the caller may do. Rules are allow rules; anything unmatched gets `defaultAction`."""

    default_action: Literal["allow", "deny"] = Field(
        default="deny", description="Action when no rule matches."
    )
    rules: list[AuthzRule] = Field(default_factory=list, max_length=100, description="Allow rules.")


class HeaderValue(ApxModel):
    """A header to set."""

    name: HeaderName
    value: Annotated[str, Field(max_length=4096)]


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
    allow_origins: list[Annotated[str, Field(pattern=r"^(\*|https?://[^\s/]+)$", max_length=512)]] = Field(
        min_length=1, max_length=64, description="Origins allowed, or `*`."
    )
    allow_methods: list[HttpMethod] = Field(
        default_factory=_default_cors_methods, description="Methods allowed."
    )
    allow_headers: list[HeaderName] = Field(default_factory=list, description="Request headers allowed.")
    expose_headers: list[HeaderName] = Field(default_factory=list, description="Response headers exposed.")
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
    ip_allowlist: list[Annotated[str, Field(pattern=CIDR_PATTERN, max_length=64)]] = Field(
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


class PolicyBundleStatus(ApxModel):
    """Observed state of a PolicyBundle."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    message: str | None = None
    reason: str | None = None
    artifact: str | None = Field(default=None, description="The current (N) artifact.")
    served_versions: list[ServedVersion] = Field(default_factory=list, description="N first, then N-1.")
