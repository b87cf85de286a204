"""Application codes that once shared a stream, or could, for the key and label tests."""

from __future__ import annotations

HUGE = "h" * 100_000


# Codes that once shared a stream, or could: braces and their old stand-ins, the name of the
# no-application stream, a 100 KB code, glob and separator characters, text beyond ASCII.
ODD_CODES = ["a{b", "a(b", "a_b", "a}b", "unknown", HUGE, "a*b", "a:dead", "a%7Bb", "ça va 🚆"]
# A forward application's code is configured (and a metric label): a 100 KB code is pulled only.
FORWARDED = [code for code in ODD_CODES if code != HUGE]
