"""The client's long-lived certificate and key, kept on disk like a Moonlight client keeps them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from moonhowl.files import atomic_write
from moonhowl.protocol import crypto

logger = logging.getLogger(__name__)

__all__ = ["CLIENT_CN", "ClientIdentity"]

# Every real Moonlight client uses this subject CN (moonlight-qt identitymanager.cpp,
# moonlight-embedded mkcert.c), so hosts cannot tell clients apart by name.
CLIENT_CN = "NVIDIA GameStream Client"
CERT_FILE = "client.pem"
KEY_FILE = "client.key"


def _same_key(cert_pem: bytes, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return crypto.load_cert(cert_pem).public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@dataclass(frozen=True)
class ClientIdentity:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def generate(cls, *, serial_zero: bool = False) -> ClientIdentity:
        """A fresh identity; ``serial_zero`` imitates moonlight-embedded's certificates."""
        return cls(*crypto.generate_identity(CLIENT_CN, serial_zero=serial_zero))

    @classmethod
    def load_or_create(cls, directory: Path, serial_zero: bool = False) -> ClientIdentity:
        """Load ``client.pem``/``client.key`` from ``directory``, creating both if either is missing.

        Unreadable or mismatched files raise instead of being replaced: a new identity would silently
        unpair this client from every host.
        """
        directory = Path(directory)
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if cert_path.is_file() and key_path.is_file():
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            try:
                matches = _same_key(cert_pem, key_pem)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"unusable client identity in {directory}: {exc}") from exc
            if not matches:
                raise ValueError(f"{cert_path} does not belong to {key_path}")
            return cls(cert_pem, key_pem)

        identity = cls.generate(serial_zero=serial_zero)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Drop a lone old cert first and write the key before the cert: "both files present" then
        # always means a matching pair, whatever point a crash interrupts us at.
        cert_path.unlink(missing_ok=True)
        atomic_write(key_path, identity.key_pem, 0o600)
        atomic_write(cert_path, identity.cert_pem, 0o644)
        logger.info("created client identity in %s", directory)
        return identity
