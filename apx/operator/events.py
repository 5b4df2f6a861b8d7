"""Kubernetes Events about APX objects: one builder, one poster.

Called by the reconciler (phase transitions: Ready, Stalled, Reconciling) and
the canary controller (steps, rollbacks, halts, freezes). An Event that cannot
be posted is logged and dropped: Events are for people, and losing one must
never stop a reconcile or a rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from apx.controllers.appliers.kube import KubeClient, KubeError
from apx.dataplane.common.redact import redact_text

logger = logging.getLogger("apx.operator")

EventType = Literal["Normal", "Warning"]
MESSAGE_LIMIT = 1024  # the API server refuses longer Event messages


def build_event(
    kind: str, body: Mapping[str, Any], event_type: EventType, reason: str, message: str, now: str
) -> dict[str, Any]:
    """The Event manifest about ``body`` (an APX object of ``kind``)."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": kind,
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        # Messages quote dependency errors; no credential may reach an Event.
        "message": redact_text(message)[:MESSAGE_LIMIT],
        "type": event_type,
        "source": {"component": "apx-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(
    kube: KubeClient,
    kind: str,
    body: Mapping[str, Any],
    event_type: EventType,
    reason: str,
    message: str,
    now: str,
) -> bool:
    """Post one Event; False (and a log line) when the API refused or could not be reached."""
    try:
        await kube.create(build_event(kind, body, event_type, reason, message, now))
    except KubeError as exc:
        meta = body.get("metadata") or {}
        logger.info("cannot post event for %s %s/%s: %s", kind, meta.get("namespace"), meta.get("name"), exc)
        return False
    return True
