"""Regenerate the hash-pinned lock files from pyproject.toml: python deploy/requirements/lock.py

runtime.txt holds the runtime dependencies (what the image installs); dev.txt holds those at the
same versions plus the extras CI installs; build.txt holds what building the package takes
(pyproject's [build-system] requires, plus editables for CI's editable install), at dev.txt's
versions where they share a package: the image's build stage and CI install it and then build
without build isolation. All are universal resolutions (any OS and CPU, Python 3.11 and
later), so one file serves x86_64 and aarch64 alike, with the hash of every published file of
each pinned version. Each file's first line carries a digest of the pyproject.toml fields it
was made from, so a test can tell when pyproject.toml changed and the locks did not.

Needs uv (in dev.txt; `pip install uv` otherwise) and the package index.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYPROJECT = ROOT / "pyproject.toml"
PYTHON_VERSION = "3.11"
COMMAND = "python deploy/requirements/lock.py"
DIGEST_PREFIX = "# inputs-sha256: "

BUILD = "build.txt"
# What hatchling asks for besides itself to build the editable install CI makes (`pip install
# --no-build-isolation -e .`).
EDITABLE_BUILD_REQUIRES = ["editables"]
# Lock file name -> the extras it covers (runtime: none). build.txt is made from [build-system].
LOCKS: dict[str, tuple[str, ...]] = {
    "runtime.txt": (),
    "dev.txt": ("test", "embedded", "ci"),
}


def inputs_digest(pyproject_text: str, lock: str) -> str:
    """The digest of the pyproject.toml fields one lock file is made from."""
    pyproject = tomllib.loads(pyproject_text)
    inputs: dict[str, object] = {"python": PYTHON_VERSION}
    if lock == BUILD:
        inputs["build-requires"] = [
            *pyproject["build-system"]["requires"],
            *EDITABLE_BUILD_REQUIRES,
        ]
    else:
        project = pyproject["project"]
        optional = project.get("optional-dependencies", {})
        inputs["requires-python"] = project.get("requires-python", "")
        inputs["dependencies"] = project.get("dependencies", [])
        inputs["extras"] = {name: optional.get(name) for name in LOCKS[lock]}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def compile_lock(name: str, constraint: Path | None) -> None:
    """Resolve one lock with uv and write it with the digest header."""
    pyproject_text = PYPROJECT.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        if name == BUILD:
            source = Path(tmp) / "build-system.in"
            requires = tomllib.loads(pyproject_text)["build-system"]["requires"]
            lines = [*requires, *EDITABLE_BUILD_REQUIRES]
            source.write_text("".join(f"{line}\n" for line in lines))
            inputs = [str(source)]
        else:
            inputs = [str(PYPROJECT.relative_to(ROOT))]
            for extra in LOCKS[name]:
                inputs += ["--extra", extra]
        command = [
            sys.executable,
            "-m",
            "uv",
            "pip",
            "compile",
            *inputs,
            "--universal",
            "--python-version",
            PYTHON_VERSION,
            "--generate-hashes",
            "--quiet",
            "--custom-compile-command",
            COMMAND,
            "--output-file",
            str(out),
        ]
        if constraint is not None:
            command += ["--constraint", str(constraint.relative_to(ROOT))]
        subprocess.run(command, cwd=ROOT, check=True)
        body = out.read_text()
        if name == BUILD:
            body = body.replace(str(source), "[build-system]")
        digest = inputs_digest(pyproject_text, name)
        (HERE / name).write_text(f"{DIGEST_PREFIX}{digest}\n{body}")


def main() -> None:
    """Write runtime.txt, dev.txt held to its versions, build.txt held to dev.txt's."""
    compile_lock("runtime.txt", None)
    compile_lock("dev.txt", HERE / "runtime.txt")
    compile_lock(BUILD, HERE / "dev.txt")


if __name__ == "__main__":
    main()
