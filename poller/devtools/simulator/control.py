"""The /_sim/ control endpoints: the HTTP twins of the Simulator's test methods.

No auth, no throttle, no faults. Errors answer {"error": "..."} with 400, 404 or 409.

POST   /_sim/messages       {"applicationCode": str, "count": int = 1, "extra": {...}?}
                            or {"messages": [{...}, ...]}           -> {"messageIds": [...]}
                            (ids routed to the inbox or a forwardUrl; raw messages go to the
                            inbox as they are)
POST   /_sim/backlog        {"applicationCode": str, "count": int}
                            -> {"injected": int, "inboxDepth": int, "forwardDepth": int} (a
                            large backlog at once, see Simulator.inject_bulk; no ids listed)
GET    /_sim/ledger         -> {"responses": [{"n", "messageIds", "completed", "written",
                                               "fault", "at"}], "handedOut": int,
                                "forward": {"attempts": [{"n", "url", "messageIds", "attempt",
                                            "duplicate", "fault", "status", "error",
                                            "delivered", "sentAt", "sentMonotonic",
                                            "finishedAt", "ackedAt", "ackedMonotonic"}],
                                            "routed": int, "deliveredIds": [...],
                                            "pendingIds": [...], "givenUpIds": [...]}}
                            ?created=1 adds "created": {messageId: [monotonic, wall clock]}
POST   /_sim/forward        {"applicationCode": str, "forwardUrl": str | null,
                             "callbackData": str?}
                            -> {"applicationCode", "action": {...}} (HTTP_FORWARD action set)
                            or {"applicationCode", "removed": int} (forwardUrl null)
POST   /_sim/faults         {"kind", "count"? | "rate"?, "path"?, ...params} -> {"faults": [...]}
                            (a rate without a count stays until cleared; a forward_* fault's
                            path is a prefix of the forwardUrl's path)
GET    /_sim/faults         -> {"faults": [...]}
DELETE /_sim/faults         -> 204
GET    /_sim/state          -> Simulator.state()
POST   /_sim/generator      {"rate": float}                         -> {"rate": float}
POST   /_sim/pull-delay     {"delay": float}                        -> {"delay": float}
POST   /_sim/tokens/revoke  -> {"revoked": int}
POST   /_sim/applications   {"applicationCode": str}                -> {"applicationCode": str}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from poller.devtools.simulator.httpserver import Request, Response
from poller.devtools.simulator.replies import control_error, json_response, no_content

if TYPE_CHECKING:
    from poller.devtools.simulator.app import Simulator

PREFIX = "/_sim/"


async def handle_control(sim: Simulator, request: Request) -> Response:
    """Answer a /_sim/ request (no auth, no throttle, no faults)."""
    route = (request.method, request.path.rstrip("/"))
    try:
        if route == ("POST", "/_sim/messages"):
            return _post_messages(sim, _json_object(request))
        if route == ("POST", "/_sim/backlog"):
            return _post_backlog(sim, _json_object(request))
        if route == ("GET", "/_sim/ledger"):
            created = request.query.get("created", "") not in ("", "0", "false")
            return json_response(200, sim.ledger.to_json(created=created))
        if route == ("POST", "/_sim/forward"):
            return _post_forward(sim, _json_object(request))
        if route == ("POST", "/_sim/faults"):
            return _post_fault(sim, _json_object(request))
        if route == ("DELETE", "/_sim/faults"):
            sim.clear_faults()
            return no_content()
        if route == ("GET", "/_sim/faults"):
            return json_response(200, {"faults": sim.faults.snapshot()})
        if route == ("GET", "/_sim/state"):
            return json_response(200, sim.state())
        if route == ("POST", "/_sim/generator"):
            rate = _json_object(request).get("rate")
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
                return control_error(400, "rate must be a number >= 0")
            sim.set_rate(float(rate))
            return json_response(200, {"rate": sim.rate})
        if route == ("POST", "/_sim/pull-delay"):
            delay = _json_object(request).get("delay")
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
                return control_error(400, "delay must be a number >= 0")
            sim.set_pull_delay(float(delay))
            return json_response(200, {"delay": sim.pull_delay})
        if route == ("POST", "/_sim/tokens/revoke"):
            return json_response(200, {"revoked": sim.revoke_tokens()})
        if route == ("POST", "/_sim/applications"):
            code = _json_object(request).get("applicationCode")
            if not isinstance(code, str) or not code or "/" in code:
                return control_error(400, "applicationCode must be a non-empty string")
            if not sim.add_application(code):
                return control_error(409, f"application {code!r} exists")
            return json_response(200, {"applicationCode": code})
    except ValueError as exc:
        return control_error(400, str(exc))
    return control_error(404, f"no control endpoint {request.method} {request.path}")


def _json_object(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        raise ValueError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
    return payload


def _post_messages(sim: Simulator, body: dict[str, Any]) -> Response:
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return control_error(400, "messages must be a list of objects")
        return json_response(200, {"messageIds": sim.inject_raw(messages)})
    app, count, extra = body.get("applicationCode"), body.get("count", 1), body.get("extra")
    if not isinstance(app, str):
        return control_error(400, "applicationCode is required")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return control_error(400, "count must be an integer >= 0")
    if extra is not None and not isinstance(extra, dict):
        return control_error(400, "extra must be an object")
    if app not in sim.account.applications:
        return control_error(404, f"application {app!r} does not exist")
    return json_response(200, {"messageIds": sim.inject(app, count, extra=extra)})


def _post_backlog(sim: Simulator, body: dict[str, Any]) -> Response:
    app, count = body.get("applicationCode"), body.get("count")
    if not isinstance(app, str):
        return control_error(400, "applicationCode is required")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return control_error(400, "count must be an integer >= 0")
    if app not in sim.account.applications:
        return control_error(404, f"application {app!r} does not exist")
    injected = sim.inject_bulk(app, count)
    return json_response(
        200,
        {"injected": injected, "inboxDepth": sim.inbox_depth, "forwardDepth": sim.forward_depth},
    )


def _post_forward(sim: Simulator, body: dict[str, Any]) -> Response:
    app, url, callback_data = (
        body.get("applicationCode"),
        body.get("forwardUrl"),
        body.get("callbackData"),
    )
    if not isinstance(app, str):
        return control_error(400, "applicationCode is required")
    if app not in sim.account.applications:
        return control_error(404, f"application {app!r} does not exist")
    if "forwardUrl" not in body:
        return control_error(400, "forwardUrl is required (null removes the forward)")
    if url is None:
        return json_response(200, {"applicationCode": app, "removed": sim.clear_forward(app)})
    if not isinstance(url, str):
        return control_error(400, "forwardUrl must be a string or null")
    if callback_data is not None and not isinstance(callback_data, str):
        return control_error(400, "callbackData must be a string")
    action = sim.configure_forward(app, url, callback_data)
    return json_response(200, {"applicationCode": app, "action": action.to_json()})


def _post_fault(sim: Simulator, body: dict[str, Any]) -> Response:
    params = dict(body)
    kind = params.pop("kind", None)
    if not isinstance(kind, str):
        return control_error(400, "kind is required")
    rate = params.pop("rate", None)
    # Over HTTP an absent count with a rate means "until cleared", as in add_fault.
    count = params.pop("count", None if rate is not None else 1)
    path = params.pop("path", None)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        return control_error(400, "count must be an integer")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        return control_error(400, "rate must be a number")
    if path is not None and not isinstance(path, str):
        return control_error(400, "path must be a string")
    sim.add_fault(kind, count=count, rate=rate, path=path, **params)
    return json_response(200, {"faults": sim.faults.snapshot()})
