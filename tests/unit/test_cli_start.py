"""Every command's --help says what it does (read from the parser, at every depth)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from poller.cli.parser import build_parser


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every subcommand at every depth, with its words (`infobip actions create`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from subcommands(child, (*path, name))


def test_every_subcommand_help_says_what_it_does() -> None:
    # Tried: `--help` of each of the ~25 commands; argparse prints no description unless one is
    # given, so `poller run --help` used to show only `-h`.
    found = dict(subcommands(build_parser()))
    assert {"run", "once", "bootstrap", "simulate", "tail"} <= {p[0] for p in found}
    assert ("infobip", "actions", "create") in found
    empty = [" ".join(path) for path, child in found.items() if not (child.description or "")]
    assert empty == []
