"""Application codes into stream keys and metric labels, without a server: no two codes share a
stream, no code makes a huge key, every unconfigured code is labelled `other`."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from poller import metrics
from poller.sink.redis.keys import APP_KEY_MAX, APP_KEY_SAFE, app_key, hwm_key, seen_key, stream_key
from tests.support import redis_sink
from tests.support.codes import HUGE, ODD_CODES

TEMPLATE = "infobip:push:{${app}}:mo"


def test_ordinary_codes_keep_the_key_they_always_had() -> None:
    # Tried: codes as Infobip hands them out and as the tests and docs use them; their
    # streams hold users' data, so their keys must not move.
    for code in ["app-alpha", "my-ios-app", "2bd1c4e3b85f49f7a8c2", "A.b_c-9", "x" * APP_KEY_MAX]:
        assert stream_key(TEMPLATE, code) == f"infobip:push:{{{code}}}:mo"


def test_codes_that_once_shared_a_stream_have_their_own() -> None:
    keys = [stream_key(TEMPLATE, code) for code in ODD_CODES]
    assert len(set(keys)) == len(keys)
    assert stream_key(TEMPLATE, "a{b") != stream_key(TEMPLATE, "a(b")
    # No application (a body that could not be read) is not the application named unknown.
    assert stream_key(TEMPLATE, None) == "infobip:push:{unknown}:mo"
    assert stream_key(TEMPLATE, "") == stream_key(TEMPLATE, None)
    assert stream_key(TEMPLATE, "unknown") != stream_key(TEMPLATE, None)
    huge = stream_key(TEMPLATE, HUGE)
    assert len(huge) < 200
    assert huge != stream_key(TEMPLATE, HUGE + "h")
    assert huge != stream_key(TEMPLATE, HUGE[:-1] + "i")


@given(st.text(max_size=300), st.text(max_size=300))
def test_two_different_codes_never_share_a_key(a: str, b: str) -> None:
    if a != b and {a, b} != {"", "unknown"} and "" not in (a, b):
        assert app_key(a) != app_key(b)


@given(st.text(min_size=1, max_size=300))
def test_a_key_part_is_short_safe_and_decodes_back_when_not_hashed(code: str) -> None:
    part = app_key(code)
    assert len(part) <= APP_KEY_MAX
    assert set(part) <= APP_KEY_SAFE | set("%~0123456789ABCDEF")
    if "~" not in part and code:
        assert unquote(part, errors="surrogatepass") == code
    # The hash tag stays the code's own: the high-water mark lands in the stream's slot.
    sink = redis_sink(url="redis://127.0.0.1:1", key_template=TEMPLATE, instance_id="w")
    key = sink.stream_key(code)
    assert key_slot(key.encode()) == key_slot(hwm_key(key, sink.instance_id).encode())
    assert key_slot(key.encode()) == key_slot(seen_key(key).encode())
    assert key.count("{") == 1
    assert key.count("}") == 1


@pytest.mark.parametrize("code", [None, "", "not-configured"])
def test_every_unconfigured_code_is_labelled_other(code: str | None) -> None:
    metrics.set_applications(["app-alpha"])
    assert metrics.app_label(code) == "other"
    assert metrics.app_label("app-alpha") == "app-alpha"
