"""What every settings section shares: the environment naming, the strict section base, the
list parser and the error that names a setting.

Each stage keeps its own section beside its code (``poller.infobip.settings``,
``poller.sink.redis.settings``, ``poller.sources.settings``); ``poller.settings`` puts them
together and reads the environment, the .env file and the TOML file.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from poller.env import ENV_DELIMITER, ENV_PREFIX, env_name


class Section(BaseModel):
    """A settings section: a misspelt POLLER_GROUP__NAME or TOML key is an error that names
    it, not a no-op."""

    model_config = ConfigDict(extra="forbid")


class SettingsError(Exception):
    """Bad settings: one line per problem, each naming the setting and its env var."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def split_list(value: Any) -> Any:
    """Accept `a,b,c` or a JSON list for list settings given as one string."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("expected a JSON list or comma-separated values") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


__all__ = ["ENV_DELIMITER", "ENV_PREFIX", "Section", "SettingsError", "env_name", "split_list"]
