"""The text ``apx rollout status`` prints: one Route's canary as a tree, like ``kubectl argo rollouts get``.

Called by ``apx.operator.rollout_cli`` with the Route as the API returned it
and the current time (epoch seconds), so the output is a pure function of its
inputs and tests can pin it. ``status.canary`` is read as a plain mapping
(camelCase keys, missing keys → defaults) so statuses written by older or
newer operators still display; the spec is read through the Route model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apx.controllers.canary.timefmt import parse_rfc3339
from apx.controllers.models.common import duration_ms
from apx.controllers.models.route import Backend, RouteSpec
from apx.controllers.translate import canary_revision

# Automated rollbacks counted by the circuit breaker (more than 3 in this window freezes the Route).
BREAKER_WINDOW_SECONDS = 15 * 60

PHASE_SYMBOLS = {
    "Pending": "○",
    "Progressing": "◌",
    "Halted": "⚠",
    "Promoted": "✔",
    "RolledBack": "✖",
}
PAUSED_SYMBOL = "॥"
FROZEN_SYMBOL = "❄"
DONE_PHASES = ("Promoted", "RolledBack")


def canary_status(route: Mapping[str, Any]) -> dict[str, Any]:
    """``status.canary`` of a Route as a dict (empty when the operator has written none)."""
    status = route.get("status") or {}
    canary = status.get("canary") if isinstance(status, Mapping) else None
    return dict(canary) if isinstance(canary, Mapping) else {}


def phase_of(canary: Mapping[str, Any]) -> str:
    return str(canary.get("phase") or "Pending")


def human_duration(seconds: float) -> str:
    """``48s``, ``1m05s``, ``2h03m``: whole seconds, at most two units."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _ago(at: object, now: float) -> str:
    when = parse_rfc3339(at)
    if when is None:
        return "never"
    return f"{at} ({human_duration(now - when)} ago)"


def _tree(lines: Sequence[str], indent: str = "  ") -> list[str]:
    """Children of a node with tree branches; the last one closes the branch."""
    return [f"{indent}{'└──' if i == len(lines) - 1 else '├──'} {line}" for i, line in enumerate(lines)]


def _backend(backend: Backend) -> str:
    if backend.service is not None:
        return f"service {backend.service.name}:{backend.service.port}"
    return f"url {backend.url}"


def _changes(spec: RouteSpec) -> list[str]:
    """What the canary track runs that stable does not, each with the stable value."""
    canary = spec.canary
    assert canary is not None
    changes: list[str] = []
    if canary.backend is not None:
        changes.append(f"backend  {_backend(canary.backend)}  (stable: {_backend(spec.backend)})")
    if canary.worker is not None:
        stable_image = spec.worker.image if spec.worker is not None else "-"
        changes.append(f"worker   {canary.worker.image}  (stable: {stable_image})")
    if canary.policy_version is not None:
        name = spec.policy_ref.name
        changes.append(f"policy   {name}@{canary.policy_version}  (stable: {name}@{spec.policy_ref.version})")
    return changes


def _percent(value: object) -> str:
    return f"{float(value) * 100:.2f}%" if isinstance(value, int | float) else "-"


def _number(value: object, unit: str = "") -> str:
    if not isinstance(value, int | float):
        return "-"
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{text}{unit}"


def _track_line(name: str, numbers: object) -> str:
    values = numbers if isinstance(numbers, Mapping) else {}
    return (
        f"{name:<7} requests {_number(values.get('requests'))}, "
        f"success {_percent(values.get('successRate'))}, "
        f"p99 {_number(values.get('latencyP99Ms'), ' ms')}"
    )


@dataclass(frozen=True, slots=True)
class Clocks:
    """The two clocks of a canary, in seconds."""

    step_interval: float
    check_interval: float


def _next_step(canary: Mapping[str, Any], steps: Sequence[int], clocks: Clocks, now: float) -> str:
    phase = phase_of(canary)
    if phase in DONE_PHASES:
        return "- (rollout finished)"
    if canary.get("frozen"):
        return f"- (frozen: {FROZEN_SYMBOL} no automatic change until `apx rollout resume`)"
    if canary.get("paused"):
        return f"- ({PAUSED_SYMBOL} paused: no step advances until `apx rollout resume`)"
    if phase == "Halted":
        return "- (halted: waiting for traffic or `apx rollout resume`)"
    step = int(canary.get("step") or 0)
    target = "promotion" if step + 1 >= len(steps) else f"step {step + 2}/{len(steps)} ({steps[step + 1]}%)"
    healthy_since = parse_rfc3339(canary.get("healthySince"))
    interval = human_duration(clocks.step_interval)
    if healthy_since is None:
        return f"{target} after {interval} of passing checks (none passing yet)"
    remaining = healthy_since + clocks.step_interval - now
    if remaining <= 0:
        return f"{target} at the next passing check (healthy for {human_duration(now - healthy_since)})"
    return f"{target} in {human_duration(remaining)} (healthy for {human_duration(now - healthy_since)})"


def _next_check(canary: Mapping[str, Any], clocks: Clocks, now: float) -> str:
    every = f"every {human_duration(clocks.check_interval)}"
    if phase_of(canary) in DONE_PHASES:
        return f"- (rollout finished; {every} while running)"
    last = parse_rfc3339(canary.get("lastCheckAt"))
    if last is None:
        return f"pending ({every})"
    due = last + clocks.check_interval - now
    if due >= 0:
        return f"in {human_duration(due)} ({every})"
    # The loop is late: past two intervals the operator is probably not running.
    if -due > 2 * clocks.check_interval:
        return f"overdue by {human_duration(-due)} ({every}; is the operator running?)"
    return f"due now ({every})"


def recent_rollbacks(canary: Mapping[str, Any], now: float) -> int:
    """Automated rollbacks within the circuit breaker's window."""
    times = [parse_rfc3339(t) for t in canary.get("rollbacks") or []]
    return sum(1 for t in times if t is not None and now - t <= BREAKER_WINDOW_SECONDS)


def render_status(route: Mapping[str, Any], spec: RouteSpec, now: float) -> list[str]:
    """The lines of ``apx rollout status`` for one Route whose spec has a canary."""
    canary_spec = spec.canary
    assert canary_spec is not None
    canary = canary_status(route)
    metadata = route.get("metadata") or {}
    phase = phase_of(canary)
    steps = list(canary_spec.steps)
    step = min(int(canary.get("step") or 0), len(steps) - 1)
    weight = int(canary.get("weight") or 0)
    clocks = Clocks(
        step_interval=duration_ms(canary_spec.interval) / 1000,
        check_interval=duration_ms(canary_spec.analysis.check_interval) / 1000,
    )
    flags = [
        text
        for on, text in (
            (canary.get("paused"), f"{PAUSED_SYMBOL} paused"),
            (canary.get("frozen"), f"{FROZEN_SYMBOL} frozen"),
        )
        if on
    ]
    lines = [
        f"Name:          {metadata.get('name', '')}",
        f"Namespace:     {metadata.get('namespace', '')}",
        f"Status:        {PHASE_SYMBOLS.get(phase, '?')} {phase}",
    ]
    if flags:
        lines.append(f"Flags:         {', '.join(flags)}")
    revision = canary_revision(canary_spec)
    recorded = canary.get("revision")
    if recorded and recorded != revision:
        lines.append(
            f"Revision:      {revision} (status is for {recorded}: the operator has not started this one)"
        )
    else:
        lines.append(f"Revision:      {revision}")
    lines.append(f"Step:          {step + 1}/{len(steps)}")
    lines.append(f"Weight:        canary {weight}%, stable {100 - weight}%")
    marks = []
    for index, value in enumerate(steps):
        if phase == "Promoted" or index < step:
            marks.append(f"✔ {value}%")
        elif index == step and phase not in DONE_PHASES:
            marks.append(f"▶ {value}%  ← current")
        else:
            marks.append(f"  {value}%")
    lines += ["Steps:", *_tree(marks)]
    lines += ["Changes (canary vs stable):", *_tree(_changes(spec))]
    decision = canary.get("lastDecision") if isinstance(canary.get("lastDecision"), Mapping) else None
    if decision:
        lines.append(f"Last decision: {decision.get('result', '?')} at {_ago(decision.get('at'), now)}")
        lines += _tree(
            [
                f"reason  {decision.get('reason') or '-'}",
                _track_line("canary", decision.get("canary")),
                _track_line("stable", decision.get("stable")),
            ]
        )
    else:
        lines.append("Last decision: none yet")
    lines.append(f"Next step:     {_next_step(canary, steps, clocks, now)}")
    lines.append(f"Next check:    {_next_check(canary, clocks, now)}")
    lines.append(
        f"Checks:        {int(canary.get('checks') or 0)} in this revision "
        f"({int(canary.get('failedChecks') or 0)} failed, "
        f"{int(canary.get('noDataChecks') or 0)} without data in a row)"
    )
    lines.append(f"Rollbacks:     {recent_rollbacks(canary, now)} automated in the last 15m")
    conditions = [c for c in canary.get("conditions") or [] if isinstance(c, Mapping)]
    if conditions:
        lines.append("Conditions:")
        lines += _tree(
            [
                f"{c.get('type', '?'):<17} {c.get('status', '?'):<7} {c.get('reason') or '-'}"
                + (f": {c['message']}" if c.get("message") else "")
                for c in conditions
            ]
        )
    else:
        lines.append("Conditions:    none")
    return lines
