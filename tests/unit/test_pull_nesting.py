"""A result item nested too deep is quarantined alone, and its neighbours flow: nothing that
reaches a stream can make a reader recurse past its limit."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable

import pytest

from poller.infobip import body as body_module
from poller.infobip.body import MAX_DEPTH, Unreadable, scan_pull
from poller.sources.pull import rows_from_body

PULLED_AT = "2026-12-02T10:00:00.000Z"
DEEP_REASON = f"result item nested deeper than {MAX_DEPTH} levels"


def good(n: int) -> bytes:
    return json.dumps(
        {"messageId": f"m-{n}", "applicationCode": "app", "receivedAt": "t", "text": f"t{n}"}
    ).encode()


def nested(depth: int, n: int = 0) -> bytes:
    """An item ``depth`` levels deep: the item's own object and depth - 1 arrays in it."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"messageId":"d-%d","applicationCode":"app","x":%s}' % (n, inner)


def pull(*items: bytes, pending: int = 0) -> bytes:
    return b'{"results":[' + b",".join(items) + b'],"pendingMessageCount":%d}' % pending


def outcome(scan: body_module.PullScan) -> list[tuple[bytes, object]]:
    """Each item's bytes, with its value where it is Unreadable (else its messageId)."""
    return [(d, v if isinstance(v, Unreadable) else v.get("messageId")) for d, v in scan.items]


def test_the_limit_leaves_a_wide_margin_for_every_shipped_reader() -> None:
    # Python's json and msgspec recurse once per level within a 1,000-frame limit that the
    # caller's own frames share; a reader called deep in a framework still has room.
    assert 32 <= MAX_DEPTH <= 256
    json.loads(nested(MAX_DEPTH))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 995, 5_000, 100_000])
def test_a_deep_item_between_two_good_ones_is_quarantined_alone(depth: int) -> None:
    body = pull(good(1), nested(depth), good(2), pending=7)
    scan = scan_pull(body)
    assert scan.error is None
    assert scan.results_complete
    assert scan.pending_message_count == 7
    assert outcome(scan) == [
        (good(1), "m-1"),
        (nested(depth), Unreadable(DEEP_REASON)),
        (good(2), "m-2"),
    ]
    rows = rows_from_body(body, PULLED_AT)
    assert [m.message_id for m in rows.messages] == ["m-1", "m-2"]
    assert [(q.raw, q.reason) for q in rows.quarantined] == [(nested(depth), DEEP_REASON)]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 995, 20_000])
def test_a_deep_item_first_or_last_is_quarantined_alone(depth: int) -> None:
    for items, expected_ids in (
        ((nested(depth), good(1), good(2)), ["m-1", "m-2"]),
        ((good(1), good(2), nested(depth)), ["m-1", "m-2"]),
        ((nested(depth, 1), nested(depth, 2)), []),
    ):
        deep = [item for item in items if item.startswith(b'{"messageId":"d-')]
        rows = rows_from_body(pull(*items), PULLED_AT)
        assert [m.message_id for m in rows.messages] == expected_ids
        assert [(q.raw, q.reason) for q in rows.quarantined] == [(d, DEEP_REASON) for d in deep]


def test_an_item_at_the_limit_is_a_message() -> None:
    rows = rows_from_body(pull(nested(MAX_DEPTH), good(1)), PULLED_AT)
    assert [m.message_id for m in rows.messages] == ["d-0", "m-1"]
    assert rows.quarantined == []


def test_brackets_inside_strings_are_not_nesting() -> None:
    texts = [
        {"messageId": "s-1", "applicationCode": "app", "text": "[" * 10_000},
        {"messageId": "s-2", "applicationCode": "app", "text": "{" * 5_000 + '\\"[' * 3_000},
        {"messageId": "s-3", "applicationCode": "app", "k" + "[" * 500: ["]" * 500]},
    ]
    body = pull(*(json.dumps(t).encode() for t in texts))
    rows = rows_from_body(body, PULLED_AT)
    assert [m.message_id for m in rows.messages] == ["s-1", "s-2", "s-3"]
    assert rows.quarantined == []


def test_a_body_cut_inside_a_deep_item_keeps_what_came_before_it() -> None:
    body = pull(good(1), nested(5_000), good(2))
    cut = body[: len(b'{"results":[') + len(good(1)) + 1 + 3_000]
    rows = rows_from_body(cut, PULLED_AT, "cut")
    assert [m.message_id for m in rows.messages] == ["m-1"]
    (rest,) = rows.quarantined
    assert rest.raw == cut[len(b'{"results":[') + len(good(1)) + 1 :]


@pytest.mark.parametrize(
    "body",
    [
        pull(good(1), nested(300), good(2)),
        pull(good(1), nested(MAX_DEPTH), good(2)),
        pull(nested(MAX_DEPTH + 1), nested(MAX_DEPTH + 1)),
        pull(good(1), b'{"messageId":"q","applicationCode":"a","t":"' + b"[" * 2_000 + b'"}'),
        pull(good(1), b'{"messageId":"w","applicationCode":"a","x":[' + b"[[]]," * 300 + b"1]}"),
    ],
)
def test_both_readers_give_each_item_the_same_outcome(body: bytes) -> None:
    fast = body_module._fast(body)
    assert fast is not None, "msgspec reads this body"
    assert outcome(fast) == outcome(body_module._careful(body))


def cpu_seconds(body: bytes, reader: Callable[[bytes], object]) -> float:
    """The least CPU time of a few reads: preemption by other processes does not count, nor
    do the collector's passes over the 300,000 lists the careful reader's decoder builds of
    a wide item (their cost depends on what else the process holds, not on this code)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            started = time.thread_time()
            reader(body)
            best = min(best, time.thread_time() - started)
    finally:
        gc.enable()
    return max(best, 1e-6)


SHAPES = {
    "deep": lambda n: b"[" * (n // 2) + b"]" * (n // 2),
    "wide": lambda n: b"[" + b"[]," * (n // 3) + b"1]",
    "brackets in a string": lambda n: b'"' + b"[" * n + b'"',
    "escaped quotes in a string": lambda n: b'"' + b'\\"[' * (n // 3) + b'"',
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("reader", [scan_pull, body_module._careful], ids=["fast", "careful"])
def test_the_depth_check_is_linear(
    shape: Callable[[int], bytes], reader: Callable[[bytes], object]
) -> None:
    def body(size: int) -> bytes:
        return pull(good(1), b'{"messageId":"x","applicationCode":"a","x":%s}' % shape(size))

    # 100 KB against 1 MB: ten times the input; quadratic would be a hundred times the time.
    # (A 10 KB body took 0.1 ms, too little for a ratio that holds on a loaded machine.)
    small, big = cpu_seconds(body(100_000), reader), cpu_seconds(body(1_000_000), reader)
    assert big / small <= 30, (small, big)  # linear: 10
