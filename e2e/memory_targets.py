"""In-memory stand-ins for what the reconciler writes to: the Kubernetes API, Redis and Pub/Sub.

Used by the reconciler bookkeeping tests (``tests/operator/test_incremental_pass.py``)
and the reconciler benchmark (``bench/bench_reconciler.py``), which measure the
reconciler's own work per pass, so nothing else may cost time: the API answers
a status write with the stored object carrying the new status (as the API
server does), Redis and Pub/Sub accept everything. ``MemoryKube.refuse`` and
``MemoryRedis.down`` make a write fail, for the tests of what a pass does then.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apx.controllers.appliers.kube import KubeError
from apx.controllers.appliers.redis_rules import RedisUnavailable
from apx.operator.settings import OperatorSettings

if TYPE_CHECKING:
    from apx.operator.reconciler import Reconciler

Key = tuple[str, str]


class MemoryKube:
    """Status writes answered like the API server; applies, Events, lists and deletes accepted."""

    def __init__(self) -> None:
        self.reconciler: Reconciler | None = None
        self.status_writes: list[Key] = []
        self.refuse: set[Key] = set()  # the next status write of each fails once (500)
        self.version = 10**6

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> Any:
        key = (kind, f"{namespace}/{name}")
        if key in self.refuse:
            self.refuse.discard(key)
            raise KubeError(500, "etcd leader changed")
        self.status_writes.append(key)
        assert self.reconciler is not None
        body = dict(self.reconciler.objects[key])
        written = {k: v for k, v in status.items() if v is not None}
        body["status"] = {**(body.get("status") or {}), **written}
        body["metadata"] = {**body["metadata"], "resourceVersion": self.next_version()}
        return body

    async def apply(self, manifest: Mapping[str, Any]) -> Any:
        return manifest

    async def request(self, *args: Any, **kwargs: Any) -> Any:  # Events
        return {}

    async def create(self, manifest: Mapping[str, Any]) -> Any:
        return dict(manifest)

    async def list(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        return None


class MemoryRedis:
    """Rule sets and route tables accepted; ``down`` makes every publish fail as Redis being away does."""

    def __init__(self) -> None:
        self.down = False

    async def current_version(self, keys: Any) -> str | None:
        return None

    async def publish(self, keys: Any, version: str, fields: Any) -> bool:
        if self.down:
            raise RedisUnavailable("connection refused")
        return True

    async def publish_changes(self, *args: Any) -> bool:
        return await self.publish(None, "", None)


class MemoryPubSub:
    async def ensure(self, topics: Any, subscriptions: Any, verify: bool = False) -> list[Any]:
        return []


def memory_reconciler(documents: list[dict[str, Any]]) -> tuple[Reconciler, MemoryKube, MemoryRedis]:
    """A reconciler over in-memory targets whose store holds ``documents`` (copied), listed."""
    from apx.operator.reconciler import Reconciler

    kube, redis = MemoryKube(), MemoryRedis()
    settings = OperatorSettings(debounce_seconds=0, snapshot_configmap_seconds=3600)
    reconciler = Reconciler(settings, kube, redis, MemoryPubSub())  # type: ignore[arg-type]
    kube.reconciler = reconciler
    for index, document in enumerate(documents):
        stored = copy.deepcopy(document)
        stored["metadata"].update(resourceVersion=str(index + 1), generation=1, uid=f"uid-{index}")
        reconciler.observe(stored["kind"], stored)
    reconciler._listed = True
    return reconciler, kube, redis


def edited(reconciler: Reconciler, key: Key, kube: MemoryKube, **spec: Any) -> dict[str, Any]:
    """The stored body of ``key`` with ``spec`` fields changed, as the API would send it (generation + 1)."""
    body = copy.deepcopy(reconciler.objects[key])
    body["spec"].update(spec)
    body["metadata"]["resourceVersion"] = kube.next_version()
    body["metadata"]["generation"] += 1
    return body
