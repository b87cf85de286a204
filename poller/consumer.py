"""The consumer-group helper for downstream services (``poller.sink.redis.consumer``).

consumer = StreamConsumer(redis, "infobip:push:{my-app}:mo", "billing", "worker-1")
async for delivery in consumer.deliveries():
    handle(delivery.message.payload)
    await delivery.ack()
"""

from poller.sink.redis.consumer import (
    Delivery,
    Message,
    StreamConsumer,
    last_ids,
    parse_entry,
    read_streams,
)

__all__ = ["Delivery", "Message", "StreamConsumer", "last_ids", "parse_entry", "read_streams"]
