"""HTTP header names and Envoy rate-limit descriptor keys shared by the Envoy config and the dataplane.

The Envoy renderer sets these headers and descriptors (``apx.controllers``
re-exports them through ``names``); the async gateway, the worker and the
rate-limit service read them. One definition, so a rename cannot leave one
side behind.
"""

from __future__ import annotations

POLICY_VERSION_HEADER = "x-apx-policy-version"
TENANT_HEADER = "x-apx-tenant"
PLAN_HEADER = "x-apx-plan"
TRACK_HEADER = "x-apx-track"
ROUTE_HEADER = "x-apx-route"
PRODUCT_HEADER = "x-apx-product"
REQUEST_ID_HEADER = "x-request-id"

# Envoy's rate-limit domain of every APX descriptor, and the descriptor entry keys
# (``apx/controllers/renderers/envoy/ratelimit.py`` writes them; ``apx-ratelimit`` reads them).
RATE_LIMIT_DOMAIN = "apx"
DESCRIPTOR_PRODUCT = "product"
DESCRIPTOR_PLAN = "plan"
DESCRIPTOR_TENANT = "tenant"
DESCRIPTOR_API_KEY = "api_key"
