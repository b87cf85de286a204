"""A SIGTERM at any moment of `poller run`'s start ends it cleanly: exit 0 and a log line that
says it stopped, never a bare death with nothing in the log, and nothing lost.

Tried: one `poller run` per moment of the start, each SIGTERMed as soon as it had written its
n-th log line (n = 0: as soon as the process exists, before the CLI has loaded), through the
settings, the spool's opening, the leftovers' flush, bootstrap, the health server and the first
pulls, with messages waiting at the simulator; then a last run drains the inbox and every
message the simulator handed out is in its stream exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx

from poller.devtools.embedded import EmbeddedRedis, free_port
from tests.fixtures_sim import SimulatorFactory
from tests.support import ids_at, make_settings, poller_command, settings_env

APPS = ["app-alpha", "app-beta"]
# Exit status of a process that a signal ended before it could catch it (the interpreter's
# own start, before `poller`'s first line runs): the shell's 128 + SIGTERM.
KILLED_BEFORE_THE_CLI = -signal.SIGTERM


async def start_and_stop_after(
    lines: int | None, env: dict[str, str], log: Path, ready_url: str = ""
) -> tuple[int, str]:
    """Start `poller run`, SIGTERM it once it has written ``lines`` log lines (None: once
    ``ready_url`` answers 200), or once it has ended; its exit status and all it wrote."""
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[bytes] = []
    async with asyncio.timeout(60):
        if lines is None:
            reader = asyncio.create_task(proc.stderr.read())
            await wait_ready(ready_url, reader)
        else:
            while len(seen) < lines:
                line = await proc.stderr.readline()
                if not line:
                    break
                seen.append(line)
            reader = asyncio.create_task(proc.stderr.read())
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await reader
        status = await proc.wait()
    text = b"".join(seen).decode(errors="replace") + rest.decode(errors="replace")
    log.write_text(text)
    return status, text


async def wait_ready(url: str, reader: asyncio.Task[bytes]) -> None:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while not reader.done():
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"ended before it was ready: {reader.result()!r}")


def events(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        try:
            found.append(str(json.loads(line).get("event", "")))
        except json.JSONDecodeError:
            found.append(line)
    return found


async def test_sigterm_at_every_moment_of_the_start_exits_0_with_a_line_and_loses_nothing(
    simulator_factory: SimulatorFactory,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    sim = await simulator_factory(applications=APPS)
    settings = make_settings(
        sim,
        own_redis.url,
        tmp_path,
        key_template,
        apps=APPS,
        health={"enabled": True, "port": free_port()},
    )
    env = settings_env(settings)
    # How many lines a whole start writes: a run stopped once it is ready.
    ready_url = f"http://127.0.0.1:{settings.health.port}/readyz"
    _, full = await start_and_stop_after(None, env, tmp_path / "probe.log", ready_url)
    start_lines = next(
        (i for i, event in enumerate(events(full)) if event.startswith("stop requested")), 0
    )
    assert start_lines >= 3, full
    # Messages wait at Infobip from here on (bootstrap gave the applications their actions).
    assert len(sim.inject("app-alpha", 300) + sim.inject("app-beta", 300)) == 600
    for n in range(start_lines + 1):
        status, text = await start_and_stop_after(n, env, tmp_path / f"stop-{n}.log")
        said = events(text)
        if n == 0 and status == KILLED_BEFORE_THE_CLI and not text:
            continue  # ended before its first instruction: it had touched nothing
        assert status == 0, f"stopped after line {n}: exit {status}\n{text}"
        assert any(e.startswith("stop requested") for e in said), f"after line {n}:\n{text}"
        assert "poller stopped" in said, f"after line {n}:\n{text}"
    # Nothing lost: a last run takes what is left, and each message is in its stream once.
    proc = await asyncio.create_subprocess_exec(
        *poller_command("once"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    ids = await ids_at(own_redis.url, key_template)
    assert set(ids) == set(sim.ledger.ids())
    assert len(ids) == 600
    assert all(count == 1 for count in ids.values())
