"""The example configuration: generated from the settings model, shipped as
deploy/poller.example.toml, and a file that loads.

Tried: the generated text against the shipped file; the file read through `--config` as the
commands read it, in an environment with no POLLER_* variable and no .env; every setting
looked up in it with its variable; and the file with its REQUIRED settings filled in, which
`poller run` then accepts.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from poller import docs
from poller.cli.parser import parse, settings_overrides
from poller.settings import Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / docs.EXAMPLE_FILE


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No POLLER_* variable, and a working directory without a .env file."""
    for name in [n for n in os.environ if n.startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_example_is_the_generated_one() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == docs.example_toml(), (
        "run `python -m poller.docs` and commit deploy/poller.example.toml"
    )


def test_the_example_loads_to_the_defaults_through_config(clean_env: Path) -> None:
    for argv in (["--config", str(EXAMPLE), "run"], ["run", "--config", str(EXAMPLE)]):
        args = parse(argv)
        loaded = load_settings(args.config, **settings_overrides(args))
        assert loaded.model_dump() == load_settings().model_dump()


def test_every_setting_is_in_the_example_with_its_variable() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for group, group_field in Settings.model_fields.items():
        assert f"\n[{group}]\n" in text
        model = group_field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for name in model.model_fields:
            assert f"Environment: {env_name((group, name))}" in text
            set_here = name in data[group]
            assert set_here or f"\n# {name} = " in text, f"{group}.{name} is missing"
    assert "api_key" not in data["infobip"]  # a secret is never written with a value
    assert '# api_key = "<secret>"' in text


def test_the_required_settings_are_marked_and_filled_in_let_run_start(clean_env: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    required = [line for line in text.splitlines() if line.startswith("# REQUIRED:")]
    assert len(required) == len(Settings.model_construct().start_problems(bootstrap=True))
    filled = (
        text.replace('# base_url = "..."', 'base_url = "https://xxxxx.api.infobip.com"')
        .replace('# api_key = "<secret>"', 'api_key = "a-key"')
        .replace("applications = []", 'applications = ["my-app"]', 1)
    )
    path = clean_env / "poller.toml"
    path.write_text(filled, encoding="utf-8")
    settings = load_settings(path)
    assert settings.start_problems(bootstrap=True) == []
    assert settings.infobip.applications == ["my-app"]
