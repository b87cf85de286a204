"""TLS for tests: redis settings that trust the test CA, and the client key encrypted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.fixtures_redis import TLSFiles


def tls_settings(files: TLSFiles, *, client_cert: bool = False, **more: Any) -> dict[str, Any]:
    """The redis settings that trust the test CA (and present the client certificate)."""
    settings: dict[str, Any] = {"tls_ca_file": files.ca, **more}
    if client_cert:
        settings |= {"tls_cert_file": files.client_cert, "tls_key_file": files.client_key}
    return settings


def encrypted_key(files: TLSFiles, folder: Path, password: str) -> Path:
    """The client key, encrypted with ``password``."""
    key = serialization.load_pem_private_key(files.client_key.read_bytes(), password=None)
    path = folder / "client-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return path
