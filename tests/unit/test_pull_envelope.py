"""What Infobip may send around the items: a byte order mark, counters in any JSON number
spelling. Both readers (msgspec's and the careful one) read them alike."""

from __future__ import annotations

import json

import pytest

from poller.infobip import body as body_module
from poller.infobip.body import PullScan, Unreadable, scan_pull
from poller.infobip.client import parse_pull
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


@pytest.mark.parametrize(
    ("spelled", "count"),
    [
        ("10", 10),
        ("1E1", 10),
        ("1e1", 10),
        ("10E0", 10),
        ("10.0", 10),
        ("10.00e0", 10),
        ("100e-1", 10),
        ("1.0E+1", 10),
        ("-0", 0),
        ("-0.0", 0),
        ("0e5", 0),
        ("9007199254740991", 2**53 - 1),
        ("0e-99999999999999999999999", 0),
        ("1" + "0" * 100_000 + "e-100000", 1),
        ("0." + "0" * 100_000 + "7e100001", 7),
    ],
)
def test_a_counter_in_any_json_number_spelling_is_read(spelled: str, count: int) -> None:
    for scan in both(answer(spelled, spelled)):
        assert scan.pending_message_count == count
        assert scan.message_count == count
        assert scan.bad_counters == {}
    assert parse_pull(answer(spelled)).pending_message_count == count


@pytest.mark.parametrize(
    "spelled",
    [
        "1.5",
        "10.000000000000001",  # a float reads it as 10.0; it is not a whole count
        "-1",
        "-1E1",
        "1e400",
        "9007199254740992",  # past what a JSON reader holds exactly
        "1" + "0" * 40,
        "1e-999999999",
        "1e99999999999999999999999",
        "0." + "0" * 100_000 + "1",
        '"10"',
        "true",
        "[10]",
        "{}",
        "NaN",
        "Infinity",
        "-Infinity",
    ],
)
def test_a_counter_that_is_not_a_count_is_bad_and_unknown(spelled: str) -> None:
    for scan in both(answer(spelled, spelled)):
        assert scan.error is None
        assert scan.pending_message_count is None
        assert scan.message_count is None
        assert scan.bad_counters == {
            "messageCount": spelled[:40],
            "pendingMessageCount": spelled[:40],
        }
        assert len(scan.items) == 2


def test_a_counter_that_is_not_utf8_is_shown_escaped() -> None:
    scan = scan_pull(b'{"results":[],"messageCount":0,"pendingMessageCount":"\xff"}')
    assert scan.bad_counters == {"pendingMessageCount": '"\\udcff"'}
    assert scan.bad_counters["pendingMessageCount"].encode()  # writable as UTF-8


def test_a_missing_or_null_counter_is_reported_missing() -> None:
    body = b'{"results":[%s],"pendingMessageCount":null}' % item(1)
    for scan in both(body):
        assert scan.bad_counters == {"messageCount": "missing", "pendingMessageCount": "missing"}
        assert scan.pending_message_count is None


def test_a_counter_named_twice_is_read_from_its_last_spelling() -> None:
    body = b'{"results":[],"messageCount":1.5,"pendingMessageCount":2,"messageCount":0,'
    body += b'"pendingMessageCount":"x"}'
    for scan in both(body):
        assert (scan.message_count, scan.pending_message_count) == (0, None)
        assert scan.bad_counters == {"pendingMessageCount": '"x"'}


@pytest.mark.parametrize("spelled", ["1.5", "null", '"x"'])
def test_an_unknown_count_is_never_zero_while_items_come(spelled: str) -> None:
    # Unknown after an answer with items: ask again (None); after an empty one: nothing
    # more is waiting as far as anyone can tell (0).
    assert scan_pull(answer(spelled)).pending is None
    empty = b'{"results":[],"messageCount":0,"pendingMessageCount":%s}' % spelled.encode()
    assert scan_pull(empty).pending == 0
    assert scan_pull(answer("1E1")).pending == 10
    assert scan_pull(answer("0")).pending == 0
