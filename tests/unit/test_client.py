"""The Infobip client's parts that need no server: error bodies of every shape, Retry-After, the
token bucket's pause and reading pull bodies."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from poller.infobip import (
    ApiError,
    AuthError,
    MalformedResponseError,
    NotFoundError,
    ServerError,
    ThrottledError,
    parse_pull,
)
from poller.infobip.client import PULL_PATH, parse_retry_after
from poller.infobip.errors import api_error
from poller.infobip.ratelimit import TokenBucket

APP = "app-alpha"


def test_429_with_the_newer_error_body() -> None:
    body = json.dumps(
        {
            "errorCode": "E429",
            "description": "Too many requests.",
            "action": "Slow down.",
            "violations": [{"property": "limit", "violation": "over quota"}],
            "resources": [{"name": "docs", "url": "https://www.infobip.com/docs"}],
        }
    ).encode()
    error = api_error(429, body, operation=f"GET {PULL_PATH}", retry_after=2.0)
    assert isinstance(error, ThrottledError)
    assert (error.status, error.message_id, error.text) == (429, "E429", "Too many requests.")
    assert error.retry_after == 2.0
    assert error.validation_errors == {"limit": ["over quota"]}
    assert str(error) == (
        "HTTP 429 E429: Too many requests.; limit: ['over quota'] (GET /push/1/inbox/reports)"
    )


@pytest.mark.parametrize(
    ("status", "body", "cls", "message_id", "text"),
    [
        (500, b"", ServerError, None, None),
        (502, b"<html>Bad Gateway</html>", ServerError, None, "<html>Bad Gateway</html>"),
        (404, b'{"requestError":{"policyException":{"messageId":"X","text":"t"}}}',
         NotFoundError, "X", "t"),
        (401, b'{"error":"invalid_client"}', AuthError, "invalid_client", None),
        (418, b"[]", ApiError, None, None),
    ],
)  # fmt: skip
def test_api_error_reads_every_body_shape(
    status: int, body: bytes, cls: type[ApiError], message_id: str | None, text: str | None
) -> None:
    error = api_error(status, body, operation="GET /x")
    assert type(error) is cls
    assert (error.status, error.message_id, error.text) == (status, message_id, text)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("7", 7.0), ("-3", 0.0), ("999", 60.0), ("nan", None),
     ("inf", None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, cap=60.0) == expected


async def test_token_bucket_pause_holds_every_caller() -> None:
    bucket = TokenBucket(rate=1000, burst=1.0)
    await bucket.acquire()
    bucket.pause(0.3)
    started = time.monotonic()
    waits = await asyncio.gather(*(bucket.acquire() for _ in range(5)))
    assert min(waits) >= 0.28
    assert time.monotonic() - started >= 0.28


def test_bad_counters_keep_the_results() -> None:
    items = [{"messageId": "m1", "applicationCode": APP}, {"unexpected": True}]
    body = json.dumps({"results": items, "messageCount": "2", "pendingMessageCount": None}).encode()
    response = parse_pull(body)
    assert response.results == items
    # Items came, the count of what is left could not be read: unknown (ask again), never 0.
    assert (response.message_count, response.pending_message_count) == (2, None)
    assert response.body == body


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[]", "not a JSON object"),
     (b'{"results": null}', "`results` is not a list"), (b"{}", "`results` is not a list")],
)  # fmt: skip
def test_parse_pull_refuses_what_it_cannot_read(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedResponseError) as caught:
        parse_pull(body)
    assert caught.value.reason.startswith(reason)
    assert caught.value.body == body
