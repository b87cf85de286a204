"""The parse-off-the-loop rule: work on a body big enough to hold the event loop runs in a
thread, so probes, other pulls and other requests go on meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Bodies of this many bytes or more are read in a thread (a 1,000-message pull answer is
# about 0.5 MB; reading one on the loop takes a few milliseconds).
IN_THREAD = 256 * 1024


async def run(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args)``: in a thread when its input is ``size`` bytes or more, else here."""
    if size >= IN_THREAD:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)
