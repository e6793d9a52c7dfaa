"""moonhowl.protocol.crypto: identities, pairing primitives, error types."""

from __future__ import annotations

import datetime
import hashlib
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from moonhowl.protocol import crypto
from moonhowl.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def identity() -> tuple[bytes, bytes]:
    return crypto.generate_identity("NVIDIA GameStream Client")


@pytest.fixture(scope="module")
def other_identity() -> tuple[bytes, bytes]:
    return crypto.generate_identity("Other", serial_zero=True)


def test_generate_identity_is_self_signed_rsa2048_sha256(identity: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = identity
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "NVIDIA GameStream Client"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    assert cert.serial_number != 0
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > datetime.timedelta(days=19 * 365)
    assert cert.not_valid_before_utc < datetime.datetime.now(datetime.UTC)


def test_generate_identity_serial_zero(other_identity: tuple[bytes, bytes]) -> None:
    # moonlight-embedded's certs have serial 0: loading them must work and stay quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = crypto.load_cert(other_identity[0])
        assert len(crypto.cert_signature(other_identity[0])) == 256
        assert crypto.rsa_signature_len(other_identity[0]) == 256
    # cryptography warns lazily, only when the serial itself is read.
    with pytest.warns(CryptographyDeprecationWarning):
        assert cert.serial_number == 0


def test_key_matches_cert(identity: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = identity
    sig = crypto.rsa_sign_sha256(key_pem, b"hello")
    assert len(sig) == 256
    assert crypto.rsa_verify_sha256(cert_pem, sig, b"hello")


def test_rsa_verify_rejects_wrong_data_signature_and_signer(
    identity: tuple[bytes, bytes], other_identity: tuple[bytes, bytes]
) -> None:
    cert_pem, key_pem = identity
    sig = crypto.rsa_sign_sha256(key_pem, b"hello")
    assert not crypto.rsa_verify_sha256(cert_pem, sig, b"hellO")
    assert not crypto.rsa_verify_sha256(cert_pem, sig[:-1] + bytes([sig[-1] ^ 1]), b"hello")
    assert not crypto.rsa_verify_sha256(cert_pem, b"short", b"hello")
    assert not crypto.rsa_verify_sha256(other_identity[0], sig, b"hello")


def test_rsa_sign_with_garbage_key_raises() -> None:
    with pytest.raises(crypto.CryptoError, match="private key"):
        crypto.rsa_sign_sha256(b"not a key", b"x")


def test_cert_signature_and_der(identity: tuple[bytes, bytes]) -> None:
    cert_pem = identity[0]
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert crypto.cert_signature(cert_pem) == cert.signature
    assert len(crypto.cert_signature(cert_pem)) == 256
    der = crypto.cert_der(cert_pem)
    assert x509.load_der_x509_certificate(der) == cert
    assert crypto.rsa_signature_len(cert_pem) == 256


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n" + b"A" * (70 * 1024) + b"\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "garbage", "bad-base64-body", "oversized"],
)
def test_load_cert_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(crypto.CertificateError):
        crypto.load_cert(bad)


def test_load_cert_rejects_truncated(identity: tuple[bytes, bytes]) -> None:
    truncated = identity[0][: len(identity[0]) // 2]
    with pytest.raises(crypto.CertificateError) as info:
        crypto.load_cert(truncated)
    assert isinstance(info.value, ProtocolError)
    assert info.value.status_code == 400
    assert info.value.message


def test_load_cert_rejects_non_bytes() -> None:
    with pytest.raises(crypto.CertificateError):
        crypto.load_cert("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]


def test_pin_key_known_answer() -> None:
    salt = bytes(range(16))
    expected = hashlib.sha256(salt + b"1234").digest()[:16]
    assert crypto.pin_key(salt, "1234") == expected
    assert len(expected) == 16
    assert crypto.pin_key(salt, "1235") != expected
    assert crypto.pin_key(bytes(16), "1234") != expected


@pytest.mark.parametrize("pin", ["", "123", "12345", "12a4", " 123", "\u0661\u0662\u0663\u0664"])
def test_pin_key_rejects_non_4_digit_pins(pin: str) -> None:
    with pytest.raises(ValueError, match="4 ASCII digits"):
        crypto.pin_key(bytes(16), pin)


def test_aes_ecb_fips197_vector() -> None:
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    plain = bytes.fromhex("00112233445566778899aabbccddeeff")
    cipher = bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")
    assert crypto.aes_ecb_encrypt(key, plain) == cipher
    assert crypto.aes_ecb_decrypt(key, cipher) == plain


def test_aes_ecb_is_blockwise_without_padding() -> None:
    key = bytes(16)
    data = b"A" * 16 + b"B" * 16 + b"A" * 16
    enc = crypto.aes_ecb_encrypt(key, data)
    assert len(enc) == 48  # no padding block
    assert enc[:16] == enc[32:] != enc[16:32]
    assert crypto.aes_ecb_decrypt(key, enc) == data
    assert crypto.aes_ecb_encrypt(key, b"") == b""


@pytest.mark.parametrize("length", [1, 15, 17, 47])
def test_aes_ecb_rejects_partial_blocks(length: int) -> None:
    with pytest.raises(crypto.CryptoError, match="multiple of 16"):
        crypto.aes_ecb_encrypt(bytes(16), bytes(length))
    with pytest.raises(ProtocolError, match="multiple of 16"):
        crypto.aes_ecb_decrypt(bytes(16), bytes(length))


def test_aes_ecb_rejects_bad_key() -> None:
    with pytest.raises(crypto.CryptoError, match="key length"):
        crypto.aes_ecb_encrypt(bytes(15), bytes(16))


def test_random_bytes() -> None:
    a, b = crypto.random_bytes(16), crypto.random_bytes(16)
    assert len(a) == 16 and a != b
