"""JSON Schemas of the stream entries the poller writes (for the streams' readers).

``infobip.push.mo.v1.json``: a message; ``infobip.push.mo.dead.v1.json``: a dead letter.
Each entry is a Redis stream entry, a flat map of field names to strings.
"""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

MO = "infobip.push.mo.v1"
DEAD = "infobip.push.mo.dead.v1"


def load(name: str) -> dict[str, Any]:
    """The schema named ``name`` (``infobip.push.mo.v1`` or ``infobip.push.mo.dead.v1``)."""
    text = importlib.resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
