"""Dead letters read again: counts by reason, re-drive with the current code, purge by age.

The sink only moves entries (``poller.sink.DeadLetters``: each letter once, however many
re-drives run); what parses is the sources' rule, applied here to a letter's bytes as to a
body that just arrived. They are read in any shape a source takes (``items_of``: a pull
answer's envelope, one message object, or an array of them, so a quarantined item, a whole
pull answer, a forwarded body and a consumer's poison entry all read), and each item is
judged as every source judges one (``rows_from_items``: routing fields, depth limit, UTF-8).
What now parses goes to its application's stream with the usual message fields; what still
fails stays in the letter's place with the reason it fails for now (a body cut short stays
whole: its whole items were written when it arrived). A letter that fails for the reason it
carries already is left as it is (same entry id), and one whose bytes hold nothing at all is
never removed.

Entries a consumer group moved to the dead-letter stream (``lua/dead_letter.lua``: the
message's payload as ``raw``, its ``app`` and ``pulled_at``, the reason ``delivered N times to
group G without an acknowledgement (entry ID)``) re-drive like the others: the payload parses,
so the message goes back to its stream as a new entry, and every group reads it again. They
are retriable on purpose (fix the consumer, then re-drive); ``--reason delivered`` selects
them alone, ``--reason`` with a quarantine's reason (``result item``) the others.

Nothing here prints: `poller dead` (``poller.cli.dead``) renders what these return.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from poller.sink import DeadLetter, DeadLetters, DeadStream, Redrive
from poller.sources.forward_body import route
from poller.sources.items import items_of, now_rfc3339, quarantine, rows_from_items

# A stream entry id as `poller dead list` prints them.
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# The forward receiver's prefix to the reason of a body it refused whole.
FORWARDED = "forwarded body: "
# The part of a consumer's reason that names the entry: left out when counting by reason.
_ENTRY_IN_REASON = re.compile(r" \(entry [0-9]+-[0-9]+\)$")

Status = Literal["redriven", "already", "failing", "unchanged"]


@dataclass(frozen=True)
class ReasonCount:
    """The letters of one stream that share a reason: how many, the newest one's time, and
    their ids, newest first."""

    reason: str
    count: int
    newest: float
    ids: list[str]


@dataclass(frozen=True)
class StreamSummary:
    """One dead-letter stream: its letters by reason (newest reason first) and its totals."""

    stream: DeadStream
    app: str | None  # as its letters name it ("": no application); None: not known
    reasons: list[ReasonCount]


@dataclass(frozen=True)
class Outcome:
    """What a retry did with one letter (or, dry run, would do): ``redriven`` (its messages
    went to their streams), ``already`` (another retry took it first), ``failing`` (it still
    fails, for a new reason: ``kept`` holds the entry ids now in its place), ``unchanged``
    (it fails as before and stays as it is)."""

    letter: DeadLetter
    status: Status
    messages: dict[str, int] = field(default_factory=dict)  # per application
    reasons: list[str] = field(default_factory=list)  # why what is left still fails
    kept: list[str] = field(default_factory=list)


@dataclass
class RetryReport:
    """Every letter a retry looked at, and the ids asked for that no stream holds."""

    outcomes: list[Outcome] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dry_run: bool = False

    def count(self, status: Status) -> int:
        """Letters with this outcome."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def messages(self) -> int:
        """Messages written to their streams by this retry (dry run: that would be)."""
        return sum(n for o in self.outcomes if o.status == "redriven" for n in o.messages.values())


def reason_group(reason: str) -> str:
    """The reason letters are counted under: a consumer's reason without its entry id."""
    return _ENTRY_IN_REASON.sub("", reason)


def bad_ids(ids: Sequence[str]) -> list[str]:
    """The ids that are not stream entry ids (``1700000000000-0``)."""
    return [i for i in ids if not ENTRY_ID.fullmatch(i)]


async def summary(dead: DeadLetters, apps: Sequence[str] = ()) -> list[StreamSummary]:
    """Per dead-letter stream, its letters counted by reason, newest reason first."""
    streams = await dead.dead_streams(apps)
    # Stream -> reason -> (entry id, time, application) of each letter, newest first.
    groups: dict[str, dict[str, list[tuple[str, float, str]]]] = {s.stream: {} for s in streams}
    async for letter in dead.letters(apps):
        by_reason = groups.get(letter.stream)
        if by_reason is not None:  # None: a stream that appeared after the count
            seen = by_reason.setdefault(reason_group(letter.reason), [])
            seen.append((letter.entry_id, letter.dead_at, letter.app))
    found: list[StreamSummary] = []
    for stream in streams:
        by_reason = groups[stream.stream]
        app = next((seen[0][2] for seen in by_reason.values()), stream.app)
        reasons = [
            ReasonCount(reason, len(seen), seen[0][1], [entry_id for entry_id, _t, _a in seen])
            for reason, seen in by_reason.items()
        ]
        reasons.sort(key=lambda r: r.newest, reverse=True)
        found.append(StreamSummary(stream, app, reasons))
    return found


def reparse(letter: DeadLetter, forward_apps: Collection[str] = ()) -> Redrive:
    """A letter read again with the current code: its messages and what still fails.

    A forwarded body is judged by the receiver's rule: only items of ``forward_apps``
    (POLLER_FORWARD__APPLICATIONS) become messages, the others stay together in one letter,
    so re-driving an attacker's body of 84,000 codes creates no stream; once an application
    is added to the setting, its items are re-driven."""
    pulled_at = letter.pulled_at or now_rfc3339()
    items, problem = items_of(letter.raw)
    forwarded = letter.reason.startswith(FORWARDED)
    if problem is not None:
        prefix = FORWARDED if forwarded else ""
        kept = quarantine(letter.raw, prefix + problem, letter.app or None, pulled_at)
        return Redrive(letter, [], [kept])
    if forwarded:
        routed = route(items, forward_apps, pulled_at)
        return Redrive(letter, routed.messages, routed.rows)
    messages, leftovers = rows_from_items(items, pulled_at)
    return Redrive(letter, messages, leftovers)


def _unchanged(plan: Redrive) -> bool:
    """True when re-driving would change nothing: no message, and the letter fails as it
    is and for the reason it carries; or its bytes hold nothing to put anywhere."""
    if plan.messages:
        return False
    if not plan.leftovers:
        return True
    if len(plan.leftovers) != 1:
        return False
    only, letter = plan.leftovers[0], plan.letter
    return only.raw == letter.raw and only.reason == letter.reason


async def retry(
    dead: DeadLetters,
    *,
    apps: Sequence[str] = (),
    reason: str | None = None,
    ids: Sequence[str] = (),
    dry_run: bool = False,
    forward_apps: Collection[str] = (),
) -> RetryReport:
    """Re-drive the letters of these applications (or all), those whose reason contains
    ``reason``, or those with these ids; see the module's docstring for what parses."""
    report = RetryReport(dry_run=dry_run)
    if ids:
        letters = await dead.find(ids, apps)
        found = {letter.entry_id for letter in letters}
        report.missing = [i for i in ids if i not in found]
        for letter in letters:
            if reason is None or reason in letter.reason:
                report.outcomes.append(await _one(dead, letter, dry_run, forward_apps))
        return report
    async for letter in dead.letters(apps):
        if reason is None or reason in letter.reason:
            report.outcomes.append(await _one(dead, letter, dry_run, forward_apps))
    return report


async def _one(
    dead: DeadLetters, letter: DeadLetter, dry_run: bool, forward_apps: Collection[str]
) -> Outcome:
    plan = reparse(letter, forward_apps)
    reasons = [q.reason for q in plan.leftovers]
    if _unchanged(plan):
        return Outcome(letter, "unchanged", reasons=reasons or [letter.reason])
    per_app: dict[str, int] = {}
    for message in plan.messages:
        per_app[message.app] = per_app.get(message.app, 0) + 1
    status: Status = "redriven" if plan.messages else "failing"
    if dry_run:
        return Outcome(letter, status, per_app, reasons)
    result = await dead.redrive(plan)
    if not result.settled:
        return Outcome(letter, "already", per_app, reasons)
    return Outcome(letter, status, per_app, reasons, result.kept)


async def purge(
    dead: DeadLetters, older_than: float, apps: Sequence[str] = (), *, dry_run: bool = False
) -> dict[str, int]:
    """Remove (dry run: count) the letters older than ``older_than`` seconds; per stream."""
    if older_than < 0:
        raise ValueError("older_than must not be negative")
    return await dead.purge(older_than, apps, dry_run=dry_run)


__all__ = [
    "ENTRY_ID",
    "Outcome",
    "ReasonCount",
    "RetryReport",
    "StreamSummary",
    "bad_ids",
    "purge",
    "reason_group",
    "reparse",
    "retry",
    "summary",
]
