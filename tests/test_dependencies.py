"""Reproducible installs: the lock, the constraints and pyproject's lower bounds agree.

Reads the three files; nothing is installed or downloaded. ``scripts/lock.sh`` regenerates the
lock from the tested environment.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_dependency_within_its_bounds() -> None:
    lock = _pins(ROOT / "requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in requirements.lock (run scripts/lock.sh)"
        assert requirement.specifier.contains(lock[name], prereleases=True), (text, lock[name])
        assert any(spec.operator in (">=", "==", "~=") for spec in requirement.specifier), (
            f"{text}: give a lower bound"
        )


def test_lock_agrees_with_constraints() -> None:
    lock = _pins(ROOT / "requirements.lock")
    # Constraints may pin optional extras that this environment does not install.
    for name, version in _pins(ROOT / "constraints.txt").items():
        if name in lock:
            assert lock[name] == version, f"{name}: constraints {version}, lock {lock[name]}"
