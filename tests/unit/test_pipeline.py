"""The whole pure path as the operator runs it: outputs without the Envoy messages are otherwise identical."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from apx.controllers.pipeline import finish, first_stage
from apx.controllers.renderers.envoy import decode_snapshot

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
    snapshot = next(m for m in lean.kubernetes.manifests if m["metadata"]["name"] == "apx-envoy-snapshot")
    packed = decode_snapshot(base64.b64decode(snapshot["binaryData"]["snapshot.pb.gz"]))
    assert [r.type_url for r in packed] == [
        f"type.googleapis.com/{r.DESCRIPTOR.full_name}" for r in full.envoy.resources()
    ]
