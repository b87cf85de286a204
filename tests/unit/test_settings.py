"""Settings: environment, .env, TOML, their order, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from poller.settings import Settings, SettingsError, load_settings
from tests.support import stream_of

pytestmark = pytest.mark.usefixtures("clean_env")


def problems(**env: str) -> list[str]:
    """The SettingsError lines for these environment variables."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with pytest.raises(SettingsError) as caught:
            load_settings()
    assert str(caught.value) == "\n".join(caught.value.lines)
    return caught.value.lines


def test_defaults_need_nothing() -> None:
    settings = load_settings()
    assert settings.infobip.base_url is None  # each account has its own: run requires it
    assert settings.infobip.auth == "app"
    assert settings.infobip.api_key is None
    assert settings.infobip.applications == []
    assert settings.infobip.pull_limit == 1000
    assert settings.infobip.rate_limit == 8.0  # of the account's 10: 2/s for other users
    assert settings.infobip.rate_limit_scope == "shared"
    assert settings.redis.durability == "auto"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert stream_of(settings, "shop") == "infobip:push:{shop}:mo"
    assert settings.schedule.cron is None
    assert settings.spool.path == Path("poller-spool.db")
    assert settings.max_poll_age() == 3 * (5.0 + 0.0) + 15.0 + 30


def test_environment_with_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_INFOBIP__BASE_URL", "https://abc12.api.infobip.com/")
    monkeypatch.setenv("POLLER_INFOBIP__API_KEY", "k-123456")
    monkeypatch.setenv("POLLER_INFOBIP__PULL_LIMIT", "250")
    monkeypatch.setenv("POLLER_REDIS__DURABILITY", "waitaof")
    monkeypatch.setenv("POLLER_SCHEDULE__CRON", "*/5 * * * *")
    monkeypatch.setenv("POLLER_LOG__LEVEL", "debug")
    monkeypatch.setenv("POLLER_HEALTH__ENABLED", "false")
    settings = load_settings()
    assert settings.infobip.base_url == "https://abc12.api.infobip.com"
    assert isinstance(settings.infobip.api_key, SecretStr)
    assert settings.infobip.api_key.get_secret_value() == "k-123456"
    assert settings.infobip.pull_limit == 250
    assert settings.redis.durability == "waitaof"
    assert settings.schedule.cron == "*/5 * * * *"
    assert settings.log.level == "DEBUG"
    assert settings.health.enabled is False
    # Other variables of a group keep their defaults.
    assert settings.infobip.read_timeout == 15.0


@pytest.mark.parametrize(
    "value", ["app-a,app-b , app-c", '["app-a", "app-b", "app-c"]', "app-a,,app-b,app-c,"]
)
def test_applications_as_comma_list_or_json(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_INFOBIP__APPLICATIONS", value)
    expected = ["app-a", "app-b", "app-c"]
    assert load_settings().infobip.applications == expected


TOML = """
[infobip]
base_url = "https://toml.api.infobip.com"
applications = ["from-toml"]
pull_limit = 100
client_secret = "toml-secret"

[redis]
url = "redis://toml:6379/1"

[schedule]
interval = 2.5
"""


def test_toml_file_by_argument_and_by_poller_config(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = clean_env / "poller.toml"
    path.write_text(TOML)
    for settings in (load_settings(path), load_settings(str(path))):
        assert settings.infobip.base_url == "https://toml.api.infobip.com"
        assert settings.infobip.applications == ["from-toml"]
        assert settings.redis.url == "redis://toml:6379/1"
        assert settings.schedule.interval == 2.5
        assert isinstance(settings.infobip.client_secret, SecretStr)
    monkeypatch.setenv("POLLER_CONFIG", str(path))
    assert load_settings().infobip.pull_limit == 100


def test_order_arguments_environment_dotenv_toml(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = clean_env / "poller.toml"
    path.write_text(TOML)
    (clean_env / ".env").write_text(
        "POLLER_INFOBIP__PULL_LIMIT=200\nPOLLER_REDIS__URL=redis://dotenv:6379/2\n"
        "POLLER_SCHEDULE__INTERVAL=9\n"
    )
    monkeypatch.setenv("POLLER_INFOBIP__PULL_LIMIT", "300")
    settings = load_settings(path, spool={"max_rows": 5})
    assert settings.infobip.pull_limit == 300  # environment over .env and TOML
    assert settings.redis.url == "redis://dotenv:6379/2"  # .env over TOML
    assert settings.infobip.base_url == "https://toml.api.infobip.com"  # TOML over defaults
    assert settings.schedule.interval == 9.0
    assert settings.spool.max_rows == 5  # arguments first


def test_dotenv_in_the_working_directory(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "# settings of this host\n"
        "POLLER_INFOBIP__API_KEY=dotenv-key-1234\n"
        "POLLER_INFOBIP__APPLICATIONS=one,two\n"
        # Another program's variables in the same file are none of the poller's business.
        "COMPOSE_PROJECT_NAME=shop\nDATABASE_URL=postgres://x\n"
    )
    settings = load_settings()
    assert settings.infobip.api_key is not None
    assert settings.infobip.api_key.get_secret_value() == "dotenv-key-1234"
    assert settings.infobip.applications == ["one", "two"]


def test_poller_config_in_dotenv_is_honoured(clean_env: Path) -> None:
    (clean_env / "site.toml").write_text('[infobip]\napplications = ["site-app"]\n')
    (clean_env / ".env").write_text("POLLER_CONFIG=site.toml\n")
    assert load_settings().infobip.applications == ["site-app"]


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"POLLER_INFOBIP__PULL_LIMIT": "0"},
         "infobip.pull_limit (POLLER_INFOBIP__PULL_LIMIT): "
         "Input should be greater than or equal to 1"),
        ({"POLLER_INFOBIP__PULL_LIMIT": "5000"},
         "infobip.pull_limit (POLLER_INFOBIP__PULL_LIMIT): "
         "Input should be less than or equal to 1000"),
        ({"POLLER_INFOBIP__BASE_URL": "api.infobip.com"},
         "infobip.base_url (POLLER_INFOBIP__BASE_URL): expected an http:// or https:// URL, "
         "such as https://xxxxx.api.infobip.com"),
        ({"POLLER_INFOBIP__AUTH": "token"},
         "infobip.auth (POLLER_INFOBIP__AUTH): "
         "Input should be 'app', 'basic', 'ibsso' or 'oauth2'"),
        ({"POLLER_SCHEDULE__INTERVAL": "five"},
         "schedule.interval (POLLER_SCHEDULE__INTERVAL): Input should be a valid number, "
         "unable to parse string as a number"),
        ({"POLLER_REDIS__URL": "http://redis:6379"},
         "redis.url (POLLER_REDIS__URL): expected a redis://, rediss:// or unix:// URL"),
        ({"POLLER_REDIS__STREAM_KEY_TEMPLATE": "all-in-one"},
         "redis.stream_key_template (POLLER_REDIS__STREAM_KEY_TEMPLATE): must contain ${app} "
         "(one stream per application)"),
        ({"POLLER_INFOBIP__APPLICATIONS": "[not json"},
         "infobip.applications (POLLER_INFOBIP__APPLICATIONS): expected a JSON list or "
         "comma-separated values"),
        ({"POLLER_INFOBIP__APIKEY": "typo"},
         "POLLER_INFOBIP__APIKEY (in the environment) is not a setting; did you mean"
         " POLLER_INFOBIP__API_KEY?"),
    ],
)  # fmt: skip
def test_bad_value_names_setting_and_variable(env: dict[str, str], line: str) -> None:
    assert problems(**env) == [line]


def test_bad_cron() -> None:
    (line,) = problems(POLLER_SCHEDULE__CRON="every five minutes")
    assert line.startswith("schedule.cron (POLLER_SCHEDULE__CRON): not a cron expression (")


def test_every_bad_value_is_reported_at_once() -> None:
    lines = problems(
        POLLER_INFOBIP__PULL_LIMIT="0",
        POLLER_SCHEDULE__INTERVAL="x",
        POLLER_HEALTH__PORT="70000",
    )
    assert [line.split(" ")[0] for line in lines] == [
        "infobip.pull_limit",
        "schedule.interval",
        "health.port",
    ]


def test_missing_config_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = clean_env / "nope.toml"
    with pytest.raises(SettingsError) as caught:
        load_settings(missing)
    assert caught.value.lines == [f"POLLER_CONFIG/--config: no such file: {missing}"]
    monkeypatch.setenv("POLLER_CONFIG", str(missing))
    with pytest.raises(SettingsError):
        load_settings()


def test_bad_toml_names_the_file_and_the_setting(clean_env: Path) -> None:
    broken = clean_env / "broken.toml"
    broken.write_text("[infobip\npull_limit = 1\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(broken)
    (line,) = caught.value.lines
    assert line.startswith(f"{broken}: ")
    wrong = clean_env / "wrong.toml"
    wrong.write_text('[infobip]\npull_limit = 0\n[redis]\nmode = "sentinel"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(wrong)
    assert caught.value.lines == [
        "infobip.pull_limit (POLLER_INFOBIP__PULL_LIMIT): "
        "Input should be greater than or equal to 1",
        "redis (POLLER_REDIS): mode=sentinel needs POLLER_REDIS__SENTINELS",
    ]


def test_secrets_are_secret_str_and_hidden_in_repr() -> None:
    settings = Settings(
        infobip={"api_key": "key-abcdef", "password": "pw-abcdef", "client_secret": "cs-abcdef"},
        redis={"password": "redis-abcdef"},
    )
    text = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    for secret in ("key-abcdef", "pw-abcdef", "cs-abcdef", "redis-abcdef"):
        assert secret not in text


def test_grace_period_shorter_than_a_pull_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tried: a stop would have to cut a pull in flight (its messages exist nowhere else).
    monkeypatch.setenv("POLLER_SCHEDULE__GRACE_PERIOD", "10")
    monkeypatch.setenv("POLLER_INFOBIP__READ_TIMEOUT", "30")
    settings = load_settings()  # fine for `once`, the admin CLI, `config show`
    text = "\n".join(settings.stop_problems())
    assert "POLLER_SCHEDULE__GRACE_PERIOD" in text
    assert "POLLER_INFOBIP__READ_TIMEOUT" in text
    assert load_settings(None).model_copy().stop_problems() == text.splitlines()
    monkeypatch.setenv("POLLER_SCHEDULE__GRACE_PERIOD", "40")
    assert load_settings().stop_problems() == []


def test_durability_timeout_must_be_shorter_than_the_socket_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLLER_REDIS__DURABILITY", "wait")
    monkeypatch.setenv("POLLER_REDIS__DURABILITY_TIMEOUT_MS", "9000")
    with pytest.raises(SettingsError, match="POLLER_REDIS__DURABILITY_TIMEOUT_MS"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://api.infobip.example", "in clear"),
        ("https://user:secret@xxxxx.api.infobip.com", "credentials in the URL"),
    ],
)
def test_urls_that_would_expose_credentials_are_refused(url: str, says: str) -> None:
    # Tried: plain HTTP to another host (the API key would cross the network in clear) and a
    # password in the URL (it would reach logs and `config show`).
    with pytest.raises(SettingsError) as info:
        load_settings(infobip={"base_url": url})
    assert says in str(info.value)
    assert "secret" not in str(info.value)
    allowed = load_settings(infobip={"base_url": "http://10.0.0.5", "allow_insecure_http": True})
    assert allowed.infobip.base_url == "http://10.0.0.5"
    assert load_settings(infobip={"base_url": "http://[::1]:8089"}).infobip.base_url
