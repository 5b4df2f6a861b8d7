"""``apx rollout …`` (also ``kubectl apx rollout …``): watch and steer a Route's canary.

Registered as a subcommand by ``apx.operator.cli`` (the ``apx`` and
``kubectl-apx`` console scripts). ``status`` prints the canary as a tree
(``apx.operator.rollout_view``), once or ``--watch``-ing; ``promote``,
``abort``, ``retry``, ``pause`` and ``resume`` write one request,
``status.canary.request = {action, id, full, at}``, with a JSON merge patch on
the Route's **status subresource** — never the spec, so GitOps tools see no
drift — and wait briefly for the operator's canary loop to record
``status.canary.handledRequest == id``. The loop applies each id once and
checks again whether the action makes sense; the checks here only spare a
person a round trip.

Connection as kubectl: ``--kubeconfig``, ``--context``, ``-n``
(``apx.operator.kubeconfig``). Every failure is one line on stderr with a
non-zero exit code and no traceback: 1 for a missing Route, a Route without a
canary, a refused or forbidden request; 2 for bad arguments, an unusable
kubeconfig and an unreachable API server (named by its address, never its
credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from apx.controllers.appliers.kube import KubeClient, KubeError, Unavailable
from apx.controllers.canary.timefmt import format_rfc3339
from apx.controllers.models.route import RouteSpec

from .kubeconfig import KubeconfigError, KubeTarget, display_server, resolve
from .rollout_view import DONE_PHASES, canary_status, phase_of, render_status

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2

ACTIONS = ("promote", "abort", "retry", "pause", "resume")
REQUEST_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class CommandError(Exception):
    """A one-line failure for the user; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- arguments -----------------------------------------------------------------


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds: {value}")
    return seconds


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("route", metavar="ROUTE", help="Route name")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context (default: the current context)")
    return common


ACTION_HELP = {
    "promote": "advance to the next step now (--full: straight to full weight, Promoted)",
    "abort": "roll back now: weight 0, phase RolledBack (not counted by the circuit breaker)",
    "retry": "start a RolledBack or Halted canary again from its first step (clears frozen)",
    "pause": "hold the current step (automatic rollback still protects)",
    "resume": "clear paused and frozen; a Halted canary goes back to Progressing",
}


def add_parser(commands: Any) -> None:
    """Add ``rollout`` and its subcommands to the ``apx`` parser's subcommands."""
    rollout = commands.add_parser(
        "rollout",
        help="watch and steer a Route's canary (status, promote, abort, retry, pause, resume)",
        description="Watch and steer the canary of a Route. Commands write status.canary.request only.",
    )
    actions = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    common = _connection_options()
    status = actions.add_parser(
        "status", parents=[common], help="show the canary as a tree", description="Show a Route's canary."
    )
    status.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval", type=_positive_seconds, default=2.0, metavar="S", help="refresh interval of --watch"
    )
    status.add_argument(
        "-o", "--output", choices=("tree", "json"), default="tree", help="tree, or status.canary as JSON"
    )
    for action in ACTIONS:
        command = actions.add_parser(
            action, parents=[common], help=ACTION_HELP[action], description=ACTION_HELP[action] + "."
        )
        if action == "promote":
            command.add_argument(
                "--full", action="store_true", help="promote straight to full weight (Promoted)"
            )
        command.add_argument(
            "--wait",
            type=_positive_seconds,
            default=5.0,
            metavar="S",
            help="seconds to wait for the operator to handle the request (0: do not wait)",
        )


# --- talking to the API --------------------------------------------------------


def _unreachable_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, aiohttp.ClientConnectorError):
        if cause.os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return cause.os_error.strerror or type(cause.os_error).__name__
    if isinstance(cause, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT_SECONDS:.0f}s"
    if isinstance(cause, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS handshake failed"
    first = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _api_error(exc: KubeError, server: str) -> CommandError:
    address = display_server(server)
    if isinstance(exc, Unavailable) and exc.status == 0:
        reason = _unreachable_reason(exc)
        return CommandError(f"cannot reach the Kubernetes API at {address} ({reason})", EXIT_UNREACHABLE)
    message = (exc.message.strip().splitlines() or [""])[0]
    if isinstance(exc, Unavailable):
        return CommandError(
            f"the Kubernetes API at {address} answered {exc.status}: {message}", EXIT_UNREACHABLE
        )
    return CommandError(f"the Kubernetes API at {address} refused the request ({exc.status}): {message}")


async def _get_route(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    route = await kube.get("Route", namespace, name)
    if route is None:
        raise CommandError(f"route {namespace}/{name} not found")
    return route


def _spec_with_canary(route: Mapping[str, Any], key: str) -> RouteSpec:
    try:
        spec = RouteSpec.model_validate(route.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CommandError(f"route {key}: spec cannot be read ({where}: {first.get('msg')})") from None
    if spec.canary is None:
        raise CommandError(f"route {key} has no canary (spec.canary is not set)")
    return spec


# --- status --------------------------------------------------------------------


async def _status(
    kube: KubeClient, args: argparse.Namespace, namespace: str, now: Callable[[], float]
) -> int:
    key = f"{namespace}/{args.route}"
    tty = sys.stdout.isatty()
    shown = False
    while True:
        try:
            route = await _get_route(kube, namespace, args.route)
            spec = _spec_with_canary(route, key)
            if args.output == "json":
                text = json.dumps(canary_status(route), indent=2, sort_keys=True) + "\n"
            else:
                text = "\n".join(render_status(route, spec, now())) + "\n"
        except KubeError as exc:
            if not (args.watch and shown):
                raise
            # A watch that has shown the Route rides out a blip of the API server, saying
            # so in place of the tree; one that never reached it fails like a single read.
            text = f"error: {_api_error(exc, kube.connection.server)} (retrying)\n"
        else:
            shown = True
        if args.watch:
            text = (CLEAR_SCREEN + text) if tty else (text + "\n")
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.watch:
            return EXIT_OK
        await asyncio.sleep(args.interval)


# --- commands ------------------------------------------------------------------


def refusal(action: str, canary: Mapping[str, Any], full: bool = False) -> str | None:
    """Why ``action`` makes no sense in this state (the operator checks again), or None."""
    phase = phase_of(canary)
    paused, frozen = bool(canary.get("paused")), bool(canary.get("frozen"))
    if action == "promote":
        if phase == "Promoted":
            return "is already Promoted"
        if phase == "RolledBack":
            return "is RolledBack; run `apx rollout retry` to start it again"
    elif action == "abort":
        if phase in DONE_PHASES:
            return f"is already {phase}; nothing to abort"
    elif action == "retry":
        if phase not in ("RolledBack", "Halted") and not frozen:
            return f"is {phase}; retry restarts only a RolledBack or Halted canary"
    elif action == "pause":
        if phase in DONE_PHASES:
            return f"is {phase}; nothing to pause"
        if paused:
            return "is already paused"
    elif action == "resume" and not paused and not frozen and phase != "Halted":
        return f"is {phase} and neither paused, frozen nor Halted; nothing to resume"
    return None


def _request_id(now: float) -> str:
    stamp = format_rfc3339(now).replace("-", "").replace(":", "")
    return f"{stamp}-{secrets.token_hex(4)}"


def _asked(action: str, full: bool) -> str:
    return {
        "promote": "promote to 100 % (Promoted)" if full else "promote to the next step",
        "abort": "abort (roll back to 0 %)",
        "retry": "retry from the first step",
        "pause": "pause",
        "resume": "resume",
    }[action]


def _summary(canary: Mapping[str, Any], steps: int) -> dict[str, str]:
    flags = [name for name in ("paused", "frozen") if canary.get(name)]
    return {
        "phase": phase_of(canary) + (f" ({', '.join(flags)})" if flags else ""),
        "step": f"{int(canary.get('step') or 0) + 1}/{steps}",
        "weight": f"{int(canary.get('weight') or 0)}%",
    }


def _changed(before: Mapping[str, Any], after: Mapping[str, Any], steps: int) -> str:
    old, new = _summary(before, steps), _summary(after, steps)
    parts = [f"{name} {old[name]} → {new[name]}" for name in old if old[name] != new[name]]
    return ", ".join(parts) if parts else "no change of phase, step or weight"


async def _command(
    kube: KubeClient, args: argparse.Namespace, namespace: str, now: Callable[[], float]
) -> int:
    action = args.rollout_command
    full = bool(getattr(args, "full", False))
    key = f"{namespace}/{args.route}"
    route = await _get_route(kube, namespace, args.route)
    spec = _spec_with_canary(route, key)
    assert spec.canary is not None
    before = canary_status(route)
    refused = refusal(action, before, full)
    if refused:
        raise CommandError(f"route {key} {refused}")
    at = now()
    request = {"action": action, "id": _request_id(at), "full": full, "at": format_rfc3339(at)}
    # Merge patch of status.canary.request only: the rest of status.canary (the
    # operator's) and the spec are untouched; the status subresource ignores spec.
    await kube.patch_status("Route", namespace, args.route, {"canary": {"request": request}})
    print(f"route {key}: asked to {_asked(action, full)} (request {request['id']})", flush=True)
    if args.wait <= 0:
        return EXIT_OK
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        after = canary_status(await _get_route(kube, namespace, args.route))
        if after.get("handledRequest") == request["id"]:
            print(f"route {key}: handled: {_changed(before, after, len(spec.canary.steps))}")
            return EXIT_OK
    print(
        f"route {key}: not handled yet after {args.wait:g}s; the operator applies it when its canary "
        f"loop next runs (follow with: apx rollout status {args.route} -n {namespace} --watch)"
    )
    return EXIT_OK


# --- entry ---------------------------------------------------------------------


async def _run(args: argparse.Namespace, target: KubeTarget, now: Callable[[], float]) -> int:
    namespace = args.namespace or target.namespace
    client = KubeClient(target.connection, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        async with client:
            if args.rollout_command == "status":
                return await _status(client, args, namespace, now)
            return await _command(client, args, namespace, now)
    except KubeError as exc:
        raise _api_error(exc, target.connection.server) from None
    except (OSError, ssl.SSLError) as exc:
        # Unreadable CA or client certificate files surface when the session opens.
        raise CommandError(
            f"cannot use the TLS settings of the kubeconfig: {exc}", EXIT_UNREACHABLE
        ) from None


def run(args: argparse.Namespace, now: Callable[[], float] = time.time) -> int:
    """Run a parsed ``apx rollout …`` command; prints errors as one line and returns the exit code."""
    if hasattr(sys.stdout, "reconfigure"):
        # Tree symbols on a terminal that cannot show them become '?', not a crash.
        sys.stdout.reconfigure(errors="replace")
    try:
        target = resolve(args.kubeconfig, args.context)
        return asyncio.run(_run(args, target, now))
    except KubeconfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        # Ctrl-C ends --watch (and an impatient wait) quietly.
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        # Last resort: a person gets one line, never a traceback. Only the type is
        # shown, since a message from deep inside a library may quote a credential.
        print(f"error: unexpected failure ({type(exc).__name__}); please report it", file=sys.stderr)
        return EXIT_FAILED
