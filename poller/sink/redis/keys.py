"""Every Redis key the poller uses, from the stream key template: the one place for the rule.

A stream per application (``${app}`` in the template stands for the application code, made
safe by ``app_key``), its dead-letter stream (``:dead`` appended), and per stream the
high-water mark of each spool writer and the recent message ids of forwarded messages, both
in the stream's Cluster slot; per dead-letter stream the totals of what `poller dead`
re-drove and purged, and per message stream the markers of the dead letters re-driven into
it, in the slot of the stream they belong to.
"""

from __future__ import annotations

import hashlib

from redis.crc import key_slot

APP_PLACEHOLDER = "${app}"
DEAD_SUFFIX = ":dead"
# What stands for ${app} when a quarantined body has no application (not a code's form:
# a real application named so is escaped, see ``app_key``).
NO_APPLICATION = "unknown"
# Characters an application code may hold and still name its stream as it is; everything
# else is percent-encoded (braces would move the Cluster hash tag, colons could meet the
# ``:dead`` suffix, glob characters would defeat the SCAN patterns).
APP_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Longest ${app} part of a key; a longer encoding is cut and given a hash of the whole code.
APP_KEY_MAX = 100
_APP_KEY_PREFIX = 60
_APP_KEY_HASH = 32  # hex digits of SHA-256: 128 bits


# Keys of the coordination between the pollers of one account (the shared request budget,
# the replica registry), in one Cluster slot per account; the account is named by its base
# URL's host, never by a credential.
COORDINATION_PREFIX = "infobip-push-poller"


def account_key(account: str, what: str) -> str:
    """The key of ``what`` (``budget``, ``replicas``) for one account."""
    return f"{COORDINATION_PREFIX}:{{{app_key(account)}}}:{what}"


class Keys:
    """The keys of one stream key template."""

    def __init__(self, template: str) -> None:
        self.template = template

    def stream(self, app: str | None) -> str:
        """The stream of one application (None or "": no application, for dead letters)."""
        return stream_key(self.template, app)

    def dead(self, app: str | None) -> str:
        """The dead-letter stream of one application (None: its application is not known)."""
        return dead_of(self.stream(app or None))

    def patterns(self) -> tuple[str, str]:
        """SCAN patterns of the message streams and of the dead-letter streams."""
        pattern = self.template.replace(APP_PLACEHOLDER, "*")
        return pattern, pattern + DEAD_SUFFIX


def dead_of(stream: str) -> str:
    """The dead-letter stream of a message stream (same Cluster slot)."""
    return stream + DEAD_SUFFIX


def is_dead(key: str) -> bool:
    """True for a dead-letter stream's key."""
    return key.endswith(DEAD_SUFFIX)


def beside(stream: str, suffix: str) -> str:
    """A key of ``stream``'s own (``suffix`` after it) in the same Cluster slot: the
    stream's hash tag when it has one, else the whole stream key made the tag."""
    if has_hash_tag(stream):
        return f"{stream}{suffix}"
    return f"{{{stream}}}{suffix}"


def hwm_key(stream: str, writer: str) -> str:
    """The high-water mark of spool ``writer`` for ``stream``, in the same Cluster slot."""
    return beside(stream, f":hwm:{writer}")


def seen_key(stream: str) -> str:
    """The stream's recently written message ids (forwarded messages), same slot."""
    return beside(stream, ":seen")


def dead_totals_key(dead: str) -> str:
    """The totals (re-driven, purged) of a dead-letter stream, in its Cluster slot."""
    return beside(dead, ":totals")


def redriven_key(stream: str, dead: str, entry_id: str) -> str:
    """The marker saying dead letter ``entry_id`` of ``dead`` was re-driven into ``stream``,
    in ``stream``'s Cluster slot. The dead-letter stream is named by a digest: its key holds
    a hash tag of its own, which must not be the first one in this key."""
    digest = hashlib.sha256(dead.encode("utf-8", "surrogatepass")).hexdigest()[:_APP_KEY_HASH]
    return beside(stream, f":redriven:{digest}:{entry_id}")


def template_problem(template: str) -> str | None:
    """Why a stream key template cannot be used, or None."""
    if APP_PLACEHOLDER not in template:
        return f"must contain {APP_PLACEHOLDER} (one stream per application)"
    sample = stream_key(template, "app")
    if key_slot(sample.encode()) != key_slot(hwm_key(sample, "w").encode()):
        return (
            "its keys cannot share a Cluster slot with their high-water mark; use a hash tag"
            " such as infobip:push:{${app}}:mo"
        )
    return None


def stream_key(template: str, app: str | None) -> str:
    """The stream key of one application under ``template`` (the one rule for it); None
    (or "") for a quarantined body whose application could not be read."""
    return template.replace(APP_PLACEHOLDER, app_key(app))


def app_key(app: str | None) -> str:
    """What stands for ``${app}`` in a key: distinct codes never share it.

    A code of 1 to ``APP_KEY_MAX`` characters from ``APP_KEY_SAFE`` stands as it is. Any other
    character is percent-encoded (its UTF-8 bytes as ``%XX``; ``%`` itself is not safe, so
    the form decodes back to the code). An encoding longer than ``APP_KEY_MAX`` is cut to its
    first ``_APP_KEY_PREFIX`` characters, then ``~`` and 32 hex digits of the SHA-256 of the
    whole code (``~`` is never in an encoding). No application: ``unknown``; a real
    application named ``unknown`` stands as ``%75nknown`` (its ``u`` encoded)."""
    if not app:
        return NO_APPLICATION
    if app == NO_APPLICATION:
        return f"%{ord(app[0]):02X}{app[1:]}"
    if len(app) <= APP_KEY_MAX and APP_KEY_SAFE.issuperset(app):
        return app
    # Only the start of a long code is encoded: the hash stands for all of it.
    encoded = _percent(app[: APP_KEY_MAX + 1])
    if len(app) <= APP_KEY_MAX and len(encoded) <= APP_KEY_MAX:
        return encoded
    prefix = encoded[:_APP_KEY_PREFIX]
    cut = prefix.rfind("%", len(prefix) - 2)
    if cut != -1:
        prefix = prefix[:cut]  # never half of a %XX
    digest = hashlib.sha256(app.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}~{digest[:_APP_KEY_HASH]}"


def _percent(text: str) -> str:
    return "".join(
        char
        if char in APP_KEY_SAFE
        else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in text
    )


def has_hash_tag(key: str) -> bool:
    """True when ``key`` has a non-empty Cluster hash tag ``{...}``."""
    start = key.find("{")
    if start == -1:
        return False
    end = key.find("}", start + 1)
    return end > start + 1
