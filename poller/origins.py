"""Where each setting was given, and the names given that are no setting.

The environment, the .env file, the secrets directory and the TOML file are read here for
their names only (values are left to pydantic-settings): a ``POLLER_*`` name, a secret file
or a TOML key that maps to no setting is a typo whose value would otherwise go nowhere
(``POLLER_REDIS_URL`` with one underscore would leave the streams on the default Redis), so
each becomes one line naming it, where it was found and the closest setting.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from pydantic import BaseModel

from poller.env import CONFIG_ENV, ENV_DELIMITER, ENV_PREFIX, SECRETS_DIR_ENV, env_name

# Names with the prefix the project reads itself, which are not settings.
NOT_SETTINGS = frozenset({CONFIG_ENV, SECRETS_DIR_ENV})
# The labels of the sources, in their order of precedence (the first that gives a value wins).
ENVIRONMENT = "env"
DOTENV = ".env"
SECRETS = "secrets"
TOML = "TOML"
DEFAULT = "default"
ARGUMENT = "argument"

Sections = Mapping[str, type[BaseModel]]


@dataclass
class Given:
    """What the sources name: the unknown names (one line each) and each setting's source."""

    unknown: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

    def add(self, dotted: str, origin: str) -> None:
        """Record a source of ``dotted``; one read before (a higher precedence) wins."""
        self.origins.setdefault(dotted, origin)


def read(
    sections: Sections,
    *,
    environ: Mapping[str, str],
    dotenv_file: Path | None,
    secrets_dir: Path | None,
    toml_file: Path | None,
) -> Given:
    """The names every source gives, checked against the settings of ``sections``."""
    names = _env_names(sections)
    given = Given()
    env = sorted(name for name in environ if name.upper().startswith(ENV_PREFIX))
    _check_env(given, names, env, ENVIRONMENT, "in the environment", environ)
    if dotenv_file is not None and dotenv_file.is_file():
        values = {k: v or "" for k, v in dotenv_values(dotenv_file).items()}
        prefixed = sorted(name for name in values if name.upper().startswith(ENV_PREFIX))
        _check_env(given, names, prefixed, DOTENV, f"in {dotenv_file}", values)
    if secrets_dir is not None:
        for name, path in _secret_files(secrets_dir):
            if name.upper().startswith(ENV_PREFIX):
                _check_env(given, names, [name], SECRETS, f"secret file {path}", {})
    if toml_file is not None:
        _check_toml(given, sections, toml_file)
    return given


def _env_names(sections: Sections) -> dict[str, tuple[str, ...]]:
    """Every environment name a setting answers to (upper case) -> its path; a section's own
    name takes the whole section as JSON."""
    names: dict[str, tuple[str, ...]] = {}
    for section, model in sections.items():
        names[env_name((section,))] = (section,)
        for name in model.model_fields:
            names[env_name((section, name))] = (section, name)
    return names


def _check_env(
    given: Given,
    names: dict[str, tuple[str, ...]],
    found: list[str],
    origin: str,
    where: str,
    values: Mapping[str, str],
) -> None:
    for name in found:
        upper = name.upper()
        if upper in NOT_SETTINGS:
            continue
        loc = names.get(upper)
        if loc is None:
            given.unknown.append(
                f"{name} ({where}) is not a setting{_suggestion(upper, list(names))}"
            )
        elif len(loc) == 2:
            given.add(".".join(loc), origin)
        else:  # a whole section as JSON: its keys are its settings
            for key in _json_keys(values.get(name, "")):
                given.add(f"{loc[0]}.{key}", origin)


def _json_keys(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(key) for key in value] if isinstance(value, dict) else []


def _secret_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(name, path) of each file a secrets directory holds, hidden entries (a Kubernetes
    volume's ``..data``) skipped, as pydantic-settings reads them."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            path = Path(root, file)
            if not file.startswith(".") and path.is_file():
                yield str(path.relative_to(directory)), path


def _check_toml(given: Given, sections: Sections, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return  # reported when the settings read it, with the reason
    keys = [
        f"{section}.{name}" for section, model in sections.items() for name in model.model_fields
    ]
    for section, value in data.items():
        if section not in sections:
            known = [*sections, *keys]
            given.unknown.append(
                f"{section} (in {path}) is not a settings section{_suggestion(section, known)}"
            )
            continue
        if not isinstance(value, dict):
            continue  # pydantic names the section that is not a table
        for name in value:
            dotted = f"{section}.{name}"
            if name in sections[section].model_fields:
                given.add(dotted, TOML)
            else:
                given.unknown.append(
                    f"{dotted} (in {path}) is not a setting{_suggestion(dotted, keys)}"
                )


def _suggestion(name: str, candidates: list[str]) -> str:
    """'; did you mean X?' for the closest candidate, or a pointer to the list."""
    best = closest(name, candidates)
    if best is None:
        return "; `poller config show` lists the settings"
    return f"; did you mean {best}?"


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` most likely misspells: the same letters with other separators
    (POLLER_REDIS_URL for POLLER_REDIS__URL), else difflib's closest."""
    squeezed = {_squeeze(candidate): candidate for candidate in candidates}
    exact = squeezed.get(_squeeze(name))
    if exact is not None:
        return exact
    matches = difflib.get_close_matches(_squeeze(name), list(squeezed), n=1, cutoff=0.75)
    if matches:
        return squeezed[matches[0]]
    # The setting's own name without its section (POLLER_API_KEY), when one section has it.
    by_name: dict[str, list[str]] = {}
    for candidate in candidates:
        last = candidate.replace(".", ENV_DELIMITER).rpartition(ENV_DELIMITER)[2]
        by_name.setdefault(_squeeze(last), []).append(candidate)
    owners = by_name.get(_squeeze(name), [])
    return owners[0] if len(owners) == 1 else None


def _squeeze(name: str) -> str:
    """A name without its separators or case: what a typo of one usually keeps."""
    text = name.upper().removeprefix(ENV_PREFIX)
    for separator in (ENV_DELIMITER, "_", ".", "/", "-"):
        text = text.replace(separator, "")
    return text


__all__ = [
    "ARGUMENT",
    "DEFAULT",
    "DOTENV",
    "ENVIRONMENT",
    "SECRETS",
    "TOML",
    "Given",
    "closest",
    "read",
]
