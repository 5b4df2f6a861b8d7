"""HPACK for the server connection, shaped for gRPC's repetition: identical header blocks are decoded once.

Used by ``h2conn.ServerH2Connection`` in place of ``h2``'s own ``hpack``
encoder and decoder (same library, same wire format), and by the lean
transport (``grpclean.LeanConnection``) directly. Measured with ``h2``
4.4 on these machines, decoding, validating and encoding the same few
headers of every call was more than a third of the transport's CPU.

* ``CachingDecoder``: Envoy and ``grpcio`` send the same request headers on
  every call; after the first, the block is a handful of dynamic-table
  references. Decoding it again gives the same list as long as the table is
  as it was, so a block that left the table unchanged is cached by its
  bytes, and the cache is dropped whenever any block changes the table
  (entries or size limit). The header validation of RFC 9113 §8 (done by
  ``h2conn`` with ``h2``'s own validator) is remembered with the entry.
* ``LiteralEncoder``: responses use literal fields without indexing, so the
  peer's decoder needs no state of ours and the few header lists the server
  sends (response headers, OK trailers, the same error trailers) are encoded
  once. A table size the peer lowers is acknowledged with a size update, as
  RFC 7541 §4.2 requires.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder
from hpack.hpack import encode_integer

_CACHED_BLOCKS = 64
_STATUS_200 = (b":status", b"200")


def literal_field(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing and with a literal name (no decoder state needed)."""
    return b"\x00" + bytes(encode_integer(len(name), 7)) + name + bytes(encode_integer(len(value), 7)) + value


class CachingDecoder(Decoder):
    """``hpack.Decoder`` that serves a repeated block from a cache while the dynamic table is unchanged."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.blocks: dict[bytes, Any] = {}
        self.valid_requests: set[bytes] = set()  # cached blocks that passed request-header validation
        self.mark = self._table_state()

    def decode(self, data: bytes, raw: bool = False) -> Any:
        mark = self._table_state()
        if not _same(mark, self.mark):
            self.blocks.clear()
            self.valid_requests.clear()
            self.mark = mark
        block = data if type(data) is bytes else bytes(data)
        cached = self.blocks.get(block)
        if cached is not None and raw:
            return cached
        headers = super().decode(block, raw=raw)
        if raw and len(self.blocks) < _CACHED_BLOCKS and _same(self._table_state(), mark):
            self.blocks[block] = headers
        return headers

    def known_valid(self, block: bytes) -> bool:
        return block in self.valid_requests

    def remember_valid(self, block: bytes) -> None:
        if block in self.blocks:
            self.valid_requests.add(block)

    def _table_state(self) -> tuple[int, int, object]:
        """The dynamic table's size limit, length and newest entry.

        Every insertion makes a new entry object, so the newest entry compared by identity (held
        here, so its identity cannot be reused) tells whether anything was inserted.
        """
        table = self.header_table
        entries = table.dynamic_entries
        return (table.maxsize, len(entries), entries[0] if entries else None)


def _same(a: tuple[int, int, object], b: tuple[int, int, object]) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2] is b[2]


class LiteralEncoder(Encoder):
    """``hpack.Encoder`` writing literals without indexing; identical header lists are encoded once."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        fields = headers if type(headers) is tuple else tuple(headers)
        block = self.blocks.get(fields)
        if block is None:
            block = b"".join(
                b"\x88" if field == _STATUS_200 else literal_field(bytes(field[0]), bytes(field[1]))
                for field in fields
            )
            if len(self.blocks) < _CACHED_BLOCKS:
                self.blocks[fields] = block
        if self.table_size_changes:
            return bytes(self._encode_table_size_change()) + block
        return block
