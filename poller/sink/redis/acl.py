"""The Redis commands the poller runs, and a check that the configured user may run them.

``POLLER_COMMANDS`` is the one list: deploy/OPERATIONS.md's ``ACL SETUSER infobip-poller``
line grants exactly these (a test compares them), ``refusals`` asks the server about each.

A least-privilege user may not run ``ACL DRYRUN``, ``ACL GETUSER`` or ``COMMAND``, so the
check asks in a way that works for any user: Redis checks a command against the caller's ACL
(command and keys) before the command reads its arguments. Each probe is the real command on
the real key in a form that then does nothing: a read, or arguments the command refuses
(``XADD key not-an-id``, ``HSET key f v odd``). NOPERM means refused; any other answer means
the ACL let it through. Nothing is written, nothing is cached (the script probe does not
compile); a refusal is logged in the server's ACL LOG, like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.asyncio.connection import parse_url
from redis.exceptions import NoPermissionError

from poller.sink.redis.connection import Connections
from poller.sink.redis.keys import Keys, account_key, hwm_key, seen_key

# Every command the poller (run, once, status, the retention trim and `poller dead`) runs, as
# the ACL names them; deploy/OPERATIONS.md explains each.
POLLER_COMMANDS: tuple[str, ...] = (
    "ping",
    "info",
    "client|setname",
    "client|setinfo",
    "evalsha",
    "script|load",
    "get",
    "set",
    "incrby",
    "exists",
    "time",
    "role",
    "xadd",
    "xtrim",
    "xrange",
    "xlen",
    "xpending",
    "xinfo|groups",
    "scan",
    "zadd",
    "zscore",
    "zremrangebyscore",
    "pexpire",
    "wait",
    "hget",
    "hset",
    "hdel",
    "hgetall",
    "xrevrange",
    "xdel",
    "hincrby",
)
# Added with POLLER_REDIS__DURABILITY=waitaof, and for a URL that selects a database but 0.
WAITAOF_COMMANDS: tuple[str, ...] = ("waitaof", "config|get")
SELECT_COMMAND = "select"

# Stands for the spool writer in a high-water mark key (a writer is 32 hex digits).
_WRITER = "config-check"
_NO_SCRIPT = "0" * 40  # the SHA1 of no script: EVALSHA answers NOSCRIPT
_BAD = "not-a-number"

# Command -> its harmless forms. In the arguments, S stands for a stream key (message and
# dead-letter streams), H for its high-water mark, Z for a message stream's dedupe set, B for
# the account's budget, R for its replica registry, P for the streams' SCAN pattern, DB for
# the database the URL selects.
_PROBES: dict[str, tuple[tuple[str, ...], ...]] = {
    "ping": (("PING",),),
    "info": (("INFO", "server"),),
    "client|setname": (("CLIENT", "SETNAME", "infobip-push-poller"),),
    "client|setinfo": (("CLIENT", "SETINFO", "LIB-NAME", "redis-py"),),
    "evalsha": (
        ("EVALSHA", _NO_SCRIPT, "3", "S", "H", "Z"),
        ("EVALSHA", _NO_SCRIPT, "2", "S", "H"),
        ("EVALSHA", _NO_SCRIPT, "1", "B"),
        ("EVALSHA", _NO_SCRIPT, "1", "R"),
    ),
    "script|load": (("SCRIPT", "LOAD", "this is not Lua ("),),
    "get": (("GET", "H"),),
    "set": (("SET", "H", "0", "NOT-AN-OPTION"),),
    "incrby": (("INCRBY", "H", _BAD),),
    "exists": (("EXISTS", "S"), ("EXISTS", "Z")),
    "time": (("TIME",),),
    "role": (("ROLE",),),
    "xadd": (("XADD", "S", "not-an-id", "f", "v"),),
    "xtrim": (("XTRIM", "S", "MAXLEN", _BAD),),
    "xrange": (("XRANGE", "S", "+", "-", "COUNT", "1"),),
    "xlen": (("XLEN", "S"),),
    "xpending": (("XPENDING", "S", "config-check"),),
    "xinfo|groups": (("XINFO", "GROUPS", "S"),),
    "scan": (("SCAN", "0", "MATCH", "P", "COUNT", "1"),),
    "zadd": (("ZADD", "Z", _BAD, "m"),),
    "zscore": (("ZSCORE", "Z", "m"),),
    "zremrangebyscore": (("ZREMRANGEBYSCORE", "Z", _BAD, _BAD),),
    "pexpire": (("PEXPIRE", "Z", _BAD), ("PEXPIRE", "B", _BAD), ("PEXPIRE", "R", _BAD)),
    "wait": (("WAIT", "0", "1"),),
    "hget": (("HGET", "B", "tat"), ("HGET", "R", _WRITER)),
    # An odd number of arguments: refused by HSET itself, after the ACL let it through.
    "hset": (("HSET", "B", "f", "v", "odd"), ("HSET", "R", "f", "v", "odd")),
    # No instance id has this form: the field never exists.
    "hdel": (("HDEL", "R", f"{_WRITER}:never-a-field"),),
    "hgetall": (("HGETALL", "R"),),
    "xrevrange": (("XREVRANGE", "S", "-", "+", "COUNT", "1"),),
    # No entry has this id: nothing is deleted (XDEL refuses the id after the ACL passed it).
    "xdel": (("XDEL", "S", "not-an-id"),),
    "hincrby": (("HINCRBY", "S", "f", _BAD),),
    "waitaof": (("WAITAOF", "0", "0", "1"),),
    "config|get": (("CONFIG", "GET", "appendonly"),),
    "select": (("SELECT", "DB"),),
}
_STREAM_KEYS = frozenset({"S", "H", "Z"})
_KEYS = _STREAM_KEYS | {"B", "R"}


@dataclass(frozen=True)
class Refusal:
    """A command the server refused this user: on these keys (one of them at least), or
    whatever the key (``keys`` empty)."""

    command: str
    keys: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class _Probe:
    command: str
    argv: tuple[str, ...]
    keys: tuple[str, ...]


def needed_commands(url: str, durability: str) -> list[str]:
    """The commands the poller runs with these settings."""
    needed = list(POLLER_COMMANDS)
    if durability == "waitaof":
        needed += WAITAOF_COMMANDS
    if _db(url) != "0":
        needed.append(SELECT_COMMAND)
    return needed


def user_of(url: str) -> str:
    """The ACL user a Redis URL connects as."""
    return unquote(urlsplit(url).username or "") or "default"


async def refusals(
    connections: Connections,
    keys: Keys,
    apps: Sequence[str | None],
    account: str,
    commands: Sequence[str],
) -> list[Refusal]:
    """Each of ``commands`` the server refuses the user, tried on the streams of ``apps``
    (their dead-letter streams, marks and dedupe sets) and on the keys of ``account``.
    Raises what redis-py raises when the server cannot be reached."""
    keyless, keyed = _probes(connections.url, keys, apps, account, commands)
    found: list[Refusal] = []
    for client, probes in ((connections.admin(), keyless), (connections.writer(), keyed)):
        for probe, text in zip(probes, await _run(client, probes), strict=True):
            if text is not None:
                on = probe.keys if "key" in text.lower() else ()
                found.append(Refusal(probe.command, on, text))
    unique = {(r.command, r.keys): r for r in reversed(found)}
    return list(reversed(unique.values()))


def _probes(
    url: str, keys: Keys, apps: Sequence[str | None], account: str, commands: Sequence[str]
) -> tuple[list[_Probe], list[_Probe]]:
    """The probes without a key (any server answers), and those with keys."""
    messages = [keys.stream(app) for app in apps]
    dead = [keys.dead(app) for app in apps]
    fixed = {
        "B": account_key(account, "budget"),
        "R": account_key(account, "replicas"),
        "P": keys.patterns()[0],
        "DB": _db(url),
    }
    keyless: list[_Probe] = []
    keyed: list[_Probe] = []
    for command in commands:
        for form in _PROBES[command]:
            roles = _KEYS & set(form)
            if not roles:
                keyless.append(_Probe(command, tuple(fixed.get(a, a) for a in form), ()))
                continue
            streams: list[str] = [""]
            if roles & _STREAM_KEYS:
                streams = messages if "Z" in roles else messages + dead
            for stream in streams:
                fill = {**fixed, "S": stream, "H": hwm_key(stream, _WRITER), "Z": seen_key(stream)}
                argv = tuple(fill.get(a, a) for a in form)
                on = tuple(fill[a] for a in form if a in _KEYS)
                keyed.append(_Probe(command, argv, on))
    return keyless, keyed


async def _run(client: Any, probes: list[_Probe]) -> list[str | None]:
    """Send the probes in one pipeline: the text of each NOPERM answer, None for others."""
    if not probes:
        return []
    pipe = client.pipeline(transaction=False)
    for probe in probes:
        pipe.execute_command(*probe.argv)
    replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            raise reply
    return [str(r) if isinstance(r, NoPermissionError) else None for r in replies]


def _db(url: str) -> str:
    """The database a URL selects ("0" when it names none, or redis-py cannot read it)."""
    try:
        return str(parse_url(url).get("db") or 0)
    except ValueError:
        return "0"


__all__ = [
    "POLLER_COMMANDS",
    "SELECT_COMMAND",
    "WAITAOF_COMMANDS",
    "Refusal",
    "needed_commands",
    "refusals",
    "user_of",
]
