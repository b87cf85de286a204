"""Properties over generated inputs: the pull answer reader keeps every whole item's bytes and
never fails in an undocumented way; the spool gives back what was appended, in order, once.

Examples are derandomized (the profile in tests/conftest.py): a failure reproduces anywhere.
These need no server; they live outside tests/unit for their time (200 examples a property,
over a minute on a loaded 2-core machine), which would break the unit tier's budget.
"""

from __future__ import annotations

import json
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from poller.infobip import body as body_module
from poller.infobip.body import MAX_DEPTH, Unreadable, scan_pull
from poller.infobip.client import parse_pull
from poller.infobip.errors import MalformedResponseError
from poller.sources.forward import parse_forward
from poller.sources.pull import rows_from_body
from poller.spool import NewMessage, Spool

# -- JSON text, spelled the many ways a sender may spell it -----------------------------------

_WS = st.sampled_from(["", " ", "\n", "\t", "  ", "\r\n "])
_NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0", "-0", "1.50", "1E+2", "2e-3", "0.0", "-12.5e10", "1" * 40]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


def _string(text: str, style: int) -> str:
    if style == 0:
        return json.dumps(text, ensure_ascii=False)
    if style == 1:
        return json.dumps(text, ensure_ascii=True)
    return json.dumps(text, ensure_ascii=False).replace("/", "\\/")


_STRINGS = st.builds(
    _string, st.text(max_size=12), st.integers(0, 2)
)  # lone surrogates included: JSON may escape them, the careful reader takes them


def _array(parts: tuple[str, list[str]]) -> str:
    ws, values = parts
    return "[" + ws + ("," + ws).join(values) + ws + "]"


def _object(parts: tuple[str, list[tuple[str, str]]]) -> str:
    ws, pairs = parts
    return "{" + ws + ("," + ws).join(f"{k}{ws}:{ws}{v}" for k, v in pairs) + ws + "}"


_VALUES = st.recursive(
    st.one_of(_NUMBERS, _STRINGS, st.sampled_from(["true", "false", "null"])),
    lambda inner: st.one_of(
        st.tuples(_WS, st.lists(inner, max_size=4)).map(_array),
        st.tuples(_WS, st.lists(st.tuples(_STRINGS, inner), max_size=4)).map(_object),
    ),
    max_leaves=12,
)


@st.composite
def items(draw: st.DrawFn) -> str:
    """One result item as text: routing fields (sometimes missing or odd) among others."""
    ws = draw(_WS)
    pairs = draw(st.lists(st.tuples(_STRINGS, _VALUES), max_size=4))
    routing = [
        ('"messageId"', draw(st.one_of(_STRINGS, _NUMBERS))),
        ('"applicationCode"', draw(st.one_of(_STRINGS, st.just("null")))),
        ('"receivedAt"', draw(_STRINGS)),
    ]
    keep = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    pairs += [pair for pair, kept in zip(routing, keep, strict=True) if kept or pair is routing[0]]
    order = draw(st.permutations(pairs))
    return _object((ws, list(order)))


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A well-formed pull answer and each of its items' bytes, in order."""
    texts = draw(st.lists(items(), max_size=6))
    ws = draw(_WS)
    results = ("[" + ws + ("," + ws).join(texts) + ws + "]") if texts else "[" + ws + "]"
    members = [('"results"', results)]
    members += draw(
        st.lists(
            st.tuples(
                st.sampled_from(['"messageCount"', '"pendingMessageCount"', '"other"']),
                _NUMBERS,
            ),
            max_size=3,
            unique_by=lambda pair: pair[0],
        )
    )
    body = _object((ws, draw(st.permutations(members)))) + draw(_WS)
    raw = body.encode("utf-8", "surrogatepass")
    return raw, [t.encode("utf-8", "surrogatepass") for t in texts]


# -- the answer reader -------------------------------------------------------------------------


@given(answers())
def test_every_item_of_a_well_formed_answer_comes_back_byte_for_byte(
    answer: tuple[bytes, list[bytes]],
) -> None:
    body, expected = answer
    json.loads(body.decode("utf-8", "surrogatepass"))  # the generator makes valid JSON
    scan = scan_pull(body)
    assert scan.error is None
    assert scan.results_complete
    assert [data for data, _value in scan.items] == expected
    for data, value in scan.items:
        decoded = json.loads(data.decode("utf-8", "surrogatepass"))
        if not isinstance(value, Unreadable):
            for name in ("messageId", "applicationCode", "receivedAt"):
                if name in value and isinstance(decoded.get(name), str):
                    assert value[name] == decoded[name]


@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_a_scan_or_a_documented_error(body: bytes) -> None:
    scan = scan_pull(body)  # documented: never raises
    assert scan.error is not None or scan.results_complete
    try:
        parse_pull(body)
        refused = body
    except MalformedResponseError as exc:
        refused = exc.body
    assert refused == body  # the bytes travel with the error, for quarantine
    parse_forward(body)  # a reason, never an exception
    rows = rows_from_body(body, "2026-11-30T10:00:00.000Z")
    if scan.error is not None and not scan.items and body.strip():
        assert [q.raw for q in rows.quarantined][-1:] == [body]  # the bytes are kept


@given(answers(), st.data())
def test_a_damaged_answer_loses_no_item_that_arrived_whole(
    answer: tuple[bytes, list[bytes]], data: st.DataObject
) -> None:
    # Tried: the answer cut at any byte, or its end replaced by random bytes (a proxy's
    # garbage, a splice): every item that ended before the damage must come back whole.
    body, expected = answer
    at = data.draw(st.integers(0, len(body)), label="damage at")
    junk = data.draw(st.one_of(st.just(b""), st.binary(max_size=40)), label="junk")
    damaged = body[:at] + junk
    whole, pos = [], 0
    for item in expected:
        start = body.index(item, pos)
        pos = start + len(item)
        if pos <= at:
            whole.append(item)
    scan = scan_pull(damaged)
    assert [d for d, _v in scan.items][: len(whole)] == whole
    rows = rows_from_body(damaged, "2026-11-30T10:00:00.000Z", "cut")
    kept = [m.payload for m in rows.messages] + [q.raw for q in rows.quarantined]
    for item in whole:
        assert any(item in k for k in kept)


def _routing(value: object) -> object:
    """What the pipeline uses of an item's decoded value: why it is unreadable, or its
    routing fields."""
    if isinstance(value, Unreadable) or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k in ("messageId", "applicationCode", "receivedAt")}


@given(st.lists(items(), max_size=5), st.data())
def test_a_deep_item_anywhere_takes_no_neighbour_with_it(
    texts: list[str], data: st.DataObject
) -> None:
    depth = data.draw(st.sampled_from([MAX_DEPTH + 1, 300, 3_000]), label="depth")
    at = data.draw(st.integers(0, len(texts)), label="at")
    deep = '{"messageId":"deep","applicationCode":"a","x":' + "[" * depth + "]" * depth + "}"
    around = [t.encode("utf-8", "surrogatepass") for t in texts]

    def body(parts: list[str]) -> bytes:
        return ('{"results":[' + ",".join(parts) + "]}").encode("utf-8", "surrogatepass")

    alone = scan_pull(body(texts))
    scan = scan_pull(body([*texts[:at], deep, *texts[at:]]))
    assert scan.error is None
    assert [d for d, _v in scan.items] == [*around[:at], deep.encode(), *around[at:]]
    values = [_routing(v) for _d, v in scan.items]
    assert values.pop(at) == Unreadable(f"result item nested deeper than {MAX_DEPTH} levels")
    assert values == [_routing(v) for _d, v in alone.items]


@given(answers())
def test_both_readers_give_every_item_the_same_outcome(answer: tuple[bytes, list[bytes]]) -> None:
    body, _expected = answer
    fast = body_module._fast(body)
    if fast is not None:  # msgspec refused it: only the careful reader reads it
        careful = body_module._careful(body)
        assert [(d, _routing(v)) for d, v in fast.items] == [
            (d, _routing(v)) for d, v in careful.items
        ]


@given(_NUMBERS, _NUMBERS, st.booleans())
def test_a_counter_is_read_alike_by_both_readers_in_any_spelling(
    count: str, pending: str, with_item: bool
) -> None:
    item = '{"messageId":"m","applicationCode":"a"}' if with_item else ""
    body = f'{{"results":[{item}],"messageCount":{count},"pendingMessageCount":{pending}}}'
    fast, careful = body_module._fast(body.encode()), body_module._careful(body.encode())
    assert fast is not None  # msgspec reads every JSON number
    for scan in (fast, careful):
        for spelled, read in ((count, scan.message_count), (pending, scan.pending_message_count)):
            number = Decimal(spelled)
            whole = number == number.to_integral_value() and 0 <= number <= 2**53 - 1
            assert read == (int(number) if whole else None)
        assert scan.pending == (
            scan.pending_message_count
            if scan.bad_counters.get("pendingMessageCount") is None
            else (None if with_item else 0)
        )
    assert fast.bad_counters == careful.bad_counters


@pytest.mark.parametrize("depth", [10, 5000])
def test_deep_nesting_is_an_error_not_a_crash(depth: int) -> None:
    item = '{"messageId":"m","applicationCode":"a","x":' + "[" * depth + "]" * depth + "}"
    scan = scan_pull(('{"results":[' + item + "]}").encode())
    assert scan.error is None or "deeply" in scan.error or scan.items


# -- the spool ---------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
_MESSAGES = st.builds(
    NewMessage,
    app=_TEXT.filter(bool),
    message_id=_TEXT,
    received_at=_TEXT,
    pulled_at=_TEXT,
    payload=st.binary(max_size=64),
    dedupe=st.booleans(),
)


class SpoolRoundTrip(RuleBasedStateMachine):
    """Appends, deletes of what Redis confirmed, restarts: the spool always holds exactly the
    rows appended and not deleted, in the order appended, each once."""

    @initialize()
    def open_spool(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "spool.db"
        self.spool = Spool.open(self.path, max_rows=10**6, max_bytes=10**9)
        self.model: dict[int, NewMessage] = {}
        self.last_seq = 0

    @rule(batch=st.lists(_MESSAGES, min_size=1, max_size=5))
    def append(self, batch: list[NewMessage]) -> None:
        self.spool.append(batch)
        rows = self.spool.pending(len(batch), after=self.last_seq)
        assert len(rows) == len(batch)
        for row, sent in zip(rows, batch, strict=True):
            assert row.seq > self.last_seq
            self.last_seq = row.seq
            self.model[row.seq] = sent

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def commit_some(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True))
        assert self.spool.commit_seqs(chosen) == len(chosen)
        for seq in chosen:
            del self.model[seq]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def commit_prefix(self, data: st.DataObject) -> None:
        up_to = data.draw(st.sampled_from(sorted(self.model)))
        gone = [seq for seq in self.model if seq <= up_to]
        assert self.spool.commit(up_to) == len(gone)
        for seq in gone:
            del self.model[seq]

    @rule()
    def restart(self) -> None:
        self.spool.close()
        self.spool = Spool.open(self.path, max_rows=10**6, max_bytes=10**9)

    @invariant()
    def holds_exactly_what_was_appended(self) -> None:
        if not hasattr(self, "spool"):
            return
        rows = self.spool.pending(10**6)
        assert [r.seq for r in rows] == sorted(self.model)  # in order, each once
        for row in rows:
            sent = self.model[row.seq]
            got = (row.app, row.message_id, row.received_at, row.pulled_at, bytes(row.payload))
            assert got == (
                sent.app,
                sent.message_id,
                sent.received_at,
                sent.pulled_at,
                sent.payload,
            )
            assert bool(row.dedupe) == sent.dedupe
        assert self.spool.stats().rows == len(self.model)

    def teardown(self) -> None:
        if hasattr(self, "spool"):
            self.spool.close()
            self.dir.cleanup()


TestSpoolRoundTrip = SpoolRoundTrip.TestCase
TestSpoolRoundTrip.settings = settings(max_examples=40, stateful_step_count=12)
