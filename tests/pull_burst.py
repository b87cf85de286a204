"""The kill window under load, as a test harness: a simulator that lets several pull answers
out at once and SIGKILLs the poller a fixed delay after the last of them was written.

``BurstSimulator`` is the project's simulator with one addition. Once armed, it lets
``skip`` pulls through as usual, then holds the next ``size`` pull requests back *before*
they take any message (nothing is handed out while they wait), releases them together so
their answers are written at the same moment, and once the last of them has been written in
full (its write returned: every byte is in the kernel's buffers) it SIGKILLs ``pid``
``delay`` seconds later. Pulls that come after the burst wait and are refused with a 503
after the kill (nothing is handed out to a process that is gone). What a kill takes is then
only what the poller had not read of answers sent in full: the window this harness measures.

Used in-process by ``tests/acceptance/test_kill_window.py`` and in a process of its own by
``tests/benchmarks/kill_window.py`` (``python -m tests.pull_burst --port N``), which drives it
through ``POST /_burst/arm`` and ``GET /_burst/report`` besides the usual ``/_sim/``.

``busy_cores(n)`` keeps n cores busy (``python -c 'while 1: pass'``) for a block's duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from poller.devtools.embedded import free_port
from poller.devtools.simulator import Simulator
from poller.devtools.simulator.httpserver import Request, Response
from poller.devtools.simulator.replies import control_error, json_response, service_error
from poller.devtools.simulator.routes import INBOX_PATH

REPO = Path(__file__).resolve().parent.parent
ARM_PATH = "/_burst/arm"
REPORT_PATH = "/_burst/report"


@dataclass
class Answer:
    """One answer of the burst: its message ids, its size, when its write returned."""

    ids: list[str]
    bytes: int
    written_at: float | None = None  # time.monotonic() when the write returned
    ok: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "bytes": self.bytes,
            "writtenAt": self.written_at,
            "ok": self.ok,
        }


@dataclass
class Burst:
    """The plan and what happened: ``skip`` pulls, then ``size`` answers at once, then a
    SIGKILL of ``pid`` ``delay`` s after the last was written."""

    pid: int
    skip: int
    size: int
    delay: float
    gather_timeout: float = 5.0
    seen: int = 0  # pull requests so far
    gathered: int = 0
    state: str = "skipping"  # skipping, gathering, released, killed
    answers: list[Answer] = field(default_factory=list)
    gathering_at: float | None = None  # the first request of the burst came
    released_at: float | None = None
    written_at: float | None = None  # the last answer's write returned
    killed_at: float | None = None
    refused: int = 0  # pulls that came after the burst, refused after the kill
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _killed: asyncio.Event = field(default_factory=asyncio.Event)
    _open: int = 0  # released requests whose answer is not written yet

    @property
    def ids(self) -> list[str]:
        """Every message id the burst handed out."""
        return [mid for answer in self.answers for mid in answer.ids]

    async def wait_killed(self) -> None:
        """Until the kill was sent (bound it with asyncio.timeout)."""
        await self._killed.wait()

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "skip": self.skip,
            "size": self.size,
            "delay": self.delay,
            "state": self.state,
            "seen": self.seen,
            "gathered": self.gathered,
            "answers": [answer.to_json() for answer in self.answers],
            "gatheringAt": self.gathering_at,
            "releasedAt": self.released_at,
            "writtenAt": self.written_at,
            "killedAt": self.killed_at,
            "refused": self.refused,
        }


class BurstSimulator(Simulator):
    """The simulator, plus a burst of pull answers at once and a SIGKILL after it."""

    def __init__(self, *, send_buffer: int = 0, **kwargs: Any) -> None:
        """``send_buffer``: SO_SNDBUF of every connection, bytes (0: the kernel's own, which
        grows only as fast as the client reads). A buffer that holds whole answers makes a
        write return once the answer is in the kernel, as on a network, whatever the client
        does meanwhile."""
        super().__init__(**kwargs)
        self.send_buffer = send_buffer
        self.burst: Burst | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; connections inherit the listening socket's send buffer."""
        url = await super().start(host, port)
        if self.send_buffer and self._server is not None and self._server._server is not None:
            for sock in self._server._server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        return url

    def arm(
        self, *, pid: int, skip: int, size: int, delay: float, gather_timeout: float = 5.0
    ) -> Burst:
        """Plan a burst (see the module's docstring); replaces an earlier plan."""
        if size < 1 or skip < 0 or delay < 0:
            raise ValueError("size >= 1, skip >= 0 and delay >= 0, please")
        self.burst = Burst(pid, skip, size, delay, gather_timeout)
        return self.burst

    async def _handle(self, request: Request) -> Response:
        if request.path == ARM_PATH and request.method == "POST":
            return self._arm_from(request)
        if request.path == REPORT_PATH:
            body = self.burst.to_json() if self.burst is not None else None
            return json_response(200, {"burst": body})
        burst = self.burst
        if burst is None or request.path != INBOX_PATH or burst.state == "killed":
            return await super()._handle(request)
        burst.seen += 1
        if burst.state == "skipping" and burst.seen <= burst.skip:
            return await super()._handle(request)
        if burst.state in ("skipping", "gathering"):
            return await self._gather(burst, request)
        # After the burst: wait for the kill, then refuse without handing anything out.
        await burst.wait_killed()
        burst.refused += 1
        return service_error(503, "SERVICE_UNAVAILABLE", "held back by the test harness")

    async def _gather(self, burst: Burst, request: Request) -> Response:
        if burst.state != "gathering":
            burst.state, burst.gathering_at = "gathering", time.monotonic()
        burst.gathered += 1
        burst._open += 1
        if burst.gathered >= burst.size:
            self._release(burst)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(burst.gather_timeout):
                    await burst._release.wait()
            self._release(burst)  # the gather timed out: what came goes out
        response = await super()._handle(request)
        ids = _message_ids(response)
        if not ids:
            self._written(burst)
            return response
        answer = Answer(ids, len(response.body))
        burst.answers.append(answer)
        sent = response.on_sent

        def on_sent(ok: bool) -> None:
            if sent is not None:
                sent(ok)
            answer.written_at, answer.ok = time.monotonic(), ok
            self._written(burst)

        response.on_sent = on_sent
        return response

    def _written(self, burst: Burst) -> None:
        """One released request is done; after the last, the kill is scheduled."""
        burst._open -= 1
        if burst._open == 0 and burst.state == "released":
            burst.written_at = time.monotonic()
            asyncio.get_running_loop().call_later(burst.delay, self._kill, burst)

    @staticmethod
    def _release(burst: Burst) -> None:
        if burst.state == "gathering":
            burst.state = "released"
            burst.released_at = time.monotonic()
            burst._release.set()

    def _kill(self, burst: Burst) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(burst.pid, signal.SIGKILL)
        burst.killed_at = time.monotonic()
        burst.state = "killed"
        burst._killed.set()

    def _arm_from(self, request: Request) -> Response:
        try:
            plan = json.loads(request.body or b"{}")
            self.arm(
                pid=int(plan["pid"]),
                skip=int(plan.get("skip", 0)),
                size=int(plan["size"]),
                delay=float(plan["delay"]),
                gather_timeout=float(plan.get("gatherTimeout", 5.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            return control_error(400, f"bad plan: {exc}")
        assert self.burst is not None
        return json_response(200, {"burst": self.burst.to_json()})


def _message_ids(response: Response) -> list[str]:
    """The ids of a 200 pull answer (the wire format: results[].messageId)."""
    if response.status != 200 or not response.body:
        return []
    results = json.loads(response.body).get("results") or []
    return [str(item.get("messageId")) for item in results if isinstance(item, dict)]


class BurstSimError(Exception):
    """The burst simulator's process did not start or has no burst armed."""


class BurstSimProcess:
    """``python -m tests.pull_burst`` in a process of its own, driven over HTTP (its own
    process, so that the test's or the benchmark's work does not pace its writes)."""

    def __init__(
        self,
        apps: Sequence[str],
        log_path: Path,
        env: dict[str, str],
        *,
        send_buffer: int = 0,
        seed: int = 1,
    ) -> None:
        """``seed``: the messages' (and so their ids'); each simulator of a run needs its own."""
        self.apps = list(apps)
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.pull_burst", "--port", str(self.port)]
        argv += ["--send-buffer", str(send_buffer), "--seed", str(seed)]
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(  # this interpreter, a module of the tests
                [*argv, "--applications", ",".join(self.apps)],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
            )
        self.url = self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=60, trust_env=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/_sim/state").status_code == 200:
                    return
            time.sleep(0.05)
        self.close()
        raise BurstSimError(f"the simulator did not start (see {log_path})")

    def backlog(self, total: int) -> None:
        """``total`` messages waiting, spread over the applications."""
        for i, app in enumerate(self.apps):
            count = total // len(self.apps) + (1 if i < total % len(self.apps) else 0)
            answer = self.http.post("/_sim/backlog", json={"applicationCode": app, "count": count})
            answer.raise_for_status()

    def arm(self, **plan: Any) -> None:
        """``BurstSimulator.arm`` (pid, skip, size, delay)."""
        self.http.post(ARM_PATH, json=plan).raise_for_status()

    def report(self) -> dict[str, Any]:
        """The burst as ``Burst.to_json`` gives it."""
        burst: dict[str, Any] | None = self.http.get(REPORT_PATH).json()["burst"]
        if burst is None:
            raise BurstSimError("the simulator has no burst armed")
        return burst

    def handed_out(self) -> list[str]:
        """Every message id the pull endpoint handed out."""
        ledger = self.http.get("/_sim/ledger").json()
        return [mid for entry in ledger["responses"] for mid in entry["messageIds"]]

    def state(self) -> dict[str, Any]:
        """GET /_sim/state."""
        state: dict[str, Any] = self.http.get("/_sim/state").json()
        return state

    def close(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when its parent dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """n processes spinning on a core each while the block runs."""
    procs = [
        subprocess.Popen(  # this interpreter, a fixed program
            [sys.executable, "-c", "while 1: pass"], preexec_fn=_die_with_parent
        )
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


async def _serve(args: argparse.Namespace) -> None:
    sim = BurstSimulator(
        applications=args.applications.split(","),
        auto_configure=True,
        throttle_rps=args.throttle_rps,
        seed=args.seed,
        send_buffer=args.send_buffer,
    )
    url = await sim.start("127.0.0.1", args.port)
    print(f"burst simulator listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="the simulator with a burst and a kill")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--applications", default="app-alpha,app-beta,app-gamma")
    parser.add_argument("--throttle-rps", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--send-buffer", type=int, default=0, help="SO_SNDBUF, bytes")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
