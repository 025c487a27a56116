"""The package is the product: what `pip install .` ships and what `loyalty_ops` may import.

- The production install does not pull the development stack: moto is only in the `dev` extra, and only
  `loyalty_ops` itself is packaged (devstack/, the tests and the benchmarks stay in the checkout).
- No module of `loyalty_ops/` imports the development stack (devstack, moto, the sample data), read from
  the source of every module and checked again on a real import of the definitions.
- No module of `loyalty_ops/` imports Dagster's private modules (`dagster._core`, `dagster._utils`, ...):
  a Dagster upgrade must not be able to break paging or the history readers silently.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "loyalty_ops"
DEVELOPMENT_ONLY = ("devstack", "moto", "loyalty_ops.devstack", "loyalty_ops.lib.sample_data")


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "[<>=!~ @":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """Every module a file of the package imports, as absolute names (relative imports resolved against its
    package); ``source`` stands in for the file's text."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package_parts = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from dagster import _core` names a private module as well
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _package_modules() -> list[Path]:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50, f"expected the whole package under {PACKAGE}, found {len(modules)} modules"
    return modules


def test_runtime_dependencies_do_not_include_the_development_stack():
    project = _pyproject()["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert "dagster" in runtime and "boto3" in runtime, runtime  # the parser reads real names
    assert "moto" not in runtime, f"moto is a runtime dependency: {sorted(runtime)}"
    extras = project["optional-dependencies"]
    assert "moto" in {_requirement_name(r) for r in extras["dev"]}, extras["dev"]
    assert "loyalty-ops[dev]" in {r.replace("_", "-").lower() for r in extras["test"]}, extras["test"]


def test_only_loyalty_ops_is_packaged():
    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["loyalty_ops", "loyalty_ops.*"], find
    assert not (PACKAGE / "devstack").exists()
    assert not (PACKAGE / "lib" / "sample_data.py").exists()
    assert (REPO / "devstack" / "run_local.py").is_file()
    assert (REPO / "devstack" / "sample_data.py").is_file()


def test_loyalty_ops_imports_nothing_from_the_development_stack():
    offending = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in _package_modules()
        for line, module in _imported_modules(path)
        if any(module == name or module.startswith(name + ".") for name in DEVELOPMENT_ONLY)
    ]
    assert offending == []


def test_loading_the_definitions_loads_no_development_module(tmp_path):
    # A fresh interpreter outside the checkout, so only the installed package is importable.
    probe = (
        "import sys, loyalty_ops.definitions\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('devstack', 'moto'))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout[-3000:]


def test_loyalty_ops_imports_no_private_dagster_module():
    offending = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in _package_modules()
        for line, module in _imported_modules(path)
        if module.split(".")[0].startswith("dagster") and any(part.startswith("_") for part in module.split(".")[1:])
    ]
    assert offending == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from dagster._core.events import DagsterEventType\n", "dagster._core.events"),
        ("from dagster import _core\n", "dagster._core"),
        ("import dagster._utils\n", "dagster._utils"),
        ("import importlib\nimportlib.import_module('dagster._core.storage')\n", "dagster._core.storage"),
        ("from ...devstack import run_local\n", "loyalty_ops.devstack"),
        ("from ..sample_data import create_sample_schema\n", "loyalty_ops.lib.sample_data"),
    ],
)
def test_the_import_walker_sees_each_form_of_import(source, expected):
    # as if the source were loyalty_ops/lib/backup/probe.py (relative imports resolve against its package)
    modules = [name for _, name in _imported_modules(PACKAGE / "lib" / "backup" / "probe.py", source)]
    assert expected in modules, modules
