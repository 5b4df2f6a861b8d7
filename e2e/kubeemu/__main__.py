"""Command line: run the emulated Kubernetes API server until SIGTERM/SIGINT.

``python -m e2e.kubeemu --port P [--host 127.0.0.1] [--crds DIR]
[--kubeconfig OUT]`` serves the emulator on ``http://HOST:PORT`` (port 0 picks
a free one), pre-registers every CRD found in ``DIR``, writes a kubeconfig to
``OUT`` and prints ``kubeemu listening on http://HOST:PORT`` once ready.
Called by ``hack/kubeemu-up.sh``, the benchmarks and by hand.

The served process keeps Python's cyclic collector off its request path:
every ``--gc-settle-interval`` seconds it collects what is new and freezes the
survivors (the stored objects, which live until deleted), so collections never
rescan the whole store. Unfrozen, generation-2 collections of a store holding
a few thousand objects took 260-710 ms each and stalled every request behind
them; a full collection including the frozen part runs every
``--gc-full-interval`` seconds to reclaim cycles that died after freezing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import signal
import sys

from apx.runtime.process import HeapKeeper

from .definitions import builtin_definitions
from .emulator import KubeEmulator
from .serving import load_crds, serve, url_of, write_kubeconfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m e2e.kubeemu", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--crds", type=pathlib.Path, help="directory of CRD YAML files to register at start")
    parser.add_argument(
        "--kubeconfig", type=pathlib.Path, help="write a kubeconfig pointing at the server here"
    )
    parser.add_argument("--history", type=int, default=4096, help="watch events kept for resumption")
    parser.add_argument(
        "--bookmark-interval", type=float, default=60.0, help="seconds between watch bookmarks"
    )
    parser.add_argument(
        "--gc-settle-interval",
        type=float,
        default=2.0,
        help="seconds between collecting and freezing what is new (0 disables)",
    )
    parser.add_argument(
        "--gc-full-interval", type=float, default=600.0, help="seconds between full collections"
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser


async def _run(args: argparse.Namespace) -> None:
    emulator = KubeEmulator(history_size=args.history, bookmark_interval=args.bookmark_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(emulator, host=args.host, port=args.port) as server:
        if args.crds is not None:
            names = load_crds(emulator, args.crds)
            logging.getLogger(__name__).info("registered CRDs: %s", ", ".join(names) or "none")
        url = url_of(server)
        if args.kubeconfig is not None:
            write_kubeconfig(args.kubeconfig, url)
        print(f"kubeemu listening on {url}", flush=True)
        # The built-in kinds' OpenAPI definitions take ~0.7 s to load: load them now, off the
        # loop, rather than on the first kubectl apply (strict validation) or explain.
        warming = loop.run_in_executor(None, builtin_definitions)
        settler = None
        if args.gc_settle_interval > 0:
            settler = asyncio.create_task(settle_heap(args.gc_settle_interval, args.gc_full_interval))
        await stop.wait()
        await warming
        if settler is not None:
            settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await settler


async def settle_heap(interval: float, full_interval: float) -> None:
    """Collect and freeze what is new every ``interval`` s; a full collection every ``full_interval`` s."""
    keeper = HeapKeeper(full_collection_seconds=full_interval)
    while True:
        await asyncio.sleep(interval)
        keeper.settle()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.crds is not None and not args.crds.is_dir():
        print(f"kubeemu: --crds {args.crds} is not a directory", file=sys.stderr)
        return 2
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
