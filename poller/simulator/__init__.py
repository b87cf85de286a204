"""An Infobip-compatible simulator of the mobile-app messaging pull API, for tests and demos.

Semantics it keeps from the documentation: a destructive pull (limit default 50, max 1000)
over the account-wide inbox that PULL actions route messages into, one configuration per
application (409 on a second), the four auth schemes, and a throttle of 10 requests/s.

Decisions where the documentation is silent: a configuration may hold several PULL actions
(no limit is documented; callbackData comes from the first); messages of an application
without a PULL action are counted as not routed and never reach the inbox; the OAuth2 token
endpoint and the /_sim/ control endpoints are not throttled.
"""

from poller.simulator.app import Simulator
from poller.simulator.faults import KINDS as FAULT_KINDS
from poller.simulator.ledger import Ledger, LedgerEntry
from poller.simulator.messages import format_received_at
from poller.simulator.state import ApiError

__all__ = ["FAULT_KINDS", "ApiError", "Ledger", "LedgerEntry", "Simulator", "format_received_at"]
