"""Short garbage-collector pauses for the dataplane services: freeze what startup built.

Called once by each service's ``main`` (``apx-ratelimit``, ``apx-gateway``,
``apx-worker``) when it is up. By then the process holds tens of thousands of
objects that live as long as it does (modules, protobuf descriptors, pydantic
and OpenTelemetry machinery, clients), and every full collection walked them
all: 17-20 ms with the loop stopped, every few seconds under load, which was
the rate-limit service's whole p99.9 in the benchmark. ``gc.freeze`` moves
them out of the collector's sight, so later full collections scan only what
requests created. The collection first keeps startup garbage out of the
frozen set.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect, then freeze every object alive; how many are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
