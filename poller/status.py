"""What `poller check` and `poller status` find out, as data (``poller.cli.status`` prints it)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from poller.coordination import ReplicaState
from poller.health.probe import check, local_url
from poller.settings import Settings
from poller.sink import SinkError, StreamInfo
from poller.sink.factory import open_registry, open_sink
from poller.spool import Spool, SpoolError, SpoolStats


async def readiness(settings: Settings) -> tuple[bool, str]:
    """The running daemon's /readyz: (ready, one-line reason)."""
    url = local_url(settings.health.host, settings.health.port)
    return await check(url, timeout=5.0)


async def status_report(settings: Settings) -> dict[str, Any]:
    """Spool depth and age, the daemon's readiness, every stream's length and its consumer
    groups; ``errors`` lists what could not be found out."""
    report: dict[str, Any] = {
        "spool": None,
        "health": None,
        "streams": None,
        "replicas": None,
        "errors": [],
    }
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
    sink = open_sink(settings, instance or "status")
    try:
        await sink.connect()
        streams = await sink.stream_info()
        report["streams"] = [_stream_dict(s) for s in streams]
        now, replicas = await open_registry(settings, sink).replicas()
        report["replicas"] = [_replica_dict(r, now) for r in replicas]
    except SinkError as exc:
        report["errors"].append(f"sink: {exc}")
    finally:
        await sink.close()
    return report


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


def _replica_dict(replica: ReplicaState, now: float) -> dict[str, Any]:
    state = "alive" if replica.alive(now) else "stranded" if replica.stranded(now) else "gone"
    return {
        "instance": replica.instance,
        "state": state,
        "host": replica.host,
        "pid": replica.pid,
        "version": replica.version,
        "sources": replica.sources,
        "spool": replica.spool,
        "rows": replica.rows,
        "oldest_age_seconds": replica.oldest_age_s,
        "heartbeat_seconds_ago": round(max(0.0, now - replica.heartbeat), 1),
    }
