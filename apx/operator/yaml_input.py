"""Read untrusted YAML for ``apx translate`` without letting any input crash or exhaust it.

Called by ``apx.operator.cli.load_documents``. Every way an input can fail
ends in ``InputError`` with one line naming the source, so the CLI exits 2
without a traceback:

* too large: a source above ``MAX_SOURCE_BYTES`` is refused before parsing
  (the API server itself refuses request bodies of a few MiB);
* not text: bytes that are not UTF-8, or characters YAML does not allow;
* not YAML: any parser error, with the line PyYAML reports;
* too deep: nesting beyond ``MAX_DEPTH`` (PyYAML's composer recurses, so a
  deep document would otherwise end in ``RecursionError``);
* alias bombs: YAML aliases share one node, so a small document can stand
  for billions of values once something walks it (the "billion laughs").
  The expanded size is counted per distinct node, linearly, and refused
  above ``MAX_EXPANDED_NODES``.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_SOURCE_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 100
MAX_EXPANDED_NODES = 2_000_000


class InputError(Exception):
    """The input cannot be read or is not Kubernetes YAML."""


class _DepthLimitedLoader(yaml.SafeLoader):
    """A safe loader that refuses nesting beyond ``MAX_DEPTH`` while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise InputError(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_size(name: str, size: int) -> None:
    if size > MAX_SOURCE_BYTES:
        raise InputError(
            f"{name}: {size} bytes is larger than the {MAX_SOURCE_BYTES // (1024 * 1024)} MiB limit"
        )


def _expanded_size(document: Any) -> int:
    """Nodes the document has once aliases are expanded; each distinct node is visited once."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    # Iterative post-order walk: documents may be deep, the stack must not be.
    stack: list[tuple[Any, bool]] = [(document, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_EXPANDED_NODES:
                return sizes[id(node)]
            continue
        if any(id(child) in ancestors or child is node for child in children):
            raise InputError("a YAML alias refers to a node that contains it")
        ancestors.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(document)]


def load_all(name: str, text: str) -> list[Any]:
    """The documents of one source, or ``InputError`` naming ``name`` and what is wrong."""
    check_size(name, len(text.encode("utf-8", errors="surrogatepass")))
    try:
        # The reader checks the characters as it is built, so this is inside the try.
        loader = _DepthLimitedLoader(text)
        try:
            documents = []
            while loader.check_data():  # type: ignore[no-untyped-call]
                documents.append(loader.get_data())
        finally:
            loader.dispose()
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply") from None
    for index, document in enumerate(documents):
        try:
            expanded = _expanded_size(document)
        except InputError as exc:
            raise InputError(f"{name}: document {index + 1}: {exc}") from None
        if expanded > MAX_EXPANDED_NODES:
            raise InputError(
                f"{name}: document {index + 1} expands to more than {MAX_EXPANDED_NODES} values "
                "(YAML aliases repeated too often)"
            )
    return documents
