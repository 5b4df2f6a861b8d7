"""Messages parsed from their encodings only when something reads them.

Used by the cached renders (``incremental.py``, ``incremental_delta.py``) for
the RouteConfiguration of ``EnvoyOutput``: they assemble it as bytes from
the virtual hosts' kept encodings, and what the operator does with it every
pass (the version, the xDS snapshot: ``apx.operator.xds.snapshot``) works on
those bytes. Parsing it back into a message (several MB at 10,000 Routes)
was the largest cost of a one-Route edit's render; it now happens only for
readers of the message (``apx translate``, the snapshot ConfigMaps' counts
and JSON, tests). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload


class ParsedOnUse(Sequence[Any]):
    """A read-only sequence of messages, each parsed from its encoding on first read."""

    __slots__ = ("_encodings", "_messages", "_parse")

    def __init__(self, parse: Callable[[bytes], Any], encodings: Sequence[bytes]) -> None:
        self._parse = parse
        # Kept as given: a ``JoinedOnUse`` is joined only when a message is read.
        self._encodings = encodings
        self._messages: list[Any] | None = None

    def _parsed(self) -> list[Any]:
        if self._messages is None:
            # Two threads may parse at once (the pass and the xDS builder): both get equal messages.
            self._messages = [self._parse(encoding) for encoding in self._encodings]
        return self._messages

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._parsed()[index]

    def __len__(self) -> int:
        return len(self._encodings)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._parsed())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self._parsed() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "parsed" if self._messages is not None else "not parsed yet"
        return f"ParsedOnUse({len(self._encodings)} messages, {state})"


class JoinedOnUse(Sequence[bytes]):
    """One encoding, joined from its parts on first read: a sequence of one ``bytes``.

    The cached renders' RouteConfiguration (``incremental.encodings``): at
    10,000 Routes joining its 16 MB took more than the rest of a one-Route
    render, and what the operator does every pass (the version, the xDS
    snapshot) reads only its parts (``Encoded.route_head`` and
    ``virtual_hosts``); the snapshot ConfigMaps and ``apx translate`` join it.
    """

    __slots__ = ("_build", "_joined")

    def __init__(self, build: Callable[[], bytes]) -> None:
        self._build = build
        self._joined: bytes | None = None

    def _value(self) -> bytes:
        if self._joined is None:
            # Two threads may join at once (the pass and the snapshot writer): both get equal bytes.
            self._joined = self._build()
        return self._joined

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[bytes, ...]: ...

    def __getitem__(self, index: int | slice) -> bytes | tuple[bytes, ...]:
        return (self._value(),)[index]

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[bytes]:
        yield self._value()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return (self._value(),) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "joined" if self._joined is not None else "not joined yet"
        return f"JoinedOnUse({state})"
