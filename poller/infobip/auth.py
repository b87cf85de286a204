"""The four Infobip authentication schemes as httpx.Auth flows."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Generator

import httpx
import structlog

from poller import redact
from poller.infobip.errors import AuthError, InfobipError, api_error, transport_error

log = structlog.get_logger(__name__)


class HeaderAuth(httpx.Auth):
    """A fixed Authorization header: `App <key>`, `Basic <b64>` or `IBSSO <token>`."""

    def __init__(self, value: str) -> None:
        self._value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set the header."""
        request.headers["Authorization"] = self._value
        yield request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(***)"

    @classmethod
    def app(cls, api_key: str) -> HeaderAuth:
        """`Authorization: App <api key>`."""
        return cls(f"App {api_key}")

    @classmethod
    def basic(cls, username: str, password: str) -> HeaderAuth:
        """`Authorization: Basic base64(user:password)`."""
        raw = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(f"Basic {raw}")

    @classmethod
    def ibsso(cls, token: str) -> HeaderAuth:
        """`Authorization: IBSSO <token>`."""
        return cls(f"IBSSO {token}")


class OAuth2ClientCredentials(httpx.Auth):
    """Bearer token from the client-credentials grant: cached, refreshed before expiry,
    fetched again once when a call answers 401."""

    requires_response_body = False

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
        url_setting: str = "the token URL",
    ) -> None:
        """``url_setting``: the setting that gives ``token_url``, named when it cannot be
        reached."""
        self._token_url = token_url
        self._url_setting = url_setting
        self._client_id = client_id
        self._secret = client_secret
        self._margin = refresh_margin
        self._timeout = timeout
        self._transport = transport
        self._headers = dict(headers or {})
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(client_id={self._client_id!r}, secret=***)"

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Attach a valid token; on a 401, fetch a new one and send the request once more."""
        token = await self._valid_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            log.info("oauth2 token refused, fetching a new one")
            token = await self._valid_token(stale=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Only the async client is supported."""
        raise RuntimeError("OAuth2ClientCredentials works with httpx.AsyncClient only")

    async def _valid_token(self, stale: str | None = None) -> str:
        async with self._lock:
            fresh = time.monotonic() < self._refresh_at
            # `stale` is the token a server just refused; another caller may have replaced it.
            if self._token is not None and self._token != stale and fresh:
                return self._token
            return await self._fetch()

    async def _fetch(self) -> str:
        operation = "POST /auth/1/oauth2/token"
        form = {
            "client_id": self._client_id,
            "client_secret": self._secret,
            "grant_type": "client_credentials",
        }
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout, transport=self._transport, headers=self._headers
            ) as http:
                response = await http.post(self._token_url, data=form)
        except httpx.HTTPError as exc:
            failed = "OAuth2 token request failed"
            raise transport_error(failed, exc, self._url_setting) from None
        if response.status_code != 200:
            error = api_error(response.status_code, response.content, operation=operation)
            if response.status_code in (400, 401, 403):
                raise AuthError(
                    response.status_code, error.message_id, error.text, operation=operation
                )
            raise error
        try:
            data = response.json()
            token = str(data["access_token"])
            expires_in = float(data.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise InfobipError("OAuth2 token response has no access_token") from None
        # The live token is a secret like the client secret: masked in any log line, and
        # the one it replaces forgotten (after the one before it, which lines may still hold).
        redact.rotate(f"oauth2 {self._token_url} {self._client_id}", token)
        self._token = token
        # A token shorter-lived than twice the margin is renewed at half its life instead of
        # on every call.
        margin = min(self._margin, max(expires_in, 0.0) / 2)
        self._refresh_at = time.monotonic() + expires_in - margin
        self.fetches += 1
        log.debug("oauth2 token fetched", expires_in=expires_in)
        return token
