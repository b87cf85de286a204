"""`poller tail`: print messages from the streams, as an operator or a developer reads them."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from poller.cli.output import error, printable, say

if TYPE_CHECKING:  # the command's own imports wait until it runs: `poller check` stays quick
    from poller.consumer import Message
    from poller.settings import Settings


def add_arguments(sub: Any) -> None:
    """The tail subcommand."""
    tail = sub.add_parser(
        "tail",
        help="print messages from the streams: from the start, from now, or through a group",
    )
    tail.add_argument("apps", nargs="*", help="application codes (default: every stream)")
    tail.add_argument(
        "--from",
        dest="start",
        choices=["start", "now"],
        default="start",
        help="without --group: from the first entry, or only new ones (default: start)",
    )
    tail.add_argument("--group", help="read through this consumer group (created if missing)")
    tail.add_argument(
        "--consumer", help="consumer name in the group (default: host and process id)"
    )
    tail.add_argument("--ack", action="store_true", help="acknowledge what is printed (--group)")
    tail.add_argument("-f", "--follow", action="store_true", help="wait for new messages")
    tail.add_argument("--count", type=int, default=None, help="stop after this many messages")
    tail.add_argument("--dead", action="store_true", help="the dead-letter streams instead")
    tail.add_argument("--json", action="store_true", help="one JSON document per message")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print messages until --count, the end of the streams, or (--follow) Ctrl-C."""
    from poller.runtime import make_sink
    from poller.sink import SinkError

    sink = make_sink(settings, "tail")
    try:
        await sink.connect()
        redis, keys = await sink.reader(args.apps, dead=args.dead)
        if not keys:
            sys.stderr.write("poller: no stream found\n")
            return 1
        async for stream, message in _messages(args, redis, keys):
            _print(stream, message, as_json=args.json)
        return 0
    except SinkError as exc:
        error(str(exc))
        return 1
    finally:
        await sink.close()


async def _messages(args: argparse.Namespace, redis: Any, keys: list[str]) -> Any:
    from poller.consumer import StreamConsumer, last_ids, read_streams

    block = 2000 if args.follow else None
    # Never read more than is left to print: through a group, a read entry is delivered.
    left = args.count if args.count is not None else -1
    if args.group:
        name = args.consumer or f"{socket.gethostname()}-{os.getpid()}"
        start = "0" if args.start == "start" else "$"
        consumers = [StreamConsumer(redis, key, args.group, name, start_id=start) for key in keys]
        for consumer in consumers:
            await consumer.ensure_group()
        while left:
            got = 0
            for consumer in consumers:
                batch = min(100, left) if left > 0 else 100
                for message in await consumer.read(count=batch, block_ms=None):
                    got += 1
                    yield consumer.stream_key, message
                    if args.ack:
                        await consumer.ack([message.entry_id])
                    left -= 1
                    if not left:
                        return
            if not got:
                if not args.follow:
                    return
                await _pause(redis, keys)
        return
    positions = await last_ids(redis, keys) if args.start == "now" else dict.fromkeys(keys, "0")
    while left:
        batch = min(100, left) if left > 0 else 100
        found = await read_streams(redis, positions, count=batch, block_ms=block)
        if not found and not args.follow:
            return
        for stream, message in found:
            yield stream, message
            left -= 1
            if not left:
                return


async def _pause(redis: Any, keys: list[str]) -> None:
    from poller.consumer import last_ids, read_streams

    # Wait for anything new on any of the streams (up to 2 s) without taking it.
    await read_streams(redis, await last_ids(redis, keys), count=1, block_ms=2000)


def _print(stream: str, message: Message, *, as_json: bool) -> None:
    if as_json:
        # One document per line (JSON escapes control characters itself).
        document = {"stream": stream, "entry_id": message.entry_id, **message.fields}
        say(json.dumps(document, ensure_ascii=True))
        sys.stdout.flush()
        return
    if message.fields.get("schema", "").endswith(".dead.v1"):
        text = f"DEAD {message.fields.get('reason', '')}: {message.fields.get('raw', '')[:200]}"
    else:
        text = str(message.payload.get("text", message.fields.get("payload", "")))
    line = f"{message.entry_id}  {message.app or '-'}  {message.message_id or '-'}  {text}"
    say(printable(line))
    sys.stdout.flush()
