"""A downstream consumer of the poller's streams, as a service would write one.

Run: python tests/examples/consumer.py REDIS_URL STREAM_KEY GROUP CONSUMER [--count N]

Reads the stream through a consumer group, handles each message (here: prints its id and
text), acknowledges it, and stops after --count messages or on Ctrl-C. Messages another
consumer left unacknowledged for a minute are taken over; one that fails five times goes to
the dead-letter stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from redis.asyncio import Redis

from poller.consumer import StreamConsumer


async def main(url: str, stream: str, group: str, name: str, count: int | None) -> None:
    redis = Redis.from_url(url)
    consumer = StreamConsumer(redis, stream, group, name)
    handled = 0
    try:
        async for delivery in consumer.deliveries(max_deliveries=5, claim_idle_ms=60_000):
            message = delivery.message
            print(f"{message.message_id} {message.app}: {message.payload.get('text', '')!r}")
            await delivery.ack()
            handled += 1
            if count is not None and handled >= count:
                break
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("stream")
    parser.add_argument("group")
    parser.add_argument("consumer")
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.url, args.stream, args.group, args.consumer, args.count))
