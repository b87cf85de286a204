"""The documents stay true: generated tables match the code, every setting is in the reference,
the README's first lines name the two commands and its links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from poller import docs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REFERENCE = ROOT / "deploy" / "REFERENCE.md"


def test_generated_tables_are_up_to_date() -> None:
    for name in docs.DOCUMENTS:
        text = (ROOT / name).read_text(encoding="utf-8")
        assert docs.render(text) == text, f"{name}: run `python -m poller.docs` and commit"


def test_every_setting_is_in_the_reference_with_its_env_var() -> None:
    table = docs.settings_table()
    text = REFERENCE.read_text(encoding="utf-8")
    for line in table.splitlines()[2:]:
        env = line.split("|")[1].strip().strip("`")
        assert env.startswith("POLLER_")
        assert env in text


def test_first_lines_give_the_demo_and_the_test_command() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:6]
    assert any("poller demo" in line for line in head)
    assert any("pytest" in line for line in head)


def test_the_readme_links_to_files_and_anchors_that_exist() -> None:
    # A moved section or a renamed file leaves a link that leads nowhere: every relative link
    # of the README and the reference names a file that exists and, with #anchor, a heading
    # of that file (GitHub's anchor rule: lower case, punctuation dropped, spaces to dashes).
    for document in (README, REFERENCE):
        text = document.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (document.parent / path).resolve() if path else document
            assert file.exists(), f"{document.name}: link to {target}: no such file"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file), f"{document.name}: link to {target}: no heading"


def anchors(path: Path) -> set[str]:
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found
