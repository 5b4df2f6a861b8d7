"""The reconciler's store: the APX objects it has seen, what they pin, and who uses whom.

Mixed into ``apx.operator.reconciler.Reconciler`` (``Store``); fed by the
kopf handlers (``observe``, ``forget``) and read by every pass. Keeps the
newest body of each object (without ``managedFields``, its strings
interned), marks the products whose rule sets a change can affect (for the
fast path), remembers PolicyBundle versions that were served (so N-1 stays
served) and answers which Routes pin or use an object (admission, in-use
protection).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from apx.controllers.pinned_versions import route_pins
from apx.controllers.translate import HISTORY_ANNOTATION
from apx.controllers.translation.parse import status_read_by_translation

from .reconcile_state import (
    CONTROLLERS,
    ReconcilerState,
    _key,
    _resource_version,
)


class Store(ReconcilerState):
    """The reconciler's store of the reconciler (a mixin of ``Reconciler``)."""

    def observe(self, kind: str, body: Mapping[str, Any]) -> None:
        """Record the latest body of an object (from a watch event)."""
        key = (kind, _key(body))
        current = self.objects.get(key)
        if current is not None and _resource_version(current) >= _resource_version(body) > 0:
            return  # an older (or the same) version arriving after a newer LIST or our own write
        if current is not None and _significant(kind, current) == _significant(kind, body):
            # Only what no pass reads changed (status written by the operator itself or by
            # a canary check, kopf's own fields, managedFields): keep the newest body, run
            # no pass. The canary controller still hears of it (an `apx rollout` request
            # lives in status.canary); a status edited by hand is rewritten by the resync.
            self._replace_body(key, _stored(body))
            if (current.get("status") or {}) != (body.get("status") or {}):
                for listener in self.listeners:
                    listener(kind, self.objects[key])
            return
        if kind == "PolicyBundle" and current is not None:
            self._remember_policy_version(key, current, body)
        self._mark_products(kind, body, current)
        self.objects[key] = _stored(body)
        self._touched.add(key)
        self._status_touched.add(key)
        if current is None:
            self._membership_changed = True
        if (body.get("metadata") or {}).get("deletionTimestamp") is None and key in self.deleting:
            del self.deleting[key]
            self._membership_changed = True
        self.metrics.workqueue_adds.labels(name=CONTROLLERS[kind]).inc()
        self._pending.add(CONTROLLERS[kind], key[1])
        self._dirty.set()
        for listener in self.listeners:
            listener(kind, self.objects[key])

    def _mark_products(self, kind: str, body: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
        """Remember which products' rule sets a change can affect (for the fast path)."""
        # Every change bumps the epoch, also of a product already waiting: a pass that took its
        # snapshot before this change must not count as having published it.
        marked = self._products_of_change(kind, body, previous)
        for product in marked:
            self._epoch[product] = self._epoch.get(product, 0) + 1
        if marked:
            self._dirty_products |= marked
            self._fast_wanted.set()
            self._fast_path_recheck.set()  # one the running pass does not hold need not wait

    def _products_of_change(
        self, kind: str, body: Mapping[str, Any], previous: Mapping[str, Any] | None
    ) -> set[str]:
        namespace = (body.get("metadata") or {}).get("namespace") or "default"
        marked: set[str] = set()
        if kind == "Product":
            marked.add(_key(body))
        elif kind == "Route":
            for source in (body, previous or {}):
                product = ((source.get("spec") or {}).get("productRef") or {}).get("name")
                if product:
                    marked.add(f"{namespace}/{product}")
        else:
            bundle = (body.get("metadata") or {}).get("name")
            for (other_kind, _), other in self.objects.items():
                spec = other.get("spec") or {}
                if other_kind == "Route" and (spec.get("policyRef") or {}).get("name") == bundle:
                    other_namespace = (other.get("metadata") or {}).get("namespace") or "default"
                    if other_namespace == namespace:
                        marked.add(f"{namespace}/{(spec.get('productRef') or {}).get('name')}")
        return marked

    def _remember_policy_version(
        self, key: tuple[str, str], previous: Mapping[str, Any], body: Mapping[str, Any]
    ) -> None:
        """Keep a served version the spec just moved away from, so it stays N-1.

        The status also records served versions, but a new version can arrive
        before the status of the previous one was written (two applies in a
        row). Only versions that were actually served are kept: an invalid
        apply must not poison the history.
        """
        old_version = str((previous.get("spec") or {}).get("version", ""))
        new_version = str((body.get("spec") or {}).get("version", ""))
        if old_version and old_version != new_version and old_version in self._served_policies.get(key, ()):
            history = self._policy_history.setdefault(key, {})
            remembered = {k: v for k, v in previous.items() if k != "status"}
            meta = dict(remembered.get("metadata") or {})
            meta["annotations"] = {**(meta.get("annotations") or {}), HISTORY_ANNOTATION: "true"}
            remembered["metadata"] = meta
            history[old_version] = remembered
            # N and N-1 are what is served, plus older versions Routes still pin
            # (``apx.controllers.pinned_versions``); the rest only ordered applies.
            namespace, name = key[1].split("/", 1)
            pinned = self.pinned_versions(namespace, name)
            for stale in sorted(history, key=_version_key)[:-2]:
                if stale not in pinned:
                    history.pop(stale)

    def pinned_versions(self, namespace: str, bundle: str) -> dict[str, list[str]]:
        """Versions of a PolicyBundle that Routes in the store pin, each with those Routes' keys."""
        pins: dict[str, list[str]] = {}
        # A snapshot first: the admission webhook calls this from kopf's thread pool.
        for (kind, object_key), body in sorted(list(self.objects.items())):
            if kind != "Route" or not object_key.startswith(f"{namespace}/"):
                continue
            for version in route_pins(namespace, bundle, body.get("spec") or {}):
                pins.setdefault(version, []).append(object_key)
        return pins

    def translation_documents(self) -> list[dict[str, Any]]:
        """The documents a pass translates: one per live object, sorted by key.

        A body replaced while nothing a pass reads changed (a status write, the
        canary's check bookkeeping) keeps the document of the body before it: the
        caches key on the document's identity, so the object is not translated
        and rendered again, and a one-Route edit stays on every stage's delta
        path even though the pass before it wrote its Product's status.
        Only the objects touched since the last call are looked at (``_touched``,
        left in ``_documents_renewed``); the whole store is sorted again only
        when objects came or went (``_documents_renewed`` is then ``None``).
        """
        documents = self._documents
        if self._membership_changed:
            self._membership_changed = False
            self._touched.clear()
            self._documents_renewed = None
            documents = {
                key: self._document_entry(key, body)
                for key, body in sorted(self.objects.items())
                if key not in self.deleting
            }
            self._documents = documents
            self._document_list = [document for _, document in documents.values()]
            self._document_index = {key: index for index, key in enumerate(documents)}
        else:
            touched, self._touched = self._touched, set()
            self._documents_renewed = touched
            for key in touched:
                body = self.objects.get(key)
                if body is not None and key in documents:
                    entry = documents[key] = self._document_entry(key, body)
                    self._document_list[self._document_index[key]] = entry[1]
        return list(self._document_list)

    def _document_entry(
        self, key: tuple[str, str], body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(body, the document a pass translates for it): the kept document while nothing read changed."""
        kept = self._documents.get(key)
        if kept is None or (
            kept[0] is not body and _significant(key[0], kept[0]) != _significant(key[0], body)
        ):
            return (body, body)
        return kept if kept[0] is body else (body, kept[1])

    def _replace_body(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        """Store a body whose spec is unchanged; a last-good reference to the old one follows it."""
        current = self.objects.get(key)
        if current is not None and "spec" in body and body["spec"] == current.get("spec"):
            # One spec object for both bodies: the pass's document (``translation_documents``)
            # and the caches may still hold the old body.
            body["spec"] = current["spec"]
        if self._last_good.get(key) is self.objects.get(key):
            self._last_good[key] = body
        failed = self._render_failures.get(key)
        if failed is not None and failed[0] is self.objects.get(key):
            self._render_failures[key] = (body, failed[1])
        self.objects[key] = body
        self._touched.add(key)
        self._status_touched.add(key)

    def forget(self, kind: str, key: str) -> None:
        """The object is gone from the API (after its finalizer was removed)."""
        self.objects.pop((kind, key), None)
        self._membership_changed = True
        self._status_touched.add((kind, key))
        self._last_good.pop((kind, key), None)
        self._render_failures.pop((kind, key), None)
        self._in_use.pop((kind, key), None)
        self.deleting.pop((kind, key), None)
        self._policy_history.pop((kind, key), None)
        # A bundle re-created under the same name has served nothing yet: what the deleted one
        # served must not make the new one's unserved versions N-1 (nor stay in memory).
        self._served_policies.pop((kind, key), None)
        self._cleaned.discard((kind, key))
        self._written_status.pop((kind, key), None)
        self._verified_status.pop((kind, key), None)
        self._pending.add(CONTROLLERS[kind], key)
        self._dirty.set()

    def users_of(self, kind: str, object_key: str) -> list[str]:
        """Keys of the Routes that reference a Product or PolicyBundle (empty for a Route)."""
        field_name = {"Product": "productRef", "PolicyBundle": "policyRef"}.get(kind)
        if field_name is None:
            return []
        namespace, name = object_key.split("/", 1)
        return sorted(
            route_key
            for (other, route_key), body in list(self.objects.items())
            if other == "Route"
            and route_key.startswith(f"{namespace}/")
            and ((body.get("spec") or {}).get(field_name) or {}).get("name") == name
        )


def _stored(body: Mapping[str, Any]) -> dict[str, Any]:
    """The copy of an object the store keeps: without ``managedFields``, which no pass reads, compacted.

    Field-manager records are often larger than the spec itself; with
    thousands of objects they were a sizeable share of the operator's memory.
    """
    meta = body.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        body = {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    stored: dict[str, Any] = _compact(body)
    return stored


def _compact(value: Any) -> Any:
    """``value`` (decoded JSON) rebuilt with every string interned: one copy of each text per process.

    A body decoded from the API has its own copy of every key and value, and
    most of them repeat across objects: field names, condition types, reasons,
    timestamps, names of Products and bundles, the messages a pass writes.
    Interned, a Route with its status took 3.9 KiB instead of 8.4 KiB, and the
    store holds every object (twice for a while: ``_document_entry``). The
    models parsed from the bodies and the caches keyed on them share the
    same strings. Containers are rebuilt, never shared, so a body is still
    the store's own to replace.
    """
    if type(value) is str:
        return sys.intern(value)
    if isinstance(value, Mapping):
        return {sys.intern(k) if type(k) is str else k: _compact(item) for k, item in value.items()}
    if isinstance(value, list):
        return [_compact(item) for item in value]
    return value


def _significant(kind: str, body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of an object a pass reads; a change elsewhere needs no pass."""
    meta = body.get("metadata") or {}
    status = status_read_by_translation(kind, body.get("status"))
    return (
        meta.get("generation"),
        meta.get("uid"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
        body.get("spec"),
        status,
    )


def _version_key(version: str) -> tuple[int, ...]:
    core = version.split("-", 1)[0].split("+", 1)[0]
    return tuple(int(part) if part.isdigit() else 0 for part in core.split("."))
