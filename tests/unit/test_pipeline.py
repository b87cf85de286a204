"""A pull answer item nested too deeply is quarantined alone, not a crash."""

from __future__ import annotations

from poller.infobip import parse_pull
from poller.infobip.body import MAX_DEPTH, Unreadable
from poller.sources.pull import rows_from_body


def test_a_pull_item_nested_too_deeply_is_quarantined_alone_not_a_crash() -> None:
    # Tried: one item 200,000 levels deep (far past any reader's stack).
    deep = b"[" * 200_000 + b"]" * 200_000
    body = b'{"results":[' + deep + b'],"messageCount":1,"pendingMessageCount":0}'
    response = parse_pull(body)
    assert response.items == [deep]
    assert response.routes == [Unreadable(f"result item nested deeper than {MAX_DEPTH} levels")]
    rows = rows_from_body(body, "2026-01-01T00:00:00Z")
    assert rows.messages == []
    assert [q.raw for q in rows.quarantined] == [deep]
