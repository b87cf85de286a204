"""Reading answers item by item, as the body journal relies on: text kept as sent, every whole
item of a cut answer found wherever the cut falls, and a bad item spoiling only itself."""

from __future__ import annotations

import json

import pytest

from poller.infobip.body import scan_pull
from poller.sources.pull import rows_from_body
from tests.support import inbox_item


def test_items_keep_the_text_infobip_sent() -> None:
    # Tried: odd spacing, number spellings JSON allows but a re-encoder would change, an
    # unknown field, a big integer: the kept text must be byte for byte what arrived.
    raw_items = [
        '{"messageId":"a","applicationCode":"x","price":1.50,"big":123456789012345678901234567890}',
        '{ "messageId" : "b" , "applicationCode" : "x", "exp": 1E+2, "unknown": [ ] }',
    ]
    body = ('{"results": [' + ",\n ".join(raw_items) + '], "messageCount": 2,'
            ' "pendingMessageCount": 7}').encode()  # fmt: skip
    scan = scan_pull(body)
    assert scan.error is None
    assert [data.decode() for data, _value in scan.items] == raw_items
    assert (scan.message_count, scan.pending_message_count) == (2, 7)


def test_a_cut_answer_gives_every_whole_item_wherever_the_cut_falls() -> None:
    # Tried: the same answer cut after every one of its bytes.
    items = [inbox_item(n) for n in range(6)]
    body = json.dumps({"results": items, "messageCount": 6, "pendingMessageCount": 0}).encode()
    texts = [json.dumps(i) for i in items]
    for cut in range(len(body)):
        prefix = body[:cut]
        rows = rows_from_body(prefix, "t", "cut")
        whole = [i["messageId"] for i, t in zip(items, texts, strict=True)
                 if prefix.find(t.encode()) != -1]  # fmt: skip
        assert [m.message_id for m in rows.messages] == whole, cut
        # What is not whole is quarantined, never dropped: the bytes from the first cut item.
        kept = b"".join(q.raw for q in rows.quarantined)
        if len(whole) == len(items):
            assert not rows.quarantined, cut
        elif cut:
            assert prefix.endswith(kept), cut
            if items[len(whole)]["messageId"].encode() in prefix:  # type: ignore[union-attr]
                assert items[len(whole)]["messageId"].encode() in kept  # type: ignore[union-attr]


def test_numbers_python_cannot_hold_and_a_bad_byte_spoil_only_their_own_item() -> None:
    # Tried: a 5,000-digit integer and 1e400 (valid JSON that Python cannot hold, or that a
    # re-encoder would turn into Infinity), NaN and -Infinity (not JSON: a strict reader
    # refuses them; the words inside a string are fine), and an item with a byte that is not
    # UTF-8, between good items.
    items = [
        b'{"messageId":"a","applicationCode":"x","n":' + b"9" * 5000 + b"}",
        b'{"messageId":"b","applicationCode":"x","f":NaN,"g":1e400}',
        b'{"messageId":"c","applicationCode":"x","t":"\xff"}',
        b'{"messageId":"d","applicationCode":"x","t":"caf\xc3\xa9"}',
        b'{"messageId":"e","applicationCode":"x","g":1e400,"t":"NaN and -Infinity"}',
        b'{"messageId":"f","applicationCode":"x","h":[1,-Infinity]}',
    ]
    body = b'{"results":[' + b",".join(items) + b'],"messageCount":6,"pendingMessageCount":0}'
    rows = rows_from_body(body, "t")
    assert [(m.message_id, m.payload) for m in rows.messages] == [
        ("a", items[0]),
        ("d", items[3]),
        ("e", items[4]),
    ]
    assert [(q.raw, q.reason) for q in rows.quarantined] == [
        (items[1], "result item holds NaN, which JSON does not allow"),
        (items[2], "result item is not valid UTF-8 (byte 44)"),
        (items[5], "result item holds -Infinity, which JSON does not allow"),
    ]
    for message in rows.messages:  # what reaches a stream, a strict reader reads
        json.loads(message.payload, parse_int=str, parse_constant=pytest.fail)
