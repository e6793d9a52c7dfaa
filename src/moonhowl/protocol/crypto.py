"""Sans-IO crypto helpers for GameStream pairing (and, later, streaming).

Everything here works on PEM/DER bytes so that callers never need to touch ``cryptography`` objects.
The primitives are the ones moonlight-common-c / moonlight-qt (``nvpairingmanager.cpp``) and Sunshine
(``nvhttp.cpp``, ``crypto.cpp``) use for pairing with an appversion 7.x host: SHA-256, AES-128-ECB
without padding and RSA PKCS#1 v1.5 signatures.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import secrets
import warnings
from collections.abc import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from moonhowl.protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

__all__ = [
    "AES_BLOCK",
    "CertificateError",
    "CryptoError",
    "aes_ecb_decrypt",
    "aes_ecb_encrypt",
    "cert_der",
    "cert_signature",
    "generate_identity",
    "load_cert",
    "pin_key",
    "random_bytes",
    "rsa_sign_sha256",
    "rsa_signature_len",
    "rsa_verify_sha256",
]

AES_BLOCK = 16
# Sunshine creates its certificates with 20 years of validity; real clients never check the dates,
# but OpenSSL does when we pin a certificate as a trust anchor, so keep them long-lived.
_VALIDITY = datetime.timedelta(days=20 * 365)
# Clock skew between host and client must not make a fresh certificate "not yet valid".
_BACKDATE = datetime.timedelta(days=1)
_MAX_PEM = 64 * 1024


class CryptoError(ProtocolError):
    """Malformed input to a crypto primitive (block size, key material)."""


class CertificateError(CryptoError):
    """Bytes that are not a PEM X.509 certificate."""


@contextlib.contextmanager
def _serial_zero_tolerated() -> Iterator[None]:
    # moonlight-embedded's client certificates have serial 0; cryptography 48 still loads them but
    # warns that a future release will refuse. They are real clients, so accept them quietly.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parsed a serial number", CryptographyDeprecationWarning)
        yield


def generate_identity(common_name: str, *, serial_zero: bool = False) -> tuple[bytes, bytes]:
    """Create a self-signed RSA-2048 / SHA-256 certificate.

    Returns ``(cert_pem, key_pem)``, the key as unencrypted PKCS#8. ``serial_zero`` imitates
    moonlight-embedded, whose client certificates all have serial number 0.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    # The constructor, unlike .serial_number(), does not refuse 0 (RFC 5280 wants positive serials).
    builder = x509.CertificateBuilder(
        issuer_name=name,
        subject_name=name,
        public_key=key.public_key(),
        serial_number=0 if serial_zero else x509.random_serial_number(),
        not_valid_before=now - _BACKDATE,
        not_valid_after=now + _VALIDITY,
    )
    with _serial_zero_tolerated():
        cert = builder.sign(key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def load_cert(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; garbage, truncated or oversized input raises CertificateError."""
    if not isinstance(pem, bytes | bytearray):
        raise CertificateError("certificate must be bytes")
    if len(pem) > _MAX_PEM:
        raise CertificateError(f"certificate PEM too large ({len(pem)} bytes)")
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CertificateError("not a PEM certificate (no BEGIN CERTIFICATE line)")
    try:
        with _serial_zero_tolerated():
            return x509.load_pem_x509_certificate(bytes(pem))
    except ValueError as exc:
        raise CertificateError(f"unreadable PEM certificate: {exc}") from None


def cert_signature(cert_pem: bytes) -> bytes:
    """The certificate's raw signature bytes (OpenSSL ``X509_get0_signature``), hashed into pairing."""
    return load_cert(cert_pem).signature


def cert_der(cert_pem: bytes) -> bytes:
    """DER encoding of a PEM certificate (for exact-match comparisons of TLS peer certificates)."""
    return load_cert(cert_pem).public_bytes(serialization.Encoding.DER)


def pin_key(salt: bytes, pin: str) -> bytes:
    """AES-128 key for pairing: ``SHA256(salt || PIN as ASCII)[:16]``.

    Moonlight clients show a 4-digit PIN; anything else is a programming error (ValueError).
    """
    if len(pin) != 4 or not (pin.isascii() and pin.isdigit()):
        raise ValueError("PIN must be exactly 4 ASCII digits")
    return hashlib.sha256(bytes(salt) + pin.encode("ascii")).digest()[:16]


def _ecb(key: bytes, data: bytes) -> Cipher[modes.ECB]:
    if len(data) % AES_BLOCK:
        raise CryptoError(f"AES-ECB data length {len(data)} is not a multiple of {AES_BLOCK}")
    if len(key) not in (16, 24, 32):
        raise CryptoError(f"AES key length {len(key)} is invalid")
    # ECB is what the protocol prescribes (Sunshine crypto::cipher::ecb_t, padding disabled).
    return Cipher(algorithms.AES(bytes(key)), modes.ECB())


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB without padding; ``data`` must be a multiple of 16 bytes (else CryptoError)."""
    enc = _ecb(key, data).encryptor()
    return enc.update(bytes(data)) + enc.finalize()


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB without padding; ``data`` must be a multiple of 16 bytes (else CryptoError)."""
    dec = _ecb(key, data).decryptor()
    return dec.update(bytes(data)) + dec.finalize()


def _load_rsa_key(key_pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(bytes(key_pem), password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"unreadable private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError("private key is not RSA")
    return key


def rsa_sign_sha256(key_pem: bytes, data: bytes) -> bytes:
    """RSA PKCS#1 v1.5 signature with SHA-256 (Sunshine ``crypto::sign256``)."""
    return _load_rsa_key(key_pem).sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())


def rsa_verify_sha256(cert_pem: bytes, sig: bytes, data: bytes) -> bool:
    """Check an RSA PKCS#1 v1.5 / SHA-256 signature with the certificate's public key.

    A bad signature (or a non-RSA key) gives False; an unreadable certificate raises CertificateError.
    """
    public_key = load_cert(cert_pem).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        logger.debug("signature check with a non-RSA certificate")
        return False
    try:
        public_key.verify(bytes(sig), bytes(data), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def rsa_signature_len(cert_pem: bytes) -> int:
    """Length of the RSA signatures the certificate's key makes (256 for RSA-2048)."""
    public_key = load_cert(cert_pem).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CertificateError("certificate key is not RSA")
    return (public_key.key_size + 7) // 8


def random_bytes(n: int) -> bytes:
    """Cryptographically secure random bytes (challenges, secrets, salts)."""
    return secrets.token_bytes(n)
