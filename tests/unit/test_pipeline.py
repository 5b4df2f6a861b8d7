"""The whole pure path as the operator runs it: outputs without the Envoy messages are otherwise identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from apx.controllers.pipeline import finish, first_stage
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps

ROOT = Path(__file__).resolve().parents[2]


def _samples() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((ROOT / "samples").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_dropping_envoy_messages_keeps_the_snapshot_configmap_version_and_every_other_output() -> None:
    full = finish(first_stage(_samples()))
    lean = finish(first_stage(_samples()), keep_envoy_resources=False)

    assert full.envoy.route_configurations and full.envoy.clusters
    assert lean.envoy.listeners == lean.envoy.route_configurations == lean.envoy.clusters == []
    assert lean.envoy.version == full.envoy.version
    assert lean.envoy.errors == full.envoy.errors
    assert lean.kubernetes.to_json() == full.kubernetes.to_json()
    assert lean.pubsub.to_json() == full.pubsub.to_json()
    assert lean.redis.to_json() == full.redis.to_json()
    # The snapshot the operator ships still carries every resource.
    packed = decode_configmaps(
        [m for m in lean.kubernetes.manifests if m["metadata"]["namespace"] == "apx-system"]
    )
    assert packed is not None
    assert [r.type_url for r in packed] == [
        f"type.googleapis.com/{r.DESCRIPTOR.full_name}" for r in full.envoy.resources()
    ]
