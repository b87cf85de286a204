"""`poller infobip ...` as a new user runs it: a real `poller` process against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from poller.devtools.simulator import Simulator

pytestmark = pytest.mark.timeout(60)

POLLER = str(Path(sys.executable).with_name("poller"))
APP = "app-alpha"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """Run `poller ARGS` against a simulator; the working directory holds no .env."""

    async def go(sim: Simulator, *args: str, api_key: str = "sim-api-key", **settings: str) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env.update(
            POLLER_INFOBIP__BASE_URL=sim.base_url,
            POLLER_INFOBIP__API_KEY=api_key,
            POLLER_INFOBIP__BACKOFF_BASE="0.05",
            **settings,
        )
        proc = await asyncio.create_subprocess_exec(
            POLLER,
            *args,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    return go


async def test_create_configuration_then_a_second_is_refused_clearly(
    simulator: Simulator, run: Any
) -> None:
    created = await run(simulator, "infobip", "configurations", "create", APP)
    assert created.code == 0, created.err
    (key,) = [c["key"] for c in simulator.state()["applications"][APP]["configurations"]]
    assert created.out == f"created configuration {key} for {APP}\n"
    assert created.err == ""

    again = await run(simulator, "infobip", "configurations", "create", APP)
    assert again.code == 1
    assert again.out == ""
    (line,) = again.err_lines
    assert line.startswith(f"poller: error: {APP} already has a configuration ({key})")
    assert f"poller infobip configurations list {APP}" in line

    listed = await run(simulator, "infobip", "configurations", "list", APP, "--json")
    assert listed.json() == [{"key": key}]


async def test_pull_action_create_and_list(simulator: Simulator, run: Any) -> None:
    assert (await run(simulator, "infobip", "configurations", "create", APP)).code == 0
    created = await run(
        simulator, "infobip", "actions", "create", APP, "--callback-data", "tenant-7", "--json"
    )
    assert created.code == 0, created.err
    action = created.json()
    assert action["type"] == "PULL"
    assert action["callbackData"] == "tenant-7"

    table = await run(simulator, "infobip", "actions", "list", APP)
    assert table.code == 0, table.err
    header, row = table.out.splitlines()
    assert header.split() == ["ACTION", "KEY", "TYPE", "CALLBACK", "DATA", "FORWARD", "URL"]
    assert row.split() == [action["key"], "PULL", "tenant-7"]

    as_json = await run(simulator, "infobip", "actions", "list", APP, "--json")
    assert as_json.json() == [action]
    assert simulator.state()["applications"][APP]["routed"] is True


async def test_http_forward_action(simulator: Simulator, run: Any) -> None:
    assert (await run(simulator, "infobip", "configurations", "create", APP)).code == 0
    before = simulator.account.counters.requests
    refused = await run(simulator, "infobip", "actions", "create", APP, "--type", "HTTP_FORWARD")
    assert refused.code == 2
    assert refused.out == ""
    assert refused.err_lines == [
        "poller: error: --type HTTP_FORWARD needs --forward-url URL "
        "(where Infobip posts the messages)"
    ]
    # Refused before a single call to Infobip.
    assert simulator.account.counters.requests == before

    url = "https://hooks.example.com/mo"
    created = await run(
        simulator, "infobip", "actions", "create", APP, "--type", "HTTP_FORWARD",
        "--forward-url", url,
    )  # fmt: skip
    assert created.code == 0, created.err
    assert created.out.startswith("created HTTP_FORWARD action ")
    listed = (await run(simulator, "infobip", "actions", "list", APP, "--json")).json()
    assert [(a["type"], a["forwardUrl"]) for a in listed] == [("HTTP_FORWARD", url)]


async def test_actions_need_a_configuration_first(simulator: Simulator, run: Any) -> None:
    result = await run(simulator, "infobip", "actions", "list", "app-beta")
    assert result.code == 1
    (line,) = result.err_lines
    assert "app-beta has no configuration" in line
    assert "poller infobip configurations create app-beta" in line


async def test_pull_twice_never_repeats_and_out_writes_the_messages(
    configured_simulator: Simulator, run: Any, tmp_path: Path
) -> None:
    sim = configured_simulator
    injected = sim.inject(APP, 25, extra={"unknownField": {"kept": True}})
    first = await run(sim, "infobip", "pull", "--limit", "10", "--json")
    assert first.code == 0, first.err
    body = first.json()
    first_ids = [m["messageId"] for m in body["results"]]
    assert (body["messageCount"], body["pendingMessageCount"]) == (10, 15)
    assert body["results"][0]["unknownField"] == {"kept": True}

    out = tmp_path / "pulled.jsonl"
    second = await run(sim, "infobip", "pull", "--limit", "10", "--out", str(out))
    assert second.code == 0, second.err
    saved = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    second_ids = [m["messageId"] for m in saved]
    assert len(second_ids) == 10
    assert not set(first_ids) & set(second_ids)
    assert first_ids + second_ids == injected[:20]
    assert saved[0]["unknownField"] == {"kept": True}
    lines = second.out.splitlines()
    assert lines[0].split()[:4] == ["MESSAGE", "ID", "APPLICATION", "RECEIVED"]
    assert all(mid in second.out for mid in second_ids)
    assert lines[-1] == f"10 message(s), appended to {out}; 5 still pending"
    assert second.err == ""


async def test_pull_without_out_warns_that_messages_are_consumed(
    configured_simulator: Simulator, run: Any
) -> None:
    configured_simulator.inject(APP, 2)
    pulled = await run(configured_simulator, "infobip", "pull")
    assert pulled.code == 0
    (warning,) = pulled.err_lines
    assert warning.startswith("poller: warning: pulled messages are consumed")
    empty = await run(configured_simulator, "infobip", "pull")
    assert empty.out.splitlines() == ["(none)", "0 message(s); 0 still pending"]
    assert empty.err == ""


@pytest.mark.parametrize(
    "args",
    [("infobip", "pull"), ("infobip", "configurations", "list", APP)],
    ids=["pull", "configurations-list"],
)
async def test_wrong_api_key_is_one_line_without_the_key(
    args: tuple[str, ...], configured_simulator: Simulator, run: Any
) -> None:
    configured_simulator.inject(APP, 3)
    wrong = "wrong-key-5f4dcc3b5aa7"
    result = await run(configured_simulator, *args, api_key=wrong)
    assert result.code == 1
    assert result.out == ""
    (line,) = result.err_lines
    assert line.startswith("poller: error: Infobip refused the credentials (HTTP 401 UNAUTHORIZED")
    assert "POLLER_INFOBIP__API_KEY" in line
    assert wrong not in result.out + result.err
    assert configured_simulator.inbox_depth == 3


async def test_bootstrap_with_a_key_that_lacks_the_scope_names_the_scopes(
    simulator: Simulator, run: Any
) -> None:
    # Tried: `poller bootstrap` with a key Infobip answers 403 (it printed only
    # "HTTP 403 FORBIDDEN: Forbidden", no scope, unlike `poller once`).
    result = await run(
        simulator, "bootstrap", api_key="sim-forbidden-key", POLLER_INFOBIP__APPLICATIONS=APP
    )
    assert result.code == 1
    line = result.err_lines[-1]
    assert line.startswith("poller: error: HTTP 403 FORBIDDEN"), result.err
    for text in ("inbound-message:read", "mobile-app-messaging:manage", "BOOTSTRAP=false"):
        assert text in line, text


async def test_pull_json_escapes_c1_control_characters(
    configured_simulator: Simulator, run: Any
) -> None:
    # Tried: a message text with an 8-bit CSI (U+009B) and DEL: `--json` printed them raw
    # (json escapes only C0), and a terminal acts on an 8-bit CSI like on ESC [.
    text = "red\x9b31m\x7f \x1b[2J ünï"
    configured_simulator.inject_raw(
        [{"messageId": "c1", "applicationCode": APP, "text": text,
          "receivedAt": "2026-11-30T10:00:00.000+0000"}]
    )  # fmt: skip
    result = await run(configured_simulator, "infobip", "pull", "--json")
    assert result.code == 0, result.err
    assert not any(ch in result.out for ch in "\x1b\x7f\x9b")
    assert "ünï" in result.out
    assert result.json()["results"][0]["text"] == text


async def test_configuration_get_and_delete(simulator: Simulator, run: Any) -> None:
    key = (await run(simulator, "infobip", "configurations", "create", APP, "--json")).json()["key"]
    assert (await run(simulator, "infobip", "actions", "create", APP)).code == 0
    shown = await run(simulator, "infobip", "configurations", "get", APP, key)
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == f"configuration {key} of {APP}"
    assert "PULL" in shown.out
    deleted = await run(simulator, "infobip", "configurations", "delete", APP, key)
    assert deleted.out == f"deleted configuration {key} of {APP}\n"
    missing = await run(simulator, "infobip", "configurations", "get", APP, key)
    assert missing.code == 1
    (line,) = missing.err_lines
    assert "HTTP 404 6: Configuration does not exist" in line


@pytest.mark.parametrize(
    ("limit", "message"),
    [("0", "must be between 1 and 1000"), ("ten", "'ten' is not a whole number")],
)
async def test_bad_limit_is_a_usage_error(
    limit: str, message: str, simulator: Simulator, run: Any
) -> None:
    result = await run(simulator, "infobip", "pull", "--limit", limit)
    assert result.code == 2
    assert result.err_lines[-1] == f"poller infobip pull: error: argument --limit: {message}"
    assert simulator.account.counters.requests == 0


def test_config_show_masks_a_redis_password_in_the_url_in_both_forms() -> None:
    # Tried: a password as the URL's userinfo and as a ?password= query parameter.
    url = "redis://default:S3cretPass@redis.internal:6379/0?password=S3cretPass&db=1"
    env = {**os.environ, "POLLER_REDIS__URL": url}
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "poller", "config", "show", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "S3cretPass" not in done.stdout + done.stderr
        assert "redis.internal:6379" in done.stdout


async def test_a_garbled_pull_by_hand_keeps_the_bytes_in_a_file(
    configured_simulator: Simulator, run: Any, tmp_path: Path
) -> None:
    # Tried: `poller infobip pull` while Infobip answers with a body that is not JSON.
    configured_simulator.inject("app-alpha", 5)
    configured_simulator.add_fault("invalid_json", count=1, path="/push/1/inbox/reports")
    result = await run(configured_simulator, "infobip", "pull", "--limit", "10")
    assert result.code == 1
    saved = list(tmp_path.glob("infobip-pull-*.raw"))
    assert len(saved) == 1
    assert str(saved[0]) in result.err
    assert saved[0].read_bytes()


async def test_pull_out_keeps_a_message_with_half_an_emoji(
    configured_simulator: Simulator, run: Any, tmp_path: Path
) -> None:
    # Tried: `poller infobip pull --out` when one message's text ends in a lone surrogate.
    configured_simulator.inject("app-alpha", 2, extra={"text": "cut \ud83d"})
    out_file = tmp_path / "pulled.jsonl"
    result = await run(
        configured_simulator, "infobip", "pull", "--limit", "10", "--out", str(out_file), "--json"
    )
    assert result.code == 0, result.err
    lines = out_file.read_text().splitlines()
    assert len(lines) == 2
    assert {json.loads(line)["text"] for line in lines} == {"cut \ud83d"}
    assert len(result.json()["results"]) == 2
