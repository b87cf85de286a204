"""TLS for every Redis connection: one set of options, turned into redis-py's ``ssl_*``
arguments in one place, so standalone, sentinel (sentinels, master and replicas) and cluster
(the cluster client and each per-node client) connections all verify and present the same
certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# URL schemes that mean TLS, and the plain scheme each one encrypts.
TLS_SCHEMES = {"rediss": "redis", "valkeys": "valkey"}
# The setting an operator uses for what redis-py also reads from a URL query parameter.
URL_QUERY_SETTINGS = {
    "ssl_ca_certs": "TLS_CA_FILE",
    "ssl_certfile": "TLS_CERT_FILE",
    "ssl_keyfile": "TLS_KEY_FILE",
    "ssl_password": "TLS_KEY_PASSWORD",  # nosec B105  # a setting's name, not a password
    "ssl_keyfile_password": "TLS_KEY_PASSWORD",  # nosec B105  # a setting's name, not a password
    "ssl_cert_reqs": "TLS_VERIFY",
    "ssl_check_hostname": "TLS_CHECK_HOSTNAME",
}
_SETTING = "POLLER_REDIS__"
# Handshake failures: what the operator should look at. These are not outages: retrying
# cannot help until a setting or the server's certificates change.
_REFUSALS = (
    (
        "certificate verify failed",
        f"the server's certificate is not trusted: {_SETTING}TLS_CA_FILE must hold the CA"
        " that signed it (and the certificate must name the host connected to, or set"
        f" {_SETTING}TLS_CHECK_HOSTNAME=false)",
    ),
    (
        "certificate required",
        f"the server wants a client certificate: set {_SETTING}TLS_CERT_FILE and"
        f" {_SETTING}TLS_KEY_FILE",
    ),
    (
        "alert handshake failure",
        "the server refused the handshake: it may want a client certificate (set"
        f" {_SETTING}TLS_CERT_FILE and {_SETTING}TLS_KEY_FILE) or other TLS versions",
    ),
    ("unknown ca", f"the server does not trust the client certificate ({_SETTING}TLS_CERT_FILE)"),
    ("bad certificate", f"the server refused the client certificate ({_SETTING}TLS_CERT_FILE)"),
    (
        "wrong version number",
        "the server does not speak TLS on this port (use its tls-port, or a redis:// URL)",
    ),
)
# A plain server reads a TLS handshake as the start of a command and waits for the rest.
_TLS_TIMEOUT = (
    "timeout connecting",
    "with TLS on, a port that does not speak TLS never answers the handshake: is it the"
    " server's tls-port?",
)


@dataclass(frozen=True)
class TLSOptions:
    """How Redis connections use TLS (present only when TLS is on)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    verify: bool = True
    check_hostname: bool = True
    sentinels: bool = True


def is_tls_url(url: str) -> bool:
    """True for a rediss:// (or valkeys://) URL."""
    return url.partition("://")[0].lower() in TLS_SCHEMES


def tls_url(url: str) -> str:
    """``url`` with a TLS scheme (redis:// becomes rediss://); other URLs unchanged."""
    scheme, sep, rest = url.partition("://")
    for secure, plain in TLS_SCHEMES.items():
        if scheme.lower() == plain:
            return f"{secure}{sep}{rest}"
    return url


def ssl_kwargs(tls: TLSOptions) -> dict[str, Any]:
    """redis-py's ``ssl_*`` arguments for ``tls`` (every client the sink builds gets these)."""
    kwargs: dict[str, Any] = {
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify and tls.check_hostname,
        "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
        "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
        "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
    }
    if tls.key_password is not None:
        kwargs["ssl_password"] = tls.key_password
    return kwargs


def check(tls: TLSOptions) -> list[str]:
    """Load the CA and the client certificate as a connection would; one line per problem.

    Run at start, so a CA file that is not PEM, a key that does not match its certificate or
    a wrong key password stops the process with the setting's name instead of failing every
    connection later."""
    problems = []
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                f"{_SETTING}TLS_CA_FILE ({tls.ca_file}): not a PEM CA certificate bundle"
                f" ({_reason(exc)})"
            )
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(
                str(tls.cert_file),
                str(tls.key_file) if tls.key_file else None,
                password=tls.key_password or None,
            )
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                f"{_SETTING}TLS_CERT_FILE ({tls.cert_file}) / {_SETTING}TLS_KEY_FILE"
                f" ({tls.key_file or 'in the certificate file'}): cannot load the client"
                f" certificate and its key: not PEM, a key that does not match the"
                f" certificate, or a wrong {_SETTING}TLS_KEY_PASSWORD ({_reason(exc)})"
            )
    return problems


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def hint(error_text: str, *, tls_on: bool) -> str | None:
    """What to check for a connection error that looks like a TLS problem."""
    lowered = error_text.lower()
    for needle, text in _REFUSALS:
        if needle in lowered:
            return text
    if tls_on and _TLS_TIMEOUT[0] in lowered:
        return _TLS_TIMEOUT[1]
    return None


def refused(error_text: str) -> bool:
    """True when a TLS handshake failed over certificates or protocol: settings to change,
    not an outage to wait out."""
    lowered = error_text.lower()
    return any(needle in lowered for needle, _text in _REFUSALS)


__all__ = ["TLSOptions", "check", "hint", "is_tls_url", "refused", "ssl_kwargs", "tls_url"]
