"""`poller config check`: a configuration tried before it runs, changing nothing.

Each check returns one line: ok, a note (worth knowing, not in the way), skip (could not be
tried because of a failure above) or fail (what `poller run` would stumble on, naming the
setting to change). What is tried, and what is left as it was:
- settings: what `run` refuses at its start (missing base URL, credentials, applications,
  a grace period too short for a pull in flight);
- spool: its directory exists or can be created, takes a new file and a lock on it (a probe
  file, removed at once), an existing file is a spool this build reads (read-only); its lock
  is free, or held by a running poller: a note, since validating the configuration of a
  running poller is a reason to run the check (its ports are then reported in use as a note
  too). A free lock is taken and released at once;
- disk: free space for a pull's answer (what readiness asks), compared with the spool's cap;
- ports: the health server's and the receiver's, when enabled: bound and released at once;
- Redis: the sink's own connect (PING, INFO, the durability settings against the server),
  then every command the poller runs, tried on its keys in a form that writes nothing
  (``poller.sink.redis.acl``);
- Infobip: each application's configurations and actions are listed (GET only, never the
  inbox, which hands each message out once); the credentials and the scope bootstrap needs
  are proven by those answers. The pull scope cannot be proven without pulling.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from poller import redact
from poller.bootstrap import forward_problem, pull_want, wants_of
from poller.infobip import (
    AuthError,
    InfobipClient,
    InfobipError,
    NotFoundError,
    TransportError,
)
from poller.infobip.errors import MANAGE_SCOPE, PULL_SCOPE
from poller.settings import CREDENTIAL_SETTINGS, Settings, env_name
from poller.sink import SinkError
from poller.sink.factory import account_of
from poller.sink.redis.acl import needed_commands, refusals, user_of
from poller.sink.redis.connection import REDIS_ERRORS
from poller.sink.redis.sink import RedisSink
from poller.sources.pull import DISK_BYTES_PER_MESSAGE, disk_need
from poller.spool import DISK_FLOOR, Spool, SpoolError, disk_room, lock_holder, refuses_files

Status = Literal["ok", "note", "skip", "fail"]
# An application code no account has: asking for its configurations proves the credentials
# (404 for a key Infobip knows, 401 for one it does not) when no application is configured.
NO_SUCH_APPLICATION = "config-check-no-such-application"
_MIB = 2**20


def _size(count: int) -> str:
    """Bytes for a person: MiB, or GiB past 10 of them."""
    if count >= 10 * 2**30:
        return f"{count / 2**30:,.1f} GiB"
    return f"{count / _MIB:,.1f} MiB"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was checked, how it went, and what to change."""

    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Report:
    """Every check, in the order they ran."""

    checks: list[Check]

    @property
    def settings_invalid(self) -> bool:
        """True when the settings themselves are what `run` would refuse."""
        return any(c.name == "settings" and c.status == "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.status == "fail"]


async def check(settings: Settings) -> Report:
    """Run every check on ``settings``; changes nothing the poller, Redis or Infobip hold."""
    checks = check_settings(settings)
    local, holder = check_spool(settings)
    checks += local
    checks += check_disk(settings)
    checks += check_ports(settings, holder)
    remote = await asyncio.gather(check_redis(settings), check_infobip(settings))
    for found in remote:
        checks += found
    return Report([Check(c.name, c.status, redact.text(c.detail)) for c in checks])


def check_settings(settings: Settings) -> list[Check]:
    """What `poller run` refuses before it starts."""
    problems = settings.start_problems(bootstrap=settings.infobip.bootstrap)
    problems += settings.stop_problems()
    if problems:
        return [Check("settings", "fail", problem) for problem in problems]
    pulled = ", ".join(settings.infobip.applications)
    if not pulled and settings.pulls:
        pulled = "the account's whole inbox (no application listed)"
    parts = [f"pulled: {pulled}"] if pulled else []
    if settings.forward.applications:
        parts.append(f"forwarded: {', '.join(settings.forward.applications)}")
    parts.append(f"sink: {settings.sink.kind}")
    return [Check("settings", "ok", "; ".join(parts))]


def check_spool(settings: Settings) -> tuple[list[Check], str | None]:
    """The spool file and its directory, then its lock; also the pid holding the lock."""
    path = settings.spool.path.absolute()
    setting = env_name(("spool", "path"))
    found = [_spool_place(path, setting)]
    if found[0].status == "fail" or not path.parent.is_dir():
        return found, None
    try:
        holder = lock_holder(path)
    except SpoolError as exc:
        return [*found, Check("spool lock", "fail", f"{exc} ({setting})")], None
    if holder is None:
        found.append(Check("spool lock", "ok", "free"))
    else:
        found.append(
            Check(
                "spool lock",
                "note",
                f"held by a running poller (pid {holder}): a second poller on {path} would"
                " not start while it runs; this check leaves it alone",
            )
        )
    return found, holder


def _spool_place(path: Path, setting: str) -> Check:
    """The spool file's directory (or the one it would be created in) and the file."""
    if path.is_dir():
        return Check("spool", "fail", f"{path} is a directory: set {setting} to a file in it")
    directory = path.parent.absolute()
    base = _existing(directory)
    if base != directory:
        if not base.is_dir():
            return Check("spool", "fail", f"{base} is not a directory: fix {setting} ({path})")
        refused = refuses_files(base / "probe")
        if refused is not None:
            return Check(
                "spool",
                "fail",
                f"{directory} does not exist and cannot be created in {base}: {refused};"
                f" create it, or set {setting} to a writable place",
            )
        return Check("spool", "ok", f"{directory} does not exist yet; `poller run` creates it")
    refused = refuses_files(path, lock=True)
    if refused is not None:
        return Check(
            "spool",
            "fail",
            f"cannot write in {directory}: {refused}; make it writable for this user, or set"
            f" {setting} to a writable place",
        )
    if not path.exists():
        return Check("spool", "ok", f"{path}: a new spool (directory writable)")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check("spool", "fail", f"{path} is not readable and writable by this user")
    try:
        stats = Spool.peek(path)
    except SpoolError as exc:
        return Check("spool", "fail", f"{exc} ({setting})")
    rows = stats.rows if stats else 0
    quarantined = stats.quarantine_pending if stats else 0
    return Check(
        "spool",
        "ok",
        f"{path}: {rows} rows waiting for the sink, {quarantined} quarantined not dead-lettered",
    )


def _existing(directory: Path) -> Path:
    """``directory``, or its nearest ancestor that exists."""
    here = directory.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def check_disk(settings: Settings) -> list[Check]:
    """Free space on the spool's file system against what a pull needs, and the spool cap."""
    directory = _existing(settings.spool.path.parent)
    room = disk_room(directory)
    if room is None:
        return [Check("disk", "note", f"cannot read the free space of {directory}")]
    if room.read_only:
        return [
            Check(
                "disk",
                "fail",
                f"the file system of {directory} is read-only: set"
                f" {env_name(('spool', 'path'))} to a writable one",
            )
        ]
    limit = settings.infobip.pull_limit
    need = disk_need(limit) if settings.pulls else DISK_FLOOR
    free = f"{_size(room.free)} free on {directory}"
    if room.free < need:
        why = (
            f"{env_name(('infobip', 'pull_limit'))} {limit} x {DISK_BYTES_PER_MESSAGE // 1024}"
            f" KiB + {DISK_FLOOR // _MIB} MiB"
            if settings.pulls
            else "the spool's floor"
        )
        return [
            Check(
                "disk",
                "fail",
                f"{free}, below the {_size(need)} a pull needs ({why}): free space,"
                f" lower {env_name(('infobip', 'pull_limit'))}, or set"
                f" {env_name(('spool', 'path'))} on another file system",
            )
        ]
    cap = settings.spool.max_bytes
    if room.free < cap:
        return [
            Check(
                "disk",
                "note",
                f"{free}: less than {env_name(('spool', 'max_bytes'))} ({_size(cap)}),"
                " so a backlog would fill the disk before the spool's cap (pulls then pause"
                " all the same)",
            )
        ]
    return [Check("disk", "ok", f"{free} ({_size(need)} needed)")]


def check_ports(settings: Settings, holder: str | None) -> list[Check]:
    """The ports the daemon listens on, bound and released at once."""
    wanted: list[tuple[str, str, str, int]] = []
    if settings.health.enabled:
        wanted.append(("health", "health port", settings.health.host, settings.health.port))
    if settings.forward.applications:
        wanted.append(("forward", "forward port", settings.forward.host, settings.forward.port))
    found: list[Check] = []
    for section, name, host, port in wanted:
        where = f"{host}:{port}"
        port_env, host_env = env_name((section, "port")), env_name((section, "host"))
        if port == 0:
            found.append(Check(name, "ok", f"{host}: a free port chosen at start ({port_env}=0)"))
            continue
        if len(wanted) == 2 and wanted[0][2:] == wanted[1][2:] and section == "forward":
            found.append(
                Check(name, "fail", f"{where} is the health server's too: change {port_env}")
            )
            continue
        code, reason = bind_problem(host, port)
        if code is None:
            found.append(Check(name, "ok", f"{where} free"))
        elif code == errno.EADDRINUSE and holder is not None:
            found.append(
                Check(
                    name,
                    "note",
                    f"{where} in use, presumably by the running poller (pid {holder}) that"
                    " holds the spool",
                )
            )
        elif code == errno.EADDRINUSE:
            found.append(Check(name, "fail", f"{where} in use: set {port_env} to a free port"))
        elif code == errno.EACCES:
            found.append(
                Check(
                    name,
                    "fail",
                    f"{where}: binding a port below 1024 needs privileges: set {port_env}"
                    " to 1024 or more (or grant CAP_NET_BIND_SERVICE)",
                )
            )
        else:
            found.append(Check(name, "fail", f"{where}: {reason}: check {host_env}"))
    return found


def bind_problem(host: str, port: int) -> tuple[int | None, str]:
    """Bind every address ``host`` resolves to, as the daemon's servers do, and release it:
    (None, "") when all are free, else the errno (0 when unresolved) and the reason."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return 0, f"cannot resolve {host}: {exc.strerror}"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # What asyncio's create_server sets: a port in TIME_WAIT is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc.errno or 0, exc.strerror or str(exc)
    return None, ""


async def check_redis(settings: Settings) -> list[Check]:
    """The sink's Redis: reached with the sink's own connect, then the commands it needs."""
    if settings.sink.kind != "redis":
        return [
            Check(
                "redis",
                "note",
                f"{env_name(('sink', 'kind'))}={settings.sink.kind}: no Redis; the streams"
                " live in the process and end with it",
            )
        ]
    redis = settings.redis
    sink = RedisSink(redis, instance_id="config-check")
    url_env = env_name(("redis", "url"))
    try:
        try:
            version = await sink.connect()
        except SinkError as exc:
            return [
                Check("redis", "fail", f"{str(exc).rstrip('.')} (check {url_env} and [redis])"),
                Check("redis acl", "skip", "Redis not reached"),
            ]
        if not await sink.ping():
            return [Check("redis", "fail", f"{sink.describe()}: no answer to PING ({url_env})")]
        found = [Check("redis", "ok", f"{sink.describe()}: {version} answers")]
        apps: list[str | None] = [*settings.infobip.applications, *settings.forward.applications]
        commands = needed_commands(redis.url, redis.durability)
        try:
            refused = await refusals(
                sink.connections, sink.keys, [*apps, None], account_of(settings), commands
            )
        except REDIS_ERRORS as exc:
            detail = sink.connections.describe_error("ACL check", exc)
            return [*found, Check("redis acl", "fail", detail)]
        user = user_of(redis.url)
        if not refused:
            found.append(
                Check("redis acl", "ok", f"user {user} may run the {len(commands)} commands needed")
            )
            return found
        parts = [r.command + (f" on {', '.join(r.keys)}" if r.keys else "") for r in refused]
        found.append(
            Check(
                "redis acl",
                "fail",
                f"user {user} (of {url_env}) may not run {'; '.join(parts)}: grant the"
                " commands and key patterns of deploy/OPERATIONS.md's ACL SETUSER"
                " infobip-poller line",
            )
        )
        return found
    finally:
        with contextlib.suppress(SinkError):
            await sink.close()


async def check_infobip(settings: Settings) -> list[Check]:
    """Each application's configurations and actions, listed with the credentials."""
    infobip = settings.infobip
    if infobip.account_problems():
        return [Check("infobip", "skip", "the account settings above are missing")]
    # A check answers within a few seconds: a retry or two, not the daemon's patience.
    quick = infobip.model_copy(update={"max_retries": min(infobip.max_retries, 1)})
    apps = [*infobip.applications, *settings.forward.applications]
    found: list[Check] = []
    async with InfobipClient(quick) as client:
        try:
            if not apps:
                found.append(await _credentials_only(client, settings))
            for app in apps:
                found.append(await _application(client, settings, app))
        except AuthError as exc:
            found.append(_auth_failure(settings, exc))
        except TransportError as exc:
            found.append(
                Check(
                    "infobip",
                    "fail",
                    f"{infobip.base_url} cannot be reached: {exc}; check"
                    f" {env_name(('infobip', 'base_url'))}",
                )
            )
    if settings.pulls and found and all(c.status != "fail" for c in found):
        found.append(
            Check(
                "infobip pull",
                "note",
                f"the pull scope ({PULL_SCOPE}) is not checked: only a pull proves it, and a"
                " pull takes the messages it returns",
            )
        )
    return found


async def _credentials_only(client: InfobipClient, settings: Settings) -> Check:
    """No application to ask about: a made-up one proves the credentials (404, not 401)."""
    try:
        await client.list_configurations(NO_SUCH_APPLICATION)
    except NotFoundError:
        pass
    except InfobipError as exc:
        if isinstance(exc, AuthError | TransportError):
            raise
        return Check("infobip", "fail", str(exc))
    return Check("infobip", "ok", f"{settings.infobip.base_url} accepted the credentials")


async def _application(client: InfobipClient, settings: Settings, app: str) -> Check:
    """What bootstrap would find for one application, asked with GETs only."""
    name = f"infobip {app}"
    wants, _secrets = wants_of(settings)
    forwarded = app in settings.forward.applications
    want = wants.get(app) or pull_want(
        settings.infobip.callback_data, settings.infobip.replace_http_forward
    )
    bootstrap = settings.infobip.bootstrap
    setting = env_name(("forward" if forwarded else "infobip", "applications"))
    try:
        configs = await client.list_configurations(app)
        actions = await client.list_actions(app, configs[0].key) if configs else []
    except NotFoundError as exc:
        return Check(
            name,
            "fail",
            f"not found at {settings.infobip.base_url} ({exc}): check {setting} and"
            f" {env_name(('infobip', 'base_url'))}",
        )
    except AuthError as exc:
        if exc.status == 403 and not bootstrap:
            return Check(
                name,
                "note",
                f"the credentials may not read its configuration ({MANAGE_SCOPE}), which"
                f" {env_name(('infobip', 'bootstrap'))}=false does not need",
            )
        raise
    except InfobipError as exc:
        if isinstance(exc, TransportError):
            raise
        return Check(name, "fail", str(exc))
    mode = "forward" if forwarded else "pull"
    kind = "HTTP_FORWARD" if forwarded else "PULL"
    problem = forward_problem(settings) if forwarded else None
    if problem is not None:
        return Check(name, "note", f"{mode}: {problem}")
    if not configs:
        if bootstrap:
            return Check(name, "ok", f"{mode}: no configuration yet; bootstrap creates it")
        return _unrouted(name, app, "it has no configuration")
    mine = [a.key for a in actions if want.wanted(a)]
    others = [f"{a.type} {a.key}" for a in actions if not want.wanted(a)]
    if not mine and not bootstrap:
        return _unrouted(name, app, f"its configuration {configs[0].key} has no {kind} action")
    state = f"{kind} action {mine[0]}" if mine else f"no {kind} action yet; bootstrap creates it"
    if others:
        replace = want.replace_setting
        return Check(
            name,
            "note",
            f"{mode}: configuration {configs[0].key}, {state}; also {', '.join(others)}: messages"
            f" may go there instead ({replace}=true has bootstrap remove it)",
        )
    return Check(name, "ok", f"{mode}: configuration {configs[0].key}, {state}")


def _unrouted(name: str, app: str, why: str) -> Check:
    setting = env_name(("infobip", "bootstrap"))
    return Check(
        name,
        "fail",
        f"{why}, and {setting}=false: none of {app}'s messages reach the poller; set {setting}"
        " =true, or create it with `poller infobip actions create`",
    )


def _auth_failure(settings: Settings, exc: AuthError) -> Check:
    """The credentials were refused (401) or lack the scope bootstrap needs (403)."""
    infobip = settings.infobip
    if exc.status == 403:
        return Check(
            "infobip",
            "fail",
            f"the credentials lack {MANAGE_SCOPE} ({exc.describe()}), which bootstrap needs:"
            f" grant it, or set {env_name(('infobip', 'bootstrap'))}=false once the actions"
            " exist",
        )
    names = ", ".join(env_name(("infobip", n)) for n in CREDENTIAL_SETTINGS[infobip.auth])
    return Check(
        "infobip",
        "fail",
        f"the credentials were refused ({exc.describe()}): check {names}"
        f" ({env_name(('infobip', 'auth'))}={infobip.auth}) and"
        f" {env_name(('infobip', 'base_url'))}",
    )


def exit_code(report: Report) -> int:
    """0 when every check passed, 1 when one failed, 2 when the settings are invalid."""
    if report.settings_invalid:
        return 2
    return 1 if report.failed else 0


__all__ = ["NO_SUCH_APPLICATION", "Check", "Report", "Status", "check", "exit_code"]
