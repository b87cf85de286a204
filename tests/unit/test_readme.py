"""The README stays true: generated tables match the code, the first lines name the two commands."""

from __future__ import annotations

from pathlib import Path

from poller import docs

README = Path(__file__).resolve().parents[2] / "README.md"


def test_generated_tables_are_up_to_date() -> None:
    text = README.read_text(encoding="utf-8")
    assert docs.render(text) == text, "run `python -m poller.docs README.md` and commit"


def test_every_setting_is_in_the_readme_with_its_env_var() -> None:
    table = docs.settings_table()
    text = README.read_text(encoding="utf-8")
    for line in table.splitlines()[2:]:
        env = line.split("|")[1].strip().strip("`")
        assert env.startswith("POLLER_")
        assert env in text


def test_first_lines_give_the_demo_and_the_test_command() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:6]
    assert any("poller demo" in line for line in head)
    assert any("pytest" in line for line in head)
