"""Infobip credentials: a missing one is named by its setting; auth objects hide their secret."""

from __future__ import annotations

import pytest

from poller.infobip.auth import HeaderAuth, OAuth2ClientCredentials
from poller.infobip.client import build_auth
from poller.settings import InfobipSettings, SettingsError


@pytest.mark.parametrize(
    ("auth", "missing"),
    [("app", ["api_key"]), ("basic", ["username", "password"]), ("ibsso", ["ibsso_token"]),
     ("oauth2", ["client_id", "client_secret"])],
)  # fmt: skip
def test_missing_credentials_name_each_setting(auth: str, missing: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        build_auth(InfobipSettings(auth=auth))  # type: ignore[arg-type]
    assert caught.value.lines == [
        f"infobip.{name} (POLLER_INFOBIP__{name.upper()}): needed for auth={auth}"
        for name in missing
    ]


def test_auth_objects_do_not_show_their_secret() -> None:
    header = HeaderAuth.app("key-1234567")
    oauth = OAuth2ClientCredentials("http://127.0.0.1:1/t", "client", "secret-7654321")
    assert "key-1234567" not in repr(header)
    assert "secret-7654321" not in repr(oauth)
    assert "client" in repr(oauth)
