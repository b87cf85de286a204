"""Typed Infobip bodies. Unknown fields are kept (extra="allow"), never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ActionType = Literal["PULL", "HTTP_FORWARD"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Configuration(_Open):
    """A configuration: the container of an application's actions."""

    key: str


class ConfigurationList(_Open):
    """Body of list-all-configurations."""

    configurations: list[Configuration]


class Action(_Open):
    """An action on a configuration (PULL or HTTP_FORWARD; other types are kept as text)."""

    key: str
    type: str
    callback_data: str | None = Field(None, alias="callbackData")
    forward_url: str | None = Field(None, alias="forwardUrl")


class ActionList(_Open):
    """Body of list-all-actions."""

    actions: list[Action]


class ActionRequest(BaseModel):
    """Body of create-new-action."""

    model_config = ConfigDict(populate_by_name=True)

    type: ActionType
    callback_data: str | None = Field(None, alias="callbackData")
    forward_url: str | None = Field(None, alias="forwardUrl")

    def body(self) -> dict[str, Any]:
        """The JSON body Infobip expects (absent fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def matches(self, action: Action) -> bool:
        """True when an existing action is what this request would create."""
        return (
            action.type == self.type
            and action.callback_data == self.callback_data
            and action.forward_url == self.forward_url
        )


class MoReport(_Open):
    """One inbound message (MoReportResult). Only the fields the poller routes on are typed."""

    message_id: str = Field(alias="messageId", min_length=1)
    application_code: str = Field(alias="applicationCode", min_length=1)
    received_at: str | None = Field(None, alias="receivedAt")


@dataclass
class PullResponse:
    """A pull: the raw body as received, each result's bytes as sent, and the routing fields
    of each (``messageId``, ``applicationCode``, ``receivedAt``; an item that is not an
    object is there whole)."""

    body: bytes
    items: list[bytes]
    routes: list[Any]
    message_count: int
    pending_message_count: int | None  # None: the answer held items but no readable count

    @property
    def results(self) -> list[Any]:
        """Every result item decoded whole (for people and tools; the pipeline keeps bytes)."""
        return [json.loads(item) for item in self.items]
