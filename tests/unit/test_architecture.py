"""Layering rules: the pure core imports no I/O, clock or framework; `operator/` never shadows the stdlib."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE_CORE = ROOT / "controllers"
# The appliers (I/O) live in controllers/appliers/ and the canary provider
# clients in controllers/providers/; everything else under controllers/ is pure.
IMPURE_FOLDERS = {"appliers", "providers"}
FORBIDDEN = {
    "kopf",
    "kubernetes",
    "kubernetes_asyncio",
    "redis",
    "google",
    "grpc",
    "aiohttp",
    "requests",
    "httpx",
    "urllib3",
    "socket",
    "time",
    "datetime",
    "random",
    "asyncio",
    "subprocess",
    "prometheus_client",
    "opentelemetry",
    "threading",
    "os",
}
# Allowed even though they share a top-level name with an I/O package: the
# protobuf runtime and the Envoy API messages are data structures.
ALLOWED_PREFIXES = ("google.protobuf",)


def _pure_modules() -> list[Path]:
    return [
        p for p in PURE_CORE.rglob("*.py") if not (set(p.relative_to(PURE_CORE).parts[:-1]) & IMPURE_FOLDERS)
    ]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def test_pure_core_imports_no_clients_no_clock_no_kopf() -> None:
    violations = []
    modules = _pure_modules()
    assert len(modules) > 10
    for module in modules:
        for name in _imports(module):
            if name.startswith(ALLOWED_PREFIXES):
                continue
            if name.split(".")[0] in FORBIDDEN:
                violations.append(f"{module.relative_to(ROOT)} imports {name}")
    assert not violations, "\n".join(violations)


def test_every_module_starts_with_a_docstring() -> None:
    missing = []
    for folder in ("controllers", "operator", "dataplane", "e2e", "hack", "bench"):
        for module in (ROOT / folder).rglob("*.py"):
            if ".venv" in module.parts:
                continue
            tree = ast.parse(module.read_text())
            if ast.get_docstring(tree) is None and module.read_text().strip():
                missing.append(str(module.relative_to(ROOT)))
    assert not missing, missing


def test_operator_folder_never_shadows_the_standard_library_operator_module() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    code = "import operator, sys; print(operator.__file__); print(hasattr(operator, 'itemgetter'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    path, has_itemgetter = out.stdout.split()
    assert has_itemgetter == "True"
    assert not path.startswith(str(ROOT))


def test_every_package_folder_is_installed() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for directory in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if "__pycache__" in directory.parts or "tests" in directory.relative_to(ROOT).parts[1:]:
                continue
            if any(directory.glob("*.py")):
                rel = directory.relative_to(ROOT / folder).parts
                expected.add(".".join((package, *rel)))
    assert expected <= declared, (
        f"folders with modules missing from pyproject packages: {expected - declared}"
    )
