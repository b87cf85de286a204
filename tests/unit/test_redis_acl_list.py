"""The Redis commands the poller needs are listed once, in poller.sink.redis.acl, and
deploy/OPERATIONS.md's ACL line for the poller's user grants exactly those.

Tried: the documented `ACL SETUSER infobip-poller` line read as a shell would, its `+command`
rules against the list in the code, and every listed command against the probes that
`poller config check` sends for it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from poller.sink.redis import acl
from poller.sink.redis.keys import Keys

OPERATIONS = Path(__file__).resolve().parents[2] / "deploy" / "OPERATIONS.md"
TEMPLATE = "infobip:push:{${app}}:mo"


def documented_rules(user: str) -> list[str]:
    text = OPERATIONS.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if f"ACL SETUSER {user} " in line:
            words = shlex.split(line)
            return words[words.index(user) + 1 :]
    raise AssertionError(f"deploy/OPERATIONS.md has no `ACL SETUSER {user}` line")


def test_the_documented_poller_user_grants_exactly_the_listed_commands() -> None:
    granted = [rule[1:] for rule in documented_rules("infobip-poller") if rule.startswith("+")]
    assert sorted(granted) == sorted(acl.POLLER_COMMANDS)
    assert len(set(granted)) == len(granted)


def test_the_documented_additions_are_the_listed_ones() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    additions = " ".join(shlex.quote("+" + c) for c in acl.WAITAOF_COMMANDS)
    assert f"`{additions}`" in text
    assert f"`+{acl.SELECT_COMMAND}`" in text


def test_needed_commands_follow_the_settings() -> None:
    assert acl.needed_commands("redis://h:6379/0", "auto") == list(acl.POLLER_COMMANDS)
    waitaof = acl.needed_commands("redis://h:6379", "waitaof")
    assert waitaof == [*acl.POLLER_COMMANDS, *acl.WAITAOF_COMMANDS]
    assert acl.needed_commands("redis://h:6379/3", "none")[-1] == acl.SELECT_COMMAND


def test_every_command_has_a_probe_on_the_keys_it_is_used_on() -> None:
    commands = [*acl.POLLER_COMMANDS, *acl.WAITAOF_COMMANDS, acl.SELECT_COMMAND]
    keyless, keyed = acl._probes("redis://h/0", Keys(TEMPLATE), ["app", None], "acct", commands)
    probed = {p.command for p in keyless + keyed}
    assert probed == set(commands)
    touched = {key for p in keyed for key in p.keys}
    assert "infobip:push:{app}:mo" in touched
    assert "infobip:push:{app}:mo:dead" in touched
    assert "infobip:push:{app}:mo:hwm:config-check" in touched
    assert "infobip:push:{app}:mo:seen" in touched
    assert "infobip:push:{unknown}:mo:dead" in touched
    assert "infobip-push-poller:{acct}:budget" in touched
    assert "infobip-push-poller:{acct}:replicas" in touched
    # A dead-letter stream has no dedupe set: none is probed.
    assert "infobip:push:{app}:mo:dead:seen" not in touched


def test_the_user_of_a_url() -> None:
    assert acl.user_of("redis://h:6379/0") == "default"
    assert acl.user_of("redis://infobip-poller:pw@h:6379/0") == "infobip-poller"
    assert acl.user_of("redis://:pw@h:6379/0") == "default"
