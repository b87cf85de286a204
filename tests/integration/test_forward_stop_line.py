"""The daemon's stop line counts the forwarded items it quarantined."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx

from poller import logs
from poller.daemon import Daemon
from poller.settings import Settings

TOKEN = "forward-token-0123456789"


async def test_the_stop_line_counts_quarantined_forwards(tmp_path: Path) -> None:
    """Tried: `poller run` receiving one body that is not JSON and one array with an item that
    is not a message, then stopped; the stop line used to say `quarantined: 0`."""
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    settings = Settings(
        sink={"kind": "memory"},
        infobip={
            "base_url": "https://abc12.api.infobip.com",
            "api_key": "k-1234567890",
            "bootstrap": False,
        },
        forward={"applications": ["shop"], "token": TOKEN, "port": 0},
        spool={"path": tmp_path / "spool.db"},
        health={"enabled": False},
    )
    daemon = Daemon(settings)
    running = asyncio.create_task(daemon.run())
    while (
        daemon.runtime is None
        or daemon.runtime.receiver is None
        or not (daemon.runtime.receiver.listening)
    ):
        assert not running.done(), out.getvalue()
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{daemon.runtime.receiver.port}/infobip/forward/{TOKEN}"
    item = {"messageId": "m1", "applicationCode": "shop", "text": "hi"}
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(trust_env=False, headers=headers) as http:
        assert (await http.post(url, content=b"{not json")).status_code == 400
        answer = await http.post(url, content=json.dumps([item, "not a message"]))
        assert answer.json() == {"accepted": 1, "quarantined": 1}
    daemon.request_stop()
    assert await running == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (stopped,) = [line for line in lines if line["event"] == "poller stopped"]
    assert stopped["forward_messages"] == 1
    assert stopped["forward_quarantined"] == 2
