"""Retry delays: exponential, capped, with jitter (the one rule every retry loop uses)."""

from __future__ import annotations

import random


def delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry ``attempt`` (0 for the first): the ceiling ``base * 2**attempt``
    (at most ``cap``), half of it fixed and half random, so processes that failed together
    do not retry together and no wait is close to zero."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))  # nosec B311  # retry jitter: no security meaning
