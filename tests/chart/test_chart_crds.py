"""The chart renders the generated CRDs as templates: current, upgradable, kept, and valid
on every Kubernetes version the chart admits.

crds/*.yaml is generated from the models (`make gen`); hack/sync-chart-crds.py copies them
into charts/apx/files/crds/ (byte-identical) and charts/apx/files/crds-1.27/ (without the CEL
rule fields 1.27 does not know). templates/crds.yaml renders them, honouring crds.enabled
and crds.keep. The chart must not have a crds/ folder: Helm installs that one itself and
never upgrades it, and its CRDs would collide with the templated ones.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chartkit import CHART_DIR, ROOT, render

SOURCE = ROOT / "crds"
COPY = CHART_DIR / "files" / "crds"
LEGACY = CHART_DIR / "files" / "crds-1.27"
FIX = "run `python hack/sync-chart-crds.py` (or `make gen`)"
NAMES = ["policybundles.apx.dev", "products.apx.dev", "routes.apx.dev"]


def sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart_crds", ROOT / "hack" / "sync-chart-crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chart_kube_versions() -> list[str]:
    """Every minor version from Chart.yaml's kubeVersion lower bound to the newest known one."""
    constraint = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*1\.(\d+)(\.\d+)?(-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r}: this test understands `>=1.N[.P][-0]` only"
    newest = max(
        int(m.group(1))
        for name in kubernetes_validate.utils.all_versions()
        if (m := re.fullmatch(r"1\.(\d+)\.\d+", name))
    )
    return [f"1.{minor}" for minor in range(int(match.group(1)), newest + 1)]


def rendered_crds(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in render(values).of_kind("CustomResourceDefinition")}


def test_chart_crd_files_are_current_copies_of_the_generated_crds() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, "crds/ is empty: run `make gen`"
    assert sorted(copy) == sorted(source), f"charts/apx/files/crds/ holds other files than crds/: {FIX}"
    stale = sorted(name for name in source if copy[name] != source[name])
    assert not stale, f"charts/apx/files/crds/ differs from crds/ for {stale}: {FIX}"
    module = sync_module()
    legacy = {p.name: p.read_text() for p in LEGACY.glob("*.yaml")}
    assert sorted(legacy) == sorted(source), FIX
    for name, data in source.items():
        assert legacy[name] == module.for_kubernetes_1_27(data.decode()), f"files/crds-1.27/{name}: {FIX}"


def test_chart_has_no_crds_folder_helm_would_install_without_upgrading() -> None:
    assert not (CHART_DIR / "crds").exists()


def test_crds_are_rendered_as_templates_with_the_keep_policy_by_default() -> None:
    crds = rendered_crds()
    assert sorted(crds) == NAMES
    generated = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in SOURCE.glob("*.yaml")
    }
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert crd["spec"] == generated[name]["spec"], f"{name}: the template changed the CRD's spec"


def test_crds_keep_false_lets_helm_uninstall_delete_them() -> None:
    for crd in rendered_crds({"crds": {"keep": False}}).values():
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_enabled_false_renders_no_crd() -> None:
    assert rendered_crds({"crds": {"enabled": False}}) == {}


def test_notes_say_who_upgrades_the_crds() -> None:
    assert "`helm upgrade` upgrades them" in render().notes
    assert "kubectl apply --server-side" in render({"crds": {"enabled": False}}).notes


def test_template_picks_the_1_27_set_below_kubernetes_1_28() -> None:
    # helm-python-sdk renders for one fixed version (newer than 1.28), so the branch is
    # checked in the template's text and the set itself below.
    template = (CHART_DIR / "templates" / "crds.yaml").read_text()
    assert 'semverCompare "<1.28.0-0" .Capabilities.KubeVersion.Version' in template
    assert '$folder = "files/crds-1.27"' in template


def test_crds_validate_on_every_kubernetes_version_the_chart_admits() -> None:
    versions = chart_kube_versions()
    assert versions[0] == "1.27" and len(versions) > 5
    failures = []
    for version in versions:
        folder = LEGACY if version == "1.27" else COPY
        for path in sorted(folder.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            try:
                kubernetes_validate.validate(crd, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{version} {path.relative_to(CHART_DIR)}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_the_full_crds_do_not_validate_on_1_27_so_the_1_27_set_is_needed() -> None:
    # Proves the validation above can fail: 1.27's ValidationRule has no fieldPath/reason.
    crd = yaml.safe_load((COPY / "apx.dev_products.yaml").read_text())
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.27", strict=True)


def test_sync_script_copies_new_files_removes_stale_ones_and_strips_1_28_rule_fields(tmp_path: Path) -> None:
    module = sync_module()
    source, target, legacy = tmp_path / "crds", tmp_path / "chart-crds", tmp_path / "chart-crds-1.27"
    source.mkdir()
    target.mkdir()
    rule = {"rule": "self > 0", "message": "positive", "fieldPath": ".a", "reason": "FieldValueInvalid"}
    (source / "a.yaml").write_text(
        yaml.safe_dump({"kind": "CustomResourceDefinition", "x-kubernetes-validations": [rule]})
    )
    (target / "old.yaml").write_text("stale\n")
    changes = module.sync(source, target, legacy)
    assert changes == ["removed old.yaml", "copied a.yaml", "1.27/copied a.yaml"]
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml"]
    assert yaml.safe_load((legacy / "a.yaml").read_text())["x-kubernetes-validations"] == [
        {"rule": "self > 0", "message": "positive"}
    ]
    assert module.sync(source, target, legacy) == []
