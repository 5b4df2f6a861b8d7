"""Every console script answers ``--version`` with the distribution's version, and every
metrics/health listener has a host flag with a documented default.

The scripts run as subprocesses from the venv's bin/ (as installed by pyproject's
[project.scripts]); the host flags are checked through each service's own parser.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from apx.dataplane.gateway.config import parse_config as gateway_config
from apx.dataplane.ratelimit.main import build_parser as ratelimit_parser
from apx.dataplane.worker.config import parse_config as worker_config
from apx.operator.flags import build_parser as operator_parser
from apx.operator.flags import settings_from_args, url_host

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
# kubectl runs kubectl-apx for `kubectl apx …`, so it names itself that way.
PROG = {"kubectl-apx": "kubectl apx"}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env={"PATH": str(BIN)}
    )


def test_every_console_script_is_checked() -> None:
    assert SCRIPTS == ["apx", "apx-gateway", "apx-operator", "apx-ratelimit", "apx-worker", "kubectl-apx"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_prints_the_distribution_version(script: str) -> None:
    done = run(str(BIN / script), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{PROG.get(script, script)} {version('apx')}\n"
    assert version("apx") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize(
    ("script", "flags"),
    [
        ("apx-operator", ["--metrics-host", "--liveness-host"]),
        ("apx-ratelimit", ["--metrics-host"]),
        ("apx-gateway", ["--metrics-host"]),
        ("apx-worker", ["--metrics-host"]),
    ],
)
def test_help_documents_the_listener_host_flags(script: str, flags: list[str]) -> None:
    done = run(str(BIN / script), "--help")
    assert done.returncode == 0, done.stderr
    for flag in flags:
        assert flag in done.stdout
    assert "Traceback" not in done.stderr


def test_operator_listener_hosts_default_to_every_address_and_follow_flags_and_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APX_METRICS_HOST", raising=False)
    monkeypatch.delenv("APX_LIVENESS_HOST", raising=False)
    defaults = settings_from_args(operator_parser().parse_args([]))
    assert (defaults.metrics_host, defaults.liveness_host) == ("0.0.0.0", "0.0.0.0")
    monkeypatch.setenv("APX_LIVENESS_HOST", "127.0.0.1")
    chosen = settings_from_args(operator_parser().parse_args(["--metrics-host", "::1"]))
    assert (chosen.metrics_host, chosen.liveness_host) == ("::1", "127.0.0.1")
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"


def test_ratelimit_metrics_host_defaults_to_every_address_and_follows_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APX_METRICS_HOST", raising=False)
    assert ratelimit_parser().parse_args([]).metrics_host == "0.0.0.0"
    assert ratelimit_parser().parse_args(["--metrics-host", "127.0.0.1"]).metrics_host == "127.0.0.1"
    monkeypatch.setenv("APX_METRICS_HOST", "10.0.0.5")
    assert ratelimit_parser().parse_args([]).metrics_host == "10.0.0.5"


def test_gateway_metrics_host_defaults_to_the_listen_host() -> None:
    env = {"APX_REDIS_URL": "redis://127.0.0.1:6379/0"}
    default = gateway_config(["--host", "127.0.0.2"], env)
    assert default.metrics_host is None and default.host == "127.0.0.2"
    assert gateway_config(["--metrics-host", "127.0.0.3"], env).metrics_host == "127.0.0.3"


def test_worker_metrics_host_flag_and_env() -> None:
    argv = [
        "--subscriptions",
        "s1",
        "--upstream-url",
        "http://127.0.0.1:9",
        "--redis-url",
        "redis://127.0.0.1",
    ]
    assert worker_config(argv, {}).metrics_host == "0.0.0.0"
    assert worker_config(argv, {"APX_METRICS_HOST": "127.0.0.4"}).metrics_host == "127.0.0.4"
    assert worker_config([*argv, "--metrics-host", "127.0.0.5"], {}).metrics_host == "127.0.0.5"
