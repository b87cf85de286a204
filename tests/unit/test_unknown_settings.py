"""Names that are no setting stop every command (exit 2, one line naming the name, where it was
found and the closest setting); run and once need POLLER_REDIS__URL; `poller config show`
says where each value came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poller.cli import main
from poller.settings import SettingsError, load_settings

READY = {
    "POLLER_INFOBIP__BASE_URL": "https://abc12.api.infobip.com",
    "POLLER_INFOBIP__API_KEY": "k-1234567890",
    "POLLER_INFOBIP__APPLICATIONS": "shop",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No POLLER_* variable from outside, and a working directory without a .env."""
    for name in [n for n in os.environ if n.upper().startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(**env: str) -> list[str]:
    """The SettingsError lines load_settings ends with under these variables."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with pytest.raises(SettingsError) as caught:
            load_settings()
    return caught.value.lines


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("POLLER_REDIS_URL", "POLLER_REDIS__URL"),
        ("POLLER_INFOBIP_API_KEY", "POLLER_INFOBIP__API_KEY"),
        ("POLLER_REDIS__URLL", "POLLER_REDIS__URL"),
        ("POLLER_INFOBIP__APIKEY", "POLLER_INFOBIP__API_KEY"),
        ("poller_spool_path", "POLLER_SPOOL__PATH"),
        ("POLLER_API_KEY", "POLLER_INFOBIP__API_KEY"),
        ("POLLER_FORWARD__PORTT", "POLLER_FORWARD__PORT"),
    ],
)
def test_a_misspelt_variable_names_the_setting_meant(name: str, meant: str) -> None:
    """Tried: the one-underscore forms the issue met (POLLER_REDIS_URL, which used to exit 0
    and write to 127.0.0.1:6379), a doubled letter, a missing underscore, lower case, a
    section left out."""
    assert refused(**{name: "redis://elsewhere:6379/0"}) == [
        f"{name} (in the environment) is not a setting; did you mean {meant}?"
    ]


def test_a_name_like_no_setting_points_to_the_list() -> None:
    """Tried: a POLLER_ variable resembling nothing."""
    assert refused(POLLER_WHATEVER_ELSE="1") == [
        "POLLER_WHATEVER_ELSE (in the environment) is not a setting;"
        " `poller config show` lists the settings"
    ]


def test_every_unknown_name_is_reported_with_the_other_errors() -> None:
    """Tried: two misspelt variables and a bad value at once: one line each."""
    lines = refused(POLLER_REDIS_URL="x", POLLER_LOG_LEVEL="debug", POLLER_HEALTH__PORT="70000")
    assert lines[:2] == [
        "POLLER_LOG_LEVEL (in the environment) is not a setting; did you mean POLLER_LOG__LEVEL?",
        "POLLER_REDIS_URL (in the environment) is not a setting; did you mean POLLER_REDIS__URL?",
    ]
    assert len(lines) == 3
    assert lines[2].startswith("health.port (POLLER_HEALTH__PORT): ")


def test_the_variables_that_are_not_settings_stay_allowed(tmp_path: Path) -> None:
    """Tried: POLLER_CONFIG and POLLER_SECRETS_DIR (read by load_settings itself), a .env
    holding other programs' variables, a secrets directory with a file of another program and
    a Kubernetes volume's hidden ..data entries."""
    (tmp_path / "poller.toml").write_text('[redis]\nurl = "redis://toml:6379/0"\n')
    secrets = tmp_path / "secrets"
    (secrets / "..data").mkdir(parents=True)
    (secrets / "..data" / "POLLER_NOT_A_SETTING").write_text("x")
    (secrets / "db_password").write_text("x")
    (secrets / "POLLER_INFOBIP__API_KEY").write_text("k-1234567890\n")
    (tmp_path / ".env").write_text("COMPOSE_PROJECT_NAME=shop\nPOLLER_LOG__LEVEL=debug\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLLER_CONFIG", str(tmp_path / "poller.toml"))
        mp.setenv("POLLER_SECRETS_DIR", str(secrets))
        settings = load_settings()
    assert settings.redis.url == "redis://toml:6379/0"
    assert settings.log.level == "DEBUG"
    assert settings.infobip.api_key is not None


def test_an_unknown_key_in_dotenv_is_refused(tmp_path: Path) -> None:
    """Tried: a .env with POLLER_REDIS_URL, which used to be dropped without a word."""
    (tmp_path / ".env").write_text("POLLER_REDIS_URL=redis://meant:6379/0\n")
    assert refused() == [
        "POLLER_REDIS_URL (in .env) is not a setting; did you mean POLLER_REDIS__URL?"
    ]


def test_an_unknown_file_in_the_secrets_directory_is_refused(tmp_path: Path) -> None:
    """Tried: a Docker secret named with one underscore, which used to be ignored."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "poller_infobip_api_key").write_text("k-1234567890\n")
    assert refused(POLLER_SECRETS_DIR=str(secrets)) == [
        f"poller_infobip_api_key (secret file {secrets / 'poller_infobip_api_key'}) is not a"
        " setting; did you mean POLLER_INFOBIP__API_KEY?"
    ]


def test_an_unknown_toml_key_or_section_is_refused(tmp_path: Path) -> None:
    """Tried: a misspelt key in a section, a key outside any section, a misspelt section."""
    toml = tmp_path / "poller.toml"
    toml.write_text('url = "redis://a"\n[redis]\nurll = "redis://a"\n[shedule]\ninterval = 1\n')
    assert refused(POLLER_CONFIG=str(toml)) == [
        f"url (in {toml}) is not a settings section; did you mean redis.url?",
        f"redis.urll (in {toml}) is not a setting; did you mean redis.url?",
        f"shedule (in {toml}) is not a settings section; did you mean schedule?",
    ]


@pytest.mark.parametrize(
    "argv", [["config", "show"], ["once"], ["run"], ["check"], ["tail", "shop"], ["status"]]
)
def test_every_command_stops_on_an_unknown_name(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: POLLER_REDIS_URL under each command that reads the settings: exit 2 and one line,
    before anything is opened."""
    monkeypatch.setenv("POLLER_REDIS_URL", "redis://meant:6379/0")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "poller: bad setting: POLLER_REDIS_URL (in the environment) is not a setting;"
        " did you mean POLLER_REDIS__URL?\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize("command", ["once", "run"])
def test_run_and_once_need_the_redis_url(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Tried: run and once with everything but POLLER_REDIS__URL, which used to write to
    127.0.0.1:6379 without a word: exit 2, and no spool file made."""
    for key, value in READY.items():
        monkeypatch.setenv(key, value)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poller: bad setting: redis.url (POLLER_REDIS__URL): not set; "), err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "needs_url"),
    [
        ({}, True),
        ({"POLLER_REDIS__URL": "redis://127.0.0.1:6379/0"}, False),  # given, even the default
        ({"POLLER_SINK__KIND": "memory"}, False),
        ({"POLLER_REDIS__MODE": "sentinel", "POLLER_REDIS__SENTINELS": "s1:26379"}, False),
        ({"POLLER_REDIS__MODE": "cluster"}, True),  # the URL is the cluster's first node
    ],
)
def test_the_redis_address_is_needed_unless_given_otherwise(
    extra: dict[str, str], needs_url: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: the URL set to the default's own value, the memory sink, sentinel and cluster
    modes."""
    for key, value in {**READY, **extra}.items():
        monkeypatch.setenv(key, value)
    problems = load_settings().start_problems(bootstrap=True)
    assert (
        any(p.startswith("redis.url (POLLER_REDIS__URL): not set") for p in problems) == needs_url
    )


def test_config_show_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: one setting from each source (environment, .env, secret file, TOML) and one left
    at its default; a setting in both the environment and the TOML file is the environment's."""
    toml = tmp_path / "poller.toml"
    toml.write_text('[redis]\nurl = "redis://toml:6379/0"\n[log]\nlevel = "ERROR"\n')
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "POLLER_INFOBIP__API_KEY").write_text("k-1234567890")
    (tmp_path / ".env").write_text("POLLER_SPOOL__PATH=/var/tmp/spool.db\n")
    monkeypatch.setenv("POLLER_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("POLLER_LOG__LEVEL", "WARNING")
    assert main(["--config", str(toml), "config", "show"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["SETTING"][-1] == "FROM"
    assert rows["redis.url"][1::2] == ["redis://toml:6379/0", "TOML"]
    assert rows["spool.path"][1::2] == ["/var/tmp/spool.db", ".env"]
    assert rows["infobip.api_key"][-1] == "secrets"
    assert rows["log.level"][1::2] == ["WARNING", "env"]
    assert rows["spool.max_rows"][-1] == "default"
