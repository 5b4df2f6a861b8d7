"""Hypothesis strategies that build valid APX objects (Product, Route, PolicyBundle) as raw dicts.

Used by the property tests (``tests/unit/test_properties.py``) and by any test
that needs many realistic, valid inputs. ``worlds()`` draws a whole consistent
set of documents: every Route references a Product and a served PolicyBundle
version of its namespace, so ``translate`` reports no Stalled status.

Names are drawn from small disjoint pools (``prod-N``, ``route-N``,
``policy-N``, fixed plan names) so generated objects never collide by
accident; collisions are the subject of dedicated tests, not of these.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMESPACES = ("default", "team-a", "team-b")
REGIONS = {
    "US": ("us-central1", "us-east1", "us-west1"),
    "EU": ("europe-west1", "europe-west4", "europe-north1"),
    "ASIA": ("asia-northeast1", "asia-south1", "australia-southeast1"),
}
ALL_REGIONS = tuple(r for group in REGIONS.values() for r in group)
PLAN_NAMES = ("free", "pro", "enterprise", "team", "basic")
TIERS = ("free", "pro", "enterprise", "internal")
TENANT_IDS = ("acme", "Globex.Inc", "t-1", "umbrella_co", "initech", "Z9")
ALGORITHMS = ("sliding-window", "token-bucket", "fixed-window")
FAILURE_MODES = ("open", "closed")
DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

API_VERSION = "apx.dev/v1alpha1"


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace}


@st.composite
def rate_limits(draw: st.DrawFn, max_rps: int = 2000) -> dict[str, Any]:
    rps = draw(st.integers(1, max_rps))
    limit: dict[str, Any] = {"requestsPerSecond": rps}
    if draw(st.booleans()):
        limit["burst"] = draw(st.integers(rps, rps * 4))
    return limit


@st.composite
def plans(draw: st.DrawFn, name: str) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "name": name,
        "tier": draw(st.sampled_from(TIERS)),
        "rateLimit": draw(rate_limits()),
        "isolation": draw(st.sampled_from(("shared", "namespace", "dedicated"))),
    }
    if draw(st.booleans()):
        plan["apiKeyRateLimit"] = draw(rate_limits(max_rps=200))
    if draw(st.booleans()):
        plan["quota"] = {
            "requests": draw(st.integers(1, 10_000_000)),
            "period": draw(st.sampled_from(("minute", "hour", "day", "month"))),
        }
    if draw(st.booleans()):
        plan["concurrency"] = draw(st.integers(1, 500))
    if draw(st.booleans()):
        plan["credits"] = {"costPerRequest": draw(st.integers(1, 10))}
    return plan


@st.composite
def products(draw: st.DrawFn, name: str, namespace: str) -> dict[str, Any]:
    residency = draw(st.sampled_from(("US", "EU", "ASIA", "GLOBAL")))
    pool = ALL_REGIONS if residency == "GLOBAL" else REGIONS[residency]
    regions = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    plan_names = draw(st.lists(st.sampled_from(PLAN_NAMES), min_size=1, max_size=4, unique=True))
    spec: dict[str, Any] = {
        "residency": residency,
        "regions": regions,
        "plans": [draw(plans(plan_name)) for plan_name in plan_names],
    }
    if draw(st.booleans()):
        spec["defaultPlan"] = draw(st.sampled_from(plan_names))
    tenants = []
    for tenant_id in draw(st.lists(st.sampled_from(TENANT_IDS), max_size=4, unique=True)):
        tenant: dict[str, Any] = {"id": tenant_id, "plan": draw(st.sampled_from(plan_names))}
        if draw(st.booleans()):
            tenant["rateLimit"] = draw(rate_limits())
        if draw(st.booleans()):
            tenant["quota"] = {"requests": draw(st.integers(1, 1_000_000)), "period": "day"}
        if draw(st.booleans()):
            tenant["region"] = draw(st.sampled_from(regions))
        tenants.append(tenant)
    if tenants:
        spec["tenants"] = tenants
    return {"apiVersion": API_VERSION, "kind": "Product", "metadata": _meta(name, namespace), "spec": spec}


@st.composite
def policy_specs(draw: st.DrawFn, version: str) -> dict[str, Any]:
    auth_kind = draw(st.sampled_from(("jwt", "apiKey", "anonymous")))
    auth: dict[str, Any]
    if auth_kind == "jwt":
        auth = {"jwt": {"issuer": "https://auth.example.com/", "jwksUri": "https://auth.example.com/jwks"}}
    elif auth_kind == "apiKey":
        auth = {"apiKey": {"header": "x-api-key"}}
    else:
        auth = {"allowAnonymous": True}
    return {
        "version": version,
        "auth": auth,
        "rateLimit": {
            "algorithm": draw(st.sampled_from(ALGORITHMS)),
            "failureMode": draw(st.sampled_from(FAILURE_MODES)),
        },
        "observability": {"sampleRate": draw(st.sampled_from((0.0, 0.01, 0.5, 1.0)))},
        "deletionPolicy": draw(st.sampled_from(("Retain", "Delete"))),
    }


@st.composite
def policy_bundles(draw: st.DrawFn, name: str, namespace: str) -> list[dict[str, Any]]:
    """One or two applies of a bundle (1.0.0, then 1.1.0): both versions end up served."""
    versions = ["1.0.0", "1.1.0"][: draw(st.integers(1, 2))]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "PolicyBundle",
            "metadata": _meta(name, namespace),
            "spec": draw(policy_specs(version)),
        }
        for version in versions
    ]


@st.composite
def durations(draw: st.DrawFn, low_ms: int, high_ms: int) -> tuple[str, int]:
    """A duration string between the bounds and its value in milliseconds."""
    fitting = tuple(u for u, ms in DURATION_UNITS.items() if max(1, -(-low_ms // ms)) <= high_ms // ms)
    unit = draw(st.sampled_from(fitting))
    size = DURATION_UNITS[unit]
    amount = draw(st.integers(max(1, -(-low_ms // size)), high_ms // size))
    return f"{amount}{unit}", amount * size


def _backend(draw: st.DrawFn, tag: str) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"service": {"name": f"svc-{tag}", "port": draw(st.sampled_from((80, 8080, 9000)))}}
    scheme = draw(st.sampled_from(("http", "https")))
    return {"url": f"{scheme}://{tag}.internal.example.com/api"}


@st.composite
def routes(
    draw: st.DrawFn, name: str, namespace: str, product: str, bundle: str, versions: list[str]
) -> dict[str, Any]:
    mode = draw(st.sampled_from(("sync", "async")))
    spec: dict[str, Any] = {
        "productRef": {"name": product},
        "policyRef": {"name": bundle, "version": draw(st.sampled_from(versions))},
        "match": {"hosts": [f"{name}.{namespace}.example.com"], "pathPrefix": "/"},
        "mode": mode,
        "backend": _backend(draw, f"{name}-v1"),
        "timeout": draw(durations(100, 300_000))[0],
    }
    if mode == "async":
        spec["worker"] = {
            "image": f"registry.example.com/{name}:1.0.0",
            "replicas": draw(st.integers(0, 5)),
            "maxOutstandingMessages": draw(st.integers(1, 1000)),
        }
        minimum, minimum_ms = draw(durations(0, 600_000))
        maximum, _ = draw(durations(minimum_ms, 600_000))
        spec["async"] = {
            "maxDeliveryAttempts": draw(st.integers(5, 100)),
            "minimumBackoff": minimum,
            "maximumBackoff": maximum,
            "ackDeadlineSeconds": draw(st.integers(10, 600)),
            "ordering": draw(st.booleans()),
            "messageRetention": draw(durations(600_000, 744 * 3_600_000))[0],
        }
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Route",
        "metadata": _meta(name, namespace),
    }
    if draw(st.booleans()):
        canary: dict[str, Any] = {}
        if draw(st.booleans()):
            canary["backend"] = _backend(draw, f"{name}-v2")
        if mode == "async" and draw(st.booleans()):
            canary["worker"] = {"image": f"registry.example.com/{name}:2.0.0"}
            if draw(st.booleans()):
                canary["worker"]["replicas"] = draw(st.integers(0, 5))
        others = [v for v in versions if v != spec["policyRef"]["version"]]
        if others and (not canary or draw(st.booleans())):
            canary["policyVersion"] = others[0]
        if not canary:
            canary["backend"] = _backend(draw, f"{name}-v2")
        steps = sorted(draw(st.lists(st.integers(1, 100), min_size=1, max_size=5, unique=True)))
        canary["steps"] = steps
        canary["stickiness"] = {"by": draw(st.sampled_from(("tenant", "none")))}
        spec["canary"] = canary
        phase = draw(st.sampled_from(("Pending", "Progressing", "Halted", "Promoted", "RolledBack")))
        step = draw(st.integers(0, len(steps) - 1))
        weight = 0 if phase == "Pending" else steps[step]
        document["status"] = {"canary": {"phase": phase, "step": step, "weight": weight}}
    document["spec"] = spec
    return document


@st.composite
def worlds(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A consistent set of documents across one or two namespaces."""
    documents: list[dict[str, Any]] = []
    route_index = 0
    for namespace in draw(st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=2, unique=True)):
        product_names = [f"prod-{i}" for i in range(draw(st.integers(1, 2)))]
        for product_name in product_names:
            documents.append(draw(products(product_name, namespace)))
        bundles: dict[str, list[str]] = {}
        for i in range(draw(st.integers(1, 2))):
            applies = draw(policy_bundles(f"policy-{i}", namespace))
            bundles[f"policy-{i}"] = [d["spec"]["version"] for d in applies]
            documents += applies
        for _ in range(draw(st.integers(0, 3))):
            bundle = draw(st.sampled_from(sorted(bundles)))
            documents.append(
                draw(
                    routes(
                        f"route-{route_index}",
                        namespace,
                        draw(st.sampled_from(product_names)),
                        bundle,
                        bundles[bundle],
                    )
                )
            )
            route_index += 1
    return documents


@st.composite
def eu_worlds(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A world whose products are all EU-resident and whose Routes are all async."""
    documents = draw(worlds())
    for document in documents:
        if document["kind"] == "Product":
            spec = document["spec"]
            spec["residency"] = "EU"
            regions = draw(st.lists(st.sampled_from(REGIONS["EU"]), min_size=1, max_size=3, unique=True))
            spec["regions"] = regions
            for tenant in spec.get("tenants", []):
                if "region" in tenant:
                    tenant["region"] = draw(st.sampled_from(regions))
        elif document["kind"] == "Route" and document["spec"]["mode"] == "sync":
            document["spec"]["mode"] = "async"
            document["spec"]["worker"] = {"image": "registry.example.com/eu-worker:1.0.0"}
    return documents
