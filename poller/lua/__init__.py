"""Lua scripts run by the Redis sink (loaded with importlib.resources)."""
