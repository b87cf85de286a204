"""The loop one might write by hand, for comparison: GET the inbox, then one XADD per message.

No spool, no batching, no pipelining: each message is one Redis round trip. The entries carry
the same fields as the poller's. Run by run.py as its own process:

    python tests/benchmarks/naive_loop.py --base-url URL --redis-url URL --key-template T

Stops when the inbox reports nothing pending, after --max-pulls pulls, or after --max-seconds.
Prints one JSON line: pulls, messages written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

import httpx
import redis

INBOX = "/push/1/inbox/reports"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="sim-api-key")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key-template", required=True, help="with ${app}")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--max-pulls", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()

    deadline = time.monotonic() + args.max_seconds
    client = redis.Redis.from_url(args.redis_url)
    headers = {"Authorization": f"App {args.api_key}"}
    pulls = written = 0
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=60, trust_env=False) as http:
        while pulls < args.max_pulls and time.monotonic() < deadline:
            response = http.get(INBOX, params={"limit": args.limit})
            response.raise_for_status()
            body = response.json()
            pulls += 1
            pulled_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            for message in body["results"]:
                app = message["applicationCode"]
                client.xadd(
                    args.key_template.replace("${app}", app),
                    {
                        "id": message["messageId"],
                        "app": app,
                        "received_at": message.get("receivedAt", ""),
                        "pulled_at": pulled_at,
                        "payload": json.dumps(message, ensure_ascii=False, separators=(",", ":")),
                        "schema": "infobip.push.mo.v1",
                    },
                )
                written += 1
            if body["pendingMessageCount"] <= 0 or not body["results"]:
                break
    client.close()
    print(json.dumps({"pulls": pulls, "written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
