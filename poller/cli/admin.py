"""`poller infobip ...`: the configuration, action and pull API from the command line."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
from datetime import UTC, datetime
from typing import Any

from poller import redact
from poller.cli.output import emit_json, error, say, table, warn
from poller.infobip import (
    Action,
    ActionRequest,
    AuthError,
    ConflictError,
    InfobipClient,
    NotFoundError,
)
from poller.infobip.errors import InfobipError, MalformedResponseError
from poller.settings import CREDENTIAL_SETTINGS, Settings, env_name
from poller.sources.items import encode_item

EXIT_FAILURE = 1
EXIT_USAGE = 2


def command(args: argparse.Namespace, settings: Settings) -> int:
    """`poller infobip ...`."""
    return asyncio.run(run(args, settings))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out one `poller infobip ...` command."""
    problem = _usage_problem(args)
    if problem:
        # Refused before any call to Infobip.
        error(problem)
        return EXIT_USAGE
    try:
        async with InfobipClient(settings.infobip) as client:
            if args.group == "configurations":
                return await _configurations(client, args)
            if args.group == "actions":
                return await _actions(client, args)
            return await _pull(client, args)
    except AuthError as exc:
        scheme = settings.infobip.auth
        names = " and ".join(env_name(("infobip", n)) for n in CREDENTIAL_SETTINGS[scheme])
        # Only Infobip's answer is masked: the hint and the setting names are the project's.
        error(
            redact.own(
                "Infobip refused the credentials ({error}): {hint}; check"
                f" POLLER_INFOBIP__AUTH={scheme} and {names}",
                error=exc,
                hint=exc.hint,
            )
        )
        return EXIT_FAILURE


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.group != "actions" or args.verb != "create":
        return None
    if args.type == "HTTP_FORWARD" and not args.forward_url:
        return "--type HTTP_FORWARD needs --forward-url URL (where Infobip posts the messages)"
    if args.type == "HTTP_FORWARD" and not args.forward_url.startswith(("http://", "https://")):
        return "--forward-url must be an http:// or https:// URL"
    if args.type == "PULL" and args.forward_url:
        return "--forward-url is for HTTP_FORWARD actions only"
    return None


async def _configurations(client: InfobipClient, args: argparse.Namespace) -> int:
    if args.verb == "list":
        found = await client.list_configurations(args.app)
        if args.json:
            emit_json([c.model_dump(by_alias=True) for c in found])
        else:
            table(["configuration key"], [[c.key] for c in found])
    elif args.verb == "get":
        config = await client.get_configuration(args.app, args.key)
        if args.json:
            emit_json(config.model_dump(by_alias=True))
        else:
            actions = await client.list_actions(args.app, config.key)
            say(f"configuration {config.key} of {args.app}")
            _action_table(actions)
    elif args.verb == "create":
        try:
            config = await client.create_configuration(args.app)
        except ConflictError:
            keys = ", ".join(c.key for c in await client.list_configurations(args.app))
            raise InfobipError(
                f"{args.app} already has a configuration ({keys or 'key not listed'}); "
                "Infobip allows one per application. "
                f"See it with `poller infobip configurations list {args.app}`"
            ) from None
        if args.json:
            emit_json(config.model_dump(by_alias=True))
        else:
            say(f"created configuration {config.key} for {args.app}")
    else:
        await client.delete_configuration(args.app, args.key)
        if args.json:
            emit_json({"deleted": args.key})
        else:
            say(f"deleted configuration {args.key} of {args.app}")
    return 0


async def _config_key(client: InfobipClient, args: argparse.Namespace) -> str:
    if args.configuration:
        return str(args.configuration)
    found = await client.list_configurations(args.app)
    if not found:
        raise NotFoundError(
            404,
            None,
            f"{args.app} has no configuration; create one with "
            f"`poller infobip configurations create {args.app}`",
        )
    if len(found) > 1:
        keys = ", ".join(c.key for c in found)
        raise InfobipError(f"{args.app} has several configurations ({keys}); pass --configuration")
    return found[0].key


async def _actions(client: InfobipClient, args: argparse.Namespace) -> int:
    key = await _config_key(client, args)
    if args.verb == "list":
        actions = await client.list_actions(args.app, key)
        if args.json:
            emit_json([a.model_dump(by_alias=True, exclude_none=True) for a in actions])
        else:
            _action_table(actions)
    elif args.verb == "create":
        request = ActionRequest(
            type=args.type, callbackData=args.callback_data, forwardUrl=args.forward_url
        )
        action = await client.create_action(args.app, key, request)
        if args.json:
            emit_json(action.model_dump(by_alias=True, exclude_none=True))
        else:
            say(f"created {action.type} action {action.key} on configuration {key}")
    else:
        await client.delete_action(args.app, key, args.action_key)
        if args.json:
            emit_json({"deleted": args.action_key})
        else:
            say(f"deleted action {args.action_key} of configuration {key}")
    return 0


def _action_table(actions: list[Action]) -> None:
    table(
        ["action key", "type", "callback data", "forward url"],
        [[a.key, a.type, a.callback_data, a.forward_url] for a in actions],
    )


async def _pull(client: InfobipClient, args: argparse.Namespace) -> int:
    try:
        response = await client.pull(args.limit)
    except MalformedResponseError as exc:
        # Whatever arrived may be the only copy of messages Infobip handed out: keep it.
        saved = await asyncio.to_thread(_save_raw, exc.body)
        raise InfobipError(f"{exc}; the {len(exc.body)} bytes received are in {saved}") from None
    pulled_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    results = response.results
    if args.out:
        # Written and fsynced before anything is printed: these messages exist nowhere else.
        try:
            await asyncio.to_thread(_append_jsonl, args.out, results)
        except Exception as exc:  # any failure: the messages must still reach the user
            # Could not keep them in the file: print them all, so they are not lost.
            emit_json({"results": results, "pulledAt": pulled_at})
            raise InfobipError(
                f"could not append to {args.out} ({exc}); the messages are printed above"
            ) from None
    if args.json:
        emit_json(
            {
                "results": results,
                "messageCount": response.message_count,
                "pendingMessageCount": response.pending_message_count,
                "pulledAt": pulled_at,
            }
        )
    else:
        table(
            ["message id", "application", "received at", "text"],
            [_row(item) for item in results],
        )
        saved = f", appended to {args.out}" if args.out else ""
        pending = response.pending_message_count
        left = "an unknown number" if pending is None else str(pending)
        say(f"{len(results)} message(s){saved}; {left} still pending")
    if results and not args.out:
        warn("pulled messages are consumed: Infobip will not hand them out again (see --out)")
    return 0


def _save_raw(body: bytes) -> str:
    name = f"infobip-pull-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.raw"
    for folder in (os.getcwd(), tempfile.gettempdir()):
        path = os.path.join(folder, name)
        try:
            with open(path, "wb") as out:
                out.write(redact.data(body))
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            continue
        return path
    # Nowhere to write: the bytes go to the terminal, so they are not lost.
    sys.stdout.write(base64.b64encode(redact.data(body)).decode("ascii") + "\n")
    return "the base64 text printed above"


def _append_jsonl(path: str, items: list[Any]) -> None:
    with open(path, "a", encoding="utf-8") as out:
        for item in items:
            out.write(encode_item(item) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _row(item: Any) -> list[Any]:
    if not isinstance(item, dict):
        return ["?", "?", "?", repr(item)[:60]]
    text = str(item.get("text", ""))
    text = text.replace("\n", " ")
    return [
        item.get("messageId"),
        item.get("applicationCode"),
        item.get("receivedAt"),
        text if len(text) <= 60 else text[:57] + "...",
    ]
