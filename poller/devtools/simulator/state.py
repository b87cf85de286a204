"""The simulated account: applications, configurations, actions, the pull inbox and the
outbox of messages routed to a forwardUrl."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from poller.devtools.simulator.messages import InboxMessage, MessageFactory
from poller.devtools.simulator.outbox import Outbox

PULL = "PULL"
HTTP_FORWARD = "HTTP_FORWARD"
ACTION_TYPES = frozenset({PULL, HTTP_FORWARD})


class ApiError(Exception):
    """An Infobip error answer: status plus requestError.serviceException fields."""

    def __init__(self, status: int, message_id: str, text: str) -> None:
        super().__init__(f"{status} {message_id}: {text}")
        self.status = status
        self.message_id = message_id
        self.text = text


def application_missing() -> ApiError:
    """404 as documented for an unknown application code."""
    return ApiError(404, "1", "Application does not exist")


def configuration_missing() -> ApiError:
    """404 as documented for an unknown configuration key."""
    return ApiError(404, "6", "Configuration does not exist")


def action_missing() -> ApiError:
    """404 for an unknown action key (messageId 5 in Infobip's numbering)."""
    return ApiError(404, "5", "Action does not exist")


def invalid_action() -> ApiError:
    """400 as documented for a malformed ActionRequest."""
    return ApiError(400, "8", "Invalid action request")


def valid_forward_url(url: str) -> bool:
    """True for an http:// or https:// URL with a host."""
    return url.startswith(("http://", "https://")) and bool(url.split("://", 1)[1].split("/")[0])


@dataclass
class Action:
    """A PULL or HTTP_FORWARD action of a configuration."""

    key: str
    type: str
    callback_data: str | None = None
    forward_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """ActionResponse."""
        body: dict[str, Any] = {"key": self.key, "type": self.type}
        if self.callback_data is not None:
            body["callbackData"] = self.callback_data
        if self.forward_url is not None:
            body["forwardUrl"] = self.forward_url
        return body


@dataclass
class Configuration:
    """The container of an application's actions."""

    key: str
    actions: dict[str, Action] = field(default_factory=dict)


@dataclass
class Application:
    """An application of the account; Infobip allows it one configuration."""

    code: str
    configurations: dict[str, Configuration] = field(default_factory=dict)

    def pull_action(self) -> Action | None:
        """The first PULL action, which routes the application's messages to the inbox."""
        return self._first(PULL)

    def forward_action(self) -> Action | None:
        """The first HTTP_FORWARD action, which routes the messages to its forwardUrl."""
        return self._first(HTTP_FORWARD)

    def route(self) -> Action | None:
        """The action that routes new messages: HTTP_FORWARD when there is one, else PULL.

        Infobip documents no precedence for an application with both kinds; the simulator
        lets the forward win, since it names a receiver on purpose (and a bootstrap that adds
        a PULL action beside it then shows up as messages missing from the inbox)."""
        return self.forward_action() or self.pull_action()

    def snapshot(self) -> dict[str, Any]:
        """routed, route (PULL, HTTP_FORWARD or None) and the configurations as JSON."""
        route = self.route()
        return {
            "routed": route is not None,
            "route": route.type if route is not None else None,
            "configurations": [
                {"key": c.key, "actions": [a.to_json() for a in c.actions.values()]}
                for c in self.configurations.values()
            ],
        }

    def _first(self, type_: str) -> Action | None:
        for configuration in self.configurations.values():
            for action in configuration.actions.values():
                if action.type == type_:
                    return action
        return None


@dataclass
class Counters:
    """What happened to messages and requests, for the state snapshot."""

    generated: int = 0
    injected: int = 0
    not_routed: int = 0
    forwarded: int = 0  # routed to a forwardUrl (queued for the forwarder)
    throttled: int = 0
    requests: int = 0


class Account:
    """One Infobip account: its applications, its account-wide pull inbox and its outbox."""

    def __init__(
        self, applications: Iterable[str], factory: MessageFactory, outbox: Outbox
    ) -> None:
        self.factory = factory
        self.outbox = outbox
        self.applications: dict[str, Application] = {
            code: Application(code) for code in applications
        }
        # Each entry is (ledger id, message): the ledger id is the messageId, or a stand-in
        # for raw test messages that lack one.
        self.inbox: deque[tuple[str, InboxMessage]] = deque()
        self.counters = Counters()

    def add_application(self, code: str) -> bool:
        """Add an application; False when it exists already."""
        if code in self.applications:
            return False
        self.applications[code] = Application(code)
        return True

    def application(self, code: str) -> Application:
        """The application, or the documented 404."""
        try:
            return self.applications[code]
        except KeyError:
            raise application_missing() from None

    def configuration(self, code: str, key: str) -> Configuration:
        """The configuration, or the documented 404 (application first)."""
        try:
            return self.application(code).configurations[key]
        except KeyError:
            raise configuration_missing() from None

    def create_configuration(self, code: str) -> Configuration:
        """Create the application's configuration; 409 when it has one already."""
        application = self.application(code)
        if application.configurations:
            raise ApiError(409, "CONFLICT", "Configuration already exists")
        configuration = Configuration(self.factory.hex_key())
        application.configurations[configuration.key] = configuration
        return configuration

    def delete_configuration(self, code: str, key: str) -> None:
        """Delete a configuration and its actions."""
        self.configuration(code, key)
        del self.applications[code].configurations[key]

    def add_action(
        self, code: str, key: str, type_: str, callback_data: str | None, forward_url: str | None
    ) -> Action:
        """Add an action. A second PULL action is allowed: Infobip documents no limit."""
        configuration = self.configuration(code, key)
        action = Action(self.factory.uuid(), type_, callback_data, forward_url)
        configuration.actions[action.key] = action
        return action

    def delete_action(self, code: str, key: str, action_key: str) -> None:
        """Delete an action, or the documented 404."""
        configuration = self.configuration(code, key)
        if configuration.actions.pop(action_key, None) is None:
            raise action_missing()

    def configure_pull(self, code: str, callback_data: str | None = None) -> Action:
        """Ensure a configuration with a PULL action (what auto_configure does)."""
        application = self.application(code)
        existing = application.pull_action()
        if existing is not None:
            return existing
        if application.configurations:
            key = next(iter(application.configurations))
        else:
            key = self.create_configuration(code).key
        return self.add_action(code, key, PULL, callback_data, None)

    def configure_forward(self, code: str, url: str, callback_data: str | None = None) -> Action:
        """Give the application one HTTP_FORWARD action to url (replacing any other), in its
        configuration (created when it has none); its PULL actions stay, the forward wins."""
        if not valid_forward_url(url):
            raise ValueError(f"forwardUrl must be an http:// or https:// URL, not {url!r}")
        application = self.application(code)
        self.clear_forward(code)
        if application.configurations:
            key = next(iter(application.configurations))
        else:
            key = self.create_configuration(code).key
        return self.add_action(code, key, HTTP_FORWARD, callback_data, url)

    def clear_forward(self, code: str) -> int:
        """Delete the application's HTTP_FORWARD actions; returns how many there were."""
        removed = 0
        for configuration in self.application(code).configurations.values():
            for key, action in list(configuration.actions.items()):
                if action.type == HTTP_FORWARD:
                    del configuration.actions[key]
                    removed += 1
        return removed

    def deliver(self, code: str, message: dict[str, Any]) -> bool:
        """Route a new message: to the forwardUrl of an HTTP_FORWARD action, else into the
        inbox when the application has a PULL action; False when neither."""
        application = self.applications.get(code)
        action = application.route() if application is not None else None
        if action is None:
            self.counters.not_routed += 1
            return False
        item = (str(message["messageId"]), message)
        if action.forward_url is not None:
            self.outbox.put(action.forward_url, [item])
            self.counters.forwarded += 1
        else:
            self.inbox.append(item)
        return True

    def deliver_bulk(self, code: str, count: int) -> int:
        """Route count new messages of the application at once, pre-encoded, as deliver does;
        how many were routed (0 when the application has no action)."""
        application = self.applications.get(code)
        action = application.route() if application is not None else None
        if action is None:
            self.counters.not_routed += count
            return 0
        encoded = self.factory.encoded(code, count, callback_data=action.callback_data)
        if action.forward_url is not None:
            self.outbox.put(action.forward_url, encoded)
            self.counters.forwarded += count
        else:
            self.inbox.extend(encoded)
        return count

    def new_message(self, code: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A message for the application, carrying its routing action's callbackData."""
        action = self.application(code).route()
        callback_data = action.callback_data if action is not None else None
        return self.factory.make(code, callback_data=callback_data, extra=extra)

    def take(self, limit: int) -> list[tuple[str, InboxMessage]]:
        """The destructive read: remove and return up to limit messages, oldest first."""
        count = min(limit, len(self.inbox))
        return [self.inbox.popleft() for _ in range(count)]

    def routed_applications(self) -> list[str]:
        """Codes of the applications whose messages reach the pull inbox or a forwardUrl."""
        return [code for code, app in self.applications.items() if app.route() is not None]

    def snapshot(self) -> dict[str, Any]:
        """Applications, configurations, actions, inbox depth and counters as JSON."""
        return {
            "applications": {code: app.snapshot() for code, app in self.applications.items()},
            "inboxDepth": len(self.inbox),
            "generated": self.counters.generated,
            "injected": self.counters.injected,
            "notRouted": self.counters.not_routed,
            "forwarded": self.counters.forwarded,
            "throttled": self.counters.throttled,
            "requests": self.counters.requests,
        }
