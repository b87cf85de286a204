"""infobip-push-poller: Infobip mobile-app inbound messages into Redis streams, none lost."""

__version__ = "0.1.0"
