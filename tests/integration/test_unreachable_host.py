"""An Infobip host that cannot be reached: the error names the host and the setting that gives
it; a name DNS does not know fails at once instead of being retried."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from poller.infobip import InfobipClient, TransportError
from poller.infobip.settings import InfobipSettings

UNKNOWN_HOST = "xyz.api.infobip.invalid"  # .invalid never resolves (RFC 6761)


def settings(base_url: str, **overrides: object) -> InfobipSettings:
    values: dict[str, object] = {
        "base_url": base_url,
        "api_key": "k-1234567890",
        "backoff_base": 0.5,
        "backoff_max": 4.0,
        "max_retries": 5,
        "connect_timeout": 2.0,
    }
    return InfobipSettings.model_validate({**values, **overrides})


class NoSuchHost(httpx.AsyncBaseTransport):
    """What httpx raises when getaddrinfo answers EAI_NONAME (a DNS answer the test cannot
    count on the machine's resolver to give: without a DNS server it says EAI_AGAIN)."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        cause = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        raise httpx.ConnectError("[Errno -2] Name or service not known") from cause


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unknown_host_fails_at_once_naming_it_and_the_setting() -> None:
    """Tried: a pull from a base URL whose host DNS does not know, with 5 retries allowed; it
    used to retry for 12-15 s and end with "All connection attempts failed", no host named."""
    transport = NoSuchHost()
    reasons: list[str] = []
    client = InfobipClient(
        settings(f"https://{UNKNOWN_HOST}"), transport=transport, on_retry=reasons.append
    )
    async with client:
        with pytest.raises(TransportError) as caught:
            await client.pull(limit=10)
    assert str(caught.value) == (
        f"GET /push/1/inbox/reports: {UNKNOWN_HOST} cannot be resolved (no such host);"
        " check POLLER_INFOBIP__BASE_URL"
    )
    assert transport.calls == 1
    assert reasons == []


async def test_an_unknown_host_on_this_machine_fails_at_once() -> None:
    """Tried: the same with the machine's own resolver, where it answers that the name does
    not exist (skipped where it cannot tell, e.g. no DNS server at all)."""
    try:
        socket.getaddrinfo(UNKNOWN_HOST, 443)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver answers {exc.strerror}")
    else:
        pytest.skip(f"{UNKNOWN_HOST} resolves on this machine")
    started = time.monotonic()
    async with InfobipClient(settings(f"https://{UNKNOWN_HOST}")) as client:
        with pytest.raises(TransportError, match=f"{UNKNOWN_HOST} cannot be resolved"):
            await client.list_configurations("shop")
    assert time.monotonic() - started < 5  # no back-off: 0.5 + 1 + 2 + 4 + 4 s otherwise


async def test_a_refused_connection_names_the_host_and_the_setting() -> None:
    """Tried: a base URL whose port nothing listens on; the last error used to say "All
    connection attempts failed" alone."""
    port = closed_port()
    async with InfobipClient(settings(f"http://127.0.0.1:{port}", max_retries=1)) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_configurations("shop")
    assert str(caught.value) == (
        f"GET /push/1/applications/shop/configurations: cannot connect to 127.0.0.1:{port}:"
        " connection refused; check POLLER_INFOBIP__BASE_URL"
    )


async def test_an_unknown_token_host_names_the_token_url() -> None:
    """Tried: auth=oauth2 with a token URL whose host does not resolve (skipped where the
    resolver cannot tell): the error names POLLER_INFOBIP__TOKEN_URL and comes at once."""
    try:
        socket.getaddrinfo(UNKNOWN_HOST, 443)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver answers {exc.strerror}")
    port = closed_port()
    values = settings(
        f"http://127.0.0.1:{port}",
        auth="oauth2",
        client_id="id-1",
        client_secret="s-1234567890",
        token_url=f"https://{UNKNOWN_HOST}/auth/1/oauth2/token",
    )
    reasons: list[str] = []
    async with InfobipClient(values, on_retry=reasons.append) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_configurations("shop")
    assert str(caught.value) == (
        f"OAuth2 token request failed: {UNKNOWN_HOST} cannot be resolved (no such host);"
        " check POLLER_INFOBIP__TOKEN_URL"
    )
    assert reasons == []
