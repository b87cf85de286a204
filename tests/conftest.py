"""Shared fixtures: a real Redis/Valkey server and the real Infobip simulator, on loopback."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures_sim", "tests.fixtures_redis"]

# Property tests run the same examples on every machine (CI failures reproduce), keep no
# example database in the work tree, and stay fast on a loaded 2-core machine.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")
