"""Test data and an HTTP helper shared by the kubeemu tests.

The ``Widget`` CRD below is self-contained on purpose (defaults, enum,
pattern, required, min/max, a CEL rule with ``fieldPath``, a transition rule,
``isSorted``), so these tests do not depend on the generated CRDs in
``crds/``; ``test_real_crds.py`` exercises those when they exist.
"""

from __future__ import annotations

import json
from typing import Any

import requests

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kubeemu.dev"},
    "spec": {
        "group": "test.kubeemu.dev",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
            "categories": ["widgetry"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {
                        "name": "Ready",
                        "type": "string",
                        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                    },
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "x-kubernetes-validations": [
                                    {
                                        "rule": (
                                            "self.residency != 'EU' || "
                                            "self.regions.all(r, r.startsWith('eu-'))"
                                        ),
                                        "message": "regions must satisfy residency",
                                        "fieldPath": ".regions",
                                    }
                                ],
                                "properties": {
                                    "size": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": 10,
                                        "x-kubernetes-validations": [
                                            {"rule": "self >= oldSelf", "message": "size may not shrink"}
                                        ],
                                    },
                                    "mode": {"type": "string", "enum": ["sync", "async"], "default": "sync"},
                                    "name": {
                                        "type": "string",
                                        "pattern": "^[a-z][a-z0-9-]*$",
                                        "maxLength": 20,
                                    },
                                    "residency": {
                                        "type": "string",
                                        "enum": ["US", "EU", "GLOBAL"],
                                        "default": "GLOBAL",
                                    },
                                    "regions": {
                                        "type": "array",
                                        "maxItems": 3,
                                        "default": [],
                                        "items": {"type": "string", "minLength": 2},
                                        "x-kubernetes-validations": [
                                            {"rule": "self.isSorted()", "message": "regions must be sorted"}
                                        ],
                                    },
                                    "timeout": {"type": "string", "default": "30s"},
                                    "retry": {
                                        "type": "object",
                                        "default": {},
                                        "properties": {"attempts": {"type": "integer", "default": 3}},
                                    },
                                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "observedGeneration": {"type": "integer"},
                                    "phase": {"type": "string"},
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "type": {"type": "string"},
                                                "status": {"type": "string"},
                                                "reason": {"type": "string"},
                                                "message": {"type": "string"},
                                                "lastTransitionTime": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}

WIDGETS = "/apis/test.kubeemu.dev/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.kubeemu.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": 1, **spec},
    }


def configmap(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **metadata},
        "data": {"k": "v"},
    }


class Api:
    """A thin HTTP client of the emulator (plain requests, no Kubernetes client)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        **kwargs: Any,
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        data = kwargs.pop("data", None)
        if body is not None:
            data = json.dumps(body)
            headers.setdefault("Content-Type", content_type)
        elif data is not None:
            headers.setdefault("Content-Type", content_type)
        return self.session.request(method, self.url + path, data=data, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, body, **kwargs)

    def patch(
        self, path: str, body: Any, content_type: str = "application/merge-patch+json", **kwargs: Any
    ) -> requests.Response:
        return self.request("PATCH", path, body, content_type=content_type, **kwargs)

    def delete(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, body, **kwargs)

    def create(self, path: str, body: Any) -> dict[str, Any]:
        response = self.post(path, body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result
