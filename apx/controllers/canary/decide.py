"""The canary state machine: from the recorded ``status.canary`` and one check (or command) to the next.

Called by the operator's canary loop (``apx.operator.canary``) once per
``analysis.checkInterval`` with both tracks' windows (or the metrics error),
and at once when the canary block changes (a new ``revision``) or a person
gives an ``apx rollout`` command; also by the decision benchmark. Pure and
deterministic: the clock comes in as ``now`` (epoch seconds), and the same
inputs always give the same ``Outcome``. Total: any status, including one
written by an older version or edited by hand, is repaired
(``apx.controllers.canary.state.sanitise``) rather than refused.

Phases::

    Pending ──start──▶ Progressing ──last step healthy for `interval`──▶ Promoted (100 %)
                        │   ▲   │
       maxNoDataChecks  │   │   │ failureThreshold consecutive failed checks
       inconclusive     ▼   │   ▼
                       Halted   RolledBack (0 %) ── new revision / `retry` ──▶ Progressing

* One call handles, in this order: a new revision (start at step 0), else a
  command not handled yet, else a check. A call that starts a revision or
  handles a command runs no check (its windows describe the traffic before
  the change); ``due_in`` says the check is still due, so the loop calls again.
* Healthy time accrues only between passing checks: ``healthySince`` is set by
  the first passing check of a step and cleared by any other result, and a gap
  of more than two check intervals since the last check (an operator outage)
  restarts it, so a long outage never counts as healthy time.
* Inconclusive checks (too few samples, metrics backend unavailable) hold the
  step and, after ``maxNoDataChecks`` in a row, halt it (weight kept) until a
  conclusive check resumes it. On the first step the canary starts from no
  traffic, so checks whose window began before the step do not halt it.
* More than ``breaker_limit`` automated rollbacks within
  ``breaker_window_seconds`` (history kept across revisions) freeze the Route:
  no automatic change, not even starting a new revision, until ``resume`` or
  ``retry``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models.common import duration_ms
from ..models.route import Canary, CanaryDecision, CanaryStatus, DecisionResult, TrackMetrics
from . import judge, state, timefmt
from .types import Command, TrackWindow

EventType = Literal["Normal", "Warning"]
# A gap between checks longer than this many check intervals restarts the healthy time.
MAX_CHECK_GAP_INTERVALS = 2.0
PROMOTED_WEIGHT = 100
# Credentials a backend's error text might carry (``scheme://user:password@host``,
# ``?token=…``): never copied into status or Events.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_PARAMETER = re.compile(r"(?i)((?:token|password|passwd|secret|api[_-]?key)=)[^&\s]+")


def redact(text: str) -> str:
    """``text`` with URL user-info and secret-looking parameters replaced by ``***``."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub("***@", text))


@dataclass(frozen=True, slots=True)
class CanaryEvent:
    """A Kubernetes Event for the Route: ``type``, a CamelCase ``reason``, a message with the numbers."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``decide`` concluded.

    ``status`` is the next ``status.canary`` (write it with
    ``model_dump(by_alias=True, exclude_none=True, mode="json")``);
    ``decision`` explains this call (it is also ``status.last_decision`` when
    a check ran, a command was handled or a revision started);
    ``weight_changed`` says the new weight must be applied now;
    ``rolled_back`` says this call moved the canary to ``RolledBack``
    (automatically or by ``abort``; ``decision.result`` tells which);
    ``check_ran`` says the windows were judged.
    """

    status: CanaryStatus
    decision: CanaryDecision
    events: tuple[CanaryEvent, ...]
    weight_changed: bool
    rolled_back: bool
    check_ran: bool


def decide(
    spec: Canary,
    revision: str,
    status: CanaryStatus | None,
    stable: TrackWindow | None,
    canary: TrackWindow | None,
    now: float,
    *,
    command: Command | None = None,
    metrics_error: str | None = None,
    breaker_limit: int = 3,
    breaker_window_seconds: float = 900.0,
) -> Outcome:
    """The next canary status after one call; see the module docstring for the rules.

    ``stable``/``canary`` are the windows of a due check (``None`` when no
    check is due); ``metrics_error`` replaces them when the backend could
    not answer. ``command`` is the pending ``apx rollout`` request, ignored
    when its id was handled already.
    """
    run = _Run(spec, now, status, breaker_limit, breaker_window_seconds)
    if run.before is None or run.before.revision != revision:
        run.start_revision(revision)
    elif command is not None and command.id != run.value("handled_request"):
        run.handle(command)
    elif run.value("phase") == "Pending" and not run.value("frozen"):
        # Recorded as waiting but nothing holds it (an older version's status, or
        # a freeze cleared elsewhere): start it.
        run.enter_step(0, "start")
    elif stable is not None or canary is not None or metrics_error is not None:
        run.check(stable, canary, metrics_error)
    return run.outcome()


def start(spec: Canary, revision: str, status: CanaryStatus | None, now: float) -> Outcome:
    """Handle a new or changed canary block (``decide`` with no check and no command)."""
    return decide(spec, revision, status, None, None, now)


@dataclass(frozen=True, slots=True)
class CheckTime:
    """When a Route's next check is due, from its recorded status alone (no clock in it).

    The canary loop computes it once per recorded status and compares it with
    the clock on every round: parsing and repairing a status is the costly
    part, and a thousand canaries are scheduled many times per interval.
    """

    due_at: float  # epoch seconds; -inf: due now; inf: never
    reference: float = -math.inf  # the time it counts from (a clock before it: due now)

    def due_in(self, now: float) -> float:
        """Seconds until due at ``now``; 0 when due; ``math.inf`` when never."""
        if self.due_at == math.inf:
            return math.inf
        if self.due_at == -math.inf or not math.isfinite(now) or now < self.reference:
            # Due now, or the clock went back: check now (the gap rule restarts healthy time).
            return 0.0
        return max(0.0, self.due_at - now)


def next_check(spec: Canary, status: CanaryStatus | None) -> CheckTime:
    """When the next check is due (see ``due_in``)."""
    if status is None:
        return CheckTime(-math.inf)
    current = state.sanitise(status, len(spec.steps))
    if current.phase == "Pending":
        return CheckTime(math.inf if current.frozen else -math.inf)
    if current.phase not in ("Progressing", "Halted") or current.frozen:
        return CheckTime(math.inf)
    reference = timefmt.parse_rfc3339(current.last_check_at)
    if reference is None:
        reference = timefmt.parse_rfc3339(current.step_started_at)
    if reference is None:
        return CheckTime(-math.inf)
    return CheckTime(reference + _check_interval(spec), reference)


def due_in(spec: Canary, status: CanaryStatus | None, now: float) -> float:
    """Seconds until the next check is due; 0 when due; ``math.inf`` when no check will be due.

    Checks run while ``Progressing`` or ``Halted`` (also when paused: rollback
    still protects), every ``analysis.checkInterval`` after the last check,
    the first one a check interval after the step started. No check is ever
    due when promoted, rolled back or frozen: only a new revision or a
    command (both handled at once by the caller) changes anything then.
    """
    return next_check(spec, status).due_in(now)


def _check_interval(spec: Canary) -> float:
    return max(duration_ms(spec.analysis.check_interval) / 1000.0, 1.0)


def _clean_now(now: float) -> float:
    try:
        value = float(now)
    except (TypeError, ValueError):
        return 0.0
    if math.isnan(value):
        return 0.0
    return min(max(value, float(timefmt.MIN_EPOCH)), float(timefmt.MAX_EPOCH))


@dataclass
class _Run:
    """One ``decide`` call in progress: the field values being changed, events and flags."""

    spec: Canary
    raw_now: float
    status: CanaryStatus | None
    breaker_limit: int
    breaker_window_seconds: float
    before: CanaryStatus | None = field(init=False)
    fields: dict[str, Any] = field(init=False)
    events: list[CanaryEvent] = field(default_factory=list)
    decision: CanaryDecision | None = None
    check_ran: bool = False
    rolled_back: bool = False

    def __post_init__(self) -> None:
        self.now = _clean_now(self.raw_now)
        self.now_text = timefmt.format_rfc3339(self.now)
        self.steps = list(self.spec.steps) or [PROMOTED_WEIGHT]
        self.before = None if self.status is None else state.sanitise(self.status, len(self.steps))
        base = self.before if self.before is not None else CanaryStatus()
        self.fields = {name: getattr(base, name) for name in CanaryStatus.model_fields}

    # --- small helpers -----------------------------------------------------------------

    def value(self, name: str) -> Any:
        return self.fields[name]

    def set(self, **values: Any) -> None:
        self.fields.update(values)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(CanaryEvent(type=type_, reason=reason, message=message))

    def decide_as(
        self,
        result: DecisionResult,
        reason: str,
        canary: TrackMetrics | None = None,
        stable: TrackMetrics | None = None,
    ) -> None:
        self.decision = CanaryDecision(
            result=result, reason=reason, at=self.now_text, canary=canary, stable=stable
        )
        self.fields["last_decision"] = self.decision

    def condition(self, type_: state.ConditionType, status: bool, reason: str, message: str) -> None:
        self.fields["conditions"] = state.with_condition(
            self.fields["conditions"], type_, "True" if status else "False", reason, message, self.now_text
        )

    def since(self, name: str) -> float | None:
        """Seconds since the recorded time ``name``; ``None`` when not recorded."""
        recorded = timefmt.parse_rfc3339(self.fields[name])
        return None if recorded is None else self.now - recorded

    @property
    def step_label(self) -> str:
        step = self.fields["step"]
        return f"step {step + 1}/{len(self.steps)} ({self.steps[step]}%)"

    # --- transitions -------------------------------------------------------------------

    def start_revision(self, revision: str) -> None:
        """A canary block this status does not describe yet: start it at step 0 unless frozen."""
        kept = [c for c in self.fields["conditions"] if c.type in ("Frozen", "Paused")]
        self.set(
            revision=revision,
            step=0,
            failed_checks=0,
            no_data_checks=0,
            checks=0,
            healthy_since=None,
            last_check_at=None,
            last_decision=None,
            conditions=kept,
        )
        if self.fields["frozen"]:
            # Frozen by the circuit breaker: a new revision waits for a person;
            # the weight stays as it is (0 after the rollback that froze it).
            self.set(phase="Pending", step_started_at=None)
            message = (
                f"revision {revision} not started: automatic changes are frozen after repeated "
                "rollbacks; run `apx rollout resume` or `apx rollout retry` to start it"
            )
            self.decide_as("hold", message)
            self.event("Warning", "CanaryFrozen", message)
            return
        self.enter_step(0, "start")

    def enter_step(self, step: int, why: Literal["start", "advance", "promote", "retry", "resume"]) -> None:
        """Move to ``step`` (phase ``Progressing``) with fresh counters and the step's weight."""
        self.set(
            phase="Progressing",
            step=step,
            weight=self.steps[step],
            step_started_at=self.now_text,
            healthy_since=None,
            failed_checks=0,
            no_data_checks=0,
        )
        if why == "start":
            message = f"canary revision {self.fields['revision']} started at {self.step_label}"
            self.decide_as("advance", message)
            self.event("Normal", "CanaryStarted", message)

    def promote(self, message: str) -> None:
        self.set(
            phase="Promoted", weight=PROMOTED_WEIGHT, healthy_since=None, failed_checks=0, no_data_checks=0
        )
        self.event("Normal", "CanaryPromoted", message)

    def roll_back(self, verdict: judge.Verdict) -> None:
        """Automated rollback: weight 0, recorded for the circuit breaker, which may freeze the Route."""
        failed = self.fields["failed_checks"]
        times = [*self.fields["rollbacks"], self.now_text][-state.MAX_ROLLBACKS_KEPT :]
        self.set(phase="RolledBack", weight=0, healthy_since=None, rollbacks=times)
        self.rolled_back = True
        message = (
            f"rolled back to 0% from {self.step_label} after {failed} consecutive failed checks: "
            f"{verdict.reason}"
        )
        self.decide_as("rollback", message, verdict.canary, verdict.stable)
        self.event("Warning", "CanaryRolledBack", message)
        recent = [
            t
            for t in (timefmt.parse_rfc3339(v) for v in times)
            if t is not None and 0 <= self.now - t <= self.breaker_window_seconds
        ]
        if len(recent) > self.breaker_limit and not self.fields["frozen"]:
            minutes = self.breaker_window_seconds / 60
            frozen_message = (
                f"{len(recent)} automated rollbacks within {minutes:g}m (limit {self.breaker_limit}): "
                "automatic changes are frozen until `apx rollout resume` or `apx rollout retry`"
            )
            self.set(frozen=True)
            self.condition("Frozen", True, "TooManyRollbacks", frozen_message)
            self.event("Warning", "CanaryFrozen", frozen_message)

    # --- commands ----------------------------------------------------------------------

    def handle(self, command: Command) -> None:
        """A person's ``apx rollout`` command, handled once per id."""
        self.set(handled_request=command.id)
        phase = self.fields["phase"]
        action = command.action
        if action == "promote":
            self._promote_command(command.full, phase)
        elif action == "abort":
            if phase == "RolledBack":
                self._ignored("abort", "the canary is already rolled back")
                return
            self.set(phase="RolledBack", weight=0, healthy_since=None)
            self._clear_condition("Halted", "Aborted", "cleared by `apx rollout abort`")
            self.rolled_back = True
            message = (
                "aborted by `apx rollout abort`: canary weight set to 0% (not counted by the circuit breaker)"
            )
            self.decide_as("manual", message)
            self.event("Normal", "CanaryAborted", message)
        elif action == "retry":
            if phase not in ("RolledBack", "Halted", "Pending") and not self.fields["frozen"]:
                self._ignored("retry", f"nothing to retry while {phase}")
                return
            self.set(frozen=False)
            self._clear_condition("Frozen", "Retried", "cleared by `apx rollout retry`")
            self._clear_condition("Halted", "Retried", "cleared by `apx rollout retry`")
            self.enter_step(0, "retry")
            message = f"retried by `apx rollout retry`: restarted at {self.step_label}"
            self.decide_as("manual", message)
            self.event("Normal", "CanaryRetried", message)
        elif action == "pause":
            self.set(paused=True)
            message = "paused by `apx rollout pause`: no step advances; failing checks still roll back"
            self.condition("Paused", True, "PausedByUser", message)
            self.decide_as("manual", message)
            self.event("Normal", "CanaryPaused", message)
        elif action == "resume":
            self._resume_command(phase)
        else:  # an action this version does not know: recorded as handled, nothing else
            self._ignored(str(action), "unknown action")

    def _promote_command(self, full: bool, phase: str) -> None:
        if phase in ("RolledBack", "Promoted", "Pending"):
            hint = {
                "RolledBack": "the canary is rolled back; run `apx rollout retry` first",
                "Promoted": "the canary is already promoted",
                "Pending": "the canary has not started; run `apx rollout resume` first",
            }[phase]
            self._ignored("promote", hint)
            return
        step = self.fields["step"]
        if full or step >= len(self.steps) - 1:
            message = "promoted by `apx rollout promote`: canary weight 100%"
            self.promote(message)
        else:
            self.enter_step(step + 1, "advance")
            message = f"advanced by `apx rollout promote` to {self.step_label}"
            self.event("Normal", "CanaryAdvanced", message)
        self._clear_condition("Halted", "Promoted", "cleared by `apx rollout promote`")
        self.decide_as("manual", message)

    def _resume_command(self, phase: str) -> None:
        self.set(paused=False, frozen=False)
        self._clear_condition("Paused", "Resumed", "cleared by `apx rollout resume`")
        self._clear_condition("Frozen", "Resumed", "cleared by `apx rollout resume`")
        if phase == "Halted":
            self.set(phase="Progressing", no_data_checks=0, healthy_since=None)
            self._clear_condition("Halted", "Resumed", "cleared by `apx rollout resume`")
        elif phase == "Pending":
            self.enter_step(0, "resume")
        message = f"resumed by `apx rollout resume`: phase {self.fields['phase']}"
        if phase in ("Progressing", "Halted", "Pending"):
            message += f" at {self.step_label}"
        self.decide_as("manual", message)
        self.event("Normal", "CanaryResumed", message)

    def _ignored(self, action: str, why: str) -> None:
        message = f"`apx rollout {action}` ignored: {why}"
        self.decide_as("manual", message)
        self.event("Warning", "CommandIgnored", message)

    def _clear_condition(self, type_: state.ConditionType, reason: str, message: str) -> None:
        if state.condition_is(self.fields["conditions"], type_):
            self.condition(type_, False, reason, message)

    # --- checks ------------------------------------------------------------------------

    def check(
        self, stable: TrackWindow | None, canary: TrackWindow | None, metrics_error: str | None
    ) -> None:
        """Judge one check's windows and move the state machine accordingly."""
        phase = self.fields["phase"]
        if phase not in ("Progressing", "Halted") or self.fields["frozen"]:
            return  # nothing to analyse: promoted, rolled back or frozen
        self.check_ran = True
        interval = _check_interval(self.spec)
        gap = self.since("last_check_at")
        if gap is not None and not 0 <= gap <= MAX_CHECK_GAP_INTERVALS * interval:
            # The loop was away (or the clock moved back): time nobody watched is not healthy time.
            self.set(healthy_since=None)
        self.set(last_check_at=self.now_text, checks=self.fields["checks"] + 1)
        verdict = self._verdict(stable, canary, metrics_error)
        if verdict.kind == "no-data":
            self._inconclusive(verdict)
            return
        if phase == "Halted":
            # Any conclusive check ends the halt; the step goes on from here.
            self.set(phase="Progressing")
            self.condition("Halted", False, "Conclusive", "checks are conclusive again")
            self.event(
                "Normal", "CanaryResumed", f"analysis conclusive again at {self.step_label}: {verdict.reason}"
            )
        self.set(no_data_checks=0)
        if verdict.kind == "fail":
            self._failed(verdict)
        else:
            self._passed(verdict)

    def _verdict(
        self, stable: TrackWindow | None, canary: TrackWindow | None, metrics_error: str | None
    ) -> judge.Verdict:
        if metrics_error is not None or stable is None or canary is None:
            missing = [name for name, window in (("stable", stable), ("canary", canary)) if window is None]
            error = (
                redact(metrics_error)
                if metrics_error is not None
                else f"no metrics for the {' and '.join(missing)} track"
            )
            reason = f"metrics unavailable: {error}"
            self.condition("MetricsAvailable", False, "MetricsUnavailable", reason)
            return judge.Verdict("no-data", reason, TrackMetrics(), TrackMetrics())
        # At 100 % stable takes no traffic: requiring its samples would halt every last step.
        with_stable = self.fields["weight"] < PROMOTED_WEIGHT
        verdict = judge.judge(self.spec.analysis, stable, canary, with_stable=with_stable)
        if verdict.kind == "no-data":
            self.condition("MetricsAvailable", False, "NotEnoughSamples", verdict.reason)
        else:
            self.condition("MetricsAvailable", True, "MetricsAvailable", "both tracks have enough samples")
        return verdict

    def _inconclusive(self, verdict: judge.Verdict) -> None:
        count = self.fields["no_data_checks"] + 1
        self.set(no_data_checks=count, healthy_since=None)
        analysis = self.spec.analysis
        window = duration_ms(analysis.window) / 1000.0
        started = self.since("step_started_at")
        # On the first step the canary had no traffic before the step began: a
        # window reaching back before it cannot have enough canary samples yet.
        filling = self.fields["step"] == 0 and started is not None and 0 <= started < window
        if self.fields["phase"] == "Progressing" and count >= analysis.max_no_data_checks and not filling:
            message = (
                f"halted at {self.step_label} after {count} consecutive inconclusive checks "
                f"({verdict.reason}); weight stays {self.fields['weight']}%, and the analysis resumes "
                "by itself when a check is conclusive again"
            )
            self.set(phase="Halted")
            self.condition("Halted", True, "NoData", message)
            self.decide_as("halt", message, verdict.canary, verdict.stable)
            self.event("Warning", "CanaryHalted", message)
            return
        self.decide_as(
            "no-data",
            f"inconclusive check {count} of {analysis.max_no_data_checks} at {self.step_label}: "
            f"{verdict.reason}",
            verdict.canary,
            verdict.stable,
        )

    def _failed(self, verdict: judge.Verdict) -> None:
        count = self.fields["failed_checks"] + 1
        self.set(failed_checks=count, healthy_since=None)
        threshold = self.spec.analysis.failure_threshold
        if count >= threshold:
            self.roll_back(verdict)
            return
        message = (
            f"check failed ({count} of {threshold} before rollback) at {self.step_label}: {verdict.reason}"
        )
        self.decide_as("hold", message, verdict.canary, verdict.stable)
        self.event("Warning", "CanaryCheckFailed", message)

    def _passed(self, verdict: judge.Verdict) -> None:
        self.set(failed_checks=0)
        if self.fields["healthy_since"] is None:
            # Whole seconds, rounded up: the recorded time never makes a step look
            # healthy for longer than it was.
            self.set(healthy_since=timefmt.format_rfc3339(math.ceil(self.now)))
        healthy = max(0.0, self.since("healthy_since") or 0.0)
        needed = duration_ms(self.spec.interval) / 1000.0
        if self.fields["paused"]:
            self.decide_as(
                "hold",
                f"paused at {self.step_label}; check passed: {verdict.reason}",
                verdict.canary,
                verdict.stable,
            )
            return
        if healthy < needed:
            self.decide_as(
                "hold",
                f"healthy for {healthy:.0f}s of {needed:.0f}s at {self.step_label}: {verdict.reason}",
                verdict.canary,
                verdict.stable,
            )
            return
        if self.fields["step"] >= len(self.steps) - 1:
            message = (
                f"promoted to 100% after {self.step_label} was healthy for {healthy:.0f}s: {verdict.reason}"
            )
            self.promote(message)
            self.decide_as("promote", message, verdict.canary, verdict.stable)
            return
        self.enter_step(self.fields["step"] + 1, "advance")
        message = f"advanced to {self.step_label} after {healthy:.0f}s healthy: {verdict.reason}"
        self.decide_as("advance", message, verdict.canary, verdict.stable)
        self.event("Normal", "CanaryAdvanced", message)

    # --- result ------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        before = self.before
        if before is None or self.fields["phase"] != before.phase:
            self.fields["last_transition_time"] = self.now_text
        base = before if before is not None else CanaryStatus()
        new_status = base.model_copy(update=self.fields)
        decision = self.decision or CanaryDecision(
            result="hold", reason=f"nothing to do: phase {self.fields['phase']}", at=self.now_text
        )
        previous_weight = before.weight if before is not None else 0
        return Outcome(
            status=new_status,
            decision=decision,
            events=tuple(self.events),
            weight_changed=new_status.weight != previous_weight,
            rolled_back=self.rolled_back,
            check_ran=self.check_ran,
        )
