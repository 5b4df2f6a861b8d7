"""The kinds the emulated API server serves: built-in ones and CRD-defined ones.

A :class:`Kind` is one served group/version/resource with what discovery,
storage and admission need (kind name, scope, short names, categories,
subresources, the version objects are stored under, the ``openAPIV3Schema``
and printer columns of CRDs). The :class:`Registry` keeps them and mirrors
each into kmock's ``ResourcesArray`` (``emulator.resources``), which is what
kmock's discovery and request routing know about. Built-in kinds are the ones
the APX operator writes or kubectl asks for; CRDs add theirs when a
``CustomResourceDefinition`` object is stored (see :mod:`.store`). Called by
:mod:`.store` and :mod:`.emulator`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import attrs
import kmock

from .errors import Cause

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


@functools.lru_cache(maxsize=4096)
def _resource(group: str, version: str, plural: str) -> kmock.resource:
    # kmock.resource() checks its argument against a runtime protocol, which is slow; kinds ask
    # for the same few resources on every write.
    return kmock.resource(group, version, plural)


@attrs.frozen
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    storage_version: str
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    schema: dict[str, Any] | None = attrs.field(default=None, eq=False)
    printer_columns: tuple[dict[str, Any], ...] = attrs.field(default=(), eq=False)
    crd: str | None = None

    @property
    def resource(self) -> kmock.resource:
        return _resource(self.group, self.version, self.plural)

    @property
    def storage(self) -> kmock.resource:
        """The key part under which objects of all served versions are stored."""
        return _resource(self.group, self.storage_version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_kind(self) -> str:
        """``Product.apx.dev`` for CRs, ``ConfigMap`` for core kinds, as in error messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def info(self) -> kmock.ResourceInfo:
        return kmock.ResourceInfo(
            namespaced=self.namespaced,
            kind=self.kind,
            singular=self.singular,
            verbs=set(VERBS),
            shortnames=set(self.short_names),
            categories=set(self.categories),
            subresources=set(self.subresources),
        )


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    status: bool = False,
    columns: tuple[dict[str, Any], ...] = (),
) -> Kind:
    return Kind(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        singular=kind.lower(),
        namespaced=namespaced,
        storage_version=version,
        short_names=short,
        categories=categories,
        subresources=frozenset({"status"} if status else set()),
        printer_columns=columns,
    )


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


# The kinds the APX operator writes (and a few kubectl users reach for).
# There are no controllers behind them: a Deployment never gets Pods or a
# ready status unless a test writes one.
BUILTIN_KINDS: tuple[Kind, ...] = (
    _builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short=("ns",),
        status=True,
        columns=({"name": "Status", "type": "string", "jsonPath": ".status.phase"}, _AGE),
    ),
    _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "services", "Service", short=("svc",), categories=("all",), status=True),
    _builtin("", "v1", "events", "Event", short=("ev",)),
    _builtin("", "v1", "pods", "Pod", short=("po",), categories=("all",), status=True),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _builtin("apps", "v1", "deployments", "Deployment", short=("deploy",), categories=("all",), status=True),
    _builtin("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        categories=("api-extensions",),
        status=True,
    ),
)

CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACE_RESOURCE = kmock.resource("", "v1", "namespaces")

_VERSION_ORDER = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key of Kubernetes version names: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > others."""
    match = _VERSION_ORDER.match(version)
    if not match:
        return (0, 0, 0, version)
    major, stage, minor = match.groups()
    stage_rank = {"alpha": 1, "beta": 2, None: 3}[stage]
    return (stage_rank, int(major), int(minor or 0), "")


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_crd(crd: dict[str, Any]) -> list[Cause]:
    """The checks of the real server that the emulator needs to serve a CRD safely."""
    causes: list[Cause] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    if not group:
        causes.append(Cause("spec.group", "Required value", "FieldValueRequired"))
    if not plural:
        causes.append(Cause("spec.names.plural", "Required value", "FieldValueRequired"))
    elif not _DNS_LABEL.match(plural):
        causes.append(Cause("spec.names.plural", f'Invalid value: "{plural}": a lowercase RFC 1123 label'))
    if not names.get("kind"):
        causes.append(Cause("spec.names.kind", "Required value", "FieldValueRequired"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            Cause(
                "spec.scope",
                f'Unsupported value: "{spec.get("scope", "")}": supported values: "Cluster", "Namespaced"',
                "FieldValueNotSupported",
            )
        )
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        causes.append(
            Cause("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
        )
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            Cause("spec.versions", "Invalid value: null: must have exactly one version marked as storage")
        )
    elif sum(1 for version in versions if version.get("storage")) != 1:
        causes.append(
            Cause(
                "spec.versions",
                'Invalid value: "array": must have exactly one version marked as storage version',
            )
        )
    return causes


def kinds_from_crd(crd: dict[str, Any]) -> list[Kind]:
    """The served kinds a (valid) CRD defines, one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    versions = spec.get("versions") or []
    storage = next(version["name"] for version in versions if version.get("storage"))
    kinds: list[Kind] = []
    for version in versions:
        if not version.get("served", True):
            continue
        subresources = set((version.get("subresources") or {}).keys()) & {"status"}
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        kinds.append(
            Kind(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec["scope"] == "Namespaced",
                storage_version=storage,
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset(subresources),
                schema=schema if isinstance(schema, dict) else None,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                crd=crd["metadata"]["name"],
            )
        )
    return kinds


@attrs.define
class Registry:
    """Served kinds by group/version/plural, mirrored into kmock's resources."""

    resources: kmock.ResourcesArray
    _kinds: dict[kmock.resource, Kind] = attrs.field(factory=dict)

    def register(self, kind: Kind) -> None:
        self._kinds[kind.resource] = kind
        self.resources[kind.resource] = kind.info()

    def unregister(self, kind: Kind) -> None:
        self._kinds.pop(kind.resource, None)
        if kind.resource in self.resources:
            del self.resources[kind.resource]

    def register_crd(self, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        for kind in self.kinds_of_crd(name):
            self.unregister(kind)
        for kind in kinds_from_crd(crd):
            self.register(kind)

    def unregister_crd(self, name: str) -> None:
        for kind in self.kinds_of_crd(name):
            self.unregister(kind)

    def kinds_of_crd(self, name: str) -> list[Kind]:
        return [kind for kind in self._kinds.values() if kind.crd == name]

    def find(self, group: str, version: str, plural: str) -> Kind | None:
        return self._kinds.get(_resource(group, version, plural))

    def by_storage(self, storage: kmock.resource) -> Kind | None:
        """The kind served at the storage version (used to present stored objects)."""
        for kind in self._kinds.values():
            if kind.storage == storage and kind.version == kind.storage_version:
                return kind
        for kind in self._kinds.values():
            if kind.storage == storage:
                return kind
        return None

    def __iter__(self) -> Iterator[Kind]:
        return iter(list(self._kinds.values()))

    def groups(self) -> dict[str, list[str]]:
        """Served versions per group, highest priority first."""
        found: dict[str, set[str]] = {}
        for kind in self._kinds.values():
            found.setdefault(kind.group, set()).add(kind.version)
        return {
            group: sorted(versions, key=version_priority, reverse=True)
            for group, versions in sorted(found.items())
        }
