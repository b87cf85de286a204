"""The live OAuth2 token is masked in every line, and a refreshed one takes the place of the
one before it: a process that refreshes its token every hour for a year does not grow the
masking search by 9,000 tokens (rebuilding it took 1.9 s then, on the event loop)."""

from __future__ import annotations

import time

import httpx

from poller import redact
from poller.devtools.simulator import Simulator
from poller.infobip import InfobipClient
from poller.settings import InfobipSettings

APP = "app-alpha"


async def test_a_refreshed_token_replaces_the_one_before_it_in_the_masking(
    simulator: Simulator,
) -> None:
    """Tried: 41 tokens, each revoked by the simulator and fetched again after the 401 it
    gave. The current token and the one before it (lines of requests still in flight may
    hold it) are masked; the 39 before them, revoked, are not searched for any more (before:
    every token ever fetched was, and each fetch rebuilt a search over all of them)."""
    settings = InfobipSettings(
        base_url=simulator.base_url,
        auth="oauth2",
        client_id="sim-client",
        client_secret="sim-client-secret",
        backoff_base=0.02,
        max_retries=1,
    )
    tokens: list[str] = []
    async with (
        InfobipClient(settings) as client,
        httpx.AsyncClient(base_url=simulator.base_url) as control,
    ):
        for _ in range(40):
            await client.list_configurations(APP)
            tokens += simulator.auth.live_tokens()
            await control.post("/_sim/tokens/revoke")
        await client.list_configurations(APP)
        tokens += simulator.auth.live_tokens()
    assert len(set(tokens)) == 41
    for live in tokens[-2:]:
        assert live not in redact.text(f"Authorization: Bearer {live}")
        assert live.encode() not in redact.data(b'{"echo": "' + live.encode() + b'"}')
    for revoked in tokens[:-2]:
        assert redact.text(revoked) == revoked
    started = time.process_time()
    redact.text("x" * 100)  # the search is built again after the last registration
    assert time.process_time() - started < 0.5
