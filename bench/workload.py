"""A realistic, deterministic APX workload for benchmarks: Products, PolicyBundles and Routes.

``generate_documents(n_routes, n_products)`` returns raw Kubernetes objects
(dicts, as ``yaml.safe_load_all`` would give) that ``translate`` accepts
without a single Stalled status. Reused by every benchmark that needs a big
cluster (Envoy, Redis rules, Pub/Sub plan, manifests).

The mix, all derived from indexes (no randomness, so every run and every
benchmark sees the same objects):

* products spread over 10 namespaces, each with free / pro / enterprise plans
  (API-key limits on pro, quota on free and pro, credits on enterprise) and a
  few tenants;
* one PolicyBundle per product, applied twice (1.0.0 then 1.1.0, backward
  compatible), so N and N-1 are both served; auth rotates between JWT,
  JWT + API key, API key only and anonymous; CORS on half, IP allowlists on a
  quarter, failure mode closed on a fifth; 2 or 3 authz rules;
* routes round-robin over products: 80 % sync / 20 % async (with workers),
  5 % URL backends (some with a path), exact paths on 1 in 7, methods on half,
  header matchers (exact / prefix / regex / present) on a fifth, a second
  host on 1 in 9, a wildcard host on 1 in 11, retries with status codes on
  some, 10 % with a canary (new backend, new policy version or both; tenant
  sticky or not; weights from pending 0 to promoted 100);
* routes pin either policy version.
"""

from __future__ import annotations

from typing import Any

NAMESPACES = 10
SERVICES_PER_PRODUCT = 8
_CANARY_PHASES = (("Pending", 0, 0), ("Progressing", 1, 10), ("Progressing", 2, 25), ("Progressing", 3, 50),
                  ("Promoted", 4, 100))  # fmt: skip


def _namespace(product_index: int) -> str:
    return f"team-{product_index % NAMESPACES:02d}"


def _product(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Product",
        "metadata": {"name": f"product-{index:03d}", "namespace": _namespace(index)},
        "spec": {
            "displayName": f"Product {index}",
            "residency": "GLOBAL",
            "regions": ["us-central1", "europe-west1"],
            "defaultPlan": "free",
            "plans": [
                {
                    "name": "free",
                    "tier": "free",
                    "rateLimit": {"requestsPerSecond": 5, "burst": 10},
                    "quota": {"requests": 10_000, "period": "month"},
                    "concurrency": 2,
                },
                {
                    "name": "pro",
                    "tier": "pro",
                    "rateLimit": {"requestsPerSecond": 100, "burst": 200},
                    "apiKeyRateLimit": {"requestsPerSecond": 50},
                    "quota": {"requests": 1_000_000, "period": "month"},
                    "concurrency": 20,
                    "isolation": "namespace",
                },
                {
                    "name": "enterprise",
                    "tier": "enterprise",
                    "rateLimit": {"requestsPerSecond": 1000, "burst": 2000},
                    "concurrency": 200,
                    "credits": {"costPerRequest": 1},
                },
            ],
            "tenants": [
                {"id": f"tenant-{index}-a", "plan": "enterprise", "region": "us-central1"},
                {"id": f"tenant-{index}-b", "plan": "pro"},
                {
                    "id": f"tenant-{index}-c",
                    "plan": "pro",
                    "rateLimit": {"requestsPerSecond": 150, "burst": 300},
                },
            ],
        },
    }


def _policy_spec(index: int, version: str, minor: int) -> dict[str, Any]:
    auth_kind = index % 4
    jwt = {
        "issuer": f"https://auth{index % 5}.example.com/",
        "jwksUri": f"https://auth{index % 5}.example.com/.well-known/jwks.json",
        "audiences": [f"product-{index:03d}"],
        "tenantClaim": "tenant",
        "tierClaim": "plan",
    }
    auth: dict[str, Any] = {}
    if auth_kind in (0, 1):
        auth["jwt"] = jwt
    if auth_kind in (1, 2):
        auth["apiKey"] = {"header": "x-api-key", "queryParameter": "api_key"} if index % 8 == 2 else {}
    if auth_kind == 3:
        auth["allowAnonymous"] = True
    scopes = auth_kind in (0, 1)
    rules = [
        {"name": "read", "methods": ["GET"], "paths": ["/v1/", "/v2/"],
         "scopes": [f"p{index}:read"] if scopes else []},
        {"name": "write", "methods": ["POST", "PUT"], "paths": ["/v1/"],
         "scopes": [f"p{index}:write"] if scopes else []},
    ]  # fmt: skip
    if minor:
        rules.append({"name": "admin", "methods": ["DELETE"], "paths": ["/v1/admin"], "scopes": ["admin"]})
    spec: dict[str, Any] = {
        "version": version,
        "compat": "backward",
        "auth": auth,
        "authz": {"defaultAction": "deny" if index % 3 else "allow", "rules": rules},
        "headers": {
            "request": {"remove": ["x-internal-debug"], "set": [{"name": "x-served-by", "value": "apx"}]},
            "response": {"set": [{"name": "x-content-type-options", "value": "nosniff"}]},
        },
        "rateLimit": {"algorithm": "sliding-window", "failureMode": "closed" if index % 5 == 0 else "open"},
    }
    if index % 2 == 0:
        spec["cors"] = {
            "allowOrigins": [f"https://app{index}.example.com", "https://admin.example.com"],
            "allowMethods": ["GET", "POST", "PUT"],
            "allowHeaders": ["authorization", "content-type"],
            "maxAgeSeconds": 600,
        }
    if index % 4 == 1:
        spec["ipAllowlist"] = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]
    return spec


def _policy_bundles(index: int) -> list[dict[str, Any]]:
    documents = []
    for minor in (0, 1):
        version = f"1.{minor}.0"
        documents.append(
            {
                "apiVersion": "apx.dev/v1alpha1",
                "kind": "PolicyBundle",
                "metadata": {"name": f"policy-{index:03d}", "namespace": _namespace(index)},
                "spec": _policy_spec(index, version, minor),
            }
        )
    return documents


def _backend(product: int, slot: int, route_index: int) -> dict[str, Any]:
    if route_index % 20 == 3:
        path = "/api" if route_index % 40 == 3 else ""
        return {"url": f"https://partner{product % 7}.example.net{path}"}
    return {"service": {"name": f"svc-{product:03d}-{slot % SERVICES_PER_PRODUCT}", "port": 8080}}


def _route(i: int, n_products: int, async_every: int = 5) -> dict[str, Any]:
    product = i % n_products
    nth = i // n_products  # index of this route within its product
    namespace = _namespace(product)
    host = f"api.product-{product:03d}.example.com"
    hosts = [host]
    if i % 9 == 4:
        hosts.append(f"api-{product:03d}.internal.example.com")
    if i % 11 == 5:
        hosts.append(f"*.product-{product:03d}.example.io")
    match: dict[str, Any] = {"hosts": hosts}
    if i % 7 == 6:
        match["path"] = f"/v1/items-{nth}/export"
    else:
        match["pathPrefix"] = f"/v{1 + nth % 2}/resource-{nth}/"
    if i % 2 == 0:
        match["methods"] = ["GET", "POST"] if i % 4 == 0 else ["GET"]
    if i % 5 == 1:
        kind = (i // 5) % 4
        header = {"name": "x-client-version"}
        header.update(
            [{"exact": "2"}, {"prefix": "2."}, {"regex": "^[0-9]+\\.[0-9]+$"}, {"present": True}][kind]
        )
        match["headers"] = [header]
    is_async = i % async_every == 2 % async_every
    spec: dict[str, Any] = {
        "productRef": {"name": f"product-{product:03d}"},
        "policyRef": {"name": f"policy-{product:03d}", "version": "1.1.0" if i % 3 else "1.0.0"},
        "match": match,
        "mode": "async" if is_async else "sync",
        "backend": _backend(product, nth, i),
        "timeout": f"{5 + i % 4 * 5}s",
    }
    if is_async:
        spec["worker"] = {"image": f"registry.example.com/{namespace}/worker:{1 + i % 3}.0.0", "replicas": 2}
        spec["async"] = {"maxDeliveryAttempts": 5, "minimumBackoff": "10s", "maximumBackoff": "300s"}
    elif i % 6 == 1:
        spec["retries"] = {
            "attempts": 3,
            "perTryTimeout": "2s",
            "retryOn": ["5xx", "reset", "retriable-status-codes"],
            "retriableStatusCodes": [503, 504],
        }
    document: dict[str, Any] = {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": f"route-{i:05d}", "namespace": namespace},
        "spec": spec,
    }
    if i % 10 == 7:
        canary: dict[str, Any] = {
            "steps": [10, 25, 50, 100],
            "stickiness": {"by": "tenant" if i % 20 == 7 else "none"},
        }
        flavour = (i // 10) % 3
        if flavour in (0, 2) and "service" in spec["backend"]:
            canary["backend"] = {
                "service": {"name": f"svc-{product:03d}-{nth % SERVICES_PER_PRODUCT}-v2", "port": 8080}
            }
        if flavour in (1, 2) or "backend" not in canary:
            # Stable on N-1, canary on N.
            spec["policyRef"]["version"] = "1.0.0"
            canary["policyVersion"] = "1.1.0"
        if is_async:
            canary["worker"] = {"image": f"registry.example.com/{namespace}/worker:9.0.0"}
        spec["canary"] = canary
        phase, step, weight = _CANARY_PHASES[(i // 10) % len(_CANARY_PHASES)]
        document["status"] = {"canary": {"phase": phase, "step": step, "weight": weight}}
    return document


def generate_documents(n_routes: int, n_products: int = 100, async_every: int = 5) -> list[dict[str, Any]]:
    """Products, two versions of one PolicyBundle per product, and ``n_routes`` Routes."""
    documents: list[dict[str, Any]] = []
    for index in range(n_products):
        documents.append(_product(index))
        documents.extend(_policy_bundles(index))
    documents.extend(_route(i, n_products, async_every) for i in range(n_routes))
    return documents
