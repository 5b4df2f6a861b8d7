"""The operator's xDS (ADS) server: snapshot (pure), server (grpc.aio), ACK/NACK status.

Started by ``apx.operator.main`` when ``--xds-port`` is not 0; see ``XDS.md``
in this folder for the protocol decisions (VHDS for Envoy delta clients,
ordering, limits, restarts and leader election).
"""

from __future__ import annotations

from .server import XdsLimits, XdsServer
from .snapshot import CLUSTER, LISTENER, ROUTE_CONFIGURATION, VIRTUAL_HOST, XdsSnapshot

__all__ = [
    "CLUSTER",
    "LISTENER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "XdsLimits",
    "XdsServer",
    "XdsSnapshot",
]
