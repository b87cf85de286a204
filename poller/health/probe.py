"""The client side of the health server: what `poller check` and `poller status` ask."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx


def local_url(host: str, port: int, path: str = "/readyz") -> str:
    """URL to reach our own health server: a wildcard bind address becomes loopback."""
    if host in ("", "0.0.0.0"):  # nosec B104  # maps a wildcard bind to loopback; binds nothing
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def failing(body: Any) -> list[str]:
    """`name: detail` for each failing check of a /readyz body."""
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, dict):
        return []
    return [
        f"{name}: {entry.get('detail', '')}"
        for name, entry in checks.items()
        if isinstance(entry, dict) and not entry.get("ok")
    ]


async def check(url: str, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109 (httpx timeouts)
    """GET /readyz; (ready, one-line reason). A base URL gets /readyz appended."""
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/readyz"
    try:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not route a local probe.
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url)
    except httpx.ConnectError:
        return False, f"health server not reachable at {url}"
    except httpx.TimeoutException:
        return False, f"health server at {url} did not answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return False, f"health server at {url}: {type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        return True, "ready"
    if response.status_code == 503:
        reasons = failing(body)
        return False, "not ready: " + ("; ".join(reasons) if reasons else "no reason given")
    return False, f"unexpected HTTP {response.status_code} from {url}"
