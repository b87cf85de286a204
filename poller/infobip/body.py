"""Reading a pull answer item by item, keeping each item's bytes exactly as Infobip sent them.

A pull answer is ``{"results": [item, ...], "messageCount": n, "pendingMessageCount": m}``.
The poller needs three fields of each item to route it (``messageId``, ``applicationCode``,
``receivedAt``) and keeps the item's bytes as they came, so the stream's payload is what
Infobip sent: unknown fields, number spellings and big integers included, no re-encoding.

Two readers, one result:
- the fast one (msgspec, in C) reads a well-formed answer in two passes over the bytes, one
  for each item's raw bytes and one for the routing fields, skipping everything else;
- the careful one walks the document with the standard library's scanner one value at a time,
  for what msgspec refuses (NaN, a lone surrogate escape, a body cut short, bad JSON). It
  returns every item that arrived whole, and ``rest`` holds the bytes from the first one that
  did not, for quarantine. An item holding NaN or Infinity, or bytes that are not UTF-8, is
  returned with an ``Unreadable`` value: quarantined alone, as a stream payload must be JSON.

Both readers hold every item to ``MAX_DEPTH`` levels of nesting: an item deeper than that
is returned with an ``Unreadable`` value too, found by a scan of its brackets that needs no
recursion, so an item too deep even for the decoders is quarantined alone and the items
after it are read on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

_WS = re.compile(r"[ \t\n\r]*")

MAX_DEPTH = 64
"""The deepest nesting of arrays and objects a result item may have (the item's own object
is level 1); a deeper item is quarantined, never written to a stream.

Every reader of a stream must parse every payload. Python's json and msgspec recurse once
per level within the interpreter's limit of 1,000 frames, which the caller's own frames
share (json.loads fails at 994 levels when called from the top, at 493 with 500 frames in
use); Node's JSON.parse took 2,000,000. 64 leaves room for a reader called deep inside a
framework, and is what the strictest common readers elsewhere take by default (.NET's
System.Text.Json 64, Ruby's JSON 100, Rust's serde_json 128). No message nests that deep."""

# From a position outside strings: whatever holds no bracket, whole strings included, then
# the next bracket, or the quote of a string that does not end, or nothing at the end.
_NEXT_BRACKET = re.compile(r'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+([\[\]{}"]?)', re.DOTALL)
_CLOSER = {"[": "]", "{": "}"}


def _nesting(text: str, pos: int, stop_past: int | None = None) -> tuple[int, int]:
    """(the most arrays and objects open at once, the end) of the array or object that
    starts at ``pos``; the end is -1 when the text ends first or a bracket does not match.
    With ``stop_past``, the scan stops once the depth passes it (the end is then -1 too).
    Linear, and no recursion however deep the value is."""
    opened: list[str] = []
    deepest = 0
    while True:
        match = _NEXT_BRACKET.match(text, pos)
        bracket = match[1] if match else ""
        if bracket in ("", '"'):
            return deepest, -1
        pos = match.end() if match else pos
        if bracket in _CLOSER:
            opened.append(bracket)
            if len(opened) > deepest:
                deepest = len(opened)
                if stop_past is not None and deepest > stop_past:
                    return deepest, -1
        elif not opened or _CLOSER[opened.pop()] != bracket:
            return deepest, -1
        elif not opened:
            return deepest, pos


def _too_deep(segment: str) -> bool:
    """Whether an item (whole JSON text) nests deeper than MAX_DEPTH."""
    # Cheap first: fewer brackets than the limit, in strings or not, cannot nest deeper.
    if segment.count("[") + segment.count("{") <= MAX_DEPTH:
        return False
    start = _skip(segment, 0)
    return _nesting(segment, start, MAX_DEPTH)[0] > MAX_DEPTH


_DEEP = f"result item nested deeper than {MAX_DEPTH} levels"


def _int(digits: str) -> int | str:
    # Python refuses to convert integers of more than 4,300 digits; such a number stays
    # text in the decoded value (only the routing fields are used; the bytes are kept).
    return int(digits) if len(digits) <= 4000 else digits


_DECODE = json.JSONDecoder(parse_int=_int).raw_decode


class _Constant(ValueError):
    """NaN, Infinity or -Infinity: accepted by Python's reader, refused by JSON's grammar."""


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


_STRICT = json.JSONDecoder(parse_int=_int, parse_constant=_refuse_constant).raw_decode
_CONSTANT = re.compile(r"NaN|Infinity")


def _nonstandard(segment: str) -> str | None:
    """The first NaN/Infinity constant an item holds outside its strings, if any."""
    if _CONSTANT.search(segment) is None:  # cheap: almost every item has neither word
        return None
    try:
        _STRICT(segment)
    except _Constant as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return None


@dataclass
class PullScan:
    """What a pull answer held: its whole items (text as sent, decoded value) and counters.

    ``error`` is None when the document was read to its end and is a well-formed answer;
    otherwise it says what was wrong, and ``rest`` holds the bytes from the point where
    reading stopped (the items before it are whole and usable)."""

    items: list[tuple[bytes, Any]] = field(default_factory=list)
    message_count: int | None = None
    pending_message_count: int | None = None
    error: str | None = None
    rest: bytes = b""
    results_complete: bool = False  # the results array was read to its end
    bad_counters: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> int | None:
        """What a drain should take as still pending: ``pending_message_count`` when it was
        read. When it was not (missing or not a count: see ``bad_counters``), None after an
        answer that held items (unknown: ask again) and 0 after an empty one; never 0 while
        messages are coming."""
        if self.pending_message_count is not None:
            return self.pending_message_count
        return None if self.items else 0


# A JSON number, as RFC 8259 spells one.
_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
MAX_COUNT = 2**53 - 1
"""The largest counter read: every JSON reader holds integers up to it exactly."""


# gc=False: decoded JSON holds no reference cycles, and a body of 84,000 items makes as many
# of these; untracked, they add nothing to the cyclic collector's walks (each holds the GIL).
class _Raw(msgspec.Struct, gc=False):
    results: list[msgspec.Raw]
    # As sent: a counter is read from its text (empty when it is missing).
    messageCount: msgspec.Raw = msgspec.Raw()
    pendingMessageCount: msgspec.Raw = msgspec.Raw()


class _Route(msgspec.Struct, gc=False):
    messageId: Any = msgspec.UNSET
    applicationCode: Any = msgspec.UNSET
    receivedAt: Any = msgspec.UNSET


class _Routes(msgspec.Struct, gc=False):
    results: list[_Route]  # an item that is not an object sends the body to the careful reader


_RAW = msgspec.json.Decoder(_Raw)
_ROUTES = msgspec.json.Decoder(_Routes)
_BOM = b"\xef\xbb\xbf"
_COUNTERS = ("messageCount", "pendingMessageCount")
_ROUTE_FIELDS = ("messageId", "applicationCode", "receivedAt")


class _Stop(Exception):
    def __init__(self, reason: str, at: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at


def scan_pull(body: bytes) -> PullScan:
    """Read a pull answer; never raises. See ``PullScan`` for what a bad body gives.

    Each item comes as (its bytes as sent, its decoded value); the value may hold only the
    routing fields (the fast reader skips the rest: they are in the bytes)."""
    if body.startswith(_BOM):
        # JSON has no byte order mark, but RFC 8259 lets a reader skip one, and a server's
        # framework may put one first: the answer after it is read as usual.
        body = body[len(_BOM) :]
    scan = _fast(body)
    return scan if scan is not None else _careful(body)


def _fast(body: bytes) -> PullScan | None:
    if not body.isascii():
        # msgspec does not check the UTF-8 of what it skips: a body with a bad byte anywhere
        # goes to the careful reader, which quarantines the item that holds it.
        try:
            body.decode()
        except UnicodeDecodeError:
            return None
    try:
        raw = _RAW.decode(body)
        routes = _ROUTES.decode(body).results
    except (msgspec.DecodeError, RecursionError):
        return None
    scan = PullScan(results_complete=True)
    items = scan.items
    unset = msgspec.UNSET
    for data, route in zip(raw.results, routes, strict=True):
        item = bytes(data)
        value: Any = {n: v for n in _ROUTE_FIELDS if (v := getattr(route, n)) is not unset}
        if item.count(b"[") + item.count(b"{") > MAX_DEPTH and _too_deep(item.decode()):
            value = Unreadable(_DEEP)
        items.append((item, value))
    for name in _COUNTERS:
        _counter(scan, name, bytes(getattr(raw, name)).decode())
    return scan


def _careful(body: bytes) -> PullScan:
    scan = PullScan()
    # Bytes that are not UTF-8 become lone surrogates here and the same bytes again when an
    # item is cut out: the item that holds them is quarantined alone, its neighbours flow.
    text = body.decode("utf-8", "surrogateescape")
    try:
        _walk(text, scan)
    except _Stop as stop:
        scan.error = stop.reason
        scan.rest = text[stop.at :].encode("utf-8", "surrogateescape")
    return scan


@dataclass(frozen=True)
class Unreadable:
    """The decoded value of an item whose bytes cannot be a stream payload."""

    reason: str


def _walk(text: str, scan: PullScan) -> None:
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        try:
            _DECODE(text, pos)
        except (ValueError, RecursionError):
            raise _Stop("not JSON", pos) from None
        raise _Stop("not a JSON object", pos)
    pos = _skip(text, pos + 1)
    seen_results = False
    seen_counters: set[str] = set()
    first = True
    while True:
        if text.startswith("}", pos):
            end = _skip(text, pos + 1)
            if end != len(text):
                raise _Stop("not JSON (data after the document)", end)
            if not seen_results:
                raise _Stop("`results` is not a list", 0)
            for name in _COUNTERS:
                if name not in seen_counters:
                    _counter(scan, name, "")
            return
        if not first:
            if not text.startswith(",", pos):
                raise _Stop("not JSON (expected , or })", pos)
            pos = _skip(text, pos + 1)
        first = False
        key, after = _value(text, pos)
        if not isinstance(key, str):
            raise _Stop("not JSON (object key is not a string)", pos)
        colon = _skip(text, after)
        if not text.startswith(":", colon):
            raise _Stop("not JSON (expected :)", colon)
        pos = _skip(text, colon + 1)
        if key == "results":
            if not text.startswith("[", pos):
                raise _Stop("`results` is not a list", pos)
            seen_results = True
            pos = _items(text, _skip(text, pos + 1), scan)
            scan.results_complete = True
        else:
            start = pos
            _ignored, pos = _value(text, pos)
            if key in _COUNTERS:
                seen_counters.add(key)
                _counter(scan, key, text[start:pos])
        pos = _skip(text, pos)


def _items(text: str, pos: int, scan: PullScan) -> int:
    """Read the results array from after its ``[``; returns the position after its ``]``."""
    items = scan.items
    if text.startswith("]", pos):
        return pos + 1
    while True:
        value, end = _item(text, pos)
        segment = text[pos:end]
        data = segment.encode("utf-8", "surrogateescape")
        items.append((data, _judged(data, segment, value)))
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif text.startswith("]", pos):
            return pos + 1
        else:
            raise _Stop("not JSON (expected , or ] in results)", pos)


def _judged(data: bytes, segment: str, value: Any) -> Any:
    """An item's decoded value, or an ``Unreadable`` saying why its bytes (kept as sent)
    cannot be a stream payload: a payload a strict JSON reader refuses, or one that would
    make a reader recurse too deep, goes to quarantine (and the dead-letter stream)."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return Unreadable(f"result item is not valid UTF-8 (byte {exc.start})")
    if isinstance(value, Unreadable) or _too_deep(segment):
        return Unreadable(_DEEP)
    constant = _nonstandard(segment)
    if constant is not None:
        return Unreadable(f"result item holds {constant}, which JSON does not allow")
    return value


def _item(text: str, pos: int) -> tuple[Any, int]:
    """A result item and the position after it; too deep for the decoder, an ``Unreadable``
    value and the end its brackets give."""
    try:
        return _DECODE(text, pos)
    except RecursionError:
        # The decoder's limit is the interpreter's, shared with the frames above: the scan
        # finds the item's end without recursion, and the items after it are read on.
        _depth, end = _nesting(text, pos)
        if end < 0:
            raise _Stop("JSON nested too deeply", pos) from None
        return Unreadable(_DEEP), end
    except ValueError:
        return _value(text, pos)


def _value(text: str, pos: int) -> tuple[Any, int]:
    try:
        return _DECODE(text, pos)
    except json.JSONDecodeError as exc:
        raise _Stop(f"not JSON ({exc.msg} at char {exc.pos})", pos) from None
    except RecursionError:
        raise _Stop("JSON nested too deeply", pos) from None
    except ValueError as exc:  # anything else the decoder refuses
        raise _Stop(f"not JSON ({exc})", pos) from None


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _counter(scan: PullScan, name: str, spelled: str) -> None:
    """Read a counter from its JSON text (empty: missing): any number spelling of a whole
    count. When a document names it twice, the last one counts, as msgspec reads it."""
    missing = spelled in ("", "null")
    count = None if missing else _count(spelled)
    if name == "messageCount":
        scan.message_count = count
    else:
        scan.pending_message_count = count
    scan.bad_counters.pop(name, None)
    if count is None:
        # Bytes that are not UTF-8 come as lone surrogates: shown escaped, never written raw.
        shown = spelled[:40].encode("utf-8", "backslashreplace").decode()
        scan.bad_counters[name] = "missing" if missing else shown


def _count(spelled: str) -> int | None:
    """The whole count a JSON number spells (``10``, ``1E1``, ``10.0``, ``-0``); None for
    what is not a number, a fraction, negative, or past MAX_COUNT. Exact (a float would read
    10.000000000000001 as 10), and linear however long the spelling."""
    match = _NUMBER.fullmatch(spelled)
    if match is None:
        return None
    sign, whole, fraction, exponent = match.groups(default="")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return 0  # zero, however spelled
    if sign:
        return None
    significant = digits.rstrip("0")
    # The number is int(significant) * 10 ** shift.
    shift = len(digits) - len(significant) - len(fraction)
    if exponent:
        if len(exponent.lstrip("+-").lstrip("0")) > 18:
            return None  # 10 ** -(huge) makes a fraction, 10 ** (huge) a number past any count
        shift += int(exponent)
    if shift < 0 or len(significant) + shift > len(str(MAX_COUNT)):
        return None
    count = int(significant) * 10**shift
    return count if count <= MAX_COUNT else None
