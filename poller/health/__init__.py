"""Health: ``readiness`` (what the daemon knows of its own state, asked of its owners),
``server`` (/livez, /readyz, /metrics over HTTP) and ``probe`` (the client `poller check`
uses, which needs no server code)."""
