"""Secret redaction: the one place that knows what a secret looks like and masks it.

Two rules. Shapes: a URL's password (``scheme://user:PASSWORD@host``) and a query or form
parameter named like a secret (``?password=``, ``&ssl_keyfile_password=``,
``client_secret=``) are masked wherever they appear. Values: every secret the process knows
(each ``SecretStr`` setting, the passwords and secret parameters inside URL settings, the
live OAuth token) is registered, in each form it may travel in (raw, percent-encoded,
form-encoded, JSON-escaped, and ``user:password`` as the Basic header's base64), and masked
in text and in raw bytes.

Every exit of text uses it: log lines (``poller.logs``), CLI output (``poller.cli.output``),
``/readyz``, bytes kept in quarantine and dead-letter streams (``poller.sources.items``).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from pydantic import BaseModel, SecretStr

REDACTED = "***"
# Shorter values are not secrets worth the name, and masking them would wreck every line.
MIN_LENGTH = 4

_SENSITIVE = r"(?:passw(?:or)?d|pwd|secret|token|api_?key|credential)"
# Names of structured fields (log keys) whose values are masked whatever they hold.
_SECRET_KEY = re.compile(rf"{_SENSITIVE}|authorization|^pass$", re.IGNORECASE)
# A parameter named like a secret in a query string or a form body, up to the next separator.
_PARAMETER = re.compile(
    rf"(?P<key>(?:(?<=[?&;\s\"'])|^)[\w.-]*?(?:{_SENSITIVE}|\bpass\b)[\w.-]*=)[^&#\s\"']*",
    re.IGNORECASE,
)
# scheme:// and the authority up to the path, query, fragment or the end of the word.
_AUTHORITY = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<authority>[^/?#\s]*)")

_forms: set[str] = set()
_ordered: tuple[str, ...] = ()
_ordered_bytes: tuple[bytes, ...] = ()


def is_secret_name(name: str) -> bool:
    """True when a field or parameter called ``name`` holds a secret (``ssl_password``...)."""
    return bool(_SECRET_KEY.search(name))


def register(value: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears, in every form it may
    travel in: as is, percent-encoded (a URL), form-encoded, JSON-escaped."""
    if not value or len(value) < MIN_LENGTH:
        return
    escaped = json.dumps(value)[1:-1]
    _add(
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
    for match in _AUTHORITY.finditer(url):
        userinfo, at, _host = match["authority"].rpartition("@")
        if at and ":" in userinfo:
            password = userinfo.partition(":")[2]
            register(password)
            register(unquote(password))
    _, _, query = url.partition("?")
    for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=False):
        if is_secret_name(name):
            register(value)
    for match in _PARAMETER.finditer(url):
        value = match[0][len(match["key"]) :]
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
    global _ordered, _ordered_bytes
    new = {form for form in forms if len(form) >= MIN_LENGTH} - _forms
    if not new:
        return
    _forms.update(new)
    # Longest first: a form that contains another is replaced whole.
    _ordered = tuple(sorted(_forms, key=len, reverse=True))
    _ordered_bytes = tuple(form.encode() for form in _ordered)


def _mask_authority(match: re.Match[str]) -> str:
    # The last @ ends the userinfo, as urllib (and redis-py) read it: a password may hold @.
    userinfo, at, host = match["authority"].rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not (at and colon):
        return match[0]
    return f"{match['scheme']}{user}:{REDACTED}@{host}"


def text(value: str) -> str:
    """``value`` with URL passwords, secret parameters and every registered secret masked."""
    value = _AUTHORITY.sub(_mask_authority, value)
    value = _PARAMETER.sub(lambda m: f"{m['key']}{REDACTED}", value)
    for form in _ordered:
        if form in value:
            value = value.replace(form, REDACTED)
    return value


def data(value: bytes) -> bytes:
    """Raw bytes with every registered secret masked: bytes are kept as received otherwise
    (a wrong base URL answered by a server that echoes the request would hold the API key)."""
    mask = REDACTED.encode()
    for form in _ordered_bytes:
        if form in value:
            value = value.replace(form, mask)
    return value


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
        return text(f"{type(value).__name__}: {value}")
    return value
