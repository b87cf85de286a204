"""What Infobip may send around the items: a byte order mark, counters in any JSON number
spelling. Both readers (msgspec's and the careful one) read them alike."""

from __future__ import annotations

import json

from poller.infobip import body as body_module
from poller.infobip.body import PullScan, Unreadable, scan_pull
from poller.sources.pull import rows_from_body

BOM = b"\xef\xbb\xbf"
PULLED_AT = "2026-12-02T10:00:00.000Z"


def item(n: int) -> bytes:
    return json.dumps({"messageId": f"m-{n}", "applicationCode": "app", "text": "é"}).encode()


def answer(pending: str = "0", count: str = "2", *items: bytes) -> bytes:
    results = b",".join(items or (item(1), item(2)))
    return b'{"results":[%s],"messageCount":%s,"pendingMessageCount":%s}' % (
        results,
        count.encode(),
        pending.encode(),
    )


def both(body: bytes) -> list[PullScan]:
    """The answer as each reader reads it (the fast one only when msgspec takes it)."""
    fast = body_module._fast(body)
    careful = body_module._careful(body)
    return [careful] if fast is None else [fast, careful]


def summary(scan: PullScan) -> tuple[object, ...]:
    return (
        [d for d, _v in scan.items],
        scan.message_count,
        scan.pending_message_count,
        scan.bad_counters,
        scan.error,
        scan.results_complete,
    )


def test_a_byte_order_mark_before_the_answer_is_skipped() -> None:
    body = answer("3")
    with_bom = scan_pull(BOM + body)
    assert summary(with_bom) == summary(scan_pull(body))
    assert with_bom.error is None
    assert [d for d, _v in with_bom.items] == [item(1), item(2)]  # each item's bytes as sent
    assert with_bom.pending_message_count == 3
    rows = rows_from_body(BOM + body, PULLED_AT)
    assert [m.message_id for m in rows.messages] == ["m-1", "m-2"]
    assert rows.quarantined == []


def test_a_byte_order_mark_is_skipped_by_the_careful_reader_too() -> None:
    # NaN in one item: msgspec refuses the body, the careful reader reads it.
    nan = b'{"messageId":"n","applicationCode":"app","x":NaN}'
    scan = scan_pull(BOM + answer("4", "3", item(1), nan, item(2)))
    assert scan.error is None
    assert [d for d, _v in scan.items] == [item(1), nan, item(2)]
    assert isinstance(scan.items[1][1], Unreadable)
    assert scan.pending_message_count == 4


def test_a_byte_order_mark_before_a_broken_answer_keeps_what_was_whole() -> None:
    body = BOM + answer("4")[:-60]
    scan = scan_pull(body)
    assert scan.error is not None
    assert [d for d, _v in scan.items] == [item(1)]
