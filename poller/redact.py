"""Secret redaction: the one place that knows what a secret looks like and masks it.

Two rules. Shapes: a URL's password (``scheme://user:PASSWORD@host``) and a query or form
parameter named like a secret (``?password=``, ``&ssl_keyfile_password=``,
``client_secret=``) are masked wherever they appear. Values: every secret the process knows
(each ``SecretStr`` setting, the passwords and secret parameters inside URL settings, the
live OAuth token and the one it replaced) is registered, in each form it may travel in
(raw, percent-encoded, form-encoded, JSON-escaped, and ``user:password`` as the Basic
header's base64), and masked in text and in raw bytes.

Masking is linear in the length of the text, which a sender may choose: no pattern can
backtrack over what it has read, and the registered secrets are looked for in one pass (a
trie), so that a process that has registered thousands of OAuth tokens pays the same per
character as one that registered a few.

Every exit of text uses it: log lines (``poller.logs``), CLI output (``poller.cli.output``),
``/readyz``, bytes kept in quarantine and dead-letter streams (``poller.sources.items``).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, AnyStr, overload
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from pydantic import BaseModel, SecretStr

REDACTED = "***"
# Shorter values are not secrets worth the name, and masking them would wreck every line.
MIN_LENGTH = 4

_SENSITIVE = r"(?:passw(?:or)?d|pwd|secret|token|api_?key|credential)"
# Names of structured fields (log keys) whose values are masked whatever they hold.
_SECRET_KEY = re.compile(rf"{_SENSITIVE}|authorization|^pass$", re.IGNORECASE)
# What a sender writes reaches these patterns, so each is linear in its input: runs are
# possessive (no backtracking into them) and may begin only where a run begins, so no
# character is scanned twice over. A lazy name part followed by a greedy one made
# "token" * 30,000 cost 50 s.
# A query or form parameter's name: the text's start or a separator, name characters, "=".
_PARAMETER_NAME = re.compile(r"(?:(?<=[?&;\s\"'])|^)[\w.-]*+=")
_SECRET_PARAMETER = re.compile(rf"{_SENSITIVE}|\bpass\b", re.IGNORECASE)
_PARAMETER_VALUE = re.compile(r"[^&#\s\"']*+")
# A URL's scheme is the end of a run of scheme characters just before "://" (the run is
# found once; the scheme starts at its first letter that begins a word), its authority the
# text up to the path, query, fragment or the end of the word.
_SCHEME_RUN = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z0-9+.-]++(?=://)")
_SCHEME_START = re.compile(r"\b[a-zA-Z]")
_AUTHORITY = re.compile(r"[^/?#\s]*+")
# Registered secrets sharing first characters nest at most this deep in the search
# pattern; deeper ones are listed flat (compiling a pattern recurses once per level).
_TRIE_DEPTH = 40


@dataclass(frozen=True)
class _Search:
    """What masking needs of the registered forms, built again after each registration."""

    generation: int
    text: re.Pattern[str] | None
    data: re.Pattern[bytes] | None
    forms: tuple[str, ...]  # sorted: whether a text ends with a form's beginning is a bisection
    heads: frozenset[str]  # each form's first MIN_LENGTH characters
    longest: int


# Characters (or bytes) searched for registered forms per regex call.
_WINDOW = 64 * 1024

# A rotating secret (the live OAuth2 token) keeps its last values masked: the lines of calls
# still in flight may hold the one before; older ones are revoked or expired, no longer
# secrets, and forgotten, so a year of hourly tokens does not grow the search.
ROTATING_KEPT = 2

_forms: set[str] = set()  # every form searched for: the fixed ones and the rotating ones
_fixed: set[str] = set()
_rotating: dict[str, deque[tuple[str, ...]]] = {}
_generation = 0
_search = _Search(0, None, None, (), frozenset(), 0)


class Own(str):
    """Text the project wrote itself (a hint, a fixed explanation): shown as written.

    Masking is for foreign text (an exception's message, a server's answer, a URL), where a
    secret may be echoed; a secret that happens to be a common word ("wrong") must not mask
    the project's own words ("a wrong or revoked key")."""

    __slots__ = ()


def own(template: str, /, **foreign: object) -> Own:
    """``template``, the project's words kept as written, with each ``{name}`` filled by its
    value masked (an ``Own`` value is kept)."""
    filled = {k: v if isinstance(v, Own) else text(str(v)) for k, v in foreign.items()}
    return Own(template.format(**filled))


def is_secret_name(name: str) -> bool:
    """True when a field or parameter called ``name`` holds a secret (``ssl_password``...)."""
    return bool(_SECRET_KEY.search(name))


def register(value: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears, in every form it may
    travel in: as is, percent-encoded (a URL), form-encoded, JSON-escaped."""
    _add(*_forms_of(value))


def rotate(slot: str, value: str) -> None:
    """Remember the new value of a secret that is replaced from time to time (``slot`` names
    it: an OAuth2 client); masked like ``register``'s, with the value before it, while the
    ones before those are forgotten."""
    kept = _rotating.setdefault(slot, deque(maxlen=ROTATING_KEPT))
    forms = _forms_of(value)
    if forms in kept:
        return
    kept.append(forms)
    _reckon()


def _forms_of(value: str | None) -> tuple[str, ...]:
    if not value or len(value) < MIN_LENGTH:
        return ()
    escaped = json.dumps(value)[1:-1]
    return (
        value,
        quote(value, safe=""),
        quote_plus(value, safe=""),
        escaped,
        escaped.replace("/", "\\/"),
    )


def register_basic(username: str | None, password: str | None) -> None:
    """Remember ``base64(username:password)``, what an HTTP Basic header carries."""
    if username is not None and password:
        _add(base64.b64encode(f"{username}:{password}".encode()).decode("ascii"))


def register_url(url: str | None) -> None:
    """Remember the password of a URL's userinfo and the values of its secret parameters."""
    if not url:
        return
    for start, end in _url_passwords(url):
        password = url[start:end]
        register(password)
        register(unquote(password))
    _, _, query = url.partition("?")
    for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=False):
        if is_secret_name(name):
            register(value)
    for start, end in _secret_values(url):
        value = url[start:end]
        register(value)
        register(unquote(value))


def register_settings(settings: BaseModel) -> None:
    """Remember every secret of a settings model, nested sections included: each
    ``SecretStr`` field (whatever its name: a field added later is covered), each URL's
    password and secret parameters, and the Basic pairs (``*username``/``*password``,
    ``client_id``/``client_secret``)."""
    for name, value in settings:
        if isinstance(value, BaseModel):
            register_settings(value)
        elif isinstance(value, SecretStr):
            secret = value.get_secret_value()
            register(secret)
            register_url(secret)  # a secret URL (a password inside it) is a secret too
            partner = _basic_partner(name)
            if partner is not None:
                register_basic(getattr(settings, partner, None), secret)
        elif isinstance(value, str) and "://" in value:
            register_url(value)


def _basic_partner(name: str) -> str | None:
    if name == "client_secret":
        return "client_id"
    if name.endswith("password"):
        return name.removesuffix("password") + "username"
    return None


def _add(*forms: str) -> None:
    new = {form for form in forms if len(form) >= MIN_LENGTH} - _fixed
    if new:
        _fixed.update(new)
        _reckon()


def _reckon() -> None:
    """The forms searched for, after a registration; the search is built again if they
    changed."""
    global _forms, _generation
    forms = set(_fixed)
    for kept in _rotating.values():
        for values in kept:
            forms.update(form for form in values if len(form) >= MIN_LENGTH)
    if forms != _forms:
        _forms = forms
        _generation += 1


def _current() -> _Search:
    """The search for the forms registered now (built on first use after a registration)."""
    global _search
    search = _search
    if search.generation != _generation:
        # A registration while this is built bumps the generation: the next call builds again.
        search = _search = _build(_generation, sorted(_forms))
    return search


def _build(generation: int, forms: list[str]) -> _Search:
    if not forms:
        return _Search(generation, None, None, (), frozenset(), 0)
    # A lookahead finds a form at every position where one starts, overlapping ones included,
    # so that every character of every occurrence is masked (replacing one form after another
    # could cut an overlapping one in two and show its rest).
    text = re.compile(f"(?=({_trie(forms, 0)}))")
    # The same search over bytes: each byte of the UTF-8 forms as one latin-1 character.
    encoded = sorted({form.encode().decode("latin-1") for form in forms})
    data = re.compile(f"(?=({_trie(encoded, 0)}))".encode("latin-1"))
    heads = frozenset(form[:MIN_LENGTH] for form in forms)
    return _Search(generation, text, data, tuple(forms), heads, max(map(len, forms)))


def _trie(forms: list[str], depth: int) -> str:
    """A pattern matching the longest of ``forms`` (sorted, distinct, none empty) that starts
    at a position. As a trie, its branches begin with distinct characters: a position costs
    at most the length of the longest form, however many forms there are (an alternation
    would try every form at every position)."""
    if depth >= _TRIE_DEPTH:
        return "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    branches = []
    for _first, grouped in itertools.groupby(forms, key=lambda form: form[0]):
        group = list(grouped)
        prefix = _common_prefix(group[0], group[-1])  # sorted: the ends share the least
        tails = [form[len(prefix) :] for form in group if len(form) > len(prefix)]
        branch = re.escape(prefix)
        if tails:
            # Greedy: a longer form is tried before the one that ends at the prefix.
            optional = "?" if len(tails) < len(group) else ""
            branch += f"(?:{_trie(tails, depth + 1)}){optional}"
        branches.append(branch)
    return "|".join(branches)


def _common_prefix(first: str, last: str) -> str:
    size = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        size += 1
    return first[:size]


def _authorities(value: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the authority of each ``scheme://authority`` in ``value``."""
    resume = 0
    for run in _SCHEME_RUN.finditer(value):
        if run.end() <= resume:
            continue  # inside the previous authority
        if _SCHEME_START.search(value, max(run.start(), resume), run.end()) is None:
            continue
        start = run.end() + 3
        match = _AUTHORITY.match(value, start)
        resume = match.end() if match else start
        yield start, resume


def _url_passwords(value: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each URL password: from the userinfo's first ``:`` to the last ``@``
    of the authority, as urllib (and redis-py) read it: a password may hold ``@``."""
    for start, end in _authorities(value):
        at = value.rfind("@", start, end)
        colon = value.find(":", start, at) if at >= 0 else -1
        if colon >= 0:
            yield colon + 1, at


def _secret_values(value: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the value of each parameter named like a secret, up to the next
    separator (``&``, ``#``, a quote or a space)."""
    resume = 0
    for name in _PARAMETER_NAME.finditer(value):
        if name.start() < resume:
            continue  # inside the value of the previous one
        if _SECRET_PARAMETER.search(value, name.start(), name.end()) is None:
            continue
        match = _PARAMETER_VALUE.match(value, name.end())
        resume = match.end() if match else name.end()
        yield name.end(), resume


def _occurrences(
    value: AnyStr, pattern: re.Pattern[AnyStr], reach: int
) -> Iterator[tuple[int, int]]:
    """(start, end) of each stretch of ``value`` covered by registered forms; overlapping
    occurrences make one stretch, adjacent ones stay apart (one mask each, as before).
    ``reach``: the longest form's length, how far past a window a match may end.

    The search goes window by window: the regex engine holds the GIL for a whole call, and
    one call over a 4 MiB body held the event loop 60 ms from the thread that masked it."""
    start = end = -1
    for window in range(0, len(value), _WINDOW):
        # A form that starts in the window ends within ``reach`` after it.
        last = window + _WINDOW
        for match in pattern.finditer(value, window, min(len(value), last + reach)):
            at, stop = match.start(), match.end(1)
            if at >= last:
                break  # the next window's
            if at < end:
                end = max(end, stop)
                continue
            if end >= 0:
                yield start, end
            start, end = at, stop
    if end >= 0:
        yield start, end


def _replace(value: AnyStr, spans: Iterable[tuple[int, int]], mask: AnyStr) -> AnyStr:
    parts: list[AnyStr] = []
    last = 0
    for start, end in spans:
        parts += (value[last:start], mask)
        last = end
    if not parts:
        return value
    parts.append(value[last:])
    return mask[:0].join(parts)


def text(value: str) -> str:
    """``value`` with URL passwords, secret parameters and every registered secret masked
    (an ``Own`` text is the project's own: kept as written)."""
    if isinstance(value, Own):
        return value
    value = _replace(value, _url_passwords(value), REDACTED)
    value = _replace(value, _secret_values(value), REDACTED)
    search = _current()
    if search.text is not None:
        value = _replace(value, _occurrences(value, search.text, search.longest), REDACTED)
    return value


def data(value: bytes) -> bytes:
    """Raw bytes with every registered secret masked: bytes are kept as received otherwise
    (a wrong base URL answered by a server that echoes the request would hold the API key)."""
    search = _current()
    if search.data is None:
        return value
    # A character of a form is at most four bytes of UTF-8.
    spans = _occurrences(value, search.data, 4 * search.longest)
    return _replace(value, spans, REDACTED.encode())


@overload
def cut(value: str, limit: int) -> str: ...
@overload
def cut(value: bytes, limit: int) -> str | bytes: ...


def cut(value: str | bytes, limit: int) -> str | bytes:
    """``value`` cut to ``limit`` characters (bytes: to ``limit`` bytes, then text), with a
    marker that says how many were cut.

    Masking what is kept would no longer find a secret the cut splits in two, so the kept
    text's end is masked from where a registered secret begins (its first MIN_LENGTH or
    more characters), or from a URL's userinfo that the cut leaves open (its ``@`` may be
    gone: nothing says where its password ends)."""
    if len(value) <= limit:
        return value
    if isinstance(value, bytes):
        kept, unit = value[:limit].decode("utf-8", "backslashreplace"), "bytes"
    else:
        kept, unit = value[:limit], "characters"
    edge = min(_secret_start(kept, _current()), _open_userinfo(kept))
    if edge < len(kept):
        kept = kept[:edge] + REDACTED
    return f"{kept} [… {len(value) - limit} {unit} cut]"


def _secret_start(kept: str, search: _Search) -> int:
    """Where the longest end of ``kept`` that begins a registered form starts (an end of
    MIN_LENGTH characters or more); ``len(kept)`` when none does."""
    forms = search.forms
    for at in range(max(0, len(kept) - search.longest), len(kept) - MIN_LENGTH + 1):
        if kept[at : at + MIN_LENGTH] not in search.heads:
            continue
        end = kept[at:]
        # The forms that start with ``end`` come first among those not below it.
        index = bisect.bisect_left(forms, end)
        if index < len(forms) and forms[index].startswith(end):
            return at
    return len(kept)


def _open_userinfo(kept: str) -> int:
    """Where the password of a URL authority that runs to the end of ``kept`` may start
    (after its first ``:``); ``len(kept)`` when there is none."""
    last = deque(_authorities(kept), maxlen=1)
    if not last or last[0][1] != len(kept):
        return len(kept)
    colon = kept.find(":", last[0][0])
    return len(kept) if colon < 0 else colon + 1


def exception_text(exc: BaseException) -> str:
    """An exception as one line of text, type first (not yet masked)."""
    return f"{type(exc).__name__}: {exc}"


def strings(value: Any) -> Any:
    """Every string inside ``value`` (dicts, lists, tuples) passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {k: strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strings(v) for v in value]
    return value


def field(key: str, value: Any) -> Any:
    """A structured field (a log line's key and value): masked whole when the key names a
    secret, else its strings (and an exception's text) passed through ``text``."""
    if is_secret_name(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return text(value)
    if isinstance(value, bytes):
        return data(value)
    if isinstance(value, dict):
        return {k: field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Structured tracebacks (dict_tracebacks) are lists of dicts holding exception texts.
        return [field(key, item) for item in value]
    if isinstance(value, BaseException):
        return text(exception_text(value))
    return value
