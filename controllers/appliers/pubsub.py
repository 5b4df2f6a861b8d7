"""Pub/Sub applier: creates and updates topics and subscriptions through the admin API.

Called by the operator's reconciler with the Pub/Sub renderer's plan (objects
in google.pubsub.v1 field names). Works against real Pub/Sub and against the
emulator (``PUBSUB_EMULATOR_HOST``). The client library is synchronous gRPC, so
calls run in a thread.

What can change in place is updated (subscription ack deadline, retry and
dead-letter policy, retention, labels); what Pub/Sub cannot change on an
existing subscription (its topic, message ordering) is reported as a problem
naming the Route field, and the existing subscription keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import pubsub_v1
from google.protobuf import field_mask_pb2

from apx.dataplane.common.redact import redact_text

_UNAVAILABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, gexc.InternalServerError)
# Every admin call is bounded: the client's default retry for some methods
# waits for the channel to come up and can hang for minutes when the
# service is down, which would stall the whole reconcile pass.
_CALL: dict[str, Any] = {
    "timeout": 8.0,
    "retry": gretry.Retry(
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=8.0,
        predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.Aborted),
    ),
}
_MUTABLE_SUBSCRIPTION_FIELDS = (
    "ack_deadline_seconds",
    "retry_policy",
    "dead_letter_policy",
    "message_retention_duration",
    "labels",
)


class PubSubUnavailable(Exception):
    """Pub/Sub (or its emulator) could not be reached."""


@dataclass(frozen=True, slots=True)
class PubSubProblem:
    """A desired change Pub/Sub does not allow; the existing object keeps serving."""

    resource: str
    message: str


def _duration_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value.rstrip("s"))
    if isinstance(value, Mapping):
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value)


def _to_request(document: Mapping[str, Any]) -> dict[str, Any]:
    """Plan document → request dict for the proto-plus client (durations as {"seconds": n})."""
    request: dict[str, Any] = json.loads(json.dumps(document))
    for key in ("message_retention_duration",):
        if key in request and isinstance(request[key], str):
            request[key] = {"seconds": int(_duration_seconds(request[key]) or 0)}
    retry = request.get("retry_policy")
    if isinstance(retry, dict):
        for key in ("minimum_backoff", "maximum_backoff"):
            if isinstance(retry.get(key), str):
                retry[key] = {"seconds": int(_duration_seconds(retry[key]) or 0)}
    return request


def _differs(desired: Mapping[str, Any], live: Any, field: str) -> bool:
    want = desired.get(field)
    if want is None:
        return False
    have = getattr(live, field, None)
    if field in ("message_retention_duration",):
        return _duration_seconds(want) != _duration_seconds(have)
    if field == "retry_policy":
        return any(
            _duration_seconds(want.get(k)) != _duration_seconds(getattr(have, k, None))
            for k in ("minimum_backoff", "maximum_backoff")
        )
    if field == "dead_letter_policy":
        return (want.get("dead_letter_topic"), int(want.get("max_delivery_attempts", 0))) != (
            getattr(have, "dead_letter_topic", None),
            int(getattr(have, "max_delivery_attempts", 0)),
        )
    if field == "labels":
        return dict(want) != dict(have or {})
    return bool(want != have)


class PubSubApplier:
    """Ensures topics and subscriptions exist as planned; deletes them on request."""

    def __init__(self) -> None:
        self._publisher = pubsub_v1.PublisherClient()
        self._subscriber = pubsub_v1.SubscriberClient()

    def close(self) -> None:
        self._subscriber.close()

    async def ensure(
        self, topics: Iterable[Mapping[str, Any]], subscriptions: Iterable[Mapping[str, Any]]
    ) -> list[PubSubProblem]:
        return await asyncio.to_thread(self._ensure_sync, list(topics), list(subscriptions))

    async def delete(self, topics: Iterable[str], subscriptions: Iterable[str]) -> None:
        await asyncio.to_thread(self._delete_sync, list(topics), list(subscriptions))

    async def topic_exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._topic_exists_sync, name)

    async def list_topics(self, project: str) -> list[str]:
        return await asyncio.to_thread(self._list_topics_sync, project)

    async def list_subscriptions(self, project: str) -> list[str]:
        return await asyncio.to_thread(self._list_subscriptions_sync, project)

    # --- synchronous parts (run in a thread) ---------------------------------

    def _ensure_sync(
        self, topics: list[Mapping[str, Any]], subscriptions: list[Mapping[str, Any]]
    ) -> list[PubSubProblem]:
        problems: list[PubSubProblem] = []
        try:
            for topic in topics:
                self._ensure_topic(topic)
            for subscription in subscriptions:
                problem = self._ensure_subscription(subscription)
                if problem is not None:
                    problems.append(problem)
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc
        return problems

    def _ensure_topic(self, topic: Mapping[str, Any]) -> None:
        request = _to_request(topic)
        try:
            self._publisher.create_topic(request=request, **_CALL)
        except gexc.AlreadyExists:
            live = self._publisher.get_topic(request={"topic": request["name"]}, **_CALL)
            if request.get("labels") and dict(live.labels) != dict(request["labels"]):
                # The emulator does not implement topic updates; labels are informational.
                with contextlib.suppress(gexc.MethodNotImplemented, gexc.InvalidArgument):
                    self._publisher.update_topic(
                        request={
                            "topic": {"name": request["name"], "labels": request["labels"]},
                            "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
                        },
                        **_CALL,
                    )

    def _ensure_subscription(self, subscription: Mapping[str, Any]) -> PubSubProblem | None:
        request = _to_request(subscription)
        try:
            self._subscriber.create_subscription(request=request, **_CALL)
            return None
        except gexc.AlreadyExists:
            pass
        live = self._subscriber.get_subscription(request={"subscription": request["name"]}, **_CALL)
        if live.topic != request["topic"]:
            return PubSubProblem(
                request["name"],
                f"subscription is attached to {live.topic}, not {request['topic']}; Pub/Sub cannot move it",
            )
        if bool(request.get("enable_message_ordering", False)) != bool(live.enable_message_ordering):
            return PubSubProblem(
                request["name"],
                "spec.async.ordering: Pub/Sub cannot change message ordering of an existing subscription; "
                "the subscription keeps its current setting (recreate the Route to change it)",
            )
        changed = [field for field in _MUTABLE_SUBSCRIPTION_FIELDS if _differs(request, live, field)]
        if changed:
            body = {field: request[field] for field in changed}
            body["name"] = request["name"]
            self._subscriber.update_subscription(
                request={"subscription": body, "update_mask": field_mask_pb2.FieldMask(paths=changed)},
                **_CALL,
            )
        return None

    def _delete_sync(self, topics: list[str], subscriptions: list[str]) -> None:
        try:
            for name in subscriptions:
                with contextlib.suppress(gexc.NotFound):
                    self._subscriber.delete_subscription(request={"subscription": name}, **_CALL)
            for name in topics:
                with contextlib.suppress(gexc.NotFound):
                    self._publisher.delete_topic(request={"topic": name}, **_CALL)
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc

    def _topic_exists_sync(self, name: str) -> bool:
        try:
            self._publisher.get_topic(request={"topic": name}, **_CALL)
            return True
        except gexc.NotFound:
            return False
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc

    def _list_topics_sync(self, project: str) -> list[str]:
        try:
            return [
                t.name
                for t in self._publisher.list_topics(request={"project": f"projects/{project}"}, **_CALL)
            ]
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc

    def _list_subscriptions_sync(self, project: str) -> list[str]:
        try:
            return [
                s.name
                for s in self._subscriber.list_subscriptions(
                    request={"project": f"projects/{project}"}, **_CALL
                )
            ]
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc
