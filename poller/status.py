"""`poller check` (exit code for probes) and `poller status` (what an operator looks at)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from poller.cli.output import emit_json, say, table
from poller.health import check, failing, local_url
from poller.runtime import make_sink
from poller.settings import Settings
from poller.sink import SinkError, StreamInfo
from poller.spool import Spool, SpoolError, SpoolStats


async def run_check(settings: Settings) -> int:
    """Ask the running daemon's /readyz; print one line; 0 when ready."""
    url = local_url(settings.health.host, settings.health.port)
    ok, reason = await check(url, timeout=5.0)
    say(("ok: " if ok else "not ready: ") + reason)
    return 0 if ok else 1


async def run_status(settings: Settings, *, as_json: bool) -> int:
    """Spool depth and age, last poll, every stream's length and its consumer groups."""
    report: dict[str, Any] = {"spool": None, "health": None, "streams": None, "errors": []}
    spool_path = settings.spool.path
    instance = None
    # A read-only look without the spool's lock: the daemon may be running and holds it.
    stats: SpoolStats | None = None
    try:
        stats = await asyncio.to_thread(Spool.peek, spool_path)
    except SpoolError as exc:
        report["errors"].append(str(exc))
    else:
        if stats is None:
            report["errors"].append(f"no spool at {spool_path} (the daemon has not run here)")
    if stats is not None:
        instance = stats.instance_id
        report["spool"] = {
            "path": str(spool_path),
            "instance": instance,
            "rows": stats.rows,
            "bytes": stats.bytes,
            "oldest_age_seconds": stats.oldest_age_s,
            "quarantined": stats.quarantined,
            "quarantine_pending": stats.quarantine_pending,
            "cap_rows": settings.spool.max_rows,
            "cap_bytes": settings.spool.max_bytes,
        }
    report["health"] = await _health(settings)
    sink = make_sink(settings, instance or "status")
    try:
        await sink.connect()
        streams = await sink.stream_info()
        report["streams"] = [_stream_dict(s) for s in streams]
    except SinkError as exc:
        report["errors"].append(f"redis: {exc}")
    finally:
        await sink.close()
    if as_json:
        emit_json(report)
    else:
        _print(report)
    return 0 if not report["errors"] else 1


async def _health(settings: Settings) -> dict[str, Any]:
    url = local_url(settings.health.host, settings.health.port)
    try:
        async with httpx.AsyncClient(timeout=3.0, trust_env=False) as client:
            response = await client.get(url)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return {"reachable": False, "url": url}
    return {"reachable": True, "url": url, "ready": response.status_code == 200, "body": body}


def _stream_dict(info: StreamInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "length": info.length,
        "groups": [
            {
                "name": g.name,
                "consumers": g.consumers,
                "pending": g.pending,
                "lag": g.lag,
                "last_delivered_id": g.last_delivered_id,
            }
            for g in info.groups
        ],
    }


def _print(report: dict[str, Any]) -> None:
    spool = report["spool"]
    if spool:
        age = spool["oldest_age_seconds"]
        say(
            f"spool {spool['path']}: {spool['rows']} rows ({spool['bytes']} bytes) waiting"
            f"{f', oldest {age:.0f} s' if age is not None else ''}; "
            f"cap {spool['cap_rows']} rows / {spool['cap_bytes']} bytes; "
            f"{spool['quarantined']} quarantined ({spool['quarantine_pending']} not dead-lettered)"
        )
    health = report["health"]
    if health and health["reachable"]:
        body = health["body"]
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        last = checks.get("last_poll", {}).get("detail", "?")
        state = "ready" if health["ready"] else "NOT READY: " + "; ".join(failing(body))
        say(f"daemon: {state}; {last}")
    elif health:
        say(f"daemon: not running here (no health server at {health['url']})")
    rows = []
    for stream in report["streams"] or []:
        if not stream["groups"]:
            rows.append([stream["key"], stream["length"], "-", "", "", ""])
        for g in stream["groups"]:
            lag = "?" if g["lag"] is None else g["lag"]
            rows.append(
                [stream["key"], stream["length"], g["name"], g["consumers"], g["pending"], lag]
            )
    if report["streams"] is not None:
        table(["stream", "length", "group", "consumers", "pending", "lag"], rows)
    for err in report["errors"]:
        say(f"problem: {err}")
