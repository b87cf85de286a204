"""Credentials of the simulated account, OAuth2 tokens, and the request throttle."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from hmac import compare_digest

Clock = Callable[[], float]


@dataclass(frozen=True)
class Credentials:
    """Every secret that authenticates against the simulator."""

    api_key: str
    forbidden_api_key: str | None
    username: str
    password: str
    ibsso_token: str
    client_id: str
    client_secret: str


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and compare_digest(given.encode(), expected.encode())


class Authenticator:
    """Checks Authorization headers and issues OAuth2 client-credentials tokens."""

    def __init__(self, credentials: Credentials, token_ttl: float, clock: Clock = time.monotonic):
        self.credentials = credentials
        self.token_ttl = token_ttl
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self.issued = 0
        self.revoked = 0

    def check(self, authorization: str | None) -> int:
        """0 when allowed, else the status to answer: 401 or 403."""
        if not authorization:
            return 401
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        creds = self.credentials
        if scheme == "app":
            if _same(value, creds.api_key):
                return 0
            return 403 if _same(value, creds.forbidden_api_key) else 401
        if scheme == "basic":
            return 0 if self._basic_ok(value) else 401
        if scheme == "ibsso":
            return 0 if _same(value, creds.ibsso_token) else 401
        if scheme == "bearer":
            expiry = self._tokens.get(value)
            return 0 if expiry is not None and self._clock() < expiry else 401
        return 401

    def _basic_ok(self, value: str) -> bool:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        creds = self.credentials
        return bool(sep) and _same(user, creds.username) and _same(password, creds.password)

    def client_ok(self, client_id: str, client_secret: str) -> bool:
        """True for the account's OAuth2 client."""
        creds = self.credentials
        return _same(client_id, creds.client_id) and _same(client_secret, creds.client_secret)

    def issue_token(self) -> tuple[str, int]:
        """A new bearer token and its lifetime in whole seconds (never overstated)."""
        now = self._clock()
        # Forget expired tokens so a long run does not grow without bound.
        self._tokens = {token: exp for token, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + self.token_ttl
        self.issued += 1
        return token, int(self.token_ttl)

    def live_tokens(self) -> list[str]:
        """The bearer tokens issued and not yet expired or revoked, oldest first."""
        now = self._clock()
        return [token for token, expiry in self._tokens.items() if expiry > now]

    def revoke_all(self) -> int:
        """Invalidate every bearer token; returns how many there were."""
        count = len(self._tokens)
        self._tokens.clear()
        self.revoked += count
        return count


class TokenBucket:
    """rate requests per second with a burst of rate; rate <= 0 means unlimited."""

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()

    def allow(self) -> bool:
        """Take one token if there is one."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
