"""Layering rules: the pure core imports no I/O, clock or framework; `apx/operator/` never shadows the stdlib.

Between the operator and the dataplane: the dataplane imports neither the
operator nor the controllers, only ``apx.contracts`` (and ``apx.runtime``),
which import nothing else of the project; Redis key strings are built only in
``apx.contracts.redis_keys``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "apx"
PURE_CORE = PACKAGE / "controllers"
# The appliers (I/O) live in apx/controllers/appliers/ and the canary provider
# clients in apx/controllers/providers/; everything else under controllers/ is pure.
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
    for folder in ("apx", "e2e", "hack", "bench"):
        for module in (ROOT / folder).rglob("*.py"):
            if ".venv" in module.parts:
                continue
            tree = ast.parse(module.read_text())
            if ast.get_docstring(tree) is None and module.read_text().strip():
                missing.append(str(module.relative_to(ROOT)))
    assert not missing, missing


def test_operator_folder_never_shadows_the_standard_library_operator_module() -> None:
    assert not (PACKAGE / "operator" / "__init__.py").exists()
    assert not (ROOT / "operator").exists()
    code = "import operator, sys; print(operator.__file__); print(hasattr(operator, 'itemgetter'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    path, has_itemgetter = out.stdout.split()
    assert has_itemgetter == "True"
    assert not path.startswith(str(ROOT))


def test_every_package_folder_is_installed_and_the_test_support_is_not() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = config["packages"]["find"]
    assert found["include"] == ["apx", "apx.*"]
    # No package-dir mapping: the source tree is the import tree, so mypy and import graphs read it as is.
    assert "package-dir" not in config
    assert not (ROOT / "apx" / "e2e").exists()
    # The wheel leaves e2e/ out, so no product module may import it.
    importing = []
    for module in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            if any(name == "e2e" or name.startswith("e2e.") for name in names):
                importing.append(str(module.relative_to(ROOT)))
    assert not importing, importing


def _project_imports(path: Path, package: str) -> list[str]:
    """The ``apx`` modules ``path`` imports (a relative import counts as ``package`` itself)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("apx")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(package)  # a relative import stays inside the module's own package
            elif node.module and node.module.startswith("apx"):
                found.append(node.module)
    return found


def _modules(folder: str) -> list[Path]:
    return [p for p in (PACKAGE / folder).rglob("*.py") if "__pycache__" not in p.parts]


def test_the_dataplane_imports_neither_the_operator_nor_the_controllers() -> None:
    violations = [
        f"{module.relative_to(ROOT)} imports {name}"
        for module in _modules("dataplane")
        for name in _project_imports(module, "apx.dataplane")
        if name.split(".")[:2] in (["apx", "operator"], ["apx", "controllers"])
    ]
    assert len(_modules("dataplane")) > 20
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("folder", ["contracts", "runtime"])
def test_shared_packages_import_nothing_else_of_the_project(folder: str) -> None:
    own = f"apx.{folder}"
    violations = [
        f"{module.relative_to(ROOT)} imports {name}"
        for module in _modules(folder)
        for name in _project_imports(module, own)
        if name != own and not name.startswith(own + ".")
    ]
    assert _modules(folder)
    assert not violations, "\n".join(violations)


def test_contracts_are_pure_no_clients_no_clock() -> None:
    violations = [
        f"{module.relative_to(ROOT)} imports {name}"
        for module in _modules("contracts")
        for name in _imports(module)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not violations, "\n".join(violations)


# A Redis key of APX starts with its prefix and a key family: "apx:rules:", "apx:c:{", "apx:req:", ...
_KEY_LITERAL = re.compile(r"^apx:[a-z]+[:{]")
KEY_BUILDER = PACKAGE / "contracts" / "redis_keys.py"
# Product code, its end-to-end suites and benchmarks; the unit tests may spell keys out to pin the contract.
KEY_SCAN_FOLDERS = ("apx", "e2e", "bench", "hack")


def _key_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of string literals and f-string openings that look like a Redis key, docstrings aside."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    # The pieces of an f-string are judged with the f-string, not again on their own.
    skipped = docstrings | {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                text = head.value
            elif isinstance(head, ast.FormattedValue) and "REDIS_PREFIX" in ast.unparse(head.value):
                parts = [v.value for v in node.values[1:] if isinstance(v, ast.Constant)]
                text = "apx" + "".join(str(part) for part in parts)
        if text is not None and _KEY_LITERAL.match(text):
            found.append((node.lineno, text))
    return found


def test_redis_key_strings_are_built_only_in_contracts_redis_keys() -> None:
    assert _key_strings(KEY_BUILDER), "the scan no longer recognises the key builder's own strings"
    violations = [
        f"{module.relative_to(ROOT)}:{line}: {text!r}"
        for folder in KEY_SCAN_FOLDERS
        for module in (ROOT / folder).rglob("*.py")
        if module != KEY_BUILDER and "__pycache__" not in module.parts
        for line, text in _key_strings(module)
    ]
    assert not violations, "build Redis keys with apx.contracts.redis_keys:\n" + "\n".join(violations)


def test_the_key_scan_finds_literals_and_prefix_f_strings_but_not_docstrings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Reads apx:rules:{p}:current."""\n'
        'a = f"apx:rules:{{{p}}}:current"\n'
        'b = f"{names.REDIS_PREFIX}:c:{{{p}/*"\n'
        'c = "apx:req:"\n'
        'd = "apx:secret@host"\n'
    )
    assert [line for line, _ in _key_strings(module)] == [2, 3, 4]
