"""Infobip's Mobile App Messaging API: configurations, actions and the pull inbox."""

from poller.infobip.client import InfobipClient, parse_pull
from poller.infobip.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConflictError,
    InfobipError,
    MalformedResponseError,
    NotFoundError,
    ResponseTooLargeError,
    ServerError,
    ThrottledError,
    TransportError,
    TruncatedResponseError,
)
from poller.infobip.models import Action, ActionRequest, Configuration, MoReport, PullResponse

__all__ = [
    "Action",
    "ActionRequest",
    "ApiError",
    "AuthError",
    "BadRequestError",
    "Configuration",
    "ConflictError",
    "InfobipClient",
    "InfobipError",
    "MalformedResponseError",
    "MoReport",
    "NotFoundError",
    "PullResponse",
    "ResponseTooLargeError",
    "ServerError",
    "ThrottledError",
    "TransportError",
    "TruncatedResponseError",
    "parse_pull",
]
