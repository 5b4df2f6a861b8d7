"""The store keeps each body once per text: strings decoded from the API are interned, containers copied.

Pure (no services): bodies decoded from JSON, as the watch and the status
write answers deliver them, are observed by a reconciler over the in-memory
targets (``e2e.memory_targets``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from e2e.memory_targets import memory_reconciler

pytestmark = pytest.mark.timeout(60)


def _route_text(index: int) -> str:
    condition = {
        "status": "True",
        "reason": "Ready",
        "message": "sync route on api.example.com with policy policy-000@1.0.0",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-12-07T10:38:09Z",
    }
    return json.dumps(
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {
                "name": f"route-{index:05d}",
                "namespace": "team-00",
                "generation": 1,
                "resourceVersion": str(100 + index),
                "uid": f"uid-{index}",
                "finalizers": ["apx.dev/finalizer"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "productRef": {"name": "product-000"},
                "policyRef": {"name": "policy-000", "version": "1.0.0"},
                "hosts": ["api.example.com"],
                "match": {"pathPrefix": f"/v1/r{index}/"},
                "backend": {"service": "orders", "port": 8080},
            },
            "status": {
                "observedGeneration": 1,
                "conditions": [{"type": kind, **condition} for kind in ("Ready", "Reconciling", "Stalled")],
                "reason": "Ready",
                "message": condition["message"],
            },
        }
    )


def test_stored_bodies_share_their_strings_and_keep_everything_but_managed_fields() -> None:
    reconciler, _, _ = memory_reconciler([])
    first, second = json.loads(_route_text(1)), json.loads(_route_text(2))
    assert first["status"]["reason"] is not second["status"]["reason"]  # as decoded: a copy each
    reconciler.observe("Route", first)
    reconciler.observe("Route", second)
    a = reconciler.objects[("Route", "team-00/route-00001")]
    b = reconciler.objects[("Route", "team-00/route-00002")]

    first_condition, second_condition = a["status"]["conditions"][0], b["status"]["conditions"][0]
    assert first_condition["lastTransitionTime"] is second_condition["lastTransitionTime"]
    assert a["spec"]["productRef"]["name"] is b["spec"]["productRef"]["name"]
    assert a["status"]["message"] is b["status"]["conditions"][0]["message"]
    assert next(iter(a["spec"])) is next(iter(b["spec"]))  # keys too
    expected = json.loads(_route_text(1))
    del expected["metadata"]["managedFields"]
    assert a == expected
    # The store's containers are its own: the caller's body may change without touching it.
    first["spec"]["hosts"].append("other.example.com")
    first["status"]["conditions"][0]["status"] = "False"
    assert a == expected


def _footprint(bodies: list[Any]) -> int:
    """Bytes of every distinct object reachable from ``bodies`` (containers, keys and values)."""
    seen: set[int] = set()
    total, stack = 0, list(bodies)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        total += sys.getsizeof(value)
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return total


def test_stored_bodies_take_well_under_the_memory_of_the_decoded_ones() -> None:
    """Interning took a Route with its status from ~8.4 to ~3.9 KiB; the store holds every object."""
    decoded = [json.loads(_route_text(index)) for index in range(500)]
    reconciler, _, _ = memory_reconciler([])
    for body in decoded:
        reconciler.observe("Route", body)
    stored = list(reconciler.objects.values())
    assert len(stored) == 500
    for body in decoded:  # like for like: the store drops managedFields
        del body["metadata"]["managedFields"]
    assert stored == decoded
    assert _footprint(stored) < 0.7 * _footprint(decoded), (_footprint(stored), _footprint(decoded))
