"""``apx rollout`` / ``kubectl apx rollout`` against the emulated Kubernetes API.

The operator is not running: tests write ``status.canary`` the way its canary
loop would, and play the loop's part (``handledRequest`` and the new phase)
where a command waits for it. What is checked is what a person sees (the
tree, one-line messages, exit codes) and what reaches the API (only
``status.canary.request``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apx.controllers.appliers.kube import Connection, KubeClient
from apx.controllers.canary.timefmt import format_rfc3339, parse_rfc3339
from apx.operator import cli, rollout_cli
from apx.operator.kubeconfig import KubeconfigError, resolve
from e2e.kubeemu.testing import RunningEmulator, running_emulator
from e2e.services import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NOW = parse_rfc3339("2026-12-06T19:00:00Z") or 0.0


def at(seconds_before_now: float) -> str:
    return format_rfc3339(NOW - seconds_before_now)


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator(crds=ROOT / "crds") as running:
        yield running


def kube_call(emulator: RunningEmulator, method: str, *args: Any) -> Any:
    async def call() -> Any:
        async with KubeClient(Connection(server=emulator.url)) as kube:
            return await getattr(kube, method)(*args)

    return asyncio.run(call())


CANARY_SPEC = {
    "backend": {"url": "http://127.0.0.1:9002"},
    "steps": [10, 25, 50, 100],
    "interval": "1m",
    "analysis": {"minSamples": 50},
}


def make_route(
    emulator: RunningEmulator, name: str, canary: dict[str, Any] | None = None, *, with_canary: bool = True
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "productRef": {"name": "shop"},
        "policyRef": {"name": "pol", "version": "1.0.0"},
        "match": {"hosts": ["api.example.com"], "pathPrefix": f"/{name}/"},
        "backend": {"url": "http://127.0.0.1:9001"},
    }
    if with_canary:
        spec["canary"] = copy.deepcopy(CANARY_SPEC)
    document = {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": name, "namespace": "default", "labels": {"team": "payments"}},
        "spec": spec,
    }
    kube_call(emulator, "create", document)
    if canary is not None:
        kube_call(emulator, "patch_status", "Route", "default", name, {"canary": canary})
    route = kube_call(emulator, "get", "Route", "default", name)
    assert route is not None
    return dict(route)


def get_route(emulator: RunningEmulator, name: str) -> dict[str, Any]:
    route = kube_call(emulator, "get", "Route", "default", name)
    assert route is not None
    return dict(route)


def run_cli(emulator: RunningEmulator, *argv: str, now: float = NOW) -> int:
    """The CLI in this process with a fixed clock (``main`` itself uses the real one)."""
    args = cli._build_parser().parse_args(["rollout", *argv, "--kubeconfig", str(emulator.kubeconfig)])
    return rollout_cli.run(args, now=lambda: now)


def run_script(
    script: str, *argv: str, kubeconfig: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(BIN / script), *argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


PROGRESSING = {
    "phase": "Progressing",
    "step": 1,
    "weight": 25,
    "stepStartedAt": at(50),
    "healthySince": at(40),
    "lastCheckAt": at(6),
    "checks": 12,
    "failedChecks": 0,
    "noDataChecks": 0,
    "rollbacks": [at(3600), at(300)],
    "lastDecision": {
        "result": "advance",
        "reason": "canary within thresholds",
        "at": at(6),
        "canary": {"requests": 1200, "successRate": 0.995, "latencyP99Ms": 120},
        "stable": {"requests": 9800, "successRate": 0.999, "latencyP99Ms": 110.5},
    },
    "conditions": [
        {"type": "MetricsAvailable", "status": "True", "reason": "Answered", "message": "prometheus answers"}
    ],
}


# --- status -----------------------------------------------------------------------


def test_status_of_a_progressing_canary_shows_step_weight_changes_decision_clocks_and_conditions(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_route(emulator, "progressing", PROGRESSING)

    assert run_cli(emulator, "status", "progressing") == 0

    out = capsys.readouterr().out
    assert "Name:          progressing" in out
    assert "Namespace:     default" in out
    assert "Status:        ◌ Progressing" in out
    assert "Flags:" not in out
    assert "Step:          2/4" in out
    assert "Weight:        canary 25%, stable 75%" in out
    assert "├── ✔ 10%" in out and "▶ 25%  ← current" in out and "└──   100%" in out
    assert "backend  url http://127.0.0.1:9002  (stable: url http://127.0.0.1:9001)" in out
    assert "Last decision: advance at 2026-12-06T18:59:54Z (6s ago)" in out
    assert "reason  canary within thresholds" in out
    assert "canary  requests 1200, success 99.50%, p99 120 ms" in out
    assert "stable  requests 9800, success 99.90%, p99 110.5 ms" in out
    # Healthy for 40 s of a 1 m interval: the next step (50 %) is due in 20 s; checks every 10 s.
    assert "Next step:     step 3/4 (50%) in 20s (healthy for 40s)" in out
    assert "Next check:    in 4s (every 10s)" in out
    assert "Checks:        12 in this revision (0 failed, 0 without data in a row)" in out
    # One rollback 5 minutes ago counts; the one an hour ago is outside the breaker's 15 minutes.
    assert "Rollbacks:     1 automated in the last 15m" in out
    assert "MetricsAvailable  True    Answered: prometheus answers" in out


def test_status_of_a_rolled_back_frozen_canary_shows_flags_and_no_clocks(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    rolled_back = {
        "phase": "RolledBack",
        "step": 2,
        "weight": 0,
        "frozen": True,
        "rollbacks": [at(800), at(500), at(200), at(60)],
        "lastDecision": {
            "result": "rollback",
            "reason": "success rate 91.00% < 99.00%",
            "at": at(60),
            "canary": {"requests": 300, "successRate": 0.91, "latencyP99Ms": 80},
            "stable": {"requests": 2700, "successRate": 0.999, "latencyP99Ms": 75},
        },
        "conditions": [{"type": "Frozen", "status": "True", "reason": "TooManyRollbacks"}],
    }
    make_route(emulator, "rolled-back", rolled_back)

    assert run_cli(emulator, "status", "rolled-back") == 0

    out = capsys.readouterr().out
    assert "Status:        ✖ RolledBack" in out
    assert "Flags:         ❄ frozen" in out
    assert "Weight:        canary 0%, stable 100%" in out
    assert "▶" not in out  # no current step once rolled back
    assert "Last decision: rollback at 2026-12-06T18:59:00Z (1m00s ago)" in out
    assert "canary  requests 300, success 91.00%, p99 80 ms" in out
    assert "Next step:     - (rollout finished)" in out
    assert "Rollbacks:     4 automated in the last 15m" in out
    assert "Frozen            True    TooManyRollbacks" in out


@pytest.mark.parametrize(
    ("name", "canary", "expected"),
    [
        (
            "pending",
            None,
            [
                "Status:        ○ Pending",
                "Step:          1/4",
                "Last decision: none yet",
                "Next check:    pending",
            ],
        ),
        (
            "paused",
            {"phase": "Progressing", "step": 2, "weight": 50, "paused": True, "lastCheckAt": at(2)},
            ["Flags:         ॥ paused", "▶ 50%", "Next step:     - (॥ paused", "Next check:    in 8s"],
        ),
        (
            "halted",
            {"phase": "Halted", "step": 0, "weight": 10, "noDataChecks": 5, "lastCheckAt": at(45)},
            ["Status:        ⚠ Halted", "halted: waiting for traffic", "overdue by 35s", "5 without data"],
        ),
        (
            "promoted",
            {"phase": "Promoted", "step": 3, "weight": 100},
            ["Status:        ✔ Promoted", "canary 100%, stable 0%", "└── ✔ 100%", "- (rollout finished)"],
        ),
    ],
)
def test_status_tree_in_other_phases(
    emulator: RunningEmulator,
    capsys: pytest.CaptureFixture[str],
    name: str,
    canary: dict[str, Any] | None,
    expected: list[str],
) -> None:
    make_route(emulator, name, canary)

    assert run_cli(emulator, "status", name) == 0

    out = capsys.readouterr().out
    for line in expected:
        assert line in out, out


def test_status_json_prints_status_canary(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_route(emulator, "as-json", PROGRESSING)

    assert run_cli(emulator, "status", "as-json", "-o", "json") == 0

    printed = json.loads(capsys.readouterr().out)
    assert printed == get_route(emulator, "as-json")["status"]["canary"]
    assert printed["weight"] == 25 and printed["lastDecision"]["result"] == "advance"


# --- commands ---------------------------------------------------------------------


def _without_request(route: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(route)
    copied["status"]["canary"].pop("request", None)
    # Every write bumps resourceVersion; nothing else in metadata may change.
    copied["metadata"].pop("resourceVersion", None)
    copied["metadata"].pop("managedFields", None)
    return copied


@pytest.mark.parametrize(
    ("action", "extra", "state"),
    [
        ("promote", [], {"phase": "Progressing", "step": 0, "weight": 10}),
        ("promote", ["--full"], {"phase": "Progressing", "step": 0, "weight": 10}),
        ("abort", [], {"phase": "Progressing", "step": 1, "weight": 25}),
        ("retry", [], {"phase": "RolledBack", "step": 1, "weight": 0}),
        ("pause", [], {"phase": "Progressing", "step": 1, "weight": 25}),
        ("resume", [], {"phase": "Halted", "step": 1, "weight": 25}),
    ],
)
def test_each_command_writes_only_status_canary_request(
    emulator: RunningEmulator,
    capsys: pytest.CaptureFixture[str],
    action: str,
    extra: list[str],
    state: dict[str, Any],
) -> None:
    name = f"cmd-{action}{'-full' if extra else ''}"
    before = make_route(emulator, name, state)

    assert run_cli(emulator, action, name, *extra, "--wait", "0") == 0

    after = get_route(emulator, name)
    request = after["status"]["canary"]["request"]
    assert request["action"] == action
    assert request["full"] is bool(extra)
    assert request["at"] == "2026-12-06T19:00:00Z"
    assert request["id"].startswith("20261206T190000Z-")
    assert _without_request(after) == _without_request(before)
    assert after["spec"] == before["spec"]
    assert after["metadata"].get("generation") == before["metadata"].get("generation")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"route default/{name}: asked to ")
    assert request["id"] in out[0]


def test_request_ids_are_unique(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    make_route(emulator, "unique-ids", {"phase": "Progressing", "step": 0, "weight": 10})
    ids = set()
    for _ in range(3):
        assert run_cli(emulator, "promote", "unique-ids", "--wait", "0") == 0
        ids.add(get_route(emulator, "unique-ids")["status"]["canary"]["request"]["id"])
    assert len(ids) == 3


def _play_operator(
    emulator: RunningEmulator, name: str, result: dict[str, Any], stop: threading.Event
) -> None:
    """What the canary loop does with a request: apply it and record its id as handled."""
    while not stop.is_set():
        canary = get_route(emulator, name)["status"]["canary"]
        request = canary.get("request")
        if request and canary.get("handledRequest") != request["id"]:
            time.sleep(0.3)  # the CLI is already waiting
            kube_call(
                emulator, "patch_status", "Route", "default", name,
                {"canary": {**result, "handledRequest": request["id"]}},
            )  # fmt: skip
            return
        time.sleep(0.05)


def test_command_waits_for_the_operator_and_reports_what_changed(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_route(emulator, "handled", {"phase": "Progressing", "step": 1, "weight": 25})
    stop = threading.Event()
    operator = threading.Thread(
        target=_play_operator,
        args=(emulator, "handled", {"phase": "RolledBack", "step": 1, "weight": 0}, stop),
        daemon=True,
    )
    operator.start()
    try:
        assert run_cli(emulator, "abort", "handled", "--wait", "10") == 0
    finally:
        stop.set()
        operator.join(timeout=10)

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("route default/handled: asked to abort (roll back to 0 %)")
    assert lines[1] == "route default/handled: handled: phase Progressing → RolledBack, weight 25% → 0%"


def test_command_says_when_the_operator_has_not_handled_it_yet(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_route(emulator, "unhandled", {"phase": "Progressing", "step": 1, "weight": 25})
    started = time.monotonic()

    assert run_cli(emulator, "pause", "unhandled", "--wait", "0.6") == 0

    assert time.monotonic() - started >= 0.6
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("route default/unhandled: not handled yet after 0.6s")


@pytest.mark.parametrize(
    ("action", "state", "reason"),
    [
        ("retry", {"phase": "Progressing", "step": 1, "weight": 25}, "is Progressing; retry restarts only"),
        ("promote", {"phase": "Promoted", "step": 3, "weight": 100}, "is already Promoted"),
        ("abort", {"phase": "RolledBack", "step": 0, "weight": 0}, "is already RolledBack"),
        ("pause", {"phase": "Progressing", "paused": True}, "is already paused"),
        ("resume", {"phase": "Progressing"}, "nothing to resume"),
    ],
)
def test_commands_that_make_no_sense_are_refused_up_front_and_write_nothing(
    emulator: RunningEmulator,
    capsys: pytest.CaptureFixture[str],
    action: str,
    state: dict[str, Any],
    reason: str,
) -> None:
    name = f"refuse-{action}"
    before = make_route(emulator, name, state)

    assert run_cli(emulator, action, name) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"error: route default/{name} {captured.err.split(name, 1)[1].strip()}"
    assert reason in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "request" not in get_route(emulator, name)["status"]["canary"]
    assert get_route(emulator, name)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


# --- errors, as a user sees them (real processes) -------------------------------------


def test_unknown_route_is_exit_1_with_one_line(emulator: RunningEmulator) -> None:
    result = run_script("apx", "rollout", "status", "x", kubeconfig=emulator.kubeconfig)
    assert result.returncode == 1
    assert result.stderr == "error: route default/x not found\n"
    assert result.stdout == ""


def test_route_without_canary_is_exit_1_with_one_line(emulator: RunningEmulator) -> None:
    make_route(emulator, "plain", with_canary=False)
    for command in ("status", "promote"):
        result = run_script("apx", "rollout", command, "plain", kubeconfig=emulator.kubeconfig)
        assert result.returncode == 1
        assert result.stderr == "error: route default/plain has no canary (spec.canary is not set)\n"


def test_unreachable_api_is_exit_2_naming_the_server_without_credentials(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}/"}}],
        "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    for argv in (("status", "r"), ("status", "r", "--watch"), ("abort", "r")):
        result = run_script("apx", "rollout", *argv, kubeconfig=kubeconfig)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"error: cannot reach the Kubernetes API at http://127.0.0.1:{port} (connection refused)\n"
        )
        assert "s3cr3t" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_server_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://admin:hunter2@127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = run_script("apx", "rollout", "status", "r", kubeconfig=kubeconfig)
    assert result.returncode == 2
    assert result.stderr == (
        "error: cluster c: the server URL must not contain credentials (https://127.0.0.1:6443); "
        "put them in a user entry\n"
    )


def test_bad_arguments_are_exit_2_from_argparse(emulator: RunningEmulator) -> None:
    for argv in (
        ("rollout", "promote"),
        ("rollout", "explode", "r"),
        ("rollout", "status", "r", "--interval", "x"),
    ):
        result = run_script("apx", *argv, kubeconfig=emulator.kubeconfig)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and "usage:" in result.stderr


def test_watch_refreshes_until_sigint_and_exits_0_without_traceback(emulator: RunningEmulator) -> None:
    make_route(emulator, "watched", PROGRESSING)
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig)}
    # A suite started in the background by a non-interactive shell runs with SIGINT ignored,
    # and a child inherits an ignored signal: the person pressing Ctrl-C has SIGINT delivered.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [str(BIN / "apx"), "rollout", "status", "watched", "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert process.stdout is not None
        blocks = 0
        deadline = time.monotonic() + 20
        while blocks < 3 and time.monotonic() < deadline:
            line = process.stdout.readline()
            blocks += line.startswith("Name:")
        assert blocks == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "\x1b[" not in out  # not a terminal: plain repeated blocks


def test_watch_on_a_terminal_redraws_in_place(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_route(emulator, "redrawn", PROGRESSING)
    args = cli._build_parser().parse_args(
        ["rollout", "status", "redrawn", "-w", "--interval", "0.05", "--kubeconfig", str(emulator.kubeconfig)]
    )
    ticks = iter([NOW, NOW + 1, NOW + 2])

    def clock() -> float:
        try:
            return next(ticks)
        except StopIteration:
            raise KeyboardInterrupt from None  # the third refresh: the person presses Ctrl-C

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.stdout, "isatty", lambda: True)
        assert rollout_cli.run(args, now=clock) == 0
    out = capsys.readouterr().out
    assert out.count(rollout_cli.CLEAR_SCREEN) == 3
    assert "Next check:    in 4s" in out and "Next check:    in 3s" in out


# --- entry points -------------------------------------------------------------------


def test_help_of_both_scripts_lists_rollout(emulator: RunningEmulator) -> None:
    for script in ("apx", "kubectl-apx"):
        result = run_script(script, "--help", kubeconfig=emulator.kubeconfig)
        assert result.returncode == 0
        assert "rollout" in result.stdout
    assert "usage: kubectl apx" in run_script("kubectl-apx", "--help", kubeconfig=emulator.kubeconfig).stdout


def test_kubectl_apx_rollout_status_runs_the_plugin(emulator: RunningEmulator, tmp_path: Path) -> None:
    make_route(emulator, "via-kubectl", PROGRESSING)
    env = {
        **os.environ,
        "KUBECONFIG": str(emulator.kubeconfig),
        "KUBECACHEDIR": str(tmp_path / "cache"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        ["kubectl", "apx", "rollout", "status", "via-kubectl", "-n", "default"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Name:          via-kubectl" in result.stdout
    assert "Status:        ◌ Progressing" in result.stdout


# --- kubeconfig resolution ------------------------------------------------------------


def _two_context_config(tmp_path: Path) -> Path:
    plugin = tmp_path / "token-plugin"
    plugin.write_text(
        "#!/bin/sh\n"
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"from-plugin"}}\'\n'
    )
    plugin.chmod(0o755)
    config = {
        "clusters": [
            {"name": "a", "cluster": {"server": "http://127.0.0.1:1111"}},
            {"name": "b", "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}},
        ],
        "users": [
            {"name": "ua", "user": {"token": "token-a"}},
            {
                "name": "ub",
                "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}},
            },
        ],
        "contexts": [
            {"name": "first", "context": {"cluster": "a", "user": "ua"}},
            {"name": "second", "context": {"cluster": "b", "user": "ub", "namespace": "payments"}},
        ],
        "current-context": "first",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return path


def test_kubeconfig_uses_the_current_context_or_the_one_asked_for(tmp_path: Path) -> None:
    path = _two_context_config(tmp_path)

    current = resolve(str(path))
    assert current.connection.server == "http://127.0.0.1:1111"
    assert current.connection.token == "token-a"
    assert current.namespace == "default"

    chosen = resolve(str(path), "second")
    assert chosen.connection.server == "https://10.0.0.1:6443"
    assert chosen.connection.token == "from-plugin"  # the exec credential plugin ran
    assert chosen.connection.insecure is True
    assert chosen.namespace == "payments"

    with pytest.raises(KubeconfigError, match="context third not found"):
        resolve(str(path), "third")


def test_kubeconfig_merges_the_files_of_kubeconfig_first_one_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _two_context_config(tmp_path)
    second = tmp_path / "other"
    second.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "a", "cluster": {"server": "http://127.0.0.1:2222"}}],
                "users": [{"name": "uc", "user": {}}],
                "contexts": [{"name": "third", "context": {"cluster": "a", "user": "uc"}}],
                "current-context": "third",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}{os.pathsep}{tmp_path / 'missing'}")

    assert resolve().context == "first"  # the first file's current context wins
    third = resolve(None, "third")
    assert third.connection.server == "http://127.0.0.1:1111"  # cluster "a" from the first file


# --- the tree as a pure function -------------------------------------------------------


def test_tree_of_an_async_route_shows_worker_and_policy_changes_and_a_stale_revision() -> None:
    from apx.controllers.models.route import RouteSpec
    from apx.operator.rollout_view import render_status

    spec = RouteSpec.model_validate(
        {
            "productRef": {"name": "ledger"},
            "policyRef": {"name": "ledger-policy", "version": "1.2.0"},
            "match": {"hosts": ["api.example.com"], "pathPrefix": "/exports/"},
            "mode": "async",
            "backend": {"service": {"name": "exporter", "port": 8080}},
            "worker": {"image": "registry.example/exporter:1.0"},
            "canary": {
                "worker": {"image": "registry.example/exporter:1.1"},
                "policyVersion": "1.3.0",
                "steps": [20, 100],
                "interval": "2m",
                "analysis": {"checkInterval": "30s", "window": "2m"},
            },
        }
    )
    route = {
        "metadata": {"name": "exports", "namespace": "ledger"},
        "status": {"canary": {"phase": "Progressing", "revision": "0123456789ab", "step": 0, "weight": 20}},
    }

    lines = render_status(route, spec, NOW)

    text = "\n".join(lines)
    assert "worker   registry.example/exporter:1.1  (stable: registry.example/exporter:1.0)" in text
    assert "policy   ledger-policy@1.3.0  (stable: ledger-policy@1.2.0)" in text
    assert "(status is for 0123456789ab: the operator has not started this one)" in text
    assert "Next step:     step 2/2 (100%) after 2m00s of passing checks (none passing yet)" in text
    assert "Next check:    pending (every 30s)" in text


def test_watch_rides_out_an_api_blip_after_the_first_tree(
    emulator: RunningEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from apx.controllers.appliers.kube import Unavailable

    make_route(emulator, "blip", PROGRESSING)
    real_get = KubeClient.get
    calls = {"n": 0}

    async def flaky_get(self: KubeClient, kind: str, namespace: str | None, name: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Unavailable(0, "unreachable") from ConnectionRefusedError()
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C after the tree came back
        return await real_get(self, kind, namespace, name)

    monkeypatch.setattr(KubeClient, "get", flaky_get)
    args = cli._build_parser().parse_args(
        ["rollout", "status", "blip", "-w", "--interval", "0.01", "--kubeconfig", str(emulator.kubeconfig)]
    )

    assert rollout_cli.run(args, now=lambda: NOW) == 0

    out = capsys.readouterr().out
    assert out.count("Name:          blip") == 2
    assert f"error: cannot reach the Kubernetes API at {emulator.url} (" in out
    assert "(retrying)" in out
