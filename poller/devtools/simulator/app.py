"""The Simulator: an Infobip-compatible server with a ledger, faults, a message generator and a
forwarder for HTTP_FORWARD applications."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any

import structlog

from poller.devtools.simulator.auth import Authenticator, Credentials, TokenBucket
from poller.devtools.simulator.control import PREFIX, handle_control
from poller.devtools.simulator.faults import (
    REFUSING,
    FaultSet,
    delay_of,
    make_fault,
    refusal,
    spoil,
)
from poller.devtools.simulator.forward import Forwarder, ForwarderSettings
from poller.devtools.simulator.httpserver import HttpServer, Request, Response
from poller.devtools.simulator.ledger import Ledger
from poller.devtools.simulator.messages import MessageFactory
from poller.devtools.simulator.outbox import Outbox
from poller.devtools.simulator.replies import forbidden, too_many_requests, unauthorized
from poller.devtools.simulator.routes import INBOX_PATH, TOKEN_PATH, InfobipApi
from poller.devtools.simulator.state import Account, Action

log = structlog.get_logger(__name__)

GENERATOR_TICK = 0.05


class Simulator:
    """An Infobip account on loopback: the pull inbox, the configuration/action API, and the
    forward of HTTP_FORWARD applications' messages to their forwardUrl."""

    # The credential defaults are the well-known ones of a loopback test server.
    def __init__(
        self,
        *,
        api_key: str = "sim-api-key",
        forbidden_api_key: str | None = "sim-forbidden-key",
        username: str = "sim-user",
        password: str = "sim-password",  # noqa: S107
        ibsso_token: str = "sim-ibsso-token",  # noqa: S107
        client_id: str = "sim-client",
        client_secret: str = "sim-client-secret",  # noqa: S107
        token_ttl: float = 3600.0,
        applications: Sequence[str] = ("app-alpha", "app-beta", "app-gamma"),
        auto_configure: bool = False,
        rate: float = 0.0,
        throttle_rps: float = 10.0,
        pull_delay: float = 0.0,
        forward: ForwarderSettings | None = None,
        seed: int | None = None,
    ) -> None:
        """pull_delay: seconds added to every answer of the pull endpoint, as a network
        round trip would; the messages leave the inbox when the request arrives.
        forward: batch size, POSTs in flight, timeout and retries of the forwarder."""
        if pull_delay < 0:
            raise ValueError("pull_delay must not be negative")
        seeds = random.Random(seed)  # nosec B311  # seeded, reproducible test traffic
        self.ledger = Ledger()
        self.outbox = Outbox(self.ledger)
        factory = MessageFactory(random.Random(seeds.getrandbits(64)))  # nosec B311  # seeded, reproducible test traffic
        self.account = Account(applications, factory, self.outbox)
        self.faults = FaultSet(random.Random(seeds.getrandbits(64)))  # nosec B311  # seeded, reproducible test traffic
        self._pick_rng = random.Random(seeds.getrandbits(64))  # nosec B311  # seeded, reproducible test traffic
        self.forwarder = Forwarder(
            self.outbox,
            self.ledger,
            self.faults,
            forward or ForwarderSettings(),
            random.Random(seeds.getrandbits(64)),  # nosec B311  # seeded, reproducible test traffic
        )
        credentials = Credentials(
            api_key, forbidden_api_key, username, password, ibsso_token, client_id, client_secret
        )
        self.auth = Authenticator(credentials, token_ttl)
        self.throttle = TokenBucket(throttle_rps)
        self.api = InfobipApi(self.account, self.ledger, self.auth)
        self.rate = rate
        self.pull_delay = pull_delay
        self.auto_configure = auto_configure
        self._server: HttpServer | None = None
        self._generator: asyncio.Task[None] | None = None
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Configure (when asked), start serving and generating; returns the base URL."""
        if self.auto_configure:
            for code in list(self.account.applications):
                self.account.configure_pull(code)
        self._server = HttpServer(self._handle, host, port)
        await self._server.start()
        self.base_url = self._server.url
        await self.forwarder.start()
        self._generator = asyncio.create_task(self._generate(), name="simulator-generator")
        log.info("simulator started", base_url=self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop the generator, the forwarder (messages not delivered stay queued) and the
        server (open connections are closed)."""
        if self._generator is not None:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
            self._generator = None
        await self.forwarder.stop()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # In-process twins of the control endpoints.

    def inject(self, app: str, count: int, *, extra: dict[str, Any] | None = None) -> list[str]:
        """Create count messages for app; returns the ids that were routed: into the pull
        inbox, or queued for the forwardUrl when the application has an HTTP_FORWARD action."""
        if app not in self.account.applications:
            raise ValueError(f"application {app!r} does not exist")
        ids = []
        for _ in range(count):
            self.account.counters.injected += 1
            message_id = self._create(app, extra)
            if message_id is not None:
                ids.append(message_id)
        return ids

    def inject_bulk(self, app: str, count: int) -> int:
        """Create count messages for app at once, for a large backlog; returns how many were
        routed, as inject does (0 when the application has no action).

        The messages are kept as JSON bytes, spliced from a few dozen shapes, so a backlog of
        1,000,000 takes seconds and well under 1 GB; ids are not returned (the ledger records
        every id handed out or forwarded) and no creation time is recorded per message."""
        if app not in self.account.applications:
            raise ValueError(f"application {app!r} does not exist")
        if count < 0:
            raise ValueError("count must not be negative")
        self.account.counters.injected += count
        return self.account.deliver_bulk(app, count)

    def inject_raw(self, messages: list[dict[str, Any]]) -> list[str]:
        """Put messages into the inbox exactly as given (no routing); returns their ledger ids.

        A message without a string messageId gets the stand-in id ``raw-<n>``.
        """
        ids = []
        for message in messages:
            message_id = message.get("messageId")
            if not isinstance(message_id, str):
                message_id = f"raw-{self.account.counters.injected + 1}"
            self.account.counters.injected += 1
            self.account.inbox.append((message_id, message))
            ids.append(message_id)
        return ids

    def add_fault(
        self,
        kind: str,
        *,
        count: int | None = 1,
        rate: float | None = None,
        path: str | None = None,
        **params: Any,
    ) -> None:
        """Install a fault: count one-shot firings, or with probability rate until cleared."""
        self.faults.add(make_fault(kind, count=count, rate=rate, path=path, **params))

    def clear_faults(self) -> None:
        """Remove every installed fault."""
        self.faults.clear()

    def configure_forward(self, app: str, url: str, callback_data: str | None = None) -> Action:
        """Route app's new messages to url: one HTTP_FORWARD action (replacing any other) in
        its configuration, created when it has none. What POST .../actions does by hand."""
        if app not in self.account.applications:
            raise ValueError(f"application {app!r} does not exist")
        return self.account.configure_forward(app, url, callback_data)

    def clear_forward(self, app: str) -> int:
        """Delete app's HTTP_FORWARD actions (its PULL action, if any, routes again); returns
        how many there were. Messages already queued are still forwarded."""
        if app not in self.account.applications:
            raise ValueError(f"application {app!r} does not exist")
        return self.account.clear_forward(app)

    def set_rate(self, rate: float) -> None:
        """Change the background generator's messages per second (0 stops it)."""
        self.rate = max(0.0, rate)

    def set_pull_delay(self, delay: float) -> None:
        """Change the seconds added to every pull answer (0 for none)."""
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.pull_delay = delay

    def revoke_tokens(self) -> int:
        """Invalidate every OAuth2 token; returns how many were live."""
        return self.auth.revoke_all()

    def add_application(self, code: str) -> bool:
        """Add an application to the account; False when it exists already."""
        return self.account.add_application(code)

    @property
    def inbox_depth(self) -> int:
        """Messages waiting in the pull inbox."""
        return len(self.account.inbox)

    @property
    def forward_depth(self) -> int:
        """Messages waiting in the outbox for a forward (not those in a batch on its way)."""
        return len(self.outbox)

    def state(self) -> dict[str, Any]:
        """A JSON snapshot: applications, configurations, actions, inbox and counters."""
        snapshot = self.account.snapshot()
        snapshot.update(
            handedOut=self.ledger.handed_out,
            faults=self.faults.snapshot(),
            faultsFired=self.faults.fired,
            generatorRate=self.rate,
            pullDelay=self.pull_delay,
            throttleRps=self.throttle.rate,
            pullResponses=self.ledger.responses,
            firstPullAt=self.ledger.first_at,
            lastPullAt=self.ledger.last_at,
            tokensIssued=self.auth.issued,
            tokensRevoked=self.auth.revoked,
            forward={**self.forwarder.snapshot(), **self.ledger.forward_counts()},
        )
        return snapshot

    def _create(self, app: str, extra: dict[str, Any] | None = None) -> str | None:
        """Make a message for app, note its creation time and route it; its id when routed."""
        message = self.account.new_message(app, extra)
        message_id = str(message["messageId"])
        self.ledger.record_created(message_id, time.monotonic(), time.time())
        return message_id if self.account.deliver(app, message) else None

    async def _handle(self, request: Request) -> Response:
        if request.path.startswith(PREFIX):
            return await handle_control(self, request)
        response = await self._answer(request)
        if self.pull_delay > 0 and request.path == INBOX_PATH:
            # The round trip: what the answer holds has left the inbox already. Each connection
            # is served by its own task, so one pull's wait holds back no other request.
            await asyncio.sleep(self.pull_delay)
        return response

    async def _answer(self, request: Request) -> Response:
        self.account.counters.requests += 1
        if request.path != TOKEN_PATH:
            status = self.auth.check(request.headers.get("authorization"))
            if status:
                return forbidden() if status == 403 else unauthorized()
            # The throttle is per account, so it applies once the account is known.
            if not self.throttle.allow():
                self.account.counters.throttled += 1
                return too_many_requests()
        fault = self.faults.pick(request.path)
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(delay_of(fault))
            fault = None
        if fault is not None and fault.kind in REFUSING:
            return refusal(fault)
        if request.path == TOKEN_PATH:
            response = self.api.token(request)
        elif fault is not None and fault.kind == "slow_answer":
            response = self.api.handle(request, None)
            await asyncio.sleep(delay_of(fault))
            return response
        else:
            response = self.api.handle(request, fault)
        return spoil(response, fault) if fault is not None else response

    async def _generate(self) -> None:
        credit = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(GENERATOR_TICK)
            now = time.monotonic()
            credit += self.rate * (now - last)
            last = now
            routed = self.account.routed_applications()
            if not routed or self.rate <= 0:
                credit = 0.0
                continue
            while credit >= 1.0:
                credit -= 1.0
                app = self._pick_rng.choice(routed)
                self.account.counters.generated += 1
                self._create(app)
