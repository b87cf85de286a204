"""What a forwarded request's body becomes: its bytes decoded (Content-Encoding, charset),
split into items, and spool rows for the receiver's own applications only.

Liberal in what it reads, strict in where it writes. JSON is recognised by its content,
whatever the declared Content-Type; a declared charset is honoured (the items are stored as
the UTF-8 JSON of the same value); gzip and deflate are decoded in steps of ``STEP`` bytes so
the receiver counts decoded bytes, not declared ones. An item is written to a stream only when
its ``applicationCode`` is one of ``POLLER_FORWARD__APPLICATIONS`` and its ``messageId`` is at
most ``MAX_ID_CHARS`` long; every other item of a body is kept, all of them together, in one
quarantine row (so a body of 84,000 invented codes creates no stream and one dead letter).
"""

from __future__ import annotations

import codecs
import zlib
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from poller.sources.items import items_of, quarantine, rows_from_items
from poller.spool import NewMessage, NewQuarantine

# Content-Encoding values the receiver decodes ("identity" is no encoding at all).
DECODED = ("gzip", "x-gzip", "deflate")
# Decoded bytes handed over at a time: the receiver checks its caps between steps.
STEP = 64 * 1024
# The longest messageId a forwarded message may have (Infobip's are a few dozen characters):
# a longer one is quarantined, so a megabyte id is not copied into a stream entry's id, its
# payload and the dedupe set.
MAX_ID_CHARS = 256
# Charsets decoded, by the family of their codec's name: the Unicode forms and the single-byte
# code pages. Other codecs are refused (punycode's decoder is quadratic in its input).
_CHARSETS = ("utf-8", "utf-16", "utf-32", "ascii", "iso8859-", "cp125", "koi8-", "mac-")
# How much of a sender's text (a charset, an application code) a reason quotes.
_QUOTED = 40
_CODES_NAMED = 5


class Undecodable(Exception):
    """A body whose bytes cannot be turned into JSON text (the reason says why)."""


def encoding_of(header: str | None) -> str | None:
    """The one encoding to decode from a Content-Encoding header ("" for none); None when it
    names an encoding the receiver does not decode, or more than one."""
    names = [name.strip().lower() for name in (header or "").split(",")]
    names = [name for name in names if name and name != "identity"]
    if not names:
        return ""
    if len(names) == 1 and names[0] in DECODED:
        return names[0]
    return None


class Inflater:
    """gzip (several members too) or deflate (zlib-wrapped or raw), decoded in steps."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._gzip = encoding != "deflate"
        self._obj: Any = None
        self._head = b""
        self._ended = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, at most ``STEP`` at a time; Undecodable when the
        bytes are not of the encoding."""
        try:
            yield from self._feed(data)
        except zlib.error as exc:
            raise Undecodable(f"{self.encoding} body cannot be decoded: {exc}") from None

    def _feed(self, data: bytes) -> Iterator[bytes]:
        data = self._head + data
        self._head = b""
        while True:
            if self._obj is None:
                if not data or (self._ended and not data.strip(b"\0")):
                    return  # zero padding after the last member is accepted, as by gzip(1)
                if self._ended and not self._gzip:
                    raise Undecodable("deflate body has bytes after its end")
                if not self._gzip and len(data) < 2:
                    self._head = data  # the zlib header is two bytes
                    return
                self._obj = zlib.decompressobj(self._wbits(data))
            piece = self._obj.decompress(data, STEP)
            data = self._obj.unconsumed_tail
            if piece:
                yield piece
            if self._obj.eof:
                data = self._obj.unused_data  # the next gzip member, if any
                self._obj, self._ended = None, True
            elif not data and len(piece) < STEP:
                return  # else output may wait inside: ask again with no input

    def _wbits(self, data: bytes) -> int:
        if self._gzip:
            return 16 + zlib.MAX_WBITS
        # RFC 9110's deflate is zlib-wrapped; some senders send raw deflate.
        wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS

    def finish(self) -> None:
        """Undecodable when the body ended inside the encoded stream (cut)."""
        if self._head or (self._obj is not None and not self._obj.eof) or not self._ended:
            raise Undecodable(f"{self.encoding} body is cut: it ends before its end mark")


def transcode(body: bytes, charset: str | None) -> bytes:
    """The body as UTF-8 bytes of the same text when a charset other than UTF-8 is declared;
    Undecodable when the charset is unknown, not decoded here, or the bytes are not in it."""
    if not charset:
        return body
    quoted = repr(charset[:_QUOTED])
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError):
        raise Undecodable(f"charset {quoted} is not known") from None
    if name == "utf-8":
        return body
    if not name.startswith(_CHARSETS):
        raise Undecodable(
            f"charset {quoted} is not decoded here (UTF-8, UTF-16, UTF-32, ASCII, ISO-8859-*,"
            " windows-125x, KOI8, Mac code pages are)"
        )
    try:
        text = body.decode(name)
    except UnicodeDecodeError as exc:
        raise Undecodable(f"body is not {quoted}: {exc.reason} at byte {exc.start}") from None
    return text.encode("utf-8", "surrogatepass")


def parse_forward(
    body: bytes, charset: str | None = None
) -> tuple[list[tuple[bytes, Any]], str | None]:
    """The items of a forwarded body in its declared charset, read as every source's body is
    (``items_of``), or why it is not one; never raises."""
    try:
        return items_of(transcode(body, charset))
    except Undecodable as exc:
        return [], str(exc)


class Routed:
    """A body's spool rows: messages and the quarantined items of the receiver's own
    applications, and ``strays``, one row holding every other item (or None)."""

    def __init__(
        self,
        messages: list[NewMessage],
        quarantined: list[NewQuarantine],
        strays: NewQuarantine | None,
        stray_count: int,
    ) -> None:
        self.messages = messages
        self.quarantined = quarantined
        self.strays = strays
        self.stray_count = stray_count

    @property
    def rows(self) -> list[NewQuarantine]:
        """Every quarantine row."""
        return self.quarantined if self.strays is None else [*self.quarantined, self.strays]

    @property
    def items_quarantined(self) -> int:
        """Items kept in quarantine, strays counted one by one."""
        return len(self.quarantined) + self.stray_count


def route(items: Sequence[tuple[bytes, Any]], apps: Collection[str], received_at: str) -> Routed:
    """Spool rows for a forwarded body's items: see the module's docstring."""
    mine: list[tuple[bytes, Any]] = []
    long_ids: list[NewQuarantine] = []
    strays: list[bytes] = []
    codes: Counter[str | None] = Counter()
    for data, item in items:
        app = item.get("applicationCode") if isinstance(item, dict) else None
        if not isinstance(app, str) or app not in apps:
            strays.append(data)
            codes[app if isinstance(app, str) else None] += 1
            continue
        message_id = item.get("messageId")
        if isinstance(message_id, str) and len(message_id) > MAX_ID_CHARS:
            reason = (
                f"forwarded item's messageId is longer than {MAX_ID_CHARS} characters"
                f" ({len(message_id)})"
            )
            long_ids.append(quarantine(data, reason, app, received_at))
            continue
        mine.append((data, item))
    messages, quarantined = rows_from_items(mine, received_at, dedupe=True)
    kept = None
    if strays:
        raw = b"[" + b",".join(strays) + b"]"
        kept = quarantine(raw, _stray_reason(len(strays), codes, apps), None, received_at)
    return Routed(messages, quarantined + long_ids, kept, len(strays))


def _stray_reason(count: int, codes: Counter[str | None], apps: Collection[str]) -> str:
    named = ", ".join(
        f"{'none' if code is None else _quote(code)} x{times}"
        for code, times in codes.most_common(_CODES_NAMED)
    )
    if len(codes) > _CODES_NAMED:
        named += f" and {len(codes) - _CODES_NAMED} other codes"
    own = ", ".join(_quote(app) for app in sorted(apps)[:_CODES_NAMED]) or "none"
    if len(apps) > _CODES_NAMED:
        own += ", ..."
    return (
        f"forwarded body: {count} items not for an application this receiver takes"
        f" (POLLER_FORWARD__APPLICATIONS: {own}), kept together as a JSON array;"
        f" applicationCode {named}"
    )


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTED else text[:_QUOTED] + "...")
