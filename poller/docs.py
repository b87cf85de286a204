"""Documentation generated from the code: the settings and metrics tables of
deploy/REFERENCE.md (and any other document with their markers). `python -m poller.docs`
rewrites them; a test fails when a document is out of date."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from poller import metrics
from poller.settings import Settings, env_name


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "(none)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, list):
        return "(empty)" if not value else ",".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def settings_table() -> str:
    """One row per setting: environment variable, default, description."""
    rows = ["| environment variable | TOML | default | description |", "| --- | --- | --- | --- |"]
    for group, group_field in Settings.model_fields.items():
        model = group_field.annotation
        assert isinstance(model, type)  # nosec B101  # each settings group is a model class: narrows the type
        assert issubclass(model, BaseModel)  # nosec B101  # each settings group is a model class: narrows the type
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            rows.append(
                f"| `{env_name((group, name))}` | `{group}.{name}` | {_default(field)} "
                f"| {description} |"
            )
    return "\n".join(rows)


def render(text: str) -> str:
    """A document's text with every generated block brought up to date."""
    blocks: dict[str, Callable[[], str]] = {
        "settings": settings_table,
        "metrics": metrics.markdown_table,
    }
    for name, make in blocks.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", flags=re.DOTALL)
        match = pattern.search(text)
        if match is not None:
            block = match.group(1) + make() + "\n" + match.group(2)
            text = text[: match.start()] + block + text[match.end() :]
    return text


# The documents that hold generated blocks, relative to the repository's root.
DOCUMENTS = ("README.md", "deploy/REFERENCE.md")


def main(argv: list[str]) -> int:
    """Rewrite the generated blocks of the documents given (default: DOCUMENTS)."""
    for name in argv or DOCUMENTS:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        updated = render(text)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
