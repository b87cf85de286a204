"""Memory a big body costs: peak RSS of a poller process per MiB of pull answer or forward body.

    python tests/benchmarks/bench_body_memory.py                 # 1, 8, 16 and 32 MiB, 3 runs
    python tests/benchmarks/bench_body_memory.py --sizes 19,64   # any sizes, MiB
    python tests/benchmarks/bench_body_memory.py --kinds worst   # the default limits' worst case

Each case runs in a fresh process (its own allocator state) that opens the real runtime (spool,
journal, flusher, Redis sink against a real server) and takes one body of 1,000 messages:
- pull: the pull source pulls it from a loopback HTTP server that serves it as Infobip would,
  journals it, spools it, and the flusher writes it to Redis;
- forward: this script POSTs it to the process's forward receiver, which spools it and the
  flusher writes it to Redis.
- worst: the default limits, every source at once: answers just under
  POLLER_INFOBIP__MAX_BODY_BYTES for POLLER_INFOBIP__PULLS_IN_FLIGHT pulls at a time (the
  server ignores the smaller limit the poller asks for), while 8 senders POST bodies just under
  POLLER_FORWARD__MAX_BODY_BYTES (retrying a 503 after 0.2 s).
The figure is the process's peak RSS (VmHWM) after the body minus its peak before it, so
imports and the runtime's own start-up are left out; the table also gives that per MiB of body
and the longest the event loop went without running a 10 ms ticker (a stall).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
MESSAGES = 1000
PULL_PATH = "/push/1/inbox/reports"


def status_kib(field: str) -> int:
    """A VmXXX line of /proc/self/status, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def make_body(size: int, app: str = "app-mem", tag: str = "mem", pending: int = 0) -> bytes:
    """A pull answer of about ``size`` bytes: 1,000 messages with texts of equal length."""
    text = "x" * max(1, size // MESSAGES - 150)
    results = [
        {
            "messageId": f"{tag}-{n:05d}",
            "applicationCode": app,
            "receivedAt": "2026-11-30T10:00:00.000+0000",
            "text": text,
        }
        for n in range(MESSAGES)
    ]
    body = {"results": results, "messageCount": MESSAGES, "pendingMessageCount": pending}
    return json.dumps(body, separators=(",", ":")).encode()


async def ticker(worst: list[float]) -> None:
    """Records the longest gap between 10 ms ticks: how long the loop was blocked."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        worst[0] = max(worst[0], now - last - 0.01)
        last = now


async def child(kind: str, base_url: str, redis_url: str, size: int) -> None:
    """One case inside the measured process; prints a JSON line."""
    from poller.runtime import Runtime
    from poller.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        # Limits out of the way: what is measured is the cost of a body that is let in.
        forward = {
            "applications": ["app-mem"],
            "token": "t" * 24,
            "port": 0,
            "max_body_bytes": 256 * MIB,
        }
        infobip = {
            "base_url": base_url,
            "api_key": "k",
            "max_body_bytes": 512 * MIB,
            "applications": [] if kind == "forward" else ["app-mem"],
        }
        if kind == "worst":  # the defaults
            forward = {"applications": ["app-fwd"], "token": "t" * 24, "port": 0}
            del infobip["max_body_bytes"]
        settings = Settings(
            infobip=infobip,
            redis={"url": redis_url, "stream_key_template": f"mem:{os.getpid()}:{{${{app}}}}"},
            spool={"path": Path(tmp) / "spool.db"},
            health={"enabled": False},
            forward=forward if kind != "pull" else {},
        )
        rt = await Runtime.open(settings)
        rt.start_flushing()
        if rt.receiver is not None:
            await rt.receiver.start()
        worst = [0.0]
        tick = asyncio.create_task(ticker(worst))
        await asyncio.sleep(0.2)
        before = status_kib("VmHWM")
        rss_before = status_kib("VmRSS")
        if kind == "pull":
            await rt.pull.drain()
        else:
            assert rt.receiver is not None
            print("PORT", json.dumps(rt.receiver.port), flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # go
            drain = asyncio.create_task(rt.pull.drain()) if kind == "worst" else None
            await asyncio.to_thread(sys.stdin.readline)  # the parent's POSTs were answered
            if drain is not None:
                await drain
        for _ in range(600):
            stats = rt.spool.stats()
            if not stats.rows and not stats.quarantine_pending:
                break
            await asyncio.sleep(0.05)
        written = await rt.sink.stream_info(["app-mem", "app-fwd"])
        tick.cancel()
        peak = status_kib("VmHWM")
        rt.stop.request("done")
        await rt.finish()
        await rt.close()
    print(
        "RESULT",
        json.dumps(
            {
                "kind": kind,
                "size": size,
                "peak_before_kib": before,
                "rss_before_kib": rss_before,
                "peak_kib": peak,
                "written": sum(info.length for info in written),
                "stall_s": round(worst[0], 3),
            }
        ),
        flush=True,
    )


async def serve_pull(bodies: list[bytes]) -> tuple[object, str]:
    """A loopback server answering pulls with ``bodies`` in turn, then an empty inbox."""
    from aiohttp import web

    queue = list(bodies)

    async def pull(_request: web.Request) -> web.Response:
        if not queue:
            empty = b'{"results":[],"messageCount":0,"pendingMessageCount":0}'
            return web.Response(body=empty, content_type="application/json")
        return web.Response(body=queue.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_get(PULL_PATH, pull)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def send(client: object, url: str, sender: int, count: int, body: bytes) -> int:
    """POST ``count`` copies of ``body`` (ids made distinct per copy); the 503s it took."""
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    refused = 0
    for n in range(count):
        tagged_body = body.replace(b'"mem-', f'"s{sender}c{n}-'.encode())
        while True:
            answer = await client.post(
                url, content=tagged_body, headers={"Content-Type": "application/json"}
            )
            if answer.status_code != 503:
                break
            refused += 1
            await asyncio.sleep(0.2)
        assert answer.status_code == 200, answer.text
    return refused


async def tagged(stream: asyncio.StreamReader, tag: str) -> str:
    """The rest of the child's next line that starts with ``tag``; other lines (its log)
    are passed on to stderr."""
    while line := (await stream.readline()).decode():
        if line.startswith(tag + " "):
            return line[len(tag) + 1 :]
        sys.stderr.write(line)
    raise RuntimeError(f"the measured process ended without a {tag} line")


async def run_case(kind: str, size_mib: float, redis_url: str) -> dict[str, object]:
    import httpx

    size = int(size_mib * MIB)
    body = make_body(size)
    if kind == "worst":
        from poller.settings import ForwardSettings, InfobipSettings

        pull_size = InfobipSettings.model_fields["max_body_bytes"].default - 64 * 1024
        answers = 2 * InfobipSettings.model_fields["pulls_in_flight"].default
        bodies = [
            make_body(pull_size, tag=f"p{a}", pending=(answers - a) * MESSAGES)
            for a in range(1, answers + 1)
        ]
        forward_size = ForwardSettings.model_fields["max_body_bytes"].default - 64 * 1024
        body = make_body(forward_size, app="app-fwd")
    else:
        bodies = [body]
    runner, base_url = await serve_pull(bodies)
    del bodies
    env = {**os.environ, "POLLER_LOG__LEVEL": "warning", "POLLER_LOG__FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        kind,
        base_url,
        redis_url,
        str(len(body)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        refused = 0
        if kind != "pull":
            port = json.loads(await tagged(proc.stdout, "PORT"))
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
            url = f"http://127.0.0.1:{port}/infobip/forward/{'t' * 24}"
            senders, each = (8, 3) if kind == "worst" else (1, 1)
            async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
                counts = await asyncio.gather(
                    *(send(client, url, s, each, body) for s in range(senders))
                )
            refused = sum(counts)
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
        result: dict[str, object] = json.loads(await tagged(proc.stdout, "RESULT"))
        await proc.wait()
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    extra = (int(result["peak_kib"]) - int(result["peak_before_kib"])) / 1024  # type: ignore[call-overload]
    result["refused"] = refused
    result["body_mib"] = round(len(body) / MIB, 2)
    result["extra_mib"] = round(extra, 1)
    result["per_body_mib"] = round(extra / (len(body) / MIB), 2)
    return result


async def main(sizes: list[float], kinds: list[str], runs: int) -> None:
    from poller.devtools.embedded import EmbeddedRedis

    rows = []
    with EmbeddedRedis() as redis:
        for kind in kinds:
            for size in [0.0] if kind == "worst" else sizes:
                tries = [await run_case(kind, size, redis.url) for _ in range(runs)]
                tries.sort(key=lambda r: float(r["extra_mib"]))  # type: ignore[arg-type]
                rows.append(tries[len(tries) // 2])  # the median run
    print(
        "| source | body MiB | written | peak RSS before, MiB | peak RSS, MiB | + peak, MiB"
        " | per MiB of body | 503s | loop stall, s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        before = round(int(r["peak_before_kib"]) / 1024, 1)  # type: ignore[call-overload]
        peak = round(int(r["peak_kib"]) / 1024, 1)  # type: ignore[call-overload]
        per = "" if r["kind"] == "worst" else r["per_body_mib"]
        print(
            f"| {r['kind']} | {r['body_mib']} | {r['written']} | {before} | {peak}"
            f" | {r['extra_mib']} | {per} | {r['refused']} | {r['stall_s']} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, base_url, redis_url, size = sys.argv[2:6]
        asyncio.run(child(kind, base_url, redis_url, int(size)))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--sizes", default="1,8,16,32", help="body sizes, MiB, comma-separated")
        parser.add_argument(
            "--kinds", default="pull,forward,worst", help="pull, forward, worst (comma-separated)"
        )
        parser.add_argument("--runs", type=int, default=3, help="runs per case (the median)")
        args = parser.parse_args()
        sizes = [float(s) for s in args.sizes.split(",")]
        asyncio.run(main(sizes, args.kinds.split(","), args.runs))
