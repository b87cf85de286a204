"""The consumer helper flags a malformed entry instead of raising."""

from __future__ import annotations

from poller.consumer import parse_entry


def test_malformed_entry_is_flagged_not_raised() -> None:
    message = parse_entry(b"1-1", {b"id": b"x", b"payload": b"{broken"})
    assert message.error is not None
    assert message.payload == {}
    assert message.entry_id == "1-1"
    assert parse_entry("1-2", {"payload": "[1]"}).error == "payload is not a JSON object"
