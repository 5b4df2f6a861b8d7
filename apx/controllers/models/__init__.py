"""Pydantic models of APX's custom resources (Product, Route, PolicyBundle).

Imported by the translator, the CRD generator and the operator's handlers.
"""

from .common import API_VERSION, GROUP, VERSION
from .policy import PolicyBundleSpec, PolicyBundleStatus
from .product import ProductSpec, ProductStatus
from .resources import RESOURCE_MODELS, PolicyBundle, Product, Route
from .route import RouteSpec, RouteStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCE_MODELS",
    "VERSION",
    "PolicyBundle",
    "PolicyBundleSpec",
    "PolicyBundleStatus",
    "Product",
    "ProductSpec",
    "ProductStatus",
    "Route",
    "RouteSpec",
    "RouteStatus",
]
