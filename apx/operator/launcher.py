"""Entry point of the ``apx-operator`` console script (and of ``apx operator run``).

kopf imports the official Kubernetes client libraries whenever they are
installed (they are in development environments), which costs ~90 MiB of
RSS. The operator talks to the API through kopf's own client and
``apx.controllers.appliers.kube``, so this launcher keeps them out of the
process before anything imports kopf, then runs ``apx.operator.main``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

UNUSED_CLIENTS = ("kubernetes", "kubernetes_asyncio", "pykube")


def block_unused_clients() -> None:
    """Make ``import kubernetes`` (etc.) fail in this process, as if not installed."""
    for name in UNUSED_CLIENTS:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    block_unused_clients()
    from apx.operator.main import main as run_operator

    return run_operator(argv)


if __name__ == "__main__":
    sys.exit(main())
