"""The Product resource: an API product with plans, residency and regions.

Read by the translator (``apx.controllers.translate``) and the CRD generator.
A Product says *who may call how much*: each plan carries a tier, a rate limit,
an optional quota, a concurrency cap, prepaid credits and an isolation level.
Where the data may live is fixed by ``residency``; ``regions`` must satisfy it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from apx.contracts import residency as residency_contract

from .common import (
    DNS_LABEL_MESSAGE,
    DNS_LABEL_PATTERN,
    ApxModel,
    Condition,
    DeletionPolicy,
    cel,
    cel_rules,
    matching,
    shared_default,
)

Tier = Literal["free", "pro", "enterprise", "internal"]
Isolation = Literal["shared", "namespace", "dedicated"]
Residency = Literal["US", "EU", "ASIA", "GLOBAL"]
QuotaPeriod = Literal["minute", "hour", "day", "month"]

QUOTA_PERIOD_SECONDS: dict[str, int] = {
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    # Calendar months differ; quotas use a fixed 30-day period so a limit means
    # the same thing in every month and window arithmetic stays exact.
    "month": 2_592_000,
}

# Region prefixes (Google Cloud region names) allowed for each residency: the rule the
# dataplane's placement applies too, so it is defined once in the contracts.
RESIDENCY_REGION_PREFIXES = residency_contract.RESIDENCY_REGION_PREFIXES
region_allowed = residency_contract.region_allowed

REGION_PATTERN = r"^[a-z]+-[a-z]+[0-9]+$"
REGION_MESSAGE = "must be a region name such as europe-west1"
TENANT_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$"
TENANT_ID_MESSAGE = (
    "must be a tenant id of 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
)

RESIDENCY_RULE = (
    "self.residency == 'GLOBAL' || self.regions.all(r, "
    "(self.residency == 'US' && r.startsWith('us-')) || "
    "(self.residency == 'EU' && r.startsWith('europe-')) || "
    "(self.residency == 'ASIA' && (r.startsWith('asia-') || r.startsWith('australia-'))))"
)
RESIDENCY_MESSAGE = (
    "every region must lie inside the product's residency (US: us-*, EU: europe-*, ASIA: asia-*/australia-*)"
)
BURST_MESSAGE = "burst must be greater than or equal to requestsPerSecond"
UNIQUE_PLANS_MESSAGE = "plan names must be unique"
UNIQUE_REGIONS_MESSAGE = "regions must be unique"
TENANT_PLAN_MESSAGE = "every tenant must name a plan of this product"
TENANT_REGION_MESSAGE = "a tenant's region must be one of the product's regions"
DEFAULT_PLAN_MESSAGE = "defaultPlan must name a plan of this product"
UNIQUE_TENANTS_MESSAGE = "tenant ids must be unique"


class RateLimit(ApxModel):
    """A steady request rate with a burst allowance, enforced per tenant (or per API key)."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.burst) || self.burst >= self.requestsPerSecond", BURST_MESSAGE, ".burst")
        )
    }

    requests_per_second: int = Field(ge=1, le=1_000_000, description="Sustained requests per second.")
    burst: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Requests allowed in a burst above the steady rate. Defaults to requestsPerSecond.",
    )

    @model_validator(mode="after")
    def _burst_covers_rate(self) -> RateLimit:
        if self.burst is not None and self.burst < self.requests_per_second:
            raise ValueError(f"burst: {BURST_MESSAGE}")
        return self

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else self.requests_per_second


class Quota(ApxModel):
    """A request budget per tenant over a calendar-free period."""

    requests: int = Field(ge=1, le=10_000_000_000, description="Requests allowed per period.")
    period: QuotaPeriod = Field(description="`minute`, `hour`, `day` or `month` (30 days).")


class Credits(ApxModel):
    """Prepaid credits: each request spends credits; at zero the gateway answers 402."""

    cost_per_request: int = Field(default=1, ge=1, le=1_000_000, description="Credits one request spends.")


class Plan(ApxModel):
    """One plan of a product (free, pro, enterprise...)."""

    name: Annotated[
        str,
        matching(DNS_LABEL_PATTERN, DNS_LABEL_MESSAGE, max_length=40, description="Plan name, a DNS label."),
    ]
    tier: Tier = Field(description="Pricing tier; a low-cardinality metric label (`tenant_tier`).")
    rate_limit: RateLimit = Field(description="Per-tenant request rate.")
    api_key_rate_limit: RateLimit | None = Field(
        default=None, description="Optional tighter rate per API key within a tenant."
    )
    quota: Quota | None = Field(default=None, description="Optional request budget per tenant.")
    concurrency: int | None = Field(
        default=None, ge=1, le=100_000, description="Maximum requests in flight per tenant."
    )
    isolation: Isolation = Field(
        default="shared",
        description=(
            "`shared`: one topic and worker pool for all tenants; `namespace`: a topic per tenant; "
            "`dedicated`: a worker pool of its own for this plan's tenants."
        ),
    )
    credits: Credits | None = Field(default=None, description="Prepaid credits; omit for postpaid plans.")


class TenantAssignment(ApxModel):
    """A known tenant on a plan, optionally with its own limits or home region."""

    id: Annotated[
        str,
        matching(
            TENANT_ID_PATTERN,
            TENANT_ID_MESSAGE,
            max_length=63,
            description="Tenant id as carried in credentials.",
        ),
    ]
    # No pattern of its own: it must equal a plan name (a DNS label), which the
    # tenant-plan rule checks with a message that says so.
    plan: Annotated[str, Field(min_length=1, max_length=40, description="Name of a plan of this product.")]
    rate_limit: RateLimit | None = Field(default=None, description="Overrides the plan's rate limit.")
    quota: Quota | None = Field(default=None, description="Overrides the plan's quota.")
    # CRD-only bound for CEL cost estimation; a longer value already fails the
    # tenant-region rule (product regions are at most 40 characters).
    region: str | None = Field(
        default=None,
        description="Home region; must be one of the product's regions.",
        json_schema_extra={"maxLength": 40},
    )


class ProductObservability(ApxModel):
    """Access-log sampling. Errors (status ≥ 500 and rejected requests) are always logged."""

    log_sample_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Fraction of successful requests logged."
    )


class ProductSpec(ApxModel):
    """Desired state of a Product."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(RESIDENCY_RULE, RESIDENCY_MESSAGE, ".regions", "FieldValueInvalid"),
            cel(
                "self.plans.all(p, self.plans.exists_one(q, q.name == p.name))",
                UNIQUE_PLANS_MESSAGE,
                ".plans",
            ),
            cel(
                "self.regions.all(r, self.regions.exists_one(q, q == r))", UNIQUE_REGIONS_MESSAGE, ".regions"
            ),
            cel(
                "!has(self.tenants) || self.tenants.all(t, self.plans.exists(p, p.name == t.plan))",
                TENANT_PLAN_MESSAGE,
                ".tenants",
            ),
            cel(
                "!has(self.tenants) || self.tenants.all(t, !has(t.region) || t.region in self.regions)",
                TENANT_REGION_MESSAGE,
                ".tenants",
            ),
            cel(
                "!has(self.defaultPlan) || self.plans.exists(p, p.name == self.defaultPlan)",
                DEFAULT_PLAN_MESSAGE,
                ".defaultPlan",
            ),
        )
    }

    display_name: str | None = Field(default=None, max_length=200, description="Human name of the product.")
    description: str | None = Field(default=None, max_length=2000, description="What the product offers.")
    plans: list[Plan] = Field(min_length=1, max_length=20, description="Plans tenants subscribe to.")
    # CRD-only bound so CEL cost estimation sees a finite string; a longer value
    # already fails the defaultPlan rule (plan names are at most 40 characters).
    default_plan: str | None = Field(
        default=None,
        description="Plan for tenants not listed in `tenants`. Defaults to the first plan.",
        json_schema_extra={"maxLength": 40},
    )
    residency: Residency = Field(
        default="GLOBAL",
        description="Where request data may be stored and processed: US, EU, ASIA or GLOBAL.",
    )
    regions: list[Annotated[str, matching(REGION_PATTERN, REGION_MESSAGE, max_length=40)]] = Field(
        min_length=1, max_length=16, description="Regions (e.g. `europe-west1`) that serve this product."
    )
    # Tenant ids are kept unique by the API server through a list-map keyed on `id`
    # (linear, and server-side apply merges tenants by id) instead of a CEL rule: the
    # pairwise CEL check over 1,000 tenants is estimated at ~1.3e7, above the API
    # server's per-rule budget of 1e7, and would make it reject the whole CRD.
    # The pydantic validator below still reports UNIQUE_TENANTS_MESSAGE.
    tenants: list[TenantAssignment] = Field(
        default_factory=list,
        max_length=1000,
        description="Known tenants and their plans.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    observability: ProductObservability = Field(
        default_factory=shared_default(ProductObservability), description="Logging of requests."
    )
    deletion_policy: DeletionPolicy = Field(
        default="Retain",
        description=(
            "What happens to Redis rules and Pub/Sub topics when the Product is deleted. "
            "`Retain` (default) keeps the data; `Delete` removes it."
        ),
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ProductSpec:
        for index, region in enumerate(self.regions):
            if not region_allowed(self.residency, region):
                raise ValueError(
                    f"regions[{index}]: {RESIDENCY_MESSAGE}: {region!r} is not allowed for {self.residency}"
                )
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions: {UNIQUE_REGIONS_MESSAGE}")
        names = [plan.name for plan in self.plans]
        if len(set(names)) != len(names):
            raise ValueError(f"plans: {UNIQUE_PLANS_MESSAGE}")
        if self.default_plan is not None and self.default_plan not in names:
            raise ValueError(f"defaultPlan: {DEFAULT_PLAN_MESSAGE}")
        seen: set[str] = set()
        for index, tenant in enumerate(self.tenants):
            if tenant.plan not in names:
                raise ValueError(f"tenants[{index}].plan: {TENANT_PLAN_MESSAGE}: {tenant.plan!r}")
            if tenant.region is not None and tenant.region not in self.regions:
                raise ValueError(f"tenants[{index}].region: {TENANT_REGION_MESSAGE}: {tenant.region!r}")
            if tenant.id in seen:
                raise ValueError(f"tenants[{index}].id: {UNIQUE_TENANTS_MESSAGE}: {tenant.id!r}")
            seen.add(tenant.id)
        return self

    @property
    def effective_default_plan(self) -> str:
        return self.default_plan or self.plans[0].name


class ProductStatus(ApxModel):
    """Observed state of a Product, written by the operator only."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Reconciling, Stalled.")
    message: str | None = Field(default=None, description="Human summary; names the field at fault.")
    reason: str | None = Field(default=None, description="Reason of the Ready condition (printer column).")
    rule_set_version: str | None = Field(
        default=None, description="Version (content hash) of the live Redis rule set."
    )
    plans: list[str] = Field(default_factory=list, description="Plan names served.")
    topics: list[str] = Field(
        default_factory=list, description="Pub/Sub topics of this product's async routes."
    )
    routes: int | None = Field(default=None, description="Number of Routes that reference this product.")
    in_use_by: list[str] | None = Field(
        default=None,
        description=(
            "Routes (`namespace/name`) that still reference this Product while it is being deleted: "
            "it keeps serving (Ready, reason `InUse`) and its finalizer holds the deletion until none does."
        ),
    )
