"""After a promotion, folding the canary into the spec moves no traffic and starts no rollout.

The operator never writes the spec (GitOps): a Promoted canary serves 100 %
on its track until the user moves the canary's backend, worker image and
policy version into the base spec and removes ``canary``. That switch must be
invisible to traffic: the same upstream endpoint, the same policy version and
artifact, the same worker image, and no canary state left to start over.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from apx.controllers.models.route import CanaryStatus
from apx.controllers.pipeline import Compiled, compile_resources

ROOT = Path(__file__).resolve().parents[2]


def _samples() -> list[dict[str, Any]]:
    return [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def _serving(compiled: Compiled, route_key: str) -> list[tuple[str, str, str]]:
    """Where the traffic goes: (upstream address, policy version, policy artifact) of each track above 0 %."""
    entry = compiled.redis.route_table.documents()[route_key]
    ir = next(r for r in compiled.ir.routes if r.key == route_key)
    tracks = {t.name: t for t in ir.tracks}
    served = []
    for track in entry["tracks"]:
        if track["weight"] == 0:
            continue
        backend = tracks[track["track"]].backend
        served.append((f"{backend.host}:{backend.port}", track["policy_version"], track["policy_artifact"]))
    return served


def _deployment_images(compiled: Compiled, route_key: str) -> set[str]:
    return {
        m["spec"]["template"]["spec"]["containers"][0]["image"]
        for m in compiled.kubernetes.manifests
        if m["kind"] == "Deployment" and m["metadata"]["annotations"].get("apx.dev/route-key") == route_key
        and m["spec"]["replicas"] > 0
    }  # fmt: skip


def _fold(documents: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    folded = copy.deepcopy(documents)
    route = next(d for d in folded if d["kind"] == "Route" and d["metadata"]["name"] == name)
    canary = route["spec"].pop("canary")
    if "backend" in canary:
        route["spec"]["backend"] = canary["backend"]
    if "policyVersion" in canary:
        route["spec"]["policyRef"]["version"] = canary["policyVersion"]
    if "worker" in canary:
        route["spec"]["worker"]["image"] = canary["worker"]["image"]
    route.pop("status", None)
    return folded


def test_folding_a_promoted_sync_canary_keeps_every_request_where_it_was() -> None:
    documents = _samples()
    key = "default/payments-charges"
    promoted = compile_resources(documents, {key: CanaryStatus(phase="Promoted", weight=100)})
    folded = compile_resources(_fold(documents, "payments-charges"))
    before, after = _serving(promoted, key), _serving(folded, key)
    assert before == after, (before, after)
    assert before[0][0].startswith("charges-v2.") and before[0][1] == "1.3.0"
    route = next(r for r in folded.ir.routes if r.key == key)
    assert route.canary is None and route.canary_state is None, "a new rollout would start"


def test_folding_a_promoted_async_canary_keeps_the_new_worker_image_serving() -> None:
    documents = _samples()
    route = next(d for d in documents if d["kind"] == "Route" and d["spec"].get("mode") == "async")
    key = f"default/{route['metadata']['name']}"
    canary = route["spec"].setdefault("canary", {})
    canary["worker"] = {"image": "example.com/exports-worker:2"}
    promoted = compile_resources(documents, {key: CanaryStatus(phase="Promoted", weight=100)})
    folded = compile_resources(_fold(documents, route["metadata"]["name"]))
    assert _serving(promoted, key) == _serving(folded, key)
    assert "example.com/exports-worker:2" in _deployment_images(promoted, key)
    assert _deployment_images(folded, key) == {"example.com/exports-worker:2"}
