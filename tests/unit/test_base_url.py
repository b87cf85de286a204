"""A base URL with a path is refused when the settings are read, with what to write instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from poller.infobip.settings import InfobipSettings


@pytest.mark.parametrize(
    ("url", "shown", "meant"),
    [
        ("https://xyz.api.infobip.com/push/1", "/push/1", "https://xyz.api.infobip.com"),
        ("https://xyz.api.infobip.com/push/1/", "/push/1", "https://xyz.api.infobip.com"),
        ("http://127.0.0.1:8089/api", "/api", "http://127.0.0.1:8089"),
        ("https://xyz.api.infobip.com?api_key=k-123456", "a query", "https://xyz.api.infobip.com"),
    ],
)
def test_a_base_url_with_a_path_is_refused(url: str, shown: str, meant: str) -> None:
    """Tried: the push API's own prefix in the base URL (it used to end in "application
    app-alpha not found: HTTP 404" at the first call), with a trailing slash, on a port, and a
    query (not quoted: it may carry a key)."""
    with pytest.raises(ValidationError) as caught:
        InfobipSettings(base_url=url)
    (error,) = caught.value.errors()
    assert error["msg"] == (
        f"Value error, the base URL takes no path ({shown}): the poller adds the API paths"
        f" itself; write {meant}"
    )
    assert "k-123456" not in str(caught.value.errors(include_input=False))


@pytest.mark.parametrize("url", ["https://xyz.api.infobip.com", "https://xyz.api.infobip.com/"])
def test_the_base_url_alone_is_accepted(url: str) -> None:
    """Tried: the base URL, with and without a trailing slash."""
    assert InfobipSettings(base_url=url).base_url == "https://xyz.api.infobip.com"
