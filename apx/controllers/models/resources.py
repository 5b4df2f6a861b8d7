"""Typed envelopes of the three APX custom resources (apiVersion, kind, metadata, spec, status).

The translator parses raw Kubernetes objects into these; the CRD generator
reads their ``spec``/``status`` models. ``status`` is parsed leniently because
it is written by the operator (and by kopf), never by users.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import API_VERSION, ObjectMeta
from .policy import PolicyBundleSpec, PolicyBundleStatus
from .product import ProductSpec, ProductStatus
from .route import RouteSpec, RouteStatus

Kind = Literal["Product", "Route", "PolicyBundle"]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]

    api_version: Literal["apx.dev/v1alpha1"] = Field(alias="apiVersion")
    metadata: ObjectMeta

    @property
    def key(self) -> str:
        """``namespace/name``: the identity of the object inside its kind."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class Product(_Envelope):
    kind_name = "Product"
    plural = "products"
    singular = "product"
    short_names = ("apxproduct", "apxp")

    kind: Literal["Product"]
    spec: ProductSpec
    status: ProductStatus | None = None


class Route(_Envelope):
    kind_name = "Route"
    plural = "routes"
    singular = "route"
    short_names = ("apxroute", "apxr")

    kind: Literal["Route"]
    spec: RouteSpec
    status: RouteStatus | None = None


class PolicyBundle(_Envelope):
    kind_name = "PolicyBundle"
    plural = "policybundles"
    singular = "policybundle"
    short_names = ("apxpolicy", "apxpb")

    kind: Literal["PolicyBundle"]
    spec: PolicyBundleSpec
    status: PolicyBundleStatus | None = None


RESOURCE_MODELS: dict[str, type[Product] | type[Route] | type[PolicyBundle]] = {
    "Product": Product,
    "Route": Route,
    "PolicyBundle": PolicyBundle,
}

__all__ = ["API_VERSION", "RESOURCE_MODELS", "Kind", "PolicyBundle", "Product", "Route", "raw_key"]


def raw_key(obj: dict[str, Any]) -> tuple[str, str]:
    """``(kind, namespace/name)`` of a raw object, tolerant of missing fields."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    return str(obj.get("kind", "")), f"{namespace}/{meta.get('name', '')}"
