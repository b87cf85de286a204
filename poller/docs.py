"""Text generated from the code: the settings and metrics tables of deploy/REFERENCE.md (and
of any other document with their markers), and the commented example configuration
(`poller config example`, shipped as deploy/poller.example.toml). `python -m poller.docs`
rewrites them; tests fail when one is out of date."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from poller import metrics
from poller.env import CONFIG_ENV, SECRETS_DIR_ENV
from poller.settings import CREDENTIAL_SETTINGS, Settings, env_name

# Where the example configuration is shipped, beside the README.
EXAMPLE_FILE = Path("deploy") / "poller.example.toml"
_WIDTH = 98


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


def example_toml() -> str:
    """A TOML file with every section and setting of the settings model: its description,
    environment variable, allowed values and default. Settings with a value by default are
    set to it (the file loads to the defaults); the others (no default, secrets) are commented
    out, and those `poller run` cannot start without are marked REQUIRED."""
    defaults = Settings.model_construct()  # the model's defaults, no environment read
    required = {}
    for line in defaults.start_problems(bootstrap=True) + defaults.stop_problems():
        dotted, _, rest = line.partition(" ")
        required[dotted] = rest.partition(": ")[2]
    out = [
        *_comment(
            "infobip-push-poller: an example configuration, generated from the settings model"
            " (`poller config example`; `python -m poller.docs` rewrites"
            f" {EXAMPLE_FILE.as_posix()}). Every setting is shown at its default: change what"
            " you need, uncomment what you set. Use it with `poller --config FILE run` (or"
            f" {CONFIG_ENV}=FILE); `poller config check` tries it before it runs. The"
            " environment (POLLER_<SECTION>__<NAME>), a .env file and the files of"
            f" {SECRETS_DIR_ENV} take precedence over this file; secrets are better given"
            " there than written here."
        ),
    ]
    for group, group_field in Settings.model_fields.items():
        model = group_field.annotation
        assert isinstance(model, type)  # nosec B101  # each settings group is a model class: narrows the type
        assert issubclass(model, BaseModel)  # nosec B101  # each settings group is a model class: narrows the type
        out += ["", f"[{group}]", *_comment((model.__doc__ or "").strip())]
        for name, field in model.model_fields.items():
            out += ["", *_setting(group, name, field, required.get(f"{group}.{name}"))]
    return "\n".join(out) + "\n"


def _setting(group: str, name: str, field: FieldInfo, required: str | None) -> list[str]:
    """The comment lines and the line of one setting."""
    kinds = _kinds(field.annotation)
    secret = SecretStr in kinds
    notes = [f"Environment: {env_name((group, name))}"]
    choices = [arg for kind in kinds if get_origin(kind) is Literal for arg in get_args(kind)]
    if choices:
        notes.append("one of " + ", ".join(map(str, choices)))
    notes += _bounds(field)
    lines = _comment(field.description or "")
    if required is not None:
        lines += _comment(f"REQUIRED: {required.rstrip('.')}.")
    lines += _comment(_needed_for(group, name) if required is None else "")
    if secret:
        lines += _comment(f"Secret: better given by the environment or {SECRETS_DIR_ENV}.")
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        notes.append("unset by default")
    lines += _comment("; ".join(notes) + ".")
    if value is None or secret:
        return [*lines, f"# {name} = {_placeholder(kinds)}"]
    return [*lines, f"{name} = {_toml(value)}"]


def _needed_for(group: str, name: str) -> str:
    """The auth schemes a credential setting is needed with, as a sentence."""
    if group != "infobip":
        return ""
    schemes = [scheme for scheme, names in CREDENTIAL_SETTINGS.items() if name in names]
    return f"Needed with auth={' or '.join(schemes)}." if schemes else ""


def _kinds(annotation: Any) -> list[Any]:
    """The types a setting takes (a union's members, None left out)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [kind for kind in get_args(annotation) if kind is not type(None)]
    return [annotation]


def _bounds(field: FieldInfo) -> list[str]:
    found = []
    for item in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                found.append(f"{sign} {getattr(item, attr)}")
    return [f"a number {' and '.join(found)}"] if found else []


def _placeholder(kinds: list[Any]) -> str:
    """A value of the right type, to be replaced, for a setting without a default."""
    kind = kinds[0]
    if kind is SecretStr:
        return '"<secret>"'
    if kind is Path:
        return '"/path/to/file"'
    if kind is bool:
        return "false"
    if kind in (int, float):
        return "0" if kind is int else "0.0"
    return '"..."'


def _toml(value: Any) -> str:
    """A default as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # A JSON string is a TOML basic string (the same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def _comment(text: str) -> list[str]:
    if not text:
        return []
    return textwrap.wrap(
        text, width=_WIDTH, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )


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
    """Rewrite the generated blocks of the documents given (default: DOCUMENTS, from the
    repository's root), and the example configuration (deploy/poller.example.toml)."""
    targets: list[tuple[Path, Callable[[str], str]]] = [
        (Path(name), render) for name in argv or DOCUMENTS
    ]
    targets.append((Path(EXAMPLE_FILE), lambda _old: example_toml()))
    for path, make in targets:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        new = make(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
