"""Deletion: finalizers, ownerReference garbage collection, terminations.

What the real API server and its garbage collector, namespace controller and
CRD finalizer do, done synchronously right after each write: ``DELETE`` sets
``deletionTimestamp`` while finalizers remain and removes the object once
they are gone; ``propagationPolicy`` Background (the default) removes
dependents whose ``ownerReferences`` point at a removed owner (cascading,
keeping dependents that still have another live owner), Foreground holds the
owner with the ``foregroundDeletion`` finalizer until its dependents are gone,
Orphan strips the owner references; deleting a namespace deletes its content
and then the namespace; deleting a CRD deletes its instances, then the CRD,
then its endpoints. Called through :class:`.store.Store`.
"""

from __future__ import annotations

import copy
from typing import Any

from . import errors
from .base import Key, StoreBase, meta_of, now_string
from .errors import ApiError
from .registry import CRD_CLEANUP_FINALIZER, CRD_RESOURCE, NAMESPACE_RESOURCE, Kind
from .selectors import FieldSelector, LabelSelector

FOREGROUND = "foregroundDeletion"


class DeletionStore(StoreBase):
    """The delete verbs and everything that hangs on a removal."""

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        old = self._load(self._key(kind, namespace, name))
        if old is None:
            raise errors.not_found(kind.plural, kind.group, name)
        meta = meta_of(old)
        for field, actual in (("uid", meta.get("uid")), ("resourceVersion", meta.get("resourceVersion"))):
            wanted = (preconditions or {}).get(field)
            if wanted and str(wanted) != str(actual):
                raise errors.conflict(
                    kind.plural,
                    kind.group,
                    name,
                    f"Precondition failed: {field} in precondition: {wanted}, "
                    f"{field} in object meta: {actual}",
                )
        if dry_run:
            return self.present(kind, old)
        policy = propagation or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise errors.bad_request(f'unsupported propagationPolicy "{policy}"')
        result = self._delete(kind, old, policy)
        self._reconcile()
        return self.present(kind, result)

    def _delete(self, kind: Kind, old: dict[str, Any], policy: str) -> dict[str, Any]:
        meta = meta_of(old)
        if policy == "Orphan":
            self._orphan_dependents(str(meta.get("uid")))
        new = copy.deepcopy(old)
        new_meta = meta_of(new)
        finalizers = list(new_meta.get("finalizers") or [])
        if policy == "Foreground" and FOREGROUND not in finalizers and self._dependents(str(meta.get("uid"))):
            finalizers.append(FOREGROUND)
        # Namespaces and CRDs always terminate in steps: their content goes first.
        stepwise = kind.resource in (NAMESPACE_RESOURCE, CRD_RESOURCE)
        if not finalizers and not stepwise:
            self._remove(kind, new, old)
            return new
        if new_meta.get("deletionTimestamp"):
            return old  # already terminating; a repeated DELETE changes nothing
        new_meta["finalizers"] = finalizers
        if not finalizers:
            del new_meta["finalizers"]
        new_meta["deletionTimestamp"] = now_string(self.clock)
        new_meta["deletionGracePeriodSeconds"] = 0
        if kind.schema is not None or kind.crd is not None:
            new_meta["generation"] = int(new_meta.get("generation") or 0) + 1
        self._prepare(kind, new, old)
        self._emit(kind, "MODIFIED", new, old)
        if kind.resource == NAMESPACE_RESOURCE:
            self._delete_namespace_content(new_meta["name"])
        elif kind.resource == CRD_RESOURCE:
            self._delete_crd_instances(new_meta["name"])
        elif FOREGROUND in finalizers:
            self._delete_dependents(str(meta.get("uid")))
        return new

    def _remove(self, kind: Kind, final: dict[str, Any], old: dict[str, Any]) -> None:
        """The object is gone for good: event, then what hangs on it."""
        self._emit(kind, "DELETED", final, old)
        meta = meta_of(final)
        if kind.resource == CRD_RESOURCE:
            # Instances left behind (a finalizer removed by force) go with their CRD.
            for instance_kind in self.registry.kinds_of_crd(str(meta["name"])):
                for key in self._keys(instance_kind.storage):
                    instance = self._load(key)
                    if instance is not None:
                        self._emit(instance_kind, "DELETED", instance, self._peek(key))
            self.registry.unregister_crd(str(meta["name"]))
        self._collect_garbage(str(meta.get("uid")))

    def delete_collection(
        self,
        kind: Kind,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        page = self.list_objects(kind, namespace, labels, fields)
        deleted: list[dict[str, Any]] = []
        for item in page.items:
            meta = item["metadata"]
            try:
                deleted.append(
                    self.delete(
                        kind, meta.get("namespace"), meta["name"], propagation=propagation, dry_run=dry_run
                    )
                )
            except ApiError as exc:
                if exc.status != 404:  # deleted meanwhile by the cascade of an earlier item
                    raise
        return deleted

    # ------------------------------------------------------ garbage collection

    def _dependents(self, uid: str) -> list[tuple[Key, dict[str, Any]]]:
        dependents = []
        for key in list(self._owned.get(uid, ())):  # the owner index ``_emit`` keeps
            obj = self._peek(key)
            refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
            if obj is not None and any(ref.get("uid") == uid for ref in refs):
                dependents.append((key, copy.deepcopy(obj)))
        return dependents

    def _live_uids(self) -> set[str]:
        return set(self._uids)

    def _drop_owner_refs(self, key: Key, obj: dict[str, Any], uids: set[str]) -> None:
        kind = self._storage_kind(key[0])
        if kind is None:
            return
        new = copy.deepcopy(obj)
        meta = meta_of(new)
        refs = [ref for ref in meta.get("ownerReferences") or [] if ref.get("uid") not in uids]
        if refs:
            meta["ownerReferences"] = refs
        else:
            meta.pop("ownerReferences", None)
        self._emit(kind, "MODIFIED", new, obj)

    def _orphan_dependents(self, uid: str) -> None:
        for key, obj in self._dependents(uid):
            self._drop_owner_refs(key, obj, {uid})

    def _delete_dependents(self, uid: str) -> None:
        for key, obj in self._dependents(uid):
            kind = self._storage_kind(key[0])
            if kind is not None and not meta_of(obj).get("deletionTimestamp"):
                self._delete(kind, obj, "Background")

    def _collect_garbage(self, uid: str) -> None:
        """Dependents of a removed owner go too, unless another owner still lives."""
        dependents = self._dependents(uid)
        if not dependents:
            return
        live = self._live_uids()
        for key, _ in dependents:
            current = self._load(key)
            if current is None:
                continue  # removed by an earlier cascade step
            kind = self._storage_kind(key[0])
            if kind is None:
                continue
            refs = meta_of(current).get("ownerReferences") or []
            other_owners = {ref.get("uid") for ref in refs if ref.get("uid") != uid}
            if other_owners & live:
                self._drop_owner_refs(key, current, {uid})
            elif not meta_of(current).get("deletionTimestamp"):
                self._delete(kind, current, "Background")

    def _delete_namespace_content(self, namespace: str) -> None:
        for key in [key for key in list(self.objects.keys()) if key[1] == namespace]:
            obj = self._load(key)
            kind = self._storage_kind(key[0])
            if obj is not None and kind is not None and not meta_of(obj).get("deletionTimestamp"):
                self._delete(kind, obj, "Background")

    def _delete_crd_instances(self, crd_name: str) -> None:
        kinds = self.registry.kinds_of_crd(crd_name)
        if not kinds:
            return
        kind = kinds[0]  # every served version shares one storage
        for key in self._keys(kind.storage):
            obj = self._load(key)
            if obj is not None and not meta_of(obj).get("deletionTimestamp"):
                self._delete(kind, obj, "Background")

    def _reconcile(self) -> None:
        """Finish terminations whose content is gone (namespaces, CRDs, foreground owners)."""
        changed = True
        while changed:
            changed = False
            for key in sorted(
                self._terminating, key=lambda k: (k[0].group or "", k[0].plural or "", k[1] or "", k[2])
            ):
                obj = self._load(key)
                kind = self._storage_kind(key[0])
                if obj is None or kind is None:
                    self._terminating.discard(key)
                    continue
                if self._finish_termination(kind, obj):
                    changed = True

    def _finish_termination(self, kind: Kind, obj: dict[str, Any]) -> bool:
        meta = meta_of(obj)
        finalizers = list(meta.get("finalizers") or [])
        if kind.resource == NAMESPACE_RESOURCE:
            if finalizers or any(key[1] == meta["name"] for key in list(self.objects.keys())):
                return False
            self._remove(kind, obj, copy.deepcopy(obj))
            return True
        release: set[str] = set()
        if kind.resource == CRD_RESOURCE and CRD_CLEANUP_FINALIZER in finalizers:
            crd_kinds = self.registry.kinds_of_crd(meta["name"])
            if not any(self._keys(crd_kind.storage) for crd_kind in crd_kinds):
                release.add(CRD_CLEANUP_FINALIZER)
        if FOREGROUND in finalizers and not self._dependents(str(meta.get("uid"))):
            release.add(FOREGROUND)
        remaining = [finalizer for finalizer in finalizers if finalizer not in release]
        if remaining and not release:
            return False
        new = copy.deepcopy(obj)
        if remaining:
            meta_of(new)["finalizers"] = remaining
            self._emit(kind, "MODIFIED", new, obj)
        else:
            meta_of(new).pop("finalizers", None)
            self._remove(kind, new, obj)
        return True
