"""Bootstrap: each application gets a configuration with the action of its mode.

A pulled application needs a PULL action (what routes its messages to the pull inbox); a
forwarded one exactly one HTTP_FORWARD action whose forwardUrl is the receiver's public URL.
An action of the other kind (or an HTTP_FORWARD action to another URL) is reported loudly and
removed only when asked; the wanted action is created first, so messages always have a way.
Idempotent, and safe when several processes run it at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from poller import redact
from poller.infobip import (
    Action,
    ActionRequest,
    AuthError,
    ConflictError,
    InfobipClient,
    InfobipError,
    NotFoundError,
)
from poller.settings import Settings
from poller.stop import Stop

log = structlog.get_logger(__name__)

# Seconds between attempts to bootstrap applications that failed.
RETRY_EVERY = 60.0


@dataclass(frozen=True)
class Want:
    """The action an application must end with, and whether to remove the others."""

    request: ActionRequest
    replace_others: bool = False
    # The setting that asks for the removal (named in the warning).
    replace_setting: str = "POLLER_INFOBIP__REPLACE_HTTP_FORWARD"

    @property
    def mode(self) -> str:
        """pull or forward."""
        return "forward" if self.request.type == "HTTP_FORWARD" else "pull"

    def wanted(self, action: Action) -> bool:
        """True for an action that is what this mode needs (any PULL action serves pull)."""
        if self.request.type == "PULL":
            return action.type == "PULL"
        return self.request.matches(action)


@dataclass
class AppReport:
    """What bootstrap found and did for one application."""

    app: str
    mode: str = "pull"
    configuration: str | None = None
    configuration_created: bool = False
    action: str | None = None  # the PULL (pull mode) or HTTP_FORWARD (forward mode) action
    action_created: bool = False
    conflicting: list[str] = field(default_factory=list)  # other actions, left in place
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the application ends with a configuration and the action it needs."""
        return self.error is None and self.action is not None

    @property
    def pull_action(self) -> str | None:
        """The PULL action of a pulled application."""
        return self.action if self.mode == "pull" else None

    @property
    def pull_action_created(self) -> bool:
        """True when bootstrap created the PULL action of a pulled application."""
        return self.action_created and self.mode == "pull"

    @property
    def http_forward(self) -> list[str]:
        """HTTP_FORWARD actions left on a pulled application."""
        return self.conflicting if self.mode == "pull" else []


def pull_want(callback_data: str | None, replace_http_forward: bool) -> Want:
    """What a pulled application needs."""
    return Want(ActionRequest(type="PULL", callbackData=callback_data), replace_http_forward)


def forward_want(url: str, callback_data: str | None, replace_pull: bool) -> Want:
    """What a forwarded application needs."""
    return Want(
        ActionRequest(type="HTTP_FORWARD", forwardUrl=url, callbackData=callback_data),
        replace_pull,
        "POLLER_FORWARD__REPLACE_PULL",
    )


async def bootstrap(
    client: InfobipClient,
    apps: Sequence[str],
    *,
    callback_data: str | None = None,
    replace_http_forward: bool = False,
    dry_run: bool = False,
    wants: dict[str, Want] | None = None,
    secrets: Sequence[str] = (),
) -> list[AppReport]:
    """Ensure a configuration and the action of its mode on every application; report per
    application. ``wants``: applications that need another action than a PULL one (forward
    applications); ``secrets``: text (a token in a forwardUrl) masked in every report.

    Authentication errors propagate (nothing else can work); other errors are reported per
    application."""
    reports = []
    default = pull_want(callback_data, replace_http_forward)
    for app in apps:
        want = (wants or {}).get(app, default)
        report = AppReport(app=app, mode=want.mode)
        try:
            await _ensure(client, report, want, dry_run)
        except NotFoundError as exc:
            report.error = f"application {app} not found: {exc}"
        except AuthError:
            raise
        except InfobipError as exc:
            report.error = str(exc)
        _mask(report, secrets)
        for warning in report.warnings:
            log.warning(warning, app=app)
        if report.error:
            log.error("bootstrap failed", app=app, error=report.error)
        else:
            log.info(
                "bootstrap",
                app=app,
                mode=report.mode,
                configuration=report.configuration,
                configuration_created=report.configuration_created,
                action=report.action,
                action_created=report.action_created,
                removed=report.removed or None,
                dry_run=dry_run or None,
            )
        reports.append(report)
    return reports


def _mask(report: AppReport, secrets: Sequence[str]) -> None:
    """No secret in what is printed or logged: ``secrets`` and every registered one (an
    upstream error body may quote the Authorization header or the client secret)."""

    for secret in secrets:
        redact.register(secret)
    report.warnings = [redact.text(w) for w in report.warnings]
    if report.error:
        report.error = redact.text(report.error)


async def _ensure(client: InfobipClient, report: AppReport, want: Want, dry_run: bool) -> None:
    app = report.app
    configs = await client.list_configurations(app)
    if not configs:
        if dry_run:
            report.warnings.append(f"{app}: no configuration (would create one)")
            report.warnings.append(f"{app}: {_describe(want.request)} (would create it)")
            return
        try:
            created = await client.create_configuration(app)
            report.configuration_created = True
            report.configuration = created.key
        except ConflictError:
            # Another process created it between our list and our create.
            configs = await client.list_configurations(app)
            if not configs:
                raise
    if report.configuration is None:
        report.configuration = configs[0].key
    key = report.configuration

    actions = await client.list_actions(app, key)
    wanted = [a for a in actions if want.wanted(a)]
    others = [a for a in actions if not want.wanted(a)]
    if wanted:
        report.action = wanted[0].key
    elif dry_run:
        report.warnings.append(f"{app}: no {_describe(want.request)} (would create it)")
    else:
        # Created before any other is removed: the messages always have somewhere to go.
        created_action = await client.create_action(app, key, want.request)
        report.action_created = True
        report.action = await _settle_race(client, app, key, created_action, want)
    for action in others:
        if want.replace_others and not dry_run:
            with contextlib.suppress(NotFoundError):  # another process removed it first
                await client.delete_action(app, key, action.key)
            report.removed.append(action.key)
            continue
        report.conflicting.append(action.key)
        where = f" to {action.forward_url}" if action.forward_url else ""
        fix = f"{want.replace_setting}=true removes it"
        if want.replace_others:
            fix = "would remove it"
        report.warnings.append(
            f"{app}: {action.type} action {action.key}{where} exists; {_effect(want, action)}"
            f" ({fix})"
        )


def _describe(request: ActionRequest) -> str:
    if request.type == "PULL":
        return "PULL action"
    return f"HTTP_FORWARD action to {request.forward_url}"


def _effect(want: Want, action: Action) -> str:
    if want.mode == "pull":
        return "messages may be forwarded instead of reaching the pull inbox"
    if action.type == "PULL":
        return "messages may go to the pull inbox instead of being forwarded here"
    return "messages may be forwarded elsewhere too"


async def _settle_race(client: InfobipClient, app: str, key: str, mine: Action, want: Want) -> str:
    """After creating the action, keep exactly one if processes raced to create.

    Every racer lists after its own create and keeps the smallest key, so they all agree and
    the messages keep flowing through the survivor while the others are removed."""
    same = [a for a in await client.list_actions(app, key) if want.wanted(a)]
    if len(same) <= 1:
        return mine.key
    keep = min(a.key for a in same)
    for action in same:
        if action.key != keep:
            # NotFoundError: another racer removed it first.
            with contextlib.suppress(NotFoundError):
                await client.delete_action(app, key, action.key)
    log.info("concurrent bootstrap detected; kept one action", app=app, kept=keep)
    return keep


def wants_of(settings: Settings) -> tuple[dict[str, Want], list[str]]:
    """The forward applications' wanted action, and the secrets to mask in reports."""
    f = settings.forward
    url = f.forward_url()
    secrets = [f.token.get_secret_value()] if f.token is not None else []
    if not f.applications or url is None:
        return {}, secrets
    want = forward_want(url, f.callback_data, f.replace_pull)
    return dict.fromkeys(f.applications, want), secrets


def forward_problem(settings: Settings) -> str | None:
    """Why forward applications cannot be bootstrapped, if they cannot."""
    if settings.forward.applications and settings.forward.public_url is None:
        return (
            "forward applications need POLLER_FORWARD__PUBLIC_URL (the receiver's URL as"
            " Infobip reaches it) to be bootstrapped"
        )
    return None


class Bootstrapper:
    """The daemon's bootstrap: every configured application, then the ones that failed
    again every ``retry`` seconds until all are done; readiness asks it for ``problem``."""

    def __init__(self, settings: Settings, client: InfobipClient, stop: Stop) -> None:
        self.settings = settings
        self.client = client
        self.stop = stop
        self.pending: list[str] = [*settings.infobip.applications, *settings.forward.applications]
        self.done = False

    def problem(self) -> str | None:
        """Readiness: None once every application has its action."""
        if self.done:
            return None
        if self.pending:
            return f"bootstrap has not finished ({', '.join(self.pending)})"
        return "bootstrap has not finished"

    async def run(self) -> list[AppReport]:
        """Bootstrap the applications still pending; AuthError propagates, other Infobip
        errors are logged and leave them pending."""
        if not self.settings.infobip.bootstrap:
            log.info("bootstrap off (POLLER_INFOBIP__BOOTSTRAP=false): actions left as they are")
            self.pending = []
            self.done = True
            return []
        if self.settings.pulls and not self.settings.infobip.applications:
            log.warning("no applications configured; pulling whatever reaches the inbox")
        try:
            reports = await self.once(self.pending)
        except AuthError:
            raise
        except InfobipError as exc:
            log.warning("bootstrap failed; will retry", error=str(exc))
            return []
        self.pending = [r.app for r in reports if not r.ok]
        self.done = not self.pending
        return reports

    async def retry(self, every: float = RETRY_EVERY) -> None:
        """Bootstrap the applications that failed, every ``every`` s, until all are."""
        while self.pending and not await self.stop.sleep(every):
            try:
                await self.run()
            except AuthError as exc:
                log.error("infobip refused the credentials", error=str(exc))

    async def once(self, apps: Sequence[str]) -> list[AppReport]:
        """Ensure configurations and the action of each application's mode (PULL, or
        HTTP_FORWARD to the receiver); AuthError propagates."""
        forward = self.settings.forward
        if forward.public_url is None and set(apps) & set(forward.applications):
            log.warning(
                "forward applications not bootstrapped: POLLER_FORWARD__PUBLIC_URL is not set"
                " (create their HTTP_FORWARD action with `poller infobip action create`)",
                applications=forward.applications,
            )
            apps = [app for app in apps if app not in forward.applications]
        if not apps:
            return []
        return await bootstrap_settings(self.client, self.settings, apps)


async def bootstrap_settings(
    client: InfobipClient, settings: Settings, apps: Sequence[str], *, dry_run: bool = False
) -> list[AppReport]:
    """``bootstrap`` with what the settings say of each application's mode."""
    wants, secrets = wants_of(settings)
    return await bootstrap(
        client,
        apps,
        callback_data=settings.infobip.callback_data,
        replace_http_forward=settings.infobip.replace_http_forward,
        dry_run=dry_run,
        wants=wants,
        secrets=secrets,
    )
