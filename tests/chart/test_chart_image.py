"""The chart's default image is the one this repository builds, and the release workflow
publishes exactly that: apx/apx tagged with Chart.yaml's appVersion (= pyproject's version).

`make image` (hack/image-build.sh) tags apx/apx:<appVersion>; .github/workflows/release.yaml
builds it with `make image` on a tag, pushes it, and packages/pushes the chart as OCI.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import yaml
from chartkit import CHART_DIR, DATAPLANE, ROOT, container, merged, render

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
DIGEST = "sha256:" + "ab" * 32
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"


def images(values: dict[str, Any]) -> set[str]:
    rendered = render(merged(DATAPLANE, values))
    return {container(workload)["image"] for workload in rendered.workloads()}


def test_app_version_is_the_distribution_version_the_image_is_built_from() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert CHART["appVersion"] == project["version"]


def test_default_image_is_apx_apx_at_the_app_version() -> None:
    assert images({}) == {f"apx/apx:{CHART['appVersion']}"}


def test_image_build_script_tags_the_chart_default() -> None:
    script = (ROOT / "hack" / "image-build.sh").read_text()
    assert 'image="${IMAGE:-apx/apx}"' in script
    assert "appVersion" in script and 'tag="${IMAGE_TAG:-$app_version}"' in script


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"image": {"repository": "registry.mycorp.internal/apx/apx"}},
            "registry.mycorp.internal/apx/apx:0.1.0",
        ),
        ({"image": {"tag": "0.2.0-rc.1"}}, "apx/apx:0.2.0-rc.1"),
        ({"image": {"tag": "0.2.0", "digest": DIGEST}}, f"apx/apx@{DIGEST}"),
    ],
)
def test_image_repository_tag_and_digest_are_overridable(values: dict[str, Any], expected: str) -> None:
    assert images(values) == {expected.replace("0.1.0", CHART["appVersion"])}


def test_pull_policy_applies_to_every_pod() -> None:
    rendered = render(merged(DATAPLANE, {"image": {"pullPolicy": "Always"}}))
    assert {container(w)["imagePullPolicy"] for w in rendered.workloads()} == {"Always"}


def test_a_digest_that_is_not_sha256_is_refused() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match="/image/digest"):
        render({"image": {"digest": "latest"}})


def test_release_workflow_builds_with_make_image_and_pushes_image_and_oci_chart_on_a_tag() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    trigger = workflow.get("on", workflow.get(True))
    assert trigger["push"]["tags"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "make image" in commands
    assert "helm package charts/apx" in commands and "--app-version" in commands
    assert "helm push" in commands and "oci://" in commands
    assert "podman push" in commands
    assert (ROOT / "Dockerfile").is_file()
    makefile = (ROOT / "Makefile").read_text()
    assert "\nimage:\n\t@bash hack/image-build.sh\n" in makefile
    assert "-f Dockerfile" in (ROOT / "hack" / "image-build.sh").read_text()
