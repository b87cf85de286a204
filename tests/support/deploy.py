"""Reading the deploy files: YAML (PyYAML comes with kubernetes-validate) and systemd units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def import_yaml() -> Any:
    """PyYAML is not a dependency of the poller; it comes with kubernetes-validate."""
    return pytest.importorskip(
        "yaml", reason="PyYAML (installed with kubernetes-validate) is absent"
    )


def systemd_unit(path: Path) -> dict[str, list[str]]:
    """The entries of a systemd unit file, keyed `Section.Key`, each key's values in order."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries
