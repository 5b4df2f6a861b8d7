"""Storage, reading and the write primitives of the emulated API server.

:class:`StoreBase` keeps the objects in kmock's ``ObjectsArray``
(``emulator.objects``, keyed by storage resource, namespace and name; one
version per object, so memory does not grow with writes), the served kinds
(:class:`.registry.Registry`), the cluster-wide resourceVersion counter and
the watch :class:`.watching.EventLog`. Its :meth:`StoreBase._emit` is the one
place where a write is committed: next resourceVersion, storage and exactly
one watch event, in one synchronous step (the server runs on one asyncio
loop, so nothing can interleave). It also holds reading (get, filtered and
paginated lists), namespace checks and admission (metadata checks, CRD
schemas via :mod:`.schema`, unknown fields of built-in kinds via
:mod:`.definitions`). :mod:`.deletion` and :mod:`.store` build the
write verbs on top of it.
"""

from __future__ import annotations

import base64
import copy
import datetime
import heapq
import re
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import kmock

from . import definitions, errors, schema, strategies
from .errors import ApiError, Cause
from .registry import BUILTIN_KINDS, CRD_RESOURCE, NAMESPACE_RESOURCE, Kind, Registry, validate_crd
from .selectors import FieldSelector, LabelSelector
from .watching import EventLog, WatchEvent

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

Key = tuple[kmock.resource, str | None, str]


def now_string(clock: Callable[[], datetime.datetime]) -> str:
    return clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    return meta


@attrs.frozen
class WriteOptions:
    """Per-request knobs of a write (query parameters of the real API)."""

    dry_run: bool = False
    field_manager: str | None = None
    default_manager: str = "unknown"
    strict: bool = False  # fieldValidation=Strict: unknown fields are a 400

    @property
    def manager(self) -> str:
        return self.field_manager or self.default_manager


@attrs.frozen
class Page:
    items: list[dict[str, Any]]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


class StoreBase:
    """Objects, kinds, resourceVersions and watch events; reading and admission."""

    def __init__(
        self,
        objects: kmock.ObjectsArray,
        resources: kmock.ResourcesArray,
        *,
        history_size: int = 4096,
        event_ttl: float = 3600.0,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.objects = objects
        self.registry = Registry(resources)
        self.log = EventLog(size=history_size)
        self.rv = 0
        self.event_ttl = event_ttl
        self.clock: Callable[[], datetime.datetime] = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._service_ips = 0
        self._terminating: set[Key] = set()
        # The stored keys per storage resource (``_emit`` is the only writer): a LIST or an
        # Event's expiry reads one kind's keys instead of scanning every stored object, which
        # made each write O(objects) at 10,000 objects.
        self._index: dict[kmock.resource, set[Key]] = {}
        for key in list(self.objects.keys()):
            self._index.setdefault(key[0], set()).add(key)
        # Events by creation time (a heap per storage), for ``store._expire_events``.
        self._event_times: dict[kmock.resource, list[tuple[str, Key]]] = {}
        # The keys of the stored objects whose ownerReferences name a uid, in the order they
        # first did, and the uids of every stored object (``_emit`` keeps both): garbage
        # collection after a DELETE looks up an owner's dependents instead of walking every
        # stored object twice (~0.3 s per DELETE at 10,000 Routes' worth of objects, during
        # which every other request waited).
        self._owned: dict[str, dict[Key, None]] = {}
        self._uids: dict[str, int] = {}
        for key, obj in list(self._scan()):
            self._index_owners(key, None, obj)
        for kind in BUILTIN_KINDS:
            self.registry.register(kind)

    # ----------------------------------------------------------------- reading

    def _peek(self, key: Key) -> dict[str, Any] | None:
        """The stored object without a copy: for reading only."""
        if key not in self.objects:
            return None
        stored = self.objects[key]
        return None if stored.deleted else stored.raw

    def _load(self, key: Key) -> dict[str, Any] | None:
        """A private copy of the stored object, free to be modified."""
        obj = self._peek(key)
        return None if obj is None else copy.deepcopy(obj)

    def _keys(self, storage: kmock.resource, namespace: str | None = None) -> list[Key]:
        return sorted(
            (key for key in self._index.get(storage, ()) if namespace is None or key[1] == namespace),
            key=lambda key: (key[1] or "", key[2]),
        )

    def _scan(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        """Every stored object without copies: for reading only."""
        for key in list(self.objects.keys()):
            obj = self._peek(key)
            if obj is not None:
                yield key, obj

    def present(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as served at ``kind``'s version."""
        rest = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
        return {"apiVersion": kind.api_version, "kind": kind.kind, **rest}

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._load(self._key(kind, namespace, name))
        if obj is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return self.present(kind, obj)

    def list_objects(
        self,
        kind: Kind,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Page:
        start_after: tuple[str, str] | None = None
        if continue_token:
            start_after = self._decode_continue(continue_token)
        items: list[dict[str, Any]] = []
        for key in self._keys(kind.storage, namespace if kind.namespaced else None):
            if start_after is not None and (key[1] or "", key[2]) <= start_after:
                continue
            # No copy: stored objects are replaced on every write, never changed in place, and
            # a LIST only serializes them (a copy of each of 10,000 objects cost a second).
            obj = self._peek(key)
            if obj is None or (labels and not labels.matches(obj)) or (fields and not fields.matches(obj)):
                continue
            items.append(self.present(kind, obj))
        if limit is not None and limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = self._encode_continue(last.get("namespace") or "", last["name"])
            return Page(items[:limit], self.rv, token, len(items) - limit)
        return Page(items, self.rv)

    def _encode_continue(self, namespace: str, name: str) -> str:
        raw = f"{self.rv}\x00{namespace}\x00{name}".encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, str]:
        try:
            _, namespace, name = base64.urlsafe_b64decode(token.encode()).decode().split("\x00")
        except (ValueError, UnicodeDecodeError):
            raise errors.bad_request(f"continue key is not valid: {token!r}") from None
        return namespace, name

    def _key(self, kind: Kind, namespace: str | None, name: str) -> Key:
        return (kind.storage, namespace if kind.namespaced else None, name)

    # ---------------------------------------------------------------- plumbing

    def _emit(
        self, kind: Kind, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Commit one write: next resourceVersion, storage, and its watch event."""
        self.rv += 1
        meta = meta_of(obj)
        meta["resourceVersion"] = str(self.rv)
        key = self._key(kind, meta.get("namespace"), meta["name"])
        # One copy per write, shared by the storage and the watch log (neither changes it).
        stored = copy.deepcopy(obj)
        self._index_owners(key, self._peek(key), None if event_type == "DELETED" else stored)
        if event_type == "DELETED":
            if key in self.objects:
                del self.objects[key]
            self._index.get(kind.storage, set()).discard(key)
            self._terminating.discard(key)
        else:
            self.objects[key] = stored
            self._index.setdefault(kind.storage, set()).add(key)
            if meta.get("deletionTimestamp"):
                self._terminating.add(key)
            if event_type == "ADDED" and kind.plural == "events" and kind.group in ("", "events.k8s.io"):
                created = str(meta.get("creationTimestamp", ""))
                heapq.heappush(self._event_times.setdefault(kind.storage, []), (created, key))
        self.log.append(WatchEvent(self.rv, event_type, kind.storage, stored, old))
        return obj

    def _index_owners(self, key: Key, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        """Keep ``_owned`` and ``_uids`` right as the object at ``key`` goes from ``before`` to ``after``."""
        for obj, step in ((before, -1), (after, 1)):
            if obj is None:
                continue
            meta = obj.get("metadata") or {}
            uid = str(meta.get("uid"))
            count = self._uids.get(uid, 0) + step
            if count > 0:
                self._uids[uid] = count
            else:
                self._uids.pop(uid, None)
            for ref in meta.get("ownerReferences") or []:
                owner = str(ref.get("uid"))
                if step > 0:
                    self._owned.setdefault(owner, {})[key] = None
                elif key in self._owned.get(owner, {}) and not any(
                    str(r.get("uid")) == owner
                    for r in ((after or {}).get("metadata") or {}).get("ownerReferences") or []
                ):
                    del self._owned[owner][key]
                    if not self._owned[owner]:
                        del self._owned[owner]

    def _storage_kind(self, storage: kmock.resource) -> Kind | None:
        return self.registry.by_storage(storage)

    def _invalid(self, kind: Kind, name: str, causes: list[Cause]) -> ApiError:
        return errors.invalid(kind.qualified_kind, kind.group, kind.kind, name, causes)

    def _check_namespace(self, kind: Kind, namespace: str | None, name: str) -> None:
        if not kind.namespaced:
            return
        if not namespace:
            raise errors.bad_request(
                "the server could not find the requested resource: a namespace is required"
            )
        ns = self._load((NAMESPACE_RESOURCE, None, namespace))
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(
                kind.plural,
                kind.group,
                name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    def _validate_metadata(self, kind: Kind, obj: dict[str, Any]) -> list[Cause]:
        causes: list[Cause] = []
        meta = meta_of(obj)
        name = str(meta.get("name", ""))
        pattern = _DNS_LABEL if kind.resource == NAMESPACE_RESOURCE else _DNS_SUBDOMAIN
        if not pattern.match(name) or len(name) > 253:
            causes.append(
                Cause(
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                    f"alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                    "character",
                )
            )
        labels = meta.get("labels") or {}
        if not isinstance(labels, dict):
            causes.append(Cause("metadata.labels", "Invalid value: must be a map of strings"))
            return causes
        for label, value in labels.items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(
                    Cause(
                        "metadata.labels",
                        f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                        f"alphanumeric characters, '-', '_' or '.', and must start and end with an "
                        f"alphanumeric character (label {label})",
                    )
                )
        return causes

    def _admit(
        self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None, *, strict: bool = False
    ) -> dict[str, Any]:
        """Metadata checks for all kinds, plus the structural schema of CRD-defined kinds."""
        name = str(meta_of(obj).get("name", ""))
        causes = self._validate_metadata(kind, obj)
        if kind.resource == CRD_RESOURCE:
            causes += validate_crd(obj)
        if strict:
            self._refuse_unknown_fields(kind, obj)
        if kind.schema is not None and not causes:
            obj, causes = schema.admit(obj, kind.schema, old)
        if causes:
            raise self._invalid(kind, name, causes)
        return obj

    @staticmethod
    def _refuse_unknown_fields(kind: Kind, obj: dict[str, Any]) -> None:
        """``fieldValidation=Strict``: a 400 naming every unknown field, in the real server's words."""
        if kind.schema is not None:
            unknown = schema.unknown_fields(obj, kind.schema)
        elif kind.crd is None:
            unknown = definitions.unknown_builtin_fields(obj, kind.group, kind.version, kind.kind)
        else:
            unknown = []
        if unknown:
            raise errors.bad_request(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                "strict decoding error: " + ", ".join(f'unknown field "{field}"' for field in unknown)
            )

    def _prepare(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """What the real server's strategy for the kind does to every write."""
        strategies.prepare(kind, obj, old, now=now_string(self.clock), next_cluster_ip=self._next_cluster_ip)

    def _next_cluster_ip(self) -> str:
        self._service_ips += 1
        return f"10.96.{self._service_ips // 250}.{self._service_ips % 250 + 1}"

    def _after_commit(self, kind: Kind, obj: dict[str, Any]) -> None:
        if kind.resource == CRD_RESOURCE and not meta_of(obj).get("deletionTimestamp"):
            self.registry.register_crd(obj)
