"""The options every command that reads the settings shares: --config, --log-level and
--log-format, given before the command or after it (or after its verb).

Tried: each position through the real parser, a later option over an earlier one, the log
flags over POLLER_LOG__LEVEL / POLLER_LOG__FORMAT in the environment (the other log setting
left to the environment), bad values, and the commands that take none of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import pytest

from poller.cli import NO_SETTINGS
from poller.cli.parser import LOG_FORMATS, LOG_LEVELS, SELF_CONFIGURED, parse, settings_overrides
from poller.settings import LogSettings, load_settings


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.toml", "run"],
        ["run", "--config", "x.toml"],
        ["once", "--no-bootstrap", "--config", "x.toml"],
        ["config", "check", "--config", "x.toml"],
        ["config", "--config", "x.toml", "show", "--json"],
        ["infobip", "configurations", "list", "app", "--config", "x.toml"],
        ["--config", "other.toml", "status", "--config", "x.toml"],
    ],
)
def test_config_is_taken_before_and_after_the_command(argv: list[str]) -> None:
    assert parse(argv).config == "x.toml"


def test_an_option_before_the_command_is_kept_after_it() -> None:
    args = parse(["--config", "x.toml", "--log-level", "debug", "tail", "--count", "1"])
    assert (args.config, args.log_level, args.log_format) == ("x.toml", "DEBUG", None)
    assert parse(["run"]).config is None


def test_log_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLLER_LOG__LEVEL", "ERROR")
    monkeypatch.setenv("POLLER_LOG__FORMAT", "console")
    args = parse(["status", "--log-level", "debug"])
    log = load_settings(args.config, **settings_overrides(args)).log
    assert (log.level, log.format) == ("DEBUG", "console")
    args = parse(["--log-format", "json", "check"])
    log = load_settings(args.config, **settings_overrides(args)).log
    assert (log.level, log.format) == ("ERROR", "json")
    assert settings_overrides(parse(["run"])) == {}


@pytest.mark.parametrize("argv", [["run", "--log-level", "loud"], ["--log-format", "xml", "run"]])
def test_bad_log_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2


def test_the_flags_offer_what_the_settings_accept() -> None:
    assert get_args(LogSettings.model_fields["level"].annotation) == LOG_LEVELS
    assert get_args(LogSettings.model_fields["format"].annotation) == LOG_FORMATS


def test_commands_without_settings_take_none_of_the_options() -> None:
    assert SELF_CONFIGURED == NO_SETTINGS
    with pytest.raises(SystemExit):
        parse(["demo", "--config", "x.toml"])
    assert parse(["simulate", "--config", "x.toml"]).options == ["--config", "x.toml"]
    assert parse(["config", "example"]).no_settings is True
