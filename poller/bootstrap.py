"""Bootstrap: each application gets a configuration with a PULL action. Idempotent, race-safe."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import structlog

from poller.cli.output import emit_json, error, table
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

log = structlog.get_logger(__name__)


@dataclass
class AppReport:
    """What bootstrap found and did for one application."""

    app: str
    configuration: str | None = None
    configuration_created: bool = False
    pull_action: str | None = None
    pull_action_created: bool = False
    http_forward: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the application ends with a configuration and a PULL action."""
        return self.error is None and self.pull_action is not None


async def bootstrap(
    client: InfobipClient,
    apps: Sequence[str],
    *,
    callback_data: str | None = None,
    replace_http_forward: bool = False,
    dry_run: bool = False,
) -> list[AppReport]:
    """Ensure a configuration and a PULL action on every application; report per application.

    Authentication errors propagate (nothing else can work); other errors are reported per
    application."""
    reports = []
    for app in apps:
        report = AppReport(app=app)
        try:
            await _ensure(client, report, callback_data, replace_http_forward, dry_run)
        except NotFoundError as exc:
            report.error = f"application {app} not found: {exc}"
        except AuthError:
            raise
        except InfobipError as exc:
            report.error = str(exc)
        for warning in report.warnings:
            log.warning(warning, app=app)
        if report.error:
            log.error("bootstrap failed", app=app, error=report.error)
        else:
            log.info(
                "bootstrap",
                app=app,
                configuration=report.configuration,
                configuration_created=report.configuration_created,
                pull_action=report.pull_action,
                pull_action_created=report.pull_action_created,
                dry_run=dry_run or None,
            )
        reports.append(report)
    return reports


async def _ensure(
    client: InfobipClient,
    report: AppReport,
    callback_data: str | None,
    replace_http_forward: bool,
    dry_run: bool,
) -> None:
    app = report.app
    configs = await client.list_configurations(app)
    if not configs:
        if dry_run:
            report.warnings.append(f"{app}: no configuration (would create one)")
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
    forwards = [a for a in actions if a.type == "HTTP_FORWARD"]
    for action in forwards:
        if replace_http_forward and not dry_run:
            await client.delete_action(app, key, action.key)
            report.removed.append(action.key)
        else:
            report.http_forward.append(action.key)
            report.warnings.append(
                f"{app}: HTTP_FORWARD action {action.key} to {action.forward_url} exists; "
                "messages may be forwarded instead of reaching the pull inbox "
                "(set POLLER_INFOBIP__REPLACE_HTTP_FORWARD=true to remove it)"
            )
    pulls = [a for a in actions if a.type == "PULL"]
    if pulls:
        report.pull_action = pulls[0].key
        return
    if dry_run:
        report.warnings.append(f"{app}: no PULL action (would create one)")
        return
    created_action = await client.create_action(
        app, key, ActionRequest(type="PULL", callbackData=callback_data)
    )
    report.pull_action_created = True
    report.pull_action = await _settle_race(client, app, key, created_action)


async def _settle_race(client: InfobipClient, app: str, key: str, mine: Action) -> str:
    """After creating a PULL action, keep exactly one if processes raced to create.

    Every racer lists after its own create and keeps the smallest key, so they all agree and
    the inbox keeps being fed by the survivor while the others are removed."""
    pulls = [a for a in await client.list_actions(app, key) if a.type == "PULL"]
    if len(pulls) <= 1:
        return mine.key
    keep = min(a.key for a in pulls)
    for action in pulls:
        if action.key != keep:
            # NotFoundError: another racer removed it first.
            with contextlib.suppress(NotFoundError):
                await client.delete_action(app, key, action.key)
    log.info("concurrent bootstrap detected; kept one PULL action", app=app, kept=keep)
    return keep


def print_reports(reports: Sequence[AppReport], *, as_json: bool, dry_run: bool) -> None:
    """Per application: what existed and what was created."""
    if as_json:
        emit_json([asdict(r) | {"ok": r.ok} for r in reports])
        return
    rows = []
    for r in reports:
        config = r.configuration or ("(would create)" if dry_run and not r.error else "-")
        if r.configuration:
            config += " (created)" if r.configuration_created else " (existed)"
        pull = r.pull_action or ("(would create)" if dry_run and not r.error else "-")
        if r.pull_action:
            pull += " (created)" if r.pull_action_created else " (existed)"
        notes = "; ".join(
            ([r.error] if r.error else [])
            + [f"HTTP_FORWARD {k} present" for k in r.http_forward]
            + [f"removed HTTP_FORWARD {k}" for k in r.removed]
        )
        rows.append([r.app, config, pull, notes or "ok"])
    table(["application", "configuration", "pull action", "notes"], rows)


async def run_bootstrap_command(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    """`poller bootstrap [--dry-run]`."""
    apps = settings.infobip.applications
    if not apps:
        error("no applications configured: set POLLER_INFOBIP__APPLICATIONS=app1,app2")
        return 2
    async with InfobipClient(settings.infobip) as client:
        reports = await bootstrap(
            client,
            apps,
            callback_data=settings.infobip.callback_data,
            replace_http_forward=settings.infobip.replace_http_forward,
            dry_run=dry_run,
        )
    print_reports(reports, as_json=as_json, dry_run=dry_run)
    return 0 if all(r.error is None for r in reports) else 1
