"""The hash-pinned lock files match pyproject.toml, and the image and CI install from them."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;\s*(.*?))?\s*\\?$")
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", REQUIREMENTS / "lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = load_lock_module()
LOCK_FILES = [*LOCK.LOCKS, LOCK.BUILD]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, set[str]]:
    """Package name -> the versions pinned for it (two when a marker splits them)."""
    found: dict[str, set[str]] = {}
    for line in (REQUIREMENTS / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            found.setdefault(normalize(match[1]), set()).add(match[2])
    return found


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = NAME.match(requirement)
        assert match, requirement
        names.add(normalize(match[1]))
    return names


@pytest.mark.parametrize("lock", LOCK_FILES)
def test_lock_was_made_from_the_current_pyproject(lock: str) -> None:
    """Editing a dependency, an extra CI installs or the build backend without relocking fails."""
    first = (REQUIREMENTS / lock).read_text().splitlines()[0]
    assert first.startswith(LOCK.DIGEST_PREFIX), f"{lock} has no inputs digest header"
    expected = LOCK.inputs_digest((ROOT / "pyproject.toml").read_text(), lock)
    assert first.removeprefix(LOCK.DIGEST_PREFIX) == expected, (
        f"pyproject.toml changed since deploy/requirements/{lock} was made: "
        f"run `{LOCK.COMMAND}` and commit the result"
    )


def test_the_digest_changes_with_each_input() -> None:
    """A new dependency, a changed extra or build backend each change the digest of its lock."""
    text = (ROOT / "pyproject.toml").read_text()
    base = {lock: LOCK.inputs_digest(text, lock) for lock in LOCK_FILES}
    added = text.replace(
        '"prometheus-client>=', '"some-new-package>=1",\n    "prometheus-client>=', 1
    )
    assert LOCK.inputs_digest(added, "runtime.txt") != base["runtime.txt"]
    assert LOCK.inputs_digest(added, "dev.txt") != base["dev.txt"]
    ci_changed = text.replace('ci = ["uv>=0.5"', 'ci = ["uv>=0.6"', 1)
    assert ci_changed != text
    assert LOCK.inputs_digest(ci_changed, "dev.txt") != base["dev.txt"]
    assert LOCK.inputs_digest(ci_changed, "runtime.txt") == base["runtime.txt"]
    build_changed = text.replace('requires = ["hatchling>=1.25"]', 'requires = ["hatchling>=1.26"]')
    assert build_changed != text
    assert LOCK.inputs_digest(build_changed, LOCK.BUILD) != base[LOCK.BUILD]
    assert LOCK.inputs_digest(build_changed, "runtime.txt") == base["runtime.txt"]


def test_locks_pin_every_declared_requirement_with_hashes() -> None:
    """Each declared name is pinned (==) in its lock, and every pin carries a sha256 hash."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    declared = {
        "runtime.txt": requirement_names(project["dependencies"]),
        "dev.txt": requirement_names(
            project["dependencies"]
            + [
                r
                for extra in LOCK.LOCKS["dev.txt"]
                for r in project["optional-dependencies"][extra]
            ]
        ),
        LOCK.BUILD: requirement_names(pyproject["build-system"]["requires"]),
    }
    for lock, names in declared.items():
        missing = names - pins(lock).keys()
        assert not missing, f"{lock} lacks {sorted(missing)}"
        lines = (REQUIREMENTS / lock).read_text().splitlines()
        for index, line in enumerate(lines):
            if PIN.match(line):
                assert lines[index + 1].strip().startswith("--hash=sha256:"), line


def test_dev_lock_holds_the_runtime_versions() -> None:
    """The tests run against exactly the versions the image ships; CI adds build.txt to them."""
    runtime, dev, build = pins("runtime.txt"), pins("dev.txt"), pins(LOCK.BUILD)
    differ = {name: (v, dev.get(name)) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, differ
    shared = {name: (v, dev[name]) for name, v in build.items() if name in dev and dev[name] != v}
    assert not shared, shared


def pip_commands(path: Path) -> list[str]:
    """Each pip install or pip wheel command of a script or Dockerfile, continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for command in line.split("&&"):
            if re.search(
                r"pip (?:--python \S+ )?(install|wheel)", command
            ) and not command.lstrip().startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def test_ci_and_image_install_only_from_the_locks() -> None:
    """Each pip command in CI and the Dockerfile is hash-checked or installs no dependencies."""
    for path in (ROOT / ".ci" / "run", ROOT / ".ci" / "deploy-checks", ROOT / "Dockerfile"):
        commands = pip_commands(path)
        assert commands, f"no pip command in {path.name}"
        for command in commands:
            locked = "--require-hashes -r deploy/requirements/" in command
            assert locked or "--no-deps" in command, f"{path.name}: {command}"
            builds = "pip wheel" in command or command.endswith(" .")
            # Otherwise pip fetches the newest build backend into an isolated environment.
            assert not builds or "--no-build-isolation" in command, f"{path.name}: {command}"
    ci = pip_commands(ROOT / ".ci" / "run")
    assert any("-r deploy/requirements/dev.txt -r deploy/requirements/build.txt" in c for c in ci)
    assert any(c.endswith("-e .") for c in ci)
    image = pip_commands(ROOT / "Dockerfile")
    assert any("-r deploy/requirements/runtime.txt" in c for c in image)
    assert any("-r deploy/requirements/build.txt" in c for c in image)
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/requirements/runtime.txt" in dockerignore
    assert "!deploy/requirements/build.txt" in dockerignore
