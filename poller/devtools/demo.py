"""`poller demo`: the simulator, an embedded Valkey/Redis and the daemon, with a live view.

With ``--forward`` the applications are received by HTTP forward instead of pulled: the
daemon's receiver listens on a free loopback port, its bootstrap gives each application an
HTTP_FORWARD action to it (the token as a path segment), and the simulator POSTs every message
there, retrying until a 2xx."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from poller import logs
from poller.daemon import Daemon
from poller.devtools.embedded import EmbeddedRedis, find_binary, free_port
from poller.devtools.simulator import Simulator
from poller.settings import Settings
from poller.sink import Message, Sink, StreamReader
from poller.sink.factory import open_sink

# Seconds the demo waits, after the generator stops, for the daemon to drain the inbox.
DRAIN_WAIT = 15.0


async def run_demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline locally; end with a ledger-versus-streams comparison."""
    apps = [a.strip() for a in str(args.applications).split(",") if a.strip()]
    find_binary()  # EmbeddedRedisError, saying what to install, before any file is made
    workdir = Path(tempfile.mkdtemp(prefix="poller-demo-"))
    live = not args.plain and sys.stdout.isatty()
    # The daemon's log lines go to a file that outlives the demo; the screen shows the view.
    log_path = Path(tempfile.gettempdir()) / f"{workdir.name}.log"
    log_file = log_path.open("w", encoding="utf-8")
    logs.configure("INFO", "json", stream=log_file)
    forward = bool(getattr(args, "forward", False))
    redis_server = EmbeddedRedis(data_dir=workdir / "redis")
    simulator = Simulator(applications=apps, rate=float(args.rate))
    try:
        await asyncio.to_thread(redis_server.start)
        base_url = await simulator.start()
        receiver_port = free_port()
        receiver_url = f"http://127.0.0.1:{receiver_port}/infobip/forward"
        settings = Settings(
            infobip={
                "base_url": base_url,
                "api_key": "sim-api-key",
                "applications": [] if forward else apps,
                "callback_data": "poller-demo",
                "connect_timeout": 2.0,
                "read_timeout": 5.0,
            },
            redis={"url": redis_server.url},
            spool={"path": workdir / "spool.db"},
            schedule={"interval": 1.0, "jitter": 0.0, "grace_period": 12.0},
            health={"port": 0},
            forward=_forward_settings(apps, receiver_port, receiver_url) if forward else {},
        )
        how = f"forwarded to the receiver at {receiver_url}" if forward else "pulled"
        print(
            f"demo: simulator {base_url} ({len(apps)} applications, {args.rate:g} msg/s, {how}),"
            f" {redis_server.version} at {redis_server.url}, files in {workdir}"
        )
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run(), name="daemon")
        # The demo reads the streams as `poller tail` does: through the sink.
        sink: Sink = open_sink(settings, "demo")
        await sink.connect()
        try:
            await _watch(daemon, task, simulator, sink, settings, apps, args, live)
            simulator.set_rate(0)
            await _drain(daemon, task, simulator, forward)
            daemon.request_stop()
            code = await task
            if forward:
                ok = await _forward_summary(simulator, sink.reader())
            else:
                ok = await _summary(simulator, sink.reader())
        finally:
            await sink.close()
        return 0 if ok and code == 0 else 1
    finally:
        await simulator.stop()
        await asyncio.to_thread(redis_server.close)
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"demo: the daemon's log is in {log_path}")


def _forward_settings(apps: list[str], port: int, receiver_url: str) -> dict[str, Any]:
    """The receiver on loopback; bootstrap points each application's forward at it."""
    return {
        "applications": apps,
        "token": secrets.token_urlsafe(24),
        "token_in": "path",  # nosec B105  # the token's place (URL path), not a secret
        "host": "127.0.0.1",
        "port": port,
        "public_url": receiver_url,
        "callback_data": "poller-demo",
    }


async def _watch(
    daemon: Daemon,
    task: asyncio.Task[int],
    simulator: Simulator,
    sink: Sink,
    settings: Settings,
    apps: list[str],
    args: argparse.Namespace,
    live: bool,
) -> None:
    started = time.monotonic()
    latest: dict[str, Message] = {}
    positions: dict[str, str] = {}
    while not task.done() and not daemon.stop.requested:
        if args.duration is not None and time.monotonic() - started >= args.duration:
            return
        elapsed = time.monotonic() - started
        lines = await _view(daemon, simulator, sink, settings, apps, elapsed, latest, positions)
        if live:
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n(Ctrl-C to stop)\n")
        else:
            print(lines[0] + " | " + lines[1])
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(task)


async def _view(
    daemon: Daemon,
    simulator: Simulator,
    sink: Sink,
    settings: Settings,
    apps: list[str],
    elapsed: float,
    latest: dict[str, Message],
    positions: dict[str, str],
) -> list[str]:
    rt = daemon.runtime
    spool = rt.spool.stats() if rt is not None else None
    source = (rt.receiver if settings.forward.applications else rt.pull) if rt else None
    totals = source.counts if source is not None else None
    if settings.forward.applications:
        counts = simulator.ledger.forward_counts()
        receiver = rt.receiver if rt is not None else None
        lines = [
            f"[{elapsed:5.0f}s] forwarded by Infobip: {counts['routed']} messages in "
            f"{counts['attempts']} POSTs, acknowledged: {counts['delivered']}, "
            f"waiting or retried: {counts['pending']}",
            f"received: {receiver.received if receiver is not None else 0}, "
            f"in spool: {spool.rows if spool else 0}, "
            f"written: {rt.flusher.written if rt is not None else 0}, "
            f"quarantined: {totals.quarantined if totals else 0}",
            "",
        ]
    else:
        lines = [
            f"[{elapsed:5.0f}s] handed out by Infobip: {simulator.ledger.handed_out}, "
            f"waiting in its inbox: {simulator.inbox_depth}",
            f"pulled: {totals.messages if totals else 0}, "
            f"in spool: {spool.rows if spool else 0}, "
            f"written: {rt.flusher.written if rt is not None else 0}, "
            f"quarantined: {totals.quarantined if totals else 0}",
            "",
        ]
    try:
        await _follow(sink, apps, latest, positions)
        for info in await sink.stream_info(apps):
            lines.append(f"  {info.key}: {info.length} entries")
    except Exception as exc:  # the view must not stop the demo
        lines.append(f"  streams: {type(exc).__name__}")
    lines.append("")
    lines.append("latest messages:")
    newest = sorted(latest.values(), key=lambda m: _entry_order(m.entry_id), reverse=True)
    for message in newest[:6]:
        lines.append(f"  {message.entry_id}  {message.app:<14} {_text_of(message)}")
    return lines


async def _follow(
    sink: Sink, apps: list[str], latest: dict[str, Message], positions: dict[str, str]
) -> None:
    """Read what the streams got since the last view; keep the newest six."""
    reader = sink.reader()
    for stream in await reader.streams(apps):
        positions.setdefault(stream, "0")
    while found := await reader.read(positions, count=1000):
        for _stream, message in found:
            latest[message.entry_id + message.app] = message
        for key in sorted(latest, key=lambda k: _entry_order(latest[k].entry_id))[:-6]:
            del latest[key]


def _entry_order(entry_id: str) -> tuple[int, ...]:
    # Stream ids are "<ms>-<seq>": compare them as numbers ("-12" comes after "-2").
    return tuple(int(part) for part in entry_id.split("-") if part.isdigit())


def _text_of(message: Message) -> str:
    value = message.payload.get("text")
    if not isinstance(value, str):
        return "?"
    text = value.replace("\n", " ")
    return text if len(text) <= 50 else text[:47] + "..."


async def _drain(
    daemon: Daemon, task: asyncio.Task[int], simulator: Simulator, forward: bool = False
) -> None:
    deadline = time.monotonic() + DRAIN_WAIT
    while time.monotonic() < deadline and not task.done():
        rt = daemon.runtime
        if forward:
            # Every forwarded message acknowledged (2xx) and no POST still open.
            waiting = not simulator.ledger.forward_settled() or simulator.forward_depth > 0
        else:
            waiting = simulator.inbox_depth > 0
        if not waiting and rt is not None and rt.spool.stats().rows == 0:
            return
        await asyncio.sleep(0.2)


async def _in_streams(reader: StreamReader) -> Counter[str]:
    """Message id -> entries carrying it, over every message stream."""
    in_streams: Counter[str] = Counter()
    positions = dict.fromkeys(await reader.streams(), "0")
    while found := await reader.read(positions, count=1000):
        for _stream, message in found:
            in_streams[message.message_id] += 1
    return in_streams


async def _summary(simulator: Simulator, reader: StreamReader) -> bool:
    handed: Counter[str] = Counter(simulator.ledger.ids())
    lost_in_transit = simulator.ledger.undelivered_ids()
    in_streams = await _in_streams(reader)
    missing = [m for m in handed if m not in in_streams and m not in lost_in_transit]
    twice = [m for m, n in in_streams.items() if n > 1]
    print(
        f"summary: Infobip handed out {sum(handed.values())} messages; "
        f"the streams hold {sum(in_streams.values())} entries "
        f"({len(in_streams)} distinct); missing: {len(missing)}; written twice: {len(twice)}"
        + (f"; lost in transit (cut responses): {len(lost_in_transit)}" if lost_in_transit else "")
    )
    ok = not missing and not twice
    print("summary: OK, every message is in its stream exactly once" if ok else "summary: FAILED")
    return ok


async def _forward_summary(simulator: Simulator, reader: StreamReader) -> bool:
    records = simulator.ledger.forward_records
    in_streams = await _in_streams(reader)
    missing = [m for m in records if m not in in_streams]
    twice = [m for m, n in in_streams.items() if n > 1]
    repeated = sum(1 for r in records.values() if r.sends > 1)
    print(
        f"summary: Infobip forwarded {len(records)} messages in "
        f"{len(simulator.ledger.forward_attempts)} POSTs ({repeated} sent more than once); "
        f"the streams hold {sum(in_streams.values())} entries ({len(in_streams)} distinct); "
        f"missing: {len(missing)}; written twice: {len(twice)}"
    )
    ok = not missing and not twice
    print("summary: OK, every message is in its stream exactly once" if ok else "summary: FAILED")
    return ok
