"""The Redis sink's keys and URLs without a server: the high-water mark shares its stream's slot
whatever the template or the application code, and a URL's password is masked."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from poller.redact import text as redact_url
from poller.sink.redis.keys import hwm_key
from tests.support import redis_sink


def test_hwm_key_formula_and_slots() -> None:
    tagged = redis_sink(url="redis://x", key_template="infobip:push:{${app}}:mo", instance_id="i1")
    key = tagged.stream_key("myapp")
    assert key == "infobip:push:{myapp}:mo"
    assert hwm_key(key, tagged.instance_id) == "infobip:push:{myapp}:mo:hwm:i1"
    assert tagged.keys.dead("myapp") == "infobip:push:{myapp}:mo:dead"
    untagged = redis_sink(url="redis://x", key_template="mo:${app}", instance_id="i1")
    key = untagged.stream_key("myapp")
    assert hwm_key(key, untagged.instance_id) == "{mo:myapp}:hwm:i1"
    for sink in (tagged, untagged):
        for app in ("a", "myapp", "ÄÖ-42"):
            for k in (sink.stream_key(app), sink.keys.dead(app)):
                assert key_slot(k.encode()) == key_slot(hwm_key(k, sink.instance_id).encode())


def test_template_that_cannot_share_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="slot"):
        redis_sink(url="redis://x", key_template="a}b:${app}", instance_id="i1")
    with pytest.raises(ValueError, match=r"\$\{app\}"):
        redis_sink(url="redis://x", key_template="no-placeholder", instance_id="i1")


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    assert "s3cret" not in redact_url("unix:///tmp/r.sock?db=0&password=s3cret")


def test_braces_in_an_app_code_cannot_break_the_hash_tag() -> None:
    tagged = redis_sink(url="redis://x", key_template="infobip:push:{${app}}:mo", instance_id="i1")
    assert tagged.stream_key("a}b") == "infobip:push:{a%7Db}:mo"
    assert tagged.stream_key("") == "infobip:push:{unknown}:mo"
    untagged = redis_sink(url="redis://x", key_template="mo:${app}", instance_id="i1")
    for sink in (tagged, untagged):
        for app in ("a}b", "{x}", "}{", ""):
            key = sink.stream_key(app)
            assert key_slot(key.encode()) == key_slot(hwm_key(key, sink.instance_id).encode())
