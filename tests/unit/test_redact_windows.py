"""Masking searches a long value window by window (so the thread that masks a 4 MiB body
lets the event loop run between windows): a secret across any window edge is masked all
the same, in text and in bytes, whatever its characters."""

from __future__ import annotations

import pytest

from poller import redact

WINDOW = 64 * 1024
SECRET = "wïndöw-sécret-€-0123456789abcdef"  # multi-byte characters: bytes longer than text


@pytest.fixture(autouse=True, scope="module")
def registered() -> None:
    redact.register(SECRET)


@pytest.mark.parametrize("window", [1, 2, 7])
@pytest.mark.parametrize("offset", [-len(SECRET.encode()), -17, -9, -1, 0, 1])
def test_a_secret_across_a_window_edge_is_masked(window: int, offset: int) -> None:
    """Tried: the secret starting from a whole UTF-8 length before an edge to just after it,
    at the first, second and seventh edge; twice in a row, and at the very end."""
    before = "a" * (window * WINDOW + offset)
    value = before + SECRET + SECRET + "b" * 10
    masked = redact.text(value)
    assert "0123456789" not in masked
    assert masked == before + redact.REDACTED * 2 + "b" * 10  # adjacent: one mask each
    raw = redact.data(value.encode())
    assert b"0123456789" not in raw
    assert raw == (before + redact.REDACTED * 2 + "b" * 10).encode()
    assert redact.data((before + SECRET).encode()) == (before + redact.REDACTED).encode()
