"""Registry of renderers for golden files and ``apx translate --only``.

Called by ``hack/gen.py`` (regenerates golden files), the golden-file test and
the CLI. Each entry turns an IR into the JSON-ready document that renderer
produces; the golden file of a case is that document, pretty-printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..ir import IR
from .envoy import render_envoy
from .kubernetes import render_kubernetes
from .pubsub_plan import render_pubsub
from .redis_rules import render_redis

# The Kubernetes goldens pin the manifests, not the Envoy snapshot inside the
# snapshot ConfigMap (the Envoy goldens pin that), so Envoy changes do not churn them.
GOLDEN_ENVOY_SNAPSHOT: dict[str, Any] = {"version": "golden", "resources": {}}


def _kubernetes(ir: IR) -> Any:
    return render_kubernetes(ir, GOLDEN_ENVOY_SNAPSHOT).to_json()


RENDERERS: dict[str, Callable[[IR], Any]] = {
    "envoy": lambda ir: render_envoy(ir).to_json(),
    "redis": lambda ir: render_redis(ir).to_json(),
    "pubsub": lambda ir: render_pubsub(ir).to_json(),
    "kubernetes": _kubernetes,
}


def golden_text(document: Any) -> str:
    """Stable text of a rendered document: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
