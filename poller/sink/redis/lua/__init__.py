"""Lua scripts run on the Redis server (the sink's writes, the consumer helper's dead letters),
loaded with importlib.resources and called by their SHA."""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError


class Script:
    """EVALSHA with a reload on NOSCRIPT (after SCRIPT FLUSH, a restart or a failover)."""

    def __init__(self, name: str, *, libraries: Sequence[str] = ()):
        # A script runs alone on the server: the libraries it uses go in front of its source.
        files = importlib.resources.files(__name__)
        self.source = b"\n".join(files.joinpath(n).read_bytes() for n in (*libraries, name))
        # Redis names a script by the SHA1 of its source (EVALSHA): an identifier, not security.
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    async def __call__(
        self, client: Redis | RedisCluster, keys: Sequence[str], args: Sequence[str | bytes]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)
