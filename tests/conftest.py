"""Shared fixtures: a real Redis/Valkey server and the real Infobip simulator, on loopback."""

pytest_plugins = ["tests.fixtures_sim", "tests.fixtures_redis"]
