"""An Infobip-compatible simulator of the mobile-app messaging API, for tests and demos.

Semantics it keeps from the documentation: a destructive pull (limit default 50, max 1000)
over the account-wide inbox that PULL actions route messages into, the HTTP forward method
(an HTTP_FORWARD action's forwardUrl receives POSTs of the application's messages), one
configuration per application (409 on a second), the four auth schemes, and a throttle of
10 requests/s.

Decisions where the documentation is silent: a configuration may hold several PULL actions
(no limit is documented; callbackData comes from the first); an application with both kinds
of action is forwarded (HTTP_FORWARD wins); a forward's body is the pull answer's envelope
({"results", "messageCount", "pendingMessageCount": 0}), batched, retried until a 2xx (see
forward.py); messages of an application without an action are counted as not routed and go
nowhere; the OAuth2 token endpoint and the /_sim/ control endpoints are not throttled.
"""

from poller.devtools.simulator.app import Simulator
from poller.devtools.simulator.faults import FORWARD as FORWARD_FAULT_KINDS
from poller.devtools.simulator.faults import KINDS as FAULT_KINDS
from poller.devtools.simulator.forward import ForwarderSettings
from poller.devtools.simulator.ledger import ForwardAttempt, ForwardRecord, Ledger, LedgerEntry
from poller.devtools.simulator.messages import format_received_at
from poller.devtools.simulator.state import ApiError

__all__ = [
    "FAULT_KINDS",
    "FORWARD_FAULT_KINDS",
    "ApiError",
    "ForwardAttempt",
    "ForwardRecord",
    "ForwarderSettings",
    "Ledger",
    "LedgerEntry",
    "Simulator",
    "format_received_at",
]
