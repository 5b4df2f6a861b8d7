"""The image: what the Dockerfile declares, and its install steps run for real.

The Dockerfile's build stage runs hack/image-install.sh; the slow test runs that same
script into a clean virtual environment in a temporary directory and calls every console
script from it (`--version`, `--help`), which is what the image's entry points are. The
image build itself (`make image`: mmdebstrap base + buildah) is described in hack/IMAGE.md;
it needs root and Debian's package mirror, so it is not part of the test suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def instructions(keyword: str) -> list[str]:
    """Arguments of every ``keyword`` instruction, continuation lines joined."""
    logical = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in logical.splitlines() if line.startswith(f"{keyword} ")]


def test_dockerfile_is_multi_stage_from_a_documented_base() -> None:
    assert instructions("ARG")[0] == "BASE_IMAGE=apx-base:bookworm"
    assert instructions("FROM") == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert "RUN bash hack/image-install.sh /src /opt/apx" in DOCKERFILE
    assert "COPY --from=build /opt/apx /opt/apx" in DOCKERFILE


def test_image_runs_as_the_chart_s_numeric_non_root_user() -> None:
    [user] = instructions("USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    values = yaml.safe_load((ROOT / "charts" / "apx" / "values.yaml").read_text())
    assert (values["securityContext"]["runAsUser"], values["securityContext"]["runAsGroup"]) == (uid, gid)


def test_image_is_read_only_root_filesystem_friendly() -> None:
    env = " ".join(instructions("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env and instructions("WORKDIR")[-1] == "/tmp"
    assert "compileall" in (ROOT / "hack" / "image-install.sh").read_text()


def test_dockerignore_lets_through_exactly_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for source in instructions("COPY"):
        if source.startswith("--from"):
            continue
        copied.update(part.rstrip("/") for part in source.split()[:-1])
    assert copied == allowed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_image_install_steps_give_working_console_scripts(tmp_path: Path) -> None:
    venv = tmp_path / "apx"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "hack" / "image-install.sh"), str(ROOT), str(venv)],
        capture_output=True,
        text=True,
        timeout=220,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"apx {version('apx')}")
    assert not (ROOT / "build").exists(), "the install wrote into the source tree"
    assert not (venv / "bin" / "pip").exists(), "pip is left in the image"
    # Bytecode compiled at build time: the read-only image never writes any.
    compiled = list((venv / "lib").glob("python3*/site-packages/apx/operator/__pycache__/cli.*.pyc"))
    assert compiled
    # The wheel holds the product only: the e2e suites, the emulated Kubernetes API and the
    # service launchers stay in the repository.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    assert (site / "apx" / "operator" / "xds" / "server.py").exists()
    assert not (site / "e2e").exists() and not (site / "apx" / "e2e").exists()
    assert not list(site.rglob("kubeemu*")), "test support was installed"
    (record,) = site.glob("apx-*.dist-info/RECORD")
    lines = [line for line in record.read_text().splitlines() if line and not line.startswith("../")]
    top = {line.split("/")[0] for line in lines}
    assert {t for t in top if not t.startswith("apx-")} == {"apx"}, top
    run_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    for script in SCRIPTS:
        for flag in ("--version", "--help"):
            result = subprocess.run(
                [str(venv / "bin" / script), flag], capture_output=True, text=True, timeout=60, env=run_env
            )
            assert result.returncode == 0, f"{script} {flag}: {result.stderr[-2000:]}"
            assert "Traceback" not in result.stderr
            if flag == "--version":
                assert re.fullmatch(
                    rf"(kubectl apx|{re.escape(script)}) {re.escape(version('apx'))}\n", result.stdout
                )
