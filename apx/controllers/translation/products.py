"""Step 3 of translation: Products → ``ProductIR`` (plans and tenant overrides resolved) and status.

Called by ``apx.controllers.translation.translate`` after the PolicyBundles
and before the Routes, which point at the Products' IR. A Product that
parsed always translates (its cross-field rules are checked by the model),
so its status here is Ready; the number of Routes it serves is filled in by
the Route step. Pure.
"""

from __future__ import annotations

from functools import partial

from ..ir import PlanIR, ProductIR, TenantIR
from ..models.product import QUOTA_PERIOD_SECONDS, Plan, TenantAssignment
from ..models.resources import Product
from ..status import ready
from .context import TranslationContext, object_ref
from .summaries import PRODUCT_READY_MESSAGE, product_summary


def process_products(ctx: TranslationContext) -> None:
    """Translate every Product into ``ctx`` (IR and Ready status), by key."""
    caches = ctx.caches
    for key, product in sorted(ctx.products.items()):
        if caches is None:
            ctx.product_irs[key] = product_ir(product)
        else:
            # Keyed by the parsed model, which the parse cache keeps while the body is unchanged.
            ctx.product_irs[key] = caches.products.get(product, partial(product_ir, product))
        ctx.statuses[("Product", key)] = ready(
            "Product", key, ctx.generation("Product", key), PRODUCT_READY_MESSAGE, product_summary(product)
        )


def product_ir(product: Product) -> ProductIR:
    """One Product's IR: every plan's limits, and each tenant's limits with its plan's as defaults."""
    spec = product.spec
    plans = tuple(_plan_ir(plan) for plan in spec.plans)
    by_name = {plan.name: plan for plan in plans}
    return ProductIR(
        ref=object_ref("Product", product.metadata),
        residency=spec.residency,
        regions=tuple(spec.regions),
        plans=plans,
        default_plan=spec.effective_default_plan,
        tenants=tuple(_tenant_ir(t, by_name[t.plan]) for t in sorted(spec.tenants, key=lambda t: t.id)),
        log_sample_rate=spec.observability.log_sample_rate,
        deletion_policy=spec.deletion_policy,
    )


def _plan_ir(plan: Plan) -> PlanIR:
    api_key_limit = plan.api_key_rate_limit
    return PlanIR(
        name=plan.name,
        tier=plan.tier,
        requests_per_second=plan.rate_limit.requests_per_second,
        burst=plan.rate_limit.effective_burst,
        api_key_requests_per_second=api_key_limit.requests_per_second if api_key_limit else None,
        api_key_burst=api_key_limit.effective_burst if api_key_limit else None,
        quota_requests=plan.quota.requests if plan.quota else None,
        quota_period_seconds=QUOTA_PERIOD_SECONDS[plan.quota.period] if plan.quota else None,
        concurrency=plan.concurrency,
        isolation=plan.isolation,
        credits_cost=plan.credits.cost_per_request if plan.credits else None,
    )


def _tenant_ir(tenant: TenantAssignment, base: PlanIR) -> TenantIR:
    """A tenant's limits: its own overrides, else its plan's."""
    quota = tenant.quota
    rate_limit = tenant.rate_limit
    return TenantIR(
        id=tenant.id,
        plan=tenant.plan,
        tier=base.tier,
        requests_per_second=rate_limit.requests_per_second if rate_limit else base.requests_per_second,
        burst=rate_limit.effective_burst if rate_limit else base.burst,
        quota_requests=quota.requests if quota else base.quota_requests,
        quota_period_seconds=QUOTA_PERIOD_SECONDS[quota.period] if quota else base.quota_period_seconds,
        region=tenant.region,
    )
