"""Command-line flags (and ``APX_GRPC_*`` variables) for the gRPC transport's limits.

Used by ``apx-ratelimit`` (``ratelimit.main``): ``add_transport_flags`` adds
one ``--grpc-*`` flag per field of ``grpclimits.TransportLimits``, defaulted
from ``APX_GRPC_<FIELD>`` and else from the field's safe default, and
``--grpc-transport`` (``APX_GRPC_TRANSPORT``: which HTTP/2 transport serves,
``grpcserver.TRANSPORTS``); ``limits_from_args`` builds the limits, raising
``ValueError`` with the flag's meaning when a value is out of range.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

from .grpclimits import TransportLimits
from .grpcserver import DEFAULT_TRANSPORT, TRANSPORTS

_HELP = {
    "max_connections": "HTTP/2 connections open at once; beyond it new ones are closed at once",
    "handshake_timeout": "seconds a new connection gets to send the HTTP/2 preface and SETTINGS",
    "idle_timeout": "seconds without a call running after which a connection gets GOAWAY and is closed",
    "max_concurrent_streams": "streams per connection (advertised); one more is refused (REFUSED_STREAM)",
    "max_message_bytes": "largest request message, after decompression (RESOURCE_EXHAUSTED beyond)",
    "connection_buffer_bytes": "request bytes one connection may have buffered (its flow-control window)",
    "max_header_list_bytes": "largest request header list, decoded, and its encoded block",
    "max_continuation_frames": "CONTINUATION frames one header block may have",
    "max_resets_per_second": "streams a client may reset (or have refused) per second before GOAWAY",
    "read_chunk_bytes": "bytes of one connection's input handled per event-loop turn (fairness)",
}


def _flag(name: str) -> str:
    return "--grpc-" + name.replace("_", "-")


def _variable(name: str) -> str:
    return "APX_GRPC_" + name.upper()


def add_transport_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    defaults = TransportLimits()
    group = parser.add_argument_group("gRPC transport limits")
    transport = env.get("APX_GRPC_TRANSPORT", "").strip() or DEFAULT_TRANSPORT
    if transport not in TRANSPORTS:
        parser.error(f"APX_GRPC_TRANSPORT={transport!r} is not one of {', '.join(TRANSPORTS)}")
    group.add_argument(
        "--grpc-transport",
        dest="grpc_transport",
        choices=TRANSPORTS,
        default=transport,
        help="HTTP/2 transport: 'lean' (own framing, hardened; the latency target) or 'h2' (the h2 "
        "library) (APX_GRPC_TRANSPORT; default %(default)s)",
    )
    for field in dataclasses.fields(TransportLimits):
        default = getattr(defaults, field.name)
        kind = float if isinstance(default, float) else int
        raw = env.get(_variable(field.name), "").strip()
        try:
            value = kind(raw) if raw else default
        except ValueError:
            parser.error(f"{_variable(field.name)}={raw!r} is not a {kind.__name__}")
        group.add_argument(
            _flag(field.name),
            dest=f"grpc_{field.name}",
            type=kind,
            default=value,
            help=f"{_HELP[field.name]} ({_variable(field.name)}; default %(default)s)",
        )


def limits_from_args(args: argparse.Namespace) -> TransportLimits:
    values = {
        field.name: getattr(args, f"grpc_{field.name}") for field in dataclasses.fields(TransportLimits)
    }
    return TransportLimits(**values)
