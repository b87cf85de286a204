"""Redis TLS settings that cannot work are refused before anything connects, naming the setting
and never echoing a key password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poller.settings import SettingsError, load_settings
from poller.sink.redis.tls import TLSOptions
from tests.fixtures_redis import TLSFiles
from tests.support.tls import encrypted_key


def _load(**redis: Any) -> None:
    load_settings(redis=redis)


def test_tls_settings_that_cannot_work_are_refused_naming_the_setting(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    # Tried: each way an operator can get the TLS settings wrong; every one is a settings
    # error naming the variable to fix, before anything connects.
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    missing = tmp_path / "missing.pem"
    rediss = "rediss://127.0.0.1:6380/0"
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"url": rediss, "tls_ca_file": missing},
            f"POLLER_REDIS__TLS_CA_FILE: cannot read {missing}",
        ),
        (
            {"url": rediss, "tls_key_file": tls_files.client_key},
            "TLS_KEY_FILE needs POLLER_REDIS__TLS_CERT_FILE",
        ),
        ({"url": "unix:///run/redis.sock", "tls": True}, "TLS over a unix:// socket"),
        ({"url": "redis://h:6379/0", "tls_ca_file": tls_files.ca}, "set but TLS is off"),
        ({"url": "redis://h:6379/0", "tls_sentinels": True}, "TLS_SENTINELS set but TLS is off"),
        ({"url": rediss, "tls": False}, "POLLER_REDIS__TLS=false contradicts the rediss:// URL"),
        (
            {"url": rediss, "tls_ca_file": not_pem},
            "TLS_CA_FILE (" + str(not_pem) + "): not a PEM CA",
        ),
        (
            # The server's key does not belong to the client certificate.
            {
                "url": rediss,
                "tls_cert_file": tls_files.client_cert,
                "tls_key_file": tls_files.server_key,
            },
            "cannot load the client certificate and its key",
        ),
        (
            {
                "url": rediss,
                "mode": "cluster",
                "tls_cert_file": tls_files.client_cert,
                "tls_key_password": "pw",
            },
            "TLS_KEY_PASSWORD is not supported with mode=cluster",
        ),
    ]
    for redis, expected in cases:
        with pytest.raises(SettingsError) as caught:
            _load(**redis)
        assert expected in str(caught.value), (redis, str(caught.value))


def test_tls_options_in_the_url_are_refused_without_echoing_them() -> None:
    # Tried: the options redis-py reads from a URL query; settings are the one way now, and
    # the key password given there must not show up in the error.
    url = "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_password=hunter2-url-secret"
    with pytest.raises(SettingsError) as caught:
        _load(url=url)
    text = str(caught.value)
    assert "ssl_cert_reqs in POLLER_REDIS__URL: set POLLER_REDIS__TLS_VERIFY instead" in text
    assert "ssl_password in POLLER_REDIS__URL: set POLLER_REDIS__TLS_KEY_PASSWORD" in text
    assert "hunter2-url-secret" not in text


def test_a_wrong_key_password_is_a_settings_error_that_does_not_print_it(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    key = encrypted_key(tls_files, tmp_path, "right-password-123")
    redis = {"url": "rediss://127.0.0.1:6380/0", "tls_cert_file": tls_files.client_cert}
    with pytest.raises(SettingsError) as caught:
        _load(**redis, tls_key_file=key, tls_key_password="wrong-password-456")
    assert "TLS_KEY_PASSWORD" in str(caught.value)
    assert "wrong-password-456" not in str(caught.value)
    # The right one loads, and stays out of the options' repr.
    _load(**redis, tls_key_file=key, tls_key_password="right-password-123")
    assert "right-password" not in repr(TLSOptions(key_password="right-password-123"))
