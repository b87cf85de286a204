"""The forward receiver faces the internet: what an outsider (or a sender holding the token)
can post, against the real receiver, spool, flusher and a real redis-server on loopback.

Compressed bodies are bounded by their decoded bytes, only the configured forward
applications get streams, ids have a length cap, any header bytes get a 4xx, and JSON is
recognised by its content whatever its declared type and charset."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from redis.asyncio import Redis

from poller import metrics
from poller.devtools.simulator import Simulator
from poller.sources.forward_body import MAX_ID_CHARS
from tests.support import Forwarding, forwarding, make_settings, stream_entries, stream_of

TOKEN = "forward-token-0123456789abcdef"
APP = "app-fwd"
PULLED = "app-alpha"
JSON = {"Content-Type": "application/json"}


def message(n: int, app: str = APP, **extra: Any) -> dict[str, Any]:
    return {"messageId": f"fwd-{n:05d}", "applicationCode": app, "text": f"hi {n}", **extra}


@pytest.fixture
async def receiver(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> AsyncIterator[Forwarding]:
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        apps=[PULLED],
        forward={"applications": [APP], "token": TOKEN, "port": 0, "read_timeout": 5.0},
    )
    async with forwarding(settings) as started:
        yield started


def requests_counted(status: int) -> float:
    return metrics.FORWARD_REQUESTS.labels(status=str(status))._value.get()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or "Traceback" in r.getMessage()]


async def keys_of(redis: Redis, key_template: str) -> set[str]:
    prefix = key_template.split("{", 1)[0]
    return {key.decode() async for key in redis.scan_iter(match=prefix + "*", count=1000)}


# Compressed bodies (issue 16, item 3).


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "identity, x-unknown"])
async def test_an_encoding_the_receiver_cannot_decode_is_refused_before_it_is_read(
    receiver: Forwarding, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    """Tried: `Content-Encoding: br` (aiohttp answered 400 and logged a traceback before the
    handler ran), zstd, compress, and lists holding one of them. Each is answered 415 naming
    the encodings accepted, counted, with nothing spooled and no traceback: the sender
    delivers again, uncompressed or gzip."""
    before = requests_counted(415)
    answer = await receiver.post(b"\x0b\x02\x80{}\x03", {**JSON, "Content-Encoding": encoding})
    assert answer.status_code == 415
    reason = answer.json()["error"]
    assert "gzip" in reason
    assert "deflate" in reason
    assert requests_counted(415) == before + 1
    assert receiver.rt.spool.stats().rows == receiver.rt.spool.stats().quarantined == 0
    assert tracebacks(caplog) == []


async def test_gzip_and_deflate_bodies_are_stored_decoded(
    receiver: Forwarding, redis_client: Redis
) -> None:
    """Tried: gzip (one member and two concatenated), zlib-wrapped and raw deflate; each
    message reaches its stream once, its payload the decoded bytes."""
    bodies = [
        ("gzip", gzip.compress(json.dumps(message(1)).encode())),
        ("x-gzip", gzip.compress(b"[") + gzip.compress(json.dumps(message(2)).encode() + b"]")),
        ("deflate", zlib.compress(json.dumps(message(3)).encode())),
        ("deflate", zlib.compress(json.dumps(message(4)).encode(), wbits=-15)),
    ]
    for encoding, body in bodies:
        answer = await receiver.post(body, {**JSON, "Content-Encoding": encoding})
        assert (answer.status_code, answer.json()) == (200, {"accepted": 1, "quarantined": 0})
    await receiver.settled()
    entries = await stream_entries(redis_client, stream_of(receiver.rt.settings, APP))
    assert [json.loads(e["payload"]) for e in entries] == [message(n) for n in (1, 2, 3, 4)]


async def test_a_gzip_bomb_is_refused_once_its_decoded_bytes_pass_the_cap(
    receiver: Forwarding, redis_client: Redis
) -> None:
    """Tried: 5 KB of gzip that inflates to 5 MiB (the cap is 4 MiB): 413, nothing kept (its
    size alone refuses it, as for an uncompressed body). A gzip body that is corrupt, or cut,
    is answered 400 and its bytes as received go to quarantine and the dead-letter stream."""
    limit = receiver.rt.settings.forward.max_body_bytes
    inner = json.dumps(message(1, pad=" " * (limit + limit // 4))).encode()
    bomb = gzip.compress(inner, 9)
    assert len(bomb) < 10_000
    answer = await receiver.post(bomb, {**JSON, "Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert receiver.rt.spool.stats().quarantined == 0
    fine = gzip.compress(json.dumps(message(2)).encode())
    for broken in (fine[:10] + b"\x00" * 20 + fine[30:], fine[: len(fine) // 2]):
        answer = await receiver.post(broken, {**JSON, "Content-Encoding": "gzip"})
        assert answer.status_code == 400
        assert "gzip" in answer.json()["error"]
    await receiver.settled()
    dead = await stream_entries(redis_client, stream_of(receiver.rt.settings, None) + ":dead")
    assert len(dead) == 2
    assert not await redis_client.exists(stream_of(receiver.rt.settings, APP))


# Only the configured forward applications (item 4).


async def test_an_item_for_an_application_not_forwarded_here_does_not_reach_its_stream(
    receiver: Forwarding, redis_client: Redis
) -> None:
    """Tried: {"messageId":"evil-1","applicationCode":"app-alpha"} with the right token,
    app-alpha being a pulled application: it landed in app-alpha's stream. Now it is kept in
    quarantine (the `unknown` dead-letter stream), the answer says so, and a message of the
    forward application in the same body goes on to its stream."""
    body = json.dumps([{"messageId": "evil-1", "applicationCode": PULLED}, message(1)])
    answer = await receiver.post(body.encode(), JSON)
    assert (answer.status_code, answer.json()) == (200, {"accepted": 1, "quarantined": 1})
    await receiver.settled()
    settings = receiver.rt.settings
    assert not await redis_client.exists(stream_of(settings, PULLED))
    assert not await redis_client.exists(stream_of(settings, PULLED) + ":dead")
    (dead,) = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
    assert json.loads(dead["raw"]) == [{"messageId": "evil-1", "applicationCode": PULLED}]
    assert "POLLER_FORWARD__APPLICATIONS" in dead["reason"]
    assert "app-alpha" in dead["reason"]
    assert [e["id"] for e in await stream_entries(redis_client, stream_of(settings, APP))] == [
        "fwd-00001"
    ]


async def test_a_body_of_many_application_codes_creates_no_stream(
    receiver: Forwarding, redis_client: Redis, key_template: str
) -> None:
    """Tried: one 4 MiB body of 84,000 items with distinct codes (it created 84,330 streams,
    ~253k keys). Now every one is kept in one quarantine row, one dead-letter entry, whose
    reason names a few codes, cut; the keys are that dead-letter stream and its mark."""
    items = [{"messageId": str(n), "applicationCode": f"c{n}"} for n in range(84_000)]
    body = json.dumps({"results": items}, separators=(",", ":")).encode()
    assert len(body) <= receiver.rt.settings.forward.max_body_bytes
    answer = await receiver.post(body, JSON)
    assert (answer.status_code, answer.json()) == (200, {"accepted": 0, "quarantined": 84_000})
    await receiver.settled()
    dead_key = stream_of(receiver.rt.settings, None) + ":dead"
    keys = await keys_of(redis_client, key_template)
    assert dead_key in keys
    assert all(key.startswith(dead_key) for key in keys), keys  # the stream, its mark
    (dead,) = await stream_entries(redis_client, dead_key)
    assert len(json.loads(dead["raw"])) == 84_000
    assert "84000 items" in dead["reason"]
    assert len(dead["reason"]) < 1_000


async def test_a_huge_message_id_or_application_code_is_quarantined_not_stored_thrice(
    receiver: Forwarding, redis_client: Redis, key_template: str
) -> None:
    """Tried: a 1 MB messageId (it went to the entry's `id`, its payload and the dedupe set:
    three copies), a 300-character one, and a 150 KB applicationCode of "token" repeated.
    Ids over 256 characters are quarantined in the forward application's dead-letter stream
    (the bytes once, the reason cut); the code is not a forward application's."""
    huge = "x" * 1_000_000
    body = json.dumps(
        [
            message(1, messageId=huge),
            message(2, messageId="y" * (MAX_ID_CHARS + 1)),
            message(3, applicationCode="token" * 30_000),
            message(4, messageId="z" * MAX_ID_CHARS),
        ]
    )
    answer = await receiver.post(body.encode(), JSON)
    assert (answer.status_code, answer.json()) == (200, {"accepted": 1, "quarantined": 3})
    await receiver.settled()
    settings = receiver.rt.settings
    (entry,) = await stream_entries(redis_client, stream_of(settings, APP))
    assert entry["id"] == "z" * MAX_ID_CHARS
    dead = await stream_entries(redis_client, stream_of(settings, APP) + ":dead")
    assert len(dead) == 2
    assert all("256 characters" in d["reason"] and len(d["reason"]) < 300 for d in dead)
    assert sum(len(v) for d in dead for v in d.values()) < 1_001_000 + 10_000
    unknown = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
    assert len(unknown) == 1
    assert len(unknown[0]["reason"]) < 1_000
    streams = {k for k in await keys_of(redis_client, key_template) if ":hwm" not in k}
    assert streams <= {
        stream_of(settings, APP),
        stream_of(settings, APP) + ":dead",
        stream_of(settings, APP) + ":seen",
        stream_of(settings, None) + ":dead",
    }


# Any header bytes (item 5).


async def test_a_token_header_of_any_bytes_is_refused_counted_and_logged_in_one_line(
    receiver: Forwarding, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: X-Forward-Token of b"\\xff\\xfe" (500 and a traceback: UnicodeEncodeError), of
    Latin-1 bytes, a path token of %FF%FE: each is 403. Control bytes in the header are
    refused 400 by aiohttp's parser. All counted in poller_forward_requests, no traceback,
    and one bounded log line per kind of refusal."""
    body = json.dumps(message(1)).encode()
    path = receiver.rt.settings.forward.path.encode()
    heads = [
        (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nX-Forward-Token: " + token + b"\r\n", status)
        for token, status in (
            (b"\xff\xfe", 403),
            (b"caf\xe9-0123456789abcdef", 403),
            (b"\x01\x7f" * 10, 400),
        )
    ]
    heads.append((b"POST " + path + b"/%FF%FE HTTP/1.1\r\nHost: x\r\n", 403))
    before = requests_counted(403) + requests_counted(400)
    with structlog.testing.capture_logs() as lines:
        for head, want in heads:
            length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            status, answer = await receiver.raw(head + length.encode(), body)
            assert status == want, answer[:300]
    assert requests_counted(403) + requests_counted(400) == before + len(heads)
    assert tracebacks(caplog) == []
    assert 1 <= len(lines) <= len(heads)
    assert all(len(repr(line)) < 1_000 for line in lines)
    assert receiver.rt.spool.stats().rows == 0


async def test_headers_past_the_limits_are_refused_with_a_line_and_a_count(
    receiver: Forwarding, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: a header of 9,000 bytes, 40 headers, a request line of 5,000 bytes. aiohttp
    answers 400 itself (before the handler); the receiver counts it in
    poller_forward_requests{status="400"} and logs one line with no traceback."""
    base = b"POST " + receiver.path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    heads = [
        base + b"X-Long: " + b"a" * 9_000 + b"\r\n\r\n",
        base + b"".join(b"X-H%d: v\r\n" % n for n in range(40)) + b"\r\n",
        b"POST " + receiver.path.encode() + b"?" + b"q" * 5_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    before = requests_counted(400)
    with structlog.testing.capture_logs() as lines:
        for head in heads:
            status, _answer = await receiver.raw(head)
            assert status == 400
    assert requests_counted(400) == before + len(heads)
    assert tracebacks(caplog) == []
    refused = [line for line in lines if line["event"] == "bad request refused"]
    assert len(refused) == len(heads)
    assert all(len(repr(line)) < 1_000 for line in refused)


# Liberal in what is accepted (item 7).


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "text/json"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/octet-stream"},
    ],
)
async def test_json_is_recognised_by_its_content_whatever_the_declared_type(
    receiver: Forwarding, redis_client: Redis, headers: dict[str, str]
) -> None:
    """Tried: no Content-Type, text/plain, text/json, form-urlencoded, octet-stream (each was
    refused 415 before it was read, nothing kept): the message reaches its stream."""
    answer = await receiver.post(json.dumps(message(1)).encode(), headers)
    assert (answer.status_code, answer.json()) == (200, {"accepted": 1, "quarantined": 0})
    await receiver.settled()
    entries = await stream_entries(redis_client, stream_of(receiver.rt.settings, APP))
    assert [json.loads(e["payload"]) for e in entries] == [message(1)]


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        ("text/plain; charset=latin-1", "latin-1"),
        ("application/json; charset=ISO-8859-1", "latin-1"),
        ("application/json; charset=windows-1252", "cp1252"),
        ("application/json; charset=utf-16", "utf-16"),
        ("application/json; charset=UTF-8", "utf-8"),
    ],
)
async def test_a_declared_charset_is_honoured_and_stored_as_utf8(
    receiver: Forwarding, redis_client: Redis, content_type: str, codec: str
) -> None:
    """Tried: "café €" in Latin-1 (400 "not a message object" before; € is not in Latin-1,
    so that case carries only é), windows-1252, UTF-16 with its byte order mark, UTF-8. The
    payload stored is the UTF-8 JSON of the same value."""
    text = "café" if codec == "latin-1" else "café €"
    sent = message(1, text=text)
    answer = await receiver.post(
        json.dumps(sent, ensure_ascii=False).encode(codec), {"Content-Type": content_type}
    )
    assert (answer.status_code, answer.json()) == (200, {"accepted": 1, "quarantined": 0})
    await receiver.settled()
    (entry,) = await stream_entries(redis_client, stream_of(receiver.rt.settings, APP))
    assert json.loads(entry["payload"]) == sent
    assert text in entry["payload"]  # UTF-8 text, not escapes


async def test_a_body_that_cannot_be_decoded_or_is_not_json_is_kept_as_received(
    receiver: Forwarding, redis_client: Redis
) -> None:
    """Tried: a charset no codec knows, one the receiver does not decode (punycode, whose
    decoder is quadratic), bytes that are not UTF-16 under charset=utf-16, and a real form
    body. Each is answered 400 with its reason, and its bytes as received are in the
    dead-letter stream."""
    sent = [
        (b'{"messageId":"a","applicationCode":"app-fwd"}', "application/json; charset=x-none"),
        (b'{"messageId":"b","applicationCode":"app-fwd"}', "application/json; charset=punycode"),
        (b'{"messageId":"c"}', "application/json; charset=utf-16"),  # 17 bytes
        (b"messageId=d&applicationCode=app-fwd", "application/x-www-form-urlencoded"),
    ]
    for body, content_type in sent:
        answer = await receiver.post(body, {"Content-Type": content_type})
        assert answer.status_code == 400, body
        assert answer.json()["error"]
    await receiver.settled()
    dead = await stream_entries(redis_client, stream_of(receiver.rt.settings, None) + ":dead")
    assert [d["raw"].encode() for d in dead] == [body for body, _ in sent]
