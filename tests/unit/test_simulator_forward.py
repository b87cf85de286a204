"""The simulator's forward settings, fault parameters and `poller simulate --forward` options
are checked before anything starts."""

from __future__ import annotations

import argparse

import pytest

from poller.devtools.simulator import ForwarderSettings, Simulator
from poller.devtools.simulator import cli as simulate_cli


def test_forward_settings_and_fault_parameters_are_checked() -> None:
    for bad in (
        {"batch_size": 0},
        {"in_flight": 0},
        {"timeout": 0},
        {"backoff_base": 0},
        {"backoff_base": 2, "backoff_max": 1},
        {"max_attempts": 0},
    ):
        with pytest.raises(ValueError, match="forward"):
            ForwarderSettings(**bad)
    assert ForwarderSettings() == ForwarderSettings(
        batch_size=100,
        in_flight=4,
        timeout=5.0,
        backoff_base=0.1,
        backoff_max=5.0,
        max_attempts=50,
    )
    sim = Simulator()
    with pytest.raises(ValueError, match="no parameter"):
        sim.add_fault("forward_duplicate", delay=1)
    with pytest.raises(ValueError, match="negative"):
        sim.add_fault("forward_drop", delay=-1)
    with pytest.raises(ValueError, match="forwardUrl"):
        sim.configure_forward("app-alpha", "ftp://x")
    with pytest.raises(ValueError, match="does not exist"):
        sim.configure_forward("nope", "http://127.0.0.1:1/")


async def test_simulate_command_refuses_bad_forward_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    for bad in (["--forward", "app-x"], ["--forward", "app-x=ftp://h"], ["--forward-batch", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    unknown = parser.parse_args(["--port", "0", "--forward", "nope=http://127.0.0.1:1/"])
    assert await simulate_cli.run(unknown) == 2
    assert "nope" in capsys.readouterr().out
    zero = parser.parse_args(["--port", "0", "--forward-batch", "0"])
    assert await simulate_cli.run(zero) == 2
    assert "batch_size" in capsys.readouterr().out
