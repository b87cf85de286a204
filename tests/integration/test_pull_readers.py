"""Pull answers are read by threads of the client's own: into the journal hook while the event
loop is blocked, with the same credentials (OAuth2's token included) and the same proxy as
every other call."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from poller.devtools.embedded import free_port
from poller.devtools.simulator import Simulator
from poller.infobip import InfobipClient
from poller.settings import InfobipSettings

pytestmark = pytest.mark.timeout(60)

APP = "app-alpha"


class SimulatorThread:
    """The simulator on an event loop of its own thread, so that the test's loop can block."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = Simulator(auto_configure=True, **kwargs)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.base_url = self.call(self.sim.start())

    def call(self, coro: Any) -> Any:
        """Await ``coro`` on the simulator's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def inject(self, app: str, count: int) -> list[str]:
        """Simulator.inject, on the simulator's loop."""

        async def inject() -> list[str]:
            return self.sim.inject(app, count)

        ids: list[str] = self.call(inject())
        return ids

    def stop(self) -> None:
        self.call(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def sim_thread() -> Iterator[SimulatorThread]:
    # The answer leaves the inbox when the request arrives and is written 0.3 s later.
    started = SimulatorThread(seed=7, pull_delay=0.3)
    try:
        yield started
    finally:
        started.stop()


def _settings(base_url: str, **values: Any) -> InfobipSettings:
    values.setdefault("api_key", "sim-api-key")
    return InfobipSettings(base_url=base_url, backoff_base=0.02, max_retries=1, **values)


def _whole(body: bytes) -> int | None:
    """How many results a complete answer body holds; None while it is not complete."""
    try:
        return len(json.loads(body)["results"])
    except (ValueError, KeyError):
        return None


async def test_a_pull_answer_reaches_its_journal_hook_while_the_event_loop_is_blocked(
    sim_thread: SimulatorThread,
) -> None:
    # Tried: a 1,000-message pull (about 450 KB) whose answer the simulator writes while the
    # test's event loop is blocked (as a long parse, a GC pause or a lock held by a spool
    # thread blocks it). Before the answers had threads of their own, not one byte reached
    # the hook until the loop ran again: a SIGKILL then took the whole answer.
    sim_thread.inject(APP, 1000)
    received = bytearray()
    lock = threading.Lock()

    def on_chunk(chunk: bytes) -> None:
        with lock:
            received.extend(chunk)

    async with InfobipClient(_settings(sim_thread.base_url)) as client:
        pull = asyncio.create_task(client.pull(1000, on_chunk=on_chunk))
        while sim_thread.sim.ledger.handed_out == 0:  # the request reached the simulator
            await asyncio.sleep(0.01)
        # The loop is blocked from here until the hook holds the whole answer (or 20 s).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                count = _whole(bytes(received))
            if count is not None:
                break
            time.sleep(0.01)  # blocking on purpose: the event loop does not run
        assert count == 1000, f"{len(received)} bytes reached the hook while the loop was blocked"
        response = await pull
    assert len(response.items) == 1000


async def test_oauth2_pulls_share_the_token_and_fetch_a_new_one_once_after_a_401(
    configured_simulator: Simulator,
) -> None:
    # Tried: an OAuth2 account whose pulls go from reader threads while its other calls go
    # from the event loop; then the token revoked on the server.
    sim = configured_simulator
    ids = sim.inject(APP, 3)
    settings = _settings(
        sim.base_url, auth="oauth2", client_id="sim-client", client_secret="sim-client-secret"
    )
    async with InfobipClient(settings) as client:
        await client.list_configurations(APP)
        first = await client.pull(10)
        assert sim.auth.issued == 1  # the pull used the token the loop's call fetched
        sim.revoke_tokens()
        more = sim.inject(APP, 2)
        second = await client.pull(10)
        assert sim.auth.issued == 2
        await client.list_configurations(APP)
        assert sim.auth.issued == 2  # and the loop's calls use the one the pull fetched
    assert [m["messageId"] for m in first.results] == ids
    assert [m["messageId"] for m in second.results] == more


async def test_pulls_go_through_the_proxy_of_the_environment_like_every_other_call(
    configured_simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tried: a base URL where nothing listens, and HTTP_PROXY naming the simulator (which
    # answers absolute-form requests as a proxy would pass them on). Both the loop's client
    # and the pull readers' must send there.
    sim = configured_simulator
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sim.base_url)
    ids = sim.inject(APP, 2)
    async with InfobipClient(_settings(f"http://127.0.0.1:{free_port()}")) as client:
        configs = await client.list_configurations(APP)
        pulled = await client.pull(10)
    assert len(configs) == 1
    assert [m["messageId"] for m in pulled.results] == ids
