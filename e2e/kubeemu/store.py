"""The write verbs of the emulated API server: create, replace, patch, apply.

On top of :class:`.deletion.DeletionStore`, this adds what the real API server
does to a write besides storing it: ``uid``, ``creationTimestamp``,
``generation`` (bumped only when more than metadata/status changes),
``generateName``, namespace existence, optimistic concurrency (409 on a stale
resourceVersion), the spec/status split of the ``status`` subresource, the
patch formats (:mod:`.patching`), server-side apply with ``managedFields``
(:mod:`.managed`), schema enforcement of custom resources, no-op writes that
keep their resourceVersion, CRD registration and the Event TTL. Called by
:mod:`.emulator` (HTTP verbs), :mod:`.serving` (pre-registered CRDs) and tests.
"""

from __future__ import annotations

import copy
import datetime
import heapq
import random
import uuid
from collections.abc import Callable
from typing import Any

import kmock

from . import errors, managed, patching
from .base import WriteOptions, meta_of, now_string
from .deletion import DeletionStore
from .errors import Cause
from .registry import CRD_RESOURCE, NAMESPACE_RESOURCE, Kind

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def _without_time(entries: Any) -> Any:
    if not isinstance(entries, list):
        return entries
    return [{k: v for k, v in entry.items() if k != "time"} for entry in entries if isinstance(entry, dict)]


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what changes on every write (for no-op detection)."""
    result = copy.deepcopy(obj)
    meta = result.get("metadata") or {}
    meta.pop("resourceVersion", None)
    if "managedFields" in meta:
        meta["managedFields"] = _without_time(meta["managedFields"])
    return result


def _desired_state(obj: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """The part whose change bumps ``metadata.generation``."""
    skip = {"metadata", "status"} if kind.has_status else {"metadata"}
    return {key: value for key, value in obj.items() if key not in skip}


class Store(DeletionStore):
    """The object database with the real API server's write semantics."""

    def __init__(
        self,
        objects: kmock.ObjectsArray,
        resources: kmock.ResourcesArray,
        *,
        history_size: int = 4096,
        event_ttl: float = 3600.0,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        super().__init__(objects, resources, history_size=history_size, event_ttl=event_ttl, clock=clock)
        namespaces = self.registry.find("", "v1", "namespaces")
        assert namespaces is not None
        for name in INITIAL_NAMESPACES:
            self.create(
                namespaces, None, {"metadata": {"name": name}}, WriteOptions(default_manager="kube-apiserver")
            )

    # ------------------------------------------------------------------ create

    def create(
        self,
        kind: Kind,
        namespace: str | None,
        body: Any,
        options: WriteOptions,
        *,
        applied: set[managed.Path] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        meta = meta_of(obj)
        self._check_identity(kind, obj, namespace, None)
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise self._invalid(
                    kind,
                    "",
                    [
                        Cause(
                            "metadata.name",
                            "Required value: name or generateName is required",
                            "FieldValueRequired",
                        )
                    ],
                )
            meta["name"] = self._generate_name(kind, namespace, str(prefix))
        name = str(meta["name"])
        self._check_namespace(kind, namespace, name)
        if self._load(self._key(kind, namespace, name)) is not None:
            raise errors.already_exists(kind.plural, kind.group, name)
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        for field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_string(self.clock)
        meta["generation"] = 1
        if kind.has_status:
            obj.pop("status", None)
        self._prepare(kind, obj, None)
        obj = self._admit(kind, obj, None, strict=options.strict)
        meta = meta_of(obj)
        meta["managedFields"] = self._managed(kind, [], obj, None, options, None, applied)
        if not meta["managedFields"]:
            del meta["managedFields"]
        if options.dry_run:
            return self.present(kind, obj)
        if kind.group in ("", "events.k8s.io") and kind.plural == "events":
            self._expire_events(kind)
        self._emit(kind, "ADDED", obj, None)
        self._after_commit(kind, obj)
        return self.present(kind, obj)

    def _generate_name(self, kind: Kind, namespace: str | None, prefix: str) -> str:
        rng = random.Random()
        while True:
            name = prefix[:58] + "".join(rng.choice(_GENERATE_ALPHABET) for _ in range(5))
            if self._load(self._key(kind, namespace, name)) is None:
                return name

    def _check_identity(
        self, kind: Kind, obj: dict[str, Any], namespace: str | None, name: str | None
    ) -> None:
        meta = meta_of(obj)
        body_kind = obj.get("kind")
        if body_kind and body_kind != kind.kind:
            raise errors.bad_request(
                f'the kind in the body ("{body_kind}") does not match the kind of the resource '
                f'("{kind.kind}")'
            )
        body_ns = meta.get("namespace")
        if kind.namespaced and body_ns and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if name is not None and meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )

    def _expire_events(self, kind: Kind) -> None:
        horizon = self.clock().astimezone(datetime.UTC) - datetime.timedelta(seconds=self.event_ttl)
        cutoff = horizon.strftime("%Y-%m-%dT%H:%M:%SZ")
        # Oldest first from the creation-time heap (``StoreBase._emit`` fills it); an entry whose
        # Event was deleted, or replaced by a newer one of the same name, is dropped on the way.
        heap = self._event_times.get(kind.storage) or []
        while heap and heap[0][0] < cutoff:
            created, key = heapq.heappop(heap)
            event = self._peek(key)
            stamp = str((event or {}).get("metadata", {}).get("creationTimestamp", ""))
            if event is not None and stamp == created:
                expired = copy.deepcopy(event)
                self._emit(kind, "DELETED", expired, event)

    # ------------------------------------------------------------ managed fields

    def _managed(
        self,
        kind: Kind,
        entries: list[dict[str, Any]],
        new: dict[str, Any],
        old: dict[str, Any] | None,
        options: WriteOptions,
        subresource: str | None,
        applied: set[managed.Path] | None,
    ) -> list[dict[str, Any]]:
        changed = managed.changed_fields(old or {}, new)
        if subresource == "status":
            changed = {path for path in changed if path[:1] == ("status",)}
        return managed.record(
            entries,
            manager=options.manager,
            operation="Update" if applied is None else "Apply",
            api_version=kind.api_version,
            subresource=subresource,
            paths=changed if applied is None else applied,
            changed=changed,
            now=now_string(self.clock),
        )

    # ------------------------------------------------------------------ update

    def replace(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        options: WriteOptions,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        old = self._load(self._key(kind, namespace, name))
        if old is None:
            raise errors.not_found(kind.plural, kind.group, name)
        self._check_identity(kind, body, namespace, name)
        self._check_precondition(kind, name, old, body)
        return self._update(kind, old, copy.deepcopy(body), options, subresource=subresource)

    def _check_precondition(self, kind: Kind, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != str(meta_of(old).get("resourceVersion")):
            raise errors.conflict(
                kind.plural,
                kind.group,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        options: WriteOptions,
        *,
        subresource: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Apply a patch; returns the object and whether it was created (apply only)."""
        key = self._key(kind, namespace, name)
        old = self._load(key)
        if patch_type == "apply":
            return self._apply(kind, namespace, name, old, body, options, subresource)
        if old is None:
            raise errors.not_found(kind.plural, kind.group, name)
        if patch_type == "json":
            new = patching.json_patch(old, body)
        elif not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        elif patch_type == "merge":
            new = patching.merge_patch(old, body)
        else:
            new = patching.strategic_merge_patch(old, body)
        if not isinstance(new, dict):
            raise errors.unprocessable("the patched object is not a JSON object")
        self._check_identity(kind, new, namespace, name)
        self._check_precondition(kind, name, old, new)
        return self._update(kind, old, new, options, subresource=subresource), False

    def _apply(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        old: dict[str, Any] | None,
        body: Any,
        options: WriteOptions,
        subresource: str | None,
    ) -> tuple[dict[str, Any], bool]:
        if not options.field_manager:
            raise errors.bad_request(
                "PATCH /apply requires a fieldManager query parameter (fieldManager is required "
                "for apply requests)"
            )
        if not isinstance(body, dict):
            raise errors.bad_request("the apply configuration must be a YAML or JSON object")
        if not body.get("apiVersion") or not body.get("kind"):
            raise errors.bad_request("apiVersion and kind must be set in the apply configuration")
        self._check_identity(kind, body, namespace, name)
        applied = managed.fields_of(body, subresource)
        if old is None:
            if subresource:
                raise errors.not_found(kind.plural, kind.group, name)
            created = copy.deepcopy(body)
            meta_of(created)["name"] = name
            return self.create(kind, namespace, created, options, applied=applied), True
        self._check_precondition(kind, name, old, body)
        new = patching.apply_merge(old, body)
        entries = list(meta_of(old).get("managedFields") or [])
        for path in managed.stale_apply_fields(entries, options.manager, subresource, applied):
            managed.remove_path(new, path, applied)
        return self._update(kind, old, new, options, subresource=subresource, applied=applied), False

    def _update(
        self,
        kind: Kind,
        old: dict[str, Any],
        new: dict[str, Any],
        options: WriteOptions,
        *,
        subresource: str | None,
        applied: set[managed.Path] | None = None,
    ) -> dict[str, Any]:
        old_meta = meta_of(old)
        if subresource == "status" and not kind.has_status:
            raise errors.not_found(f"{kind.plural}/status", kind.group, old_meta["name"])
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource is not None:
            raise errors.not_found(f"{kind.plural}/{subresource}", kind.group, old_meta["name"])
        elif kind.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = meta_of(new)
        meta["name"] = old_meta["name"]
        if kind.namespaced:
            meta["namespace"] = old_meta.get("namespace")
        else:
            meta.pop("namespace", None)
        new["apiVersion"] = kind.api_version
        new["kind"] = kind.kind
        for field in _SERVER_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise self._invalid(
                    kind,
                    old_meta["name"],
                    [
                        Cause(
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted",
                            "FieldValueForbidden",
                        )
                    ],
                )
        self._prepare(kind, new, old)
        new = self._admit(kind, new, old, strict=options.strict)
        meta = meta_of(new)
        meta["managedFields"] = self._managed(
            kind, list(old_meta.get("managedFields") or []), new, old, options, subresource, applied
        )
        if not meta["managedFields"]:
            del meta["managedFields"]
        if _desired_state(new, kind) != _desired_state(old, kind):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if _comparable(new) == _comparable(old):
            return self.present(kind, old)  # a no-op write: no new resourceVersion, no event
        if options.dry_run:
            return self.present(kind, new)
        stepwise = kind.resource in (NAMESPACE_RESOURCE, CRD_RESOURCE)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not stepwise:
            self._remove(kind, new, old)
        else:
            self._emit(kind, "MODIFIED", new, old)
            self._after_commit(kind, new)
        self._reconcile()
        return self.present(kind, new)
