"""No secret in /readyz: the details of a failing sink and a refused batch are masked."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from poller import redact


async def test_readyz_details_carry_no_secret(tmp_path: Path) -> None:
    # Tried: a sink probe failing with an error that quotes the URL and a registered secret,
    # and a pulled batch the spool refused with an error that quotes a password-bearing URL.
    from poller.bootstrap import Bootstrapper
    from poller.flusher import Flusher
    from poller.health.readiness import Readiness
    from poller.health.server import HealthServer
    from poller.infobip import InfobipClient
    from poller.settings import Settings
    from poller.sink.memory import MemorySink
    from poller.sources.pull import PullSource
    from poller.spool import Spool
    from poller.stop import Stop

    secret = f"SeCrEt-probe-{uuid.uuid4().hex[:8]}"
    redact.register(secret)

    class LeakySink(MemorySink):
        async def problem(self) -> str | None:
            raise ConnectionError(f"redis://:{secret}@h:6379/0 refused AUTH {secret}")

    settings = Settings(infobip={"base_url": "http://127.0.0.1:9", "api_key": "k"})
    stop = Stop(5)
    spool = Spool.open(tmp_path / "s.db", max_rows=10, max_bytes=10**6)
    sink = LeakySink()
    client = InfobipClient(settings.infobip)
    pull = PullSource(
        client,
        spool,
        None,
        Flusher(spool, sink, stop),
        stop,
        pull_limit=1,
        max_pulls=1,
        in_flight=1,
    )
    pull.spool_error = "disk full at redis://:pw-in-url-1234@h/0"
    readiness = Readiness(
        stop=stop,
        spool=spool,
        sink=sink,
        sources=[pull],
        bootstrap=Bootstrapper(settings, client, stop),
    )
    server = HealthServer(readiness, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as client_:
            response = await client_.get(f"http://127.0.0.1:{server.port}/readyz")
    finally:
        await server.stop()
        await client.aclose()
        spool.close()
    assert response.status_code == 503
    body = response.text
    assert "ConnectionError: redis://:***@h:6379/0 refused AUTH ***" in body
    assert "redis://:***@h/0" in body
    assert secret not in body
    assert "pw-in-url-1234" not in body
