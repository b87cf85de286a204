"""`poller simulate`'s options that need no server: the pull delay is checked."""

from __future__ import annotations

import argparse

import pytest

from poller.devtools.simulator import cli as simulate_cli


def test_simulate_command_takes_a_pull_delay() -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    assert parser.parse_args([]).pull_delay == 0.0
    assert parser.parse_args(["--pull-delay", "0.15"]).pull_delay == 0.15
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--pull-delay", bad])
