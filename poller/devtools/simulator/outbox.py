"""The outbox: messages routed to a forwardUrl, one FIFO queue per URL, until the forwarder
takes them in batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from poller.devtools.simulator.ledger import Ledger
from poller.devtools.simulator.messages import InboxMessage

# (ledger id, message), as in the pull inbox.
Item = tuple[str, InboxMessage]


class Outbox:
    """Per-URL queues; the ledger learns of each message as it is queued."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._queues: dict[str, deque[Item]] = {}
        # Called with the URL after messages were queued for it (the forwarder's wake-up).
        self.listener: Callable[[str], None] | None = None

    def put(self, url: str, items: Iterable[Item]) -> int:
        """Queue new messages for url, after those already waiting; returns how many."""
        new = list(items)
        if not new:
            return 0
        self._queues.setdefault(url, deque()).extend(new)
        self._ledger.forward_queued(url, (message_id for message_id, _ in new))
        if self.listener is not None:
            self.listener(url)
        return len(new)

    def put_back(self, url: str, items: list[Item]) -> None:
        """Return taken messages to the head of url's queue, in their order (at a stop)."""
        self._queues.setdefault(url, deque()).extendleft(reversed(items))

    def take(self, url: str, limit: int) -> list[Item]:
        """Remove and return up to limit messages waiting for url, oldest first."""
        queue = self._queues.get(url)
        if not queue:
            return []
        return [queue.popleft() for _ in range(min(limit, len(queue)))]

    def depth(self, url: str) -> int:
        """Messages waiting for url (not those in flight)."""
        queue = self._queues.get(url)
        return len(queue) if queue is not None else 0

    def urls(self) -> list[str]:
        """URLs with messages waiting."""
        return [url for url, queue in self._queues.items() if queue]

    def snapshot(self) -> dict[str, int]:
        """Waiting messages per URL."""
        return {url: len(queue) for url, queue in self._queues.items() if queue}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())
