"""The pure core's handle on ``apx.runtime.gcpause.collector_paused`` (pause the cyclic collector).

Used by ``translate``, ``render_envoy`` and the pipeline's stages around
large builds; the context manager itself lives in ``apx.runtime`` so the
operator's ``HeapKeeper`` and the dataplane share it without importing the core.
"""

from __future__ import annotations

from apx.runtime import gcpause

collector_paused = gcpause.collector_paused
