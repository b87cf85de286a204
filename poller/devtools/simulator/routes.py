"""The Infobip endpoints: pull inbox, configurations, actions, OAuth2 token."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from poller.devtools.simulator.auth import Authenticator
from poller.devtools.simulator.faults import SPOILING, Fault
from poller.devtools.simulator.httpserver import Request, Response
from poller.devtools.simulator.ledger import Ledger
from poller.devtools.simulator.replies import (
    bad_request,
    json_response,
    no_content,
    results_body,
    service_error,
)
from poller.devtools.simulator.state import (
    HTTP_FORWARD,
    PULL,
    Account,
    ApiError,
    invalid_action,
    valid_forward_url,
)

INBOX_PATH = "/push/1/inbox/reports"
TOKEN_PATH = "/auth/1/oauth2/token"  # noqa: S105 (a path, not a secret)  # nosec B105  # a URL path, not a secret
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

_CONFIGS = r"/push/1/applications/(?P<app>[^/]+)/configurations"
_CONFIG = _CONFIGS + r"/(?P<key>[^/]+)"
_ACTIONS = _CONFIG + r"/actions"
_ACTION = _ACTIONS + r"/(?P<action>[^/]+)"
_INTEGER = re.compile(r"-?[0-9]+")

Operation = Callable[[Request, dict[str, str], Fault | None], Response]


class InfobipApi:
    """Answers the Infobip operations the poller uses, with their documented semantics."""

    def __init__(self, account: Account, ledger: Ledger, auth: Authenticator) -> None:
        self.account = account
        self.ledger = ledger
        self.auth = auth
        # The largest pull limit answered (the push spec states none: 1000 is the SMS twin's).
        self.max_limit = MAX_LIMIT
        self._routes: list[tuple[re.Pattern[str], dict[str, Operation]]] = [
            (re.compile(re.escape(INBOX_PATH)), {"GET": self.pull}),
            (re.compile(_CONFIGS), {"GET": self.list_configurations, "POST": self.create_config}),
            (re.compile(_CONFIG), {"GET": self.get_config, "DELETE": self.delete_config}),
            (re.compile(_ACTIONS), {"GET": self.list_actions, "POST": self.create_action}),
            (re.compile(_ACTION), {"DELETE": self.delete_action}),
        ]

    def handle(self, request: Request, fault: Fault | None) -> Response:
        """Dispatch an authenticated request; fault is passed so a pull can record it."""
        for pattern, methods in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            operation = methods.get(request.method)
            if operation is None:
                response = service_error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
                response.headers["Allow"] = ", ".join(methods)
                return response
            try:
                return operation(request, match.groupdict(), fault)
            except ApiError as exc:
                return service_error(exc.status, exc.message_id, exc.text)
        return service_error(404, "NOT_FOUND", "Resource not found")

    def pull(self, request: Request, _: dict[str, str], fault: Fault | None) -> Response:
        """GET /push/1/inbox/reports: the destructive read."""
        text = request.query.get("limit")
        if text is None:
            limit = DEFAULT_LIMIT
        elif _INTEGER.fullmatch(text) and 1 <= int(text) <= self.max_limit:
            limit = int(text)
        else:
            return bad_request(f"limit must be an integer from 1 to {self.max_limit}")
        if request.peer_gone():
            # Nobody would read the answer (e.g. the client timed out during a latency fault).
            return bad_request("client went away")
        taken = self.account.take(limit)
        response = Response(200, results_body([m for _, m in taken], len(self.account.inbox)))
        if taken:
            kind = fault.kind if fault is not None and fault.kind in SPOILING else None
            entry = self.ledger.record([ledger_id for ledger_id, _ in taken], kind)
            response.on_sent = partial(self.ledger.mark_sent, entry)
        return response

    def list_configurations(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """GET .../configurations."""
        application = self.account.application(p["app"])
        keys = [{"key": key} for key in application.configurations]
        return json_response(200, {"configurations": keys})

    def create_config(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """POST .../configurations (no body); 409 when one exists."""
        return json_response(200, {"key": self.account.create_configuration(p["app"]).key})

    def get_config(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """GET .../configurations/{key}."""
        return json_response(200, {"key": self.account.configuration(p["app"], p["key"]).key})

    def delete_config(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """DELETE .../configurations/{key}."""
        self.account.delete_configuration(p["app"], p["key"])
        return no_content()

    def list_actions(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """GET .../actions."""
        configuration = self.account.configuration(p["app"], p["key"])
        return json_response(
            200, {"actions": [a.to_json() for a in configuration.actions.values()]}
        )

    def create_action(self, request: Request, p: dict[str, str], __: Fault | None) -> Response:
        """POST .../actions with an ActionRequest."""
        self.account.configuration(p["app"], p["key"])
        type_, callback_data, forward_url = _action_request(request.body)
        action = self.account.add_action(p["app"], p["key"], type_, callback_data, forward_url)
        return json_response(200, action.to_json())

    def delete_action(self, _: Request, p: dict[str, str], __: Fault | None) -> Response:
        """DELETE .../actions/{actionKey}."""
        self.account.delete_action(p["app"], p["key"], p["action"])
        return no_content()

    def token(self, request: Request) -> Response:
        """POST /auth/1/oauth2/token, client-credentials grant (RFC 6749 section 4.4)."""
        if request.method != "POST":
            return json_response(405, {"error": "invalid_request"}, {"Allow": "POST"})
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return json_response(400, {"error": "unsupported_grant_type"})
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = _basic_credentials(request.headers.get("authorization", ""))
        if basic is not None:  # client_secret_basic, which RFC 6749 prefers
            client_id, client_secret = basic
        if not self.auth.client_ok(client_id, client_secret):
            return json_response(401, {"error": "invalid_client"})
        token, expires_in = self.auth.issue_token()
        return json_response(
            200,
            {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"},  # nosec B105  # the OAuth2 token type, not a secret
        )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (unquote_plus(user), unquote_plus(password)) if sep else None


def _action_request(body: bytes) -> tuple[str, str | None, str | None]:
    try:
        payload: Any = json.loads(body)
    except ValueError:
        raise invalid_action() from None
    if not isinstance(payload, dict):
        raise invalid_action()
    type_ = payload.get("type")
    callback_data = payload.get("callbackData")
    forward_url = payload.get("forwardUrl")
    if type_ not in (PULL, HTTP_FORWARD):
        raise invalid_action()
    if callback_data is not None and not isinstance(callback_data, str):
        raise invalid_action()
    if type_ == HTTP_FORWARD:
        if not isinstance(forward_url, str) or not valid_forward_url(forward_url):
            raise invalid_action()
    elif forward_url is not None:
        raise invalid_action()
    return type_, callback_data, forward_url
