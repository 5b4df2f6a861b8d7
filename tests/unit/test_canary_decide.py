"""The canary state machine: verdicts, holds, halts, rollbacks, promotion timing, restarts, breaker, commands.

Every test drives ``decide`` the way the operator's loop does: one call per
check interval with both windows (or a metrics error), and one call at once
for a new revision or a command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apx.controllers.canary import judge, timefmt
from apx.controllers.canary.decide import Outcome, decide, due_in, start
from apx.controllers.canary.types import Command, TrackWindow
from apx.controllers.models.route import Analysis, Canary, CanaryStatus

T0 = 1_796_583_600.0  # 2026-12-06T19:00:00Z
CHECK = 10.0
SPEC = Canary.model_validate({"policyVersion": "1.3.0"})  # defaults: steps 10/25/50/100, 1m, 10s checks
REV = "rev-one"
INF = math.inf


def window(
    requests: float,
    errors: float = 0,
    *,
    fast_ms: float = 25.0,
    slow_share: float = 0.0,
    slow_ms: float = 1000.0,
) -> TrackWindow:
    """A window in the worker's buckets (ms): most requests at ``fast_ms``, ``slow_share`` at ``slow_ms``."""
    bounds = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, INF)
    slow = requests * slow_share
    fast = requests - slow
    buckets = tuple((b, (fast if fast_ms <= b else 0.0) + (slow if slow_ms <= b else 0.0)) for b in bounds)
    return TrackWindow(requests=requests, errors=errors, latency_buckets=buckets)


GOOD = window(1000, 1)
STABLE = window(5000, 5)
BAD = window(1000, 300)


def started(now: float = T0, spec: Canary = SPEC) -> CanaryStatus:
    return start(spec, REV, None, now).status


def checks(
    status: CanaryStatus,
    count: int,
    stable: TrackWindow | None,
    canary: TrackWindow | None,
    first: float,
    *,
    spec: Canary = SPEC,
    metrics_error: str | None = None,
) -> list[Outcome]:
    outcomes = []
    for i in range(count):
        outcome = decide(spec, REV, status, stable, canary, first + i * CHECK, metrics_error=metrics_error)
        outcomes.append(outcome)
        status = outcome.status
    return outcomes


def reasons(outcomes: Sequence[Outcome]) -> list[str]:
    return [e.reason for o in outcomes for e in o.events]


# --- the verdict of one check ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "analysis", "canary", "stable", "kind"),
    [
        ("healthy", {}, window(1000, 1), window(5000, 5), "pass"),
        ("two-errors-in-100-is-noise", {}, window(100, 2), window(5000, 0), "pass"),
        ("thirty-errors-in-100-fail", {}, window(100, 30), window(5000, 0), "fail"),
        ("below-min-success-rate-significantly", {}, window(2000, 60), window(5000, 100), "fail"),
        (
            "worse-than-stable-beyond-drop",
            {"minSuccessRate": 0.5},
            window(5000, 150),
            window(5000, 25),
            "fail",
        ),
        (
            "worse-than-stable-within-drop",
            {"minSuccessRate": 0.5},
            window(100_000, 1200),
            window(100_000, 500),
            "pass",
        ),
        ("slightly-better", {}, window(1000, 0), window(5000, 10), "pass"),
        ("latency-only-regression", {}, window(1000, 0, slow_share=0.05, slow_ms=250.0), STABLE, "fail"),
        (
            "latency-over-absolute-limit",
            {"maxLatencyRatio": 100},
            window(1000, 0, slow_share=0.05),
            STABLE,
            "fail",
        ),
        (
            "latency-tail-too-small-to-matter",
            {},
            window(1000, 0, slow_share=0.002, slow_ms=250.0),
            STABLE,
            "pass",
        ),
        ("canary-below-min-samples", {}, window(99, 0), STABLE, "no-data"),
        ("stable-below-min-samples", {}, GOOD, window(50, 0), "no-data"),
        ("custom-min-samples", {"minSamples": 20}, window(30, 0), window(30, 0), "pass"),
        ("no-histogram-judged-on-errors", {}, TrackWindow(1000, 1), TrackWindow(5000, 5), "pass"),
        ("garbage-counts", {}, TrackWindow(math.nan, -3, (("x", 1),)), STABLE, "no-data"),  # type: ignore[arg-type]
    ],
)
def test_judge_table(
    name: str, analysis: dict[str, Any], canary: TrackWindow, stable: TrackWindow, kind: str
) -> None:
    verdict = judge.judge(Analysis.model_validate(analysis), stable, canary)
    assert verdict.kind == kind, verdict.reason


def test_a_failed_verdict_names_the_limit_and_carries_both_tracks_numbers() -> None:
    verdict = judge.judge(SPEC.analysis, STABLE, BAD)
    assert verdict.kind == "fail"
    assert "minSuccessRate" in verdict.reason and "70.00%" in verdict.reason and "99.90%" in verdict.reason
    assert verdict.canary.requests == 1000 and verdict.stable.requests == 5000
    assert verdict.canary.success_rate == pytest.approx(0.7)


def test_latency_regression_reports_the_ratio_and_p99s() -> None:
    verdict = judge.judge(SPEC.analysis, STABLE, window(1000, 0, slow_share=0.05, slow_ms=250.0))
    assert "maxLatencyRatio" in verdict.reason
    assert verdict.canary.latency_p99_ms is not None and verdict.stable.latency_p99_ms is not None
    assert verdict.canary.latency_p99_ms > 1.5 * verdict.stable.latency_p99_ms


# --- starting ----------------------------------------------------------------------------


def test_a_new_canary_starts_progressing_at_the_first_step() -> None:
    outcome = start(SPEC, REV, None, T0)
    assert outcome.status.phase == "Progressing"
    assert (outcome.status.step, outcome.status.weight, outcome.status.revision) == (0, 10, REV)
    assert outcome.status.step_started_at == "2026-12-06T19:00:00Z"
    assert outcome.weight_changed and not outcome.check_ran
    assert reasons([outcome]) == ["CanaryStarted"]


def test_windows_given_with_a_new_revision_are_not_judged() -> None:
    outcome = decide(SPEC, REV, None, STABLE, BAD, T0)
    assert not outcome.check_ran and outcome.status.failed_checks == 0


def test_a_changed_canary_block_restarts_at_step_zero_keeping_the_rollback_history() -> None:
    status = started().model_copy(update={"step": 2, "weight": 50, "rollbacks": ["2026-12-06T18:59:00Z"]})
    outcome = start(SPEC, "rev-two", status, T0 + 100)
    assert (outcome.status.revision, outcome.status.step, outcome.status.weight) == ("rev-two", 0, 10)
    assert outcome.status.rollbacks == ["2026-12-06T18:59:00Z"]


# --- checks, failures and rollback -----------------------------------------------------


def test_failure_threshold_counts_consecutive_failed_checks_then_rolls_back() -> None:
    first, second = checks(started(), 2, STABLE, BAD, T0 + CHECK)
    assert first.status.phase == "Progressing" and first.status.failed_checks == 1
    assert first.decision.result == "hold" and reasons([first]) == ["CanaryCheckFailed"]
    assert second.status.phase == "RolledBack" and second.status.weight == 0
    assert second.rolled_back and second.weight_changed and second.decision.result == "rollback"
    warning = second.events[0]
    assert (warning.type, warning.reason) == ("Warning", "CanaryRolledBack")
    assert (
        "70.00%" in warning.message
        and "stable 99.90%" in warning.message
        and "samples 1000" in warning.message
    )
    assert "p99" in warning.message
    assert second.status.rollbacks == [timefmt.format_rfc3339(T0 + 2 * CHECK)]


def test_hard_failure_reaches_weight_zero_within_thirty_seconds_of_the_first_bad_window() -> None:
    status = checks(started(), 3, STABLE, GOOD, T0 + CHECK)[-1].status
    first_bad = T0 + 4 * CHECK
    outcomes = checks(status, 5, STABLE, BAD, first_bad)
    rolled = next(o for o in outcomes if o.rolled_back)
    rolled_at = timefmt.parse_rfc3339(rolled.status.last_check_at)
    assert rolled_at is not None
    assert rolled_at - first_bad <= 30 - 10  # leaves one 10 s scrape interval of the 30 s budget


def test_a_passing_check_resets_the_failed_count() -> None:
    status = started()
    for canary in (BAD, GOOD, BAD, GOOD, BAD):
        status = decide(SPEC, REV, status, STABLE, canary, T0 + (status.checks + 1) * CHECK).status
    assert status.phase == "Progressing" and status.failed_checks == 1


def test_a_rolled_back_canary_stays_rolled_back_until_revision_or_retry() -> None:
    rolled = checks(started(), 2, STABLE, BAD, T0 + CHECK)[-1].status
    later = checks(rolled, 10, STABLE, GOOD, T0 + 100)
    assert all(o.status.phase == "RolledBack" and o.status.weight == 0 and not o.check_ran for o in later)
    assert due_in(SPEC, rolled, T0 + 1000) == INF
    assert start(SPEC, "rev-two", rolled, T0 + 300).status.phase == "Progressing"
    retried = decide(SPEC, REV, rolled, None, None, T0 + 300, command=Command("retry", "r-1")).status
    assert (retried.phase, retried.step, retried.weight) == ("Progressing", 0, 10)


def test_paused_canary_still_rolls_back() -> None:
    paused = decide(SPEC, REV, started(), None, None, T0 + 1, command=Command("pause", "p-1")).status
    assert checks(paused, 2, STABLE, BAD, T0 + CHECK)[-1].status.phase == "RolledBack"


# --- inconclusive checks ----------------------------------------------------------------


def test_too_few_samples_holds_then_halts_after_max_no_data_checks_and_resumes_by_itself() -> None:
    status = started()
    thin = window(20, 0)
    # The first window (1m) of the first step is still filling: no halt yet.
    filling = checks(status, 5, STABLE, thin, T0 + CHECK)
    assert all(o.status.phase == "Progressing" and o.decision.result == "no-data" for o in filling)
    after = checks(filling[-1].status, 2, STABLE, thin, T0 + 6 * CHECK)
    halted = after[0]
    assert halted.status.phase == "Halted" and halted.decision.result == "halt"
    assert halted.status.weight == 10 and not halted.rolled_back
    assert [(e.type, e.reason) for e in halted.events] == [("Warning", "CanaryHalted")]
    assert not after[1].events  # one Warning, not one per check
    resumed = decide(SPEC, REV, after[-1].status, STABLE, GOOD, T0 + 8 * CHECK)
    assert resumed.status.phase == "Progressing" and resumed.status.no_data_checks == 0
    assert "CanaryResumed" in reasons([resumed])
    halted_condition = next(c for c in resumed.status.conditions if c.type == "Halted")
    assert halted_condition.status == "False"


def test_later_steps_halt_after_exactly_max_no_data_checks() -> None:
    status = started().model_copy(update={"step": 1, "weight": 25})
    outcomes = checks(status, 5, STABLE, window(10), T0 + CHECK)
    assert [o.status.phase for o in outcomes] == ["Progressing"] * 4 + ["Halted"]


def test_metrics_errors_never_roll_back_and_name_the_dependency() -> None:
    outcomes = checks(
        started(), 30, None, None, T0 + CHECK, metrics_error="prometheus at 127.0.0.1:9090: timeout"
    )
    assert not any(o.rolled_back for o in outcomes)
    assert outcomes[-1].status.phase == "Halted" and outcomes[-1].status.weight == 10
    assert "prometheus at 127.0.0.1:9090: timeout" in outcomes[-1].decision.reason
    condition = next(c for c in outcomes[-1].status.conditions if c.type == "MetricsAvailable")
    assert (condition.status, condition.reason) == ("False", "MetricsUnavailable")


def test_credentials_in_a_metrics_error_never_reach_status_or_events() -> None:
    error = "GET https://apx:s3cret@prometheus.example:9090/api/v1/query?token=abc123&x=1: 401"
    outcomes = checks(started(), 8, None, None, T0 + CHECK, metrics_error=error)
    text = str([o.status.model_dump(mode="json") for o in outcomes]) + str([o.events for o in outcomes])
    assert "s3cret" not in text and "abc123" not in text
    assert "prometheus.example:9090" in outcomes[-1].decision.reason


def test_a_missing_window_is_inconclusive_not_a_failure() -> None:
    outcome = decide(SPEC, REV, started(), STABLE, None, T0 + CHECK)
    assert outcome.decision.result == "no-data" and outcome.status.failed_checks == 0
    assert "canary" in outcome.decision.reason


# --- healthy time, promotion and restarts ------------------------------------------------


def test_a_step_advances_after_one_interval_of_passing_checks_and_not_earlier() -> None:
    outcomes = checks(started(), 7, STABLE, GOOD, T0 + CHECK)
    # The first pass (t0+10) starts the healthy clock; t0+70 is 60 s later.
    assert [o.status.step for o in outcomes] == [0, 0, 0, 0, 0, 0, 1]
    assert outcomes[-1].decision.result == "advance" and outcomes[-1].status.weight == 25
    assert outcomes[-1].weight_changed and "CanaryAdvanced" in reasons(outcomes)


def test_promotion_comes_after_the_last_step_is_healthy_for_one_interval_and_not_earlier() -> None:
    last = started().model_copy(update={"step": 3, "weight": 100})
    outcomes = checks(last, 7, STABLE, GOOD, T0 + CHECK)
    assert [o.status.phase for o in outcomes] == ["Progressing"] * 6 + ["Promoted"]
    assert outcomes[-1].status.weight == 100 and outcomes[-1].decision.result == "promote"
    assert due_in(SPEC, outcomes[-1].status, T0 + 1000) == INF


def test_promotion_sets_weight_100_when_the_last_step_is_lower() -> None:
    spec = Canary.model_validate({"policyVersion": "1.3.0", "steps": [20, 50]})
    status = start(spec, REV, None, T0).status.model_copy(update={"step": 1, "weight": 50})
    final = checks(status, 7, STABLE, GOOD, T0 + CHECK, spec=spec)[-1]
    assert final.status.phase == "Promoted" and final.status.weight == 100


def test_the_last_step_at_100_percent_is_judged_without_stable_traffic() -> None:
    last = started().model_copy(update={"step": 3, "weight": 100})
    no_stable = window(0)
    outcomes = checks(last, 7, no_stable, GOOD, T0 + CHECK)
    assert outcomes[0].decision.result == "hold" and "absolute limits only" in outcomes[0].decision.reason
    assert outcomes[-1].status.phase == "Promoted"
    failing = checks(last, 2, no_stable, BAD, T0 + CHECK)
    assert failing[-1].status.phase == "RolledBack"


def test_healthy_time_does_not_accrue_across_a_gap_between_checks() -> None:
    first = decide(SPEC, REV, started(), STABLE, GOOD, T0 + CHECK).status
    # The operator was away for 100 s (> 2 check intervals): the next pass starts the clock again.
    after_gap = decide(SPEC, REV, first, STABLE, GOOD, T0 + CHECK + 100)
    assert after_gap.status.step == 0 and after_gap.decision.result == "hold"
    assert after_gap.status.healthy_since == timefmt.format_rfc3339(T0 + CHECK + 100)


def test_a_restarted_operator_resumes_the_recorded_step_from_the_written_status() -> None:
    status = checks(started(), 15, STABLE, GOOD, T0 + CHECK)[-1].status
    assert status.step == 2
    written = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    reread = CanaryStatus.model_validate(written)
    assert reread == status
    resumed = decide(SPEC, REV, reread, STABLE, GOOD, T0 + 16 * CHECK)
    assert resumed.status.step == 2 and resumed.status.weight == 50
    assert resumed.status.healthy_since == status.healthy_since  # timers from recorded times


def test_due_in_counts_from_the_last_check_or_the_step_start() -> None:
    fresh = started()
    assert due_in(SPEC, fresh, T0) == CHECK
    assert due_in(SPEC, fresh, T0 + 4) == CHECK - 4
    checked = decide(SPEC, REV, fresh, STABLE, GOOD, T0 + 12).status
    assert due_in(SPEC, checked, T0 + 15) == 7
    assert due_in(SPEC, checked, T0 + 40) == 0
    assert due_in(SPEC, checked, T0 - 100) == 0  # the clock went back: check now
    assert due_in(SPEC, None, T0) == 0


def test_decide_is_deterministic() -> None:
    status = checks(started(), 4, STABLE, GOOD, T0 + CHECK)[-1].status
    assert decide(SPEC, REV, status, STABLE, BAD, T0 + 99) == decide(SPEC, REV, status, STABLE, BAD, T0 + 99)


# --- circuit breaker ----------------------------------------------------------------------


def rolled_back_with_history(history: list[float]) -> Outcome:
    status = started().model_copy(update={"rollbacks": [timefmt.format_rfc3339(t) for t in history]})
    return checks(status, 2, STABLE, BAD, T0 + CHECK)[-1]


def test_the_fourth_rollback_within_15_minutes_freezes_the_route() -> None:
    outcome = rolled_back_with_history([T0 - 800, T0 - 500, T0 - 200])
    assert outcome.status.frozen and len(outcome.status.rollbacks) == 4
    assert ("Warning", "CanaryFrozen") in [(e.type, e.reason) for e in outcome.events]
    frozen = next(c for c in outcome.status.conditions if c.type == "Frozen")
    assert frozen.status == "True"


def test_the_third_rollback_within_15_minutes_does_not_freeze() -> None:
    outcome = rolled_back_with_history([T0 - 500, T0 - 200])
    assert outcome.status.phase == "RolledBack" and not outcome.status.frozen
    assert "CanaryFrozen" not in reasons([outcome])


def test_rollbacks_older_than_15_minutes_do_not_count() -> None:
    outcome = rolled_back_with_history([T0 - 3000, T0 - 2000, T0 - 200])
    assert outcome.status.phase == "RolledBack" and not outcome.status.frozen


def test_a_frozen_route_does_not_start_a_new_revision_until_resumed() -> None:
    frozen = rolled_back_with_history([T0 - 800, T0 - 500, T0 - 200]).status
    waiting = start(SPEC, "rev-two", frozen, T0 + 60)
    assert waiting.status.phase == "Pending" and waiting.status.weight == 0 and waiting.status.frozen
    assert waiting.events[0].reason == "CanaryFrozen"
    assert due_in(SPEC, waiting.status, T0 + 100) == INF
    idle = decide(SPEC, "rev-two", waiting.status, STABLE, GOOD, T0 + 70)
    assert idle.status.phase == "Pending" and not idle.check_ran
    resumed = decide(SPEC, "rev-two", waiting.status, None, None, T0 + 80, command=Command("resume", "r-9"))
    assert resumed.status.phase == "Progressing" and resumed.status.weight == 10 and not resumed.status.frozen


def test_rollback_history_keeps_the_ten_newest() -> None:
    history = [T0 - 10_000 - i * 1000 for i in range(12)]
    outcome = rolled_back_with_history(sorted(history))
    assert len(outcome.status.rollbacks) == 10
    assert outcome.status.rollbacks[-1] == timefmt.format_rfc3339(T0 + 2 * CHECK)


# --- commands -----------------------------------------------------------------------------


def command(
    status: CanaryStatus, action: str, id_: str = "c-1", *, full: bool = False, now: float = T0 + 5
) -> Outcome:
    return decide(SPEC, REV, status, None, None, now, command=Command(action, id_, full))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phase", "step", "action", "full", "expected_phase", "expected_step", "expected_weight"),
    [
        ("Progressing", 0, "promote", False, "Progressing", 1, 25),
        ("Progressing", 0, "promote", True, "Promoted", 0, 100),
        ("Progressing", 3, "promote", False, "Promoted", 3, 100),
        ("Halted", 1, "promote", False, "Progressing", 2, 50),
        ("Progressing", 2, "abort", False, "RolledBack", 2, 0),
        ("Promoted", 3, "abort", False, "RolledBack", 3, 0),
        ("RolledBack", 2, "retry", False, "Progressing", 0, 10),
        ("Halted", 2, "retry", False, "Progressing", 0, 10),
        ("Halted", 2, "resume", False, "Progressing", 2, 50),
        ("RolledBack", 2, "promote", False, "RolledBack", 2, 0),  # ignored: retry first
        ("Progressing", 1, "retry", False, "Progressing", 1, 25),  # ignored: nothing to retry
    ],
)
def test_commands(
    phase: str,
    step: int,
    action: str,
    full: bool,
    expected_phase: str,
    expected_step: int,
    expected_weight: int,
) -> None:
    weight = {"RolledBack": 0, "Promoted": 100}.get(phase, SPEC.steps[step])
    status = started().model_copy(update={"phase": phase, "step": step, "weight": weight})
    outcome = command(status, action, full=full)
    assert (outcome.status.phase, outcome.status.step, outcome.status.weight) == (
        expected_phase,
        expected_step,
        expected_weight,
    )
    assert outcome.status.handled_request == "c-1"
    assert outcome.decision.result == "manual" and outcome.events
    assert not outcome.check_ran


def test_abort_is_not_counted_by_the_circuit_breaker() -> None:
    outcome = command(started(), "abort")
    assert outcome.rolled_back and outcome.status.rollbacks == [] and outcome.decision.result == "manual"


def test_pause_stops_advancing_and_resume_lets_it_advance() -> None:
    paused = command(started(), "pause").status
    assert paused.paused and any(c.type == "Paused" and c.status == "True" for c in paused.conditions)
    outcomes = checks(paused, 12, STABLE, GOOD, T0 + CHECK)
    assert all(o.status.step == 0 for o in outcomes)
    resumed = command(outcomes[-1].status, "resume", "c-2", now=T0 + 125).status
    assert not resumed.paused
    advanced = decide(SPEC, REV, resumed, STABLE, GOOD, T0 + 13 * CHECK)
    assert advanced.status.step == 1  # healthy time kept accruing while paused


def test_retry_and_resume_clear_frozen() -> None:
    frozen = rolled_back_with_history([T0 - 800, T0 - 500, T0 - 200]).status
    retried = command(frozen, "retry", now=T0 + 100).status
    assert not retried.frozen and retried.phase == "Progressing"
    resumed = command(frozen, "resume", now=T0 + 100).status
    assert not resumed.frozen and resumed.phase == "RolledBack"


def test_the_same_request_id_is_handled_once() -> None:
    once = command(started(), "promote", "same")
    twice = decide(SPEC, REV, once.status, None, None, T0 + 6, command=Command("promote", "same"))
    assert once.status.step == 1 and twice.status.step == 1
    assert twice.status == once.status and not twice.events and not twice.weight_changed


def test_a_command_and_a_due_check_in_one_call_handles_only_the_command() -> None:
    outcome = decide(SPEC, REV, started(), STABLE, BAD, T0 + CHECK, command=Command("pause", "p"))
    assert outcome.status.paused and not outcome.check_ran and outcome.status.failed_checks == 0


# --- status round trip and totality -------------------------------------------------------


def test_status_round_trips_through_the_dict_the_loop_writes() -> None:
    outcomes = checks(
        rolled_back_with_history([T0 - 800, T0 - 500, T0 - 200]).status, 1, STABLE, GOOD, T0 + 30
    )
    status = command(outcomes[-1].status, "retry", "x").status
    written = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert "handledRequest" in written and "stepStartedAt" in written and "rollbacks" in written
    assert CanaryStatus.model_validate(written) == status


def test_an_old_status_with_only_a_few_fields_parses_and_resumes() -> None:
    old = CanaryStatus.model_validate({"phase": "Progressing", "revision": REV, "step": 1, "weight": 25})
    outcome = decide(SPEC, REV, old, STABLE, GOOD, T0)
    assert outcome.status.step == 1 and outcome.status.phase == "Progressing" and outcome.check_ran


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["Progressing", "Halted", "Promoted", "RolledBack", "Pending", "2026-12-06T19:00:00Z"]),
    st.lists(st.one_of(st.text(max_size=25), st.integers(), st.none()), max_size=12),
    st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers()), max_size=4),
)
FIELDS = list(CanaryStatus.model_fields)


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.dictionaries(st.sampled_from(FIELDS), anything),
    revision=st.sampled_from([REV, "other"]),
    kind=st.sampled_from(["good", "bad", "none", "error"]),
    action=st.sampled_from([None, "promote", "abort", "retry", "pause", "resume"]),
    now=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(T0)),
)
def test_decide_is_total_on_garbage_statuses(
    garbage: dict[str, Any], revision: str, kind: str, action: str | None, now: float
) -> None:
    status = CanaryStatus.model_construct(**garbage)
    windows = {"good": (STABLE, GOOD), "bad": (STABLE, BAD), "none": (None, None), "error": (None, None)}[
        kind
    ]
    outcome = decide(
        SPEC,
        revision,
        status,
        *windows,
        now,
        command=None if action is None else Command(action, "g"),  # type: ignore[arg-type]
        metrics_error="down" if kind == "error" else None,
    )
    written = outcome.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    reread = CanaryStatus.model_validate(written)
    assert 0 <= reread.weight <= 100 and 0 <= reread.step < len(SPEC.steps)
    assert isinstance(due_in(SPEC, status, now), float)
