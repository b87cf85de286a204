"""Masking is linear in its input, whatever an attacker writes and however many secrets are
registered: time is compared between sizes within one run (CPU time, best of a few repeats),
never against a clock budget, so a busy machine slows both sides alike."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from poller import redact

T = TypeVar("T")
SIZES = [10_000, 31_623, 100_000, 316_228, 1_000_000]  # each step x3.16
STEP_RATIO = 5.0  # linear: 3.16; quadratic: 10
OVERALL_RATIO = 150.0  # 10 KB -> 1 MB, linear: 100

# Shapes that made a backtracking pattern scan the same characters again and again.
SHAPES = {
    "token repeated": "token",
    "name runs full of sensitive words": "a.token-",
    "password= repeated": "password=",
    "separators without names": "?&&&&&&&&&&",
    "secret parameters": "&token=",
    "schemes": "a://",
    "scheme starts without ://": "a.",
    "authority with colons, no @": "x://u:u:u:u:",
    "authority with @ only": "x://@@@@",
    "one run without separators": "a",
    "quoted names": "'pass",
    "digits and dots": "1.1.1+",
}


def adversarial(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def cpu_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    """The least CPU time of a few runs: preemption by other processes does not count."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return max(best, 1e-6)


def assert_linear(make: Callable[[int], T], mask: Callable[[T], object]) -> None:
    """``mask`` of ``make(size)`` takes time proportional to the size, 10 KB to 1 MB."""
    times: list[float] = []
    for size in SIZES:
        value = make(size)
        times.append(cpu_seconds(lambda: mask(value)))  # noqa: B023  # called before the next
        # Checked step by step: a quadratic path fails at the first step, in milliseconds,
        # instead of running for minutes at 1 MB.
        if len(times) > 1:
            assert times[-1] / times[-2] <= STEP_RATIO, list(zip(SIZES, times, strict=False))
    assert times[-1] / times[0] <= OVERALL_RATIO, times


@pytest.fixture
def registry() -> Iterator[None]:
    """Secrets registered by the test are forgotten after it."""
    saved, saved_fixed = redact._forms, redact._fixed
    redact._forms, redact._fixed = set(saved), set(saved_fixed)
    try:
        yield
    finally:
        redact._forms, redact._fixed = saved, saved_fixed
        redact._generation += 1  # the search built with the test's secrets is built again


@pytest.mark.parametrize("unit", SHAPES.values(), ids=SHAPES.keys())
def test_text_masking_is_linear(unit: str) -> None:
    assert_linear(lambda size: adversarial(unit, size), redact.text)


@pytest.mark.parametrize("unit", ["token", "a.", "&token="], ids=["token", "schemes", "params"])
def test_structured_fields_are_linear(unit: str) -> None:
    assert_linear(
        lambda size: {"a": [adversarial(unit, size)]},
        lambda value: redact.field("headers", value),
    )


def jwt_like(count: int) -> list[str]:
    # OAuth tokens of one issuer share their first characters: the worst case for a search
    # that tries every registered secret at every position of a text.
    header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    return [header + secrets.token_urlsafe(30) for _ in range(count)]


def test_many_registered_secrets_cost_no_more_than_a_few(registry: None) -> None:
    text = adversarial("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.", 200_000)
    data = text.encode()
    tokens = jwt_like(2_000)
    for token in tokens[:10]:
        redact.register(token)
    redact.text("warm")  # whatever is built once per registration, built outside the timing
    few = cpu_seconds(lambda: redact.text(text)), cpu_seconds(lambda: redact.data(data))
    for token in tokens[10:]:
        redact.register(token)
    redact.text("warm")
    many = cpu_seconds(lambda: redact.text(text)), cpu_seconds(lambda: redact.data(data))
    # 200 times the secrets: the same work per character.
    assert many[0] / few[0] <= 5, (few, many)
    assert many[1] / few[1] <= 5, (few, many)
    sample = f"a {tokens[1234]} b {tokens[5]}".encode()
    assert redact.data(sample) == b"a *** b ***"


def test_registered_secret_masking_is_linear(registry: None) -> None:
    for token in jwt_like(50):
        redact.register(token)
    unit = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    assert_linear(lambda size: adversarial(unit, size), redact.text)
    assert_linear(lambda size: adversarial(unit, size).encode(), redact.data)
