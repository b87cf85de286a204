"""`poller tail`: print messages from the streams, as an operator or a developer reads them.

It reads through the sink's ``StreamReader``, so it shows what any sink holds; an entry that
cannot be parsed is printed escaped, with its problem, and reading goes on."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator

from poller.cli.output import error, printable, say, warn
from poller.settings import Settings
from poller.sink import GroupReader, Message, SinkError, StreamReader
from poller.sink.factory import open_sink

# Characters of a dead letter's raw bytes shown on its line.
RAW_SHOWN = 200


def command(args: argparse.Namespace, settings: Settings) -> int:
    """`poller tail`."""
    return asyncio.run(run(args, settings))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print messages until --count, the end of the streams, or (--follow) Ctrl-C."""
    sink = open_sink(settings, "tail")
    try:
        await sink.connect()
        reader = sink.reader()
        streams = await reader.streams(args.apps, dead=args.dead)
        if not streams:
            sys.stderr.write("poller: no stream found\n")
            return 1
        if args.apps and not await _named_streams_exist(args, reader, streams):
            return 1
        async for stream, message in _messages(args, reader, streams):
            _print(stream, message, as_json=args.json)
        return 0
    except SinkError as exc:
        error(str(exc))
        return 1
    finally:
        await sink.close()


async def _named_streams_exist(
    args: argparse.Namespace, reader: StreamReader, streams: list[str]
) -> bool:
    """Say which named streams do not exist; False when that ends the command (without
    --follow: there is nothing to show, and a misspelt application would look empty)."""
    missing = set(await reader.missing(streams))
    kind = "dead-letter stream" if args.dead else "stream"
    for app, stream in zip(args.apps, streams, strict=True):
        if stream in missing:
            if args.follow:
                warn(f"{kind} {stream} of {app} does not exist yet; waiting for it")
            else:
                error(f"{kind} {stream} of {app} does not exist (nothing was written to it)")
    return args.follow or not missing


async def _messages(
    args: argparse.Namespace, reader: StreamReader, streams: list[str]
) -> AsyncIterator[tuple[str, Message]]:
    block = 2000 if args.follow else None
    # Never read more than is left to print: through a group, a read entry is delivered.
    left = args.count if args.count is not None else -1
    if args.group:
        async for delivered in _through_group(args, reader, streams, left):
            yield delivered
        return
    positions = await reader.ends(streams) if args.start == "now" else dict.fromkeys(streams, "0")
    while left:
        batch = min(100, left) if left > 0 else 100
        found = await reader.read(positions, count=batch, block_ms=block)
        if not found and not args.follow:
            return
        for stream, message in found:
            yield stream, message
            left -= 1
            if not left:
                return


async def _through_group(
    args: argparse.Namespace, reader: StreamReader, streams: list[str], left: int
) -> AsyncIterator[tuple[str, Message]]:
    name = args.consumer or f"{socket.gethostname()}-{os.getpid()}"
    start = "0" if args.start == "start" else "$"
    consumers: list[GroupReader] = [
        reader.group(stream, args.group, name, start=start) for stream in streams
    ]
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
            # Wait for anything new on any of the streams (up to 2 s) without taking it.
            await reader.read(await reader.ends(streams), count=1, block_ms=2000)


def _print(stream: str, message: Message, *, as_json: bool) -> None:
    if as_json:
        # One document per line (JSON escapes control characters itself).
        document = {"stream": stream, "entry_id": message.entry_id, **message.fields}
        if message.error is not None:
            document["error"] = message.error
        say(json.dumps(document, ensure_ascii=True))
        sys.stdout.flush()
        return
    if message.dead:
        raw = message.fields.get("raw", "")[:RAW_SHOWN]
        text = f"DEAD {message.fields.get('reason', '')}: {raw}"
    elif message.error is not None:
        text = f"UNREADABLE ({message.error}): {message.fields.get('payload', '')[:RAW_SHOWN]}"
    else:
        value = message.payload.get("text")
        # Only a string is shown as the text: str() of a deeply nested value would recurse.
        text = value if isinstance(value, str) else message.fields.get("payload", "")[:RAW_SHOWN]
    line = f"{message.entry_id}  {message.app or '-'}  {message.message_id or '-'}  {text}"
    say(printable(line))
    sys.stdout.flush()
