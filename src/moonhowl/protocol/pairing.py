"""Sans-IO GameStream pairing, host side (ServerPairing) and client side (ClientPairing).

The five phases and byte layouts follow Sunshine ``nvhttp.cpp`` (``getservercert``,
``clientchallenge``, ``serverchallengeresp``, ``clientpairingsecret``, ``pairchallenge``) and
moonlight-qt ``nvpairingmanager.cpp``, for appversion 7.x hosts (SHA-256 everywhere):

1. ``phrase=getservercert&salt&clientcert`` -> ``plaincert`` (held until the user types the PIN)
2. ``clientchallenge = ECB(K, c16)`` -> ``challengeresponse = ECB(K, SHA256(c16 || Sig(servercert)
   || serversecret) || serverchallenge)``
3. ``serverchallengeresp = ECB(K, SHA256(serverchallenge || Sig(clientcert) || clientsecret))``
   -> ``pairingsecret = serversecret || RSA-SHA256(serversecret)``
4. ``clientpairingsecret = clientsecret || RSA-SHA256(clientsecret)`` -> ``paired`` 1 or 0
5. ``phrase=pairchallenge`` over HTTPS with the client certificate -> ``paired=1``

``K = SHA256(salt || PIN)[:16]``. A wrong PIN is caught by the client in phase 3 (the server's hash
does not match); the host can only tell in phase 4.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from moonhowl.protocol import crypto
from moonhowl.protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

__all__ = [
    "DEVICE_NAME", "UNIQUE_ID", "ClientPairing", "ClientState", "PairPhase", "PairRequest",
    "PairingError", "ServerPairing", "ServerState", "pairchallenge_reply",
]

# Every Moonlight client sends this uniqueid, so it identifies nobody (moonlight-common-c, -qt).
UNIQUE_ID = "0123456789ABCDEF"
DEVICE_NAME = "roth"
SALT_LEN = 16
CHALLENGE_LEN = 16
SECRET_LEN = 16
HASH_LEN = 32  # SHA-256 for appversion >= 7
RSA2048_SIG_LEN = 256
MAX_CERT_HEX = 16 * 1024
MAX_FIELD_LEN = 1024


class PairingError(ProtocolError):
    """A pairing request, reply or step that cannot be accepted."""


class PairPhase(enum.Enum):
    """The five requests of a pairing; the value is the phrase or the query key that marks it."""

    GETSERVERCERT = "getservercert"
    CLIENTCHALLENGE = "clientchallenge"
    SERVERCHALLENGERESP = "serverchallengeresp"
    CLIENTPAIRINGSECRET = "clientpairingsecret"
    PAIRCHALLENGE = "pairchallenge"


_FIELD_PHASES = (PairPhase.CLIENTCHALLENGE, PairPhase.SERVERCHALLENGERESP, PairPhase.CLIENTPAIRINGSECRET)
_KNOWN_KEYS = frozenset(
    {"uniqueid", "phrase", "salt", "clientcert", "devicename"} | {p.value for p in _FIELD_PHASES}
)


def _unhex(name: str, value: str, length: int | None = None) -> bytes:
    try:
        raw = binascii.unhexlify(value)  # accepts upper and lower case, rejects spaces
    except ValueError:
        raise PairingError(f"{name} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise PairingError(f"{name} must be {length} bytes, got {len(raw)}")
    return raw


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


@dataclass(frozen=True)
class PairRequest:
    """One decoded ``GET /pair`` query; payload fields not used by the phase stay empty."""

    phase: PairPhase
    unique_id: str
    device_name: str = ""
    salt: bytes = b""
    client_cert_pem: bytes = b""
    client_challenge: bytes = b""
    server_challenge_resp: bytes = b""
    client_pairing_secret: bytes = b""

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]]) -> PairRequest:
        """Decode the query given as ``(key, value)`` pairs so that duplicates can be refused."""
        args: dict[str, str] = {}
        for key, value in items:
            if key not in _KNOWN_KEYS:
                continue  # uuid, updateState, ... carry nothing we need
            if key in args:
                raise PairingError(f"duplicated field {key!r}")
            if key == "clientcert" and len(value) > MAX_CERT_HEX:
                raise PairingError(f"clientcert too large ({len(value)} hex chars, limit {MAX_CERT_HEX})")
            if key != "clientcert" and len(value) > MAX_FIELD_LEN:
                raise PairingError(f"field {key!r} too large ({len(value)} chars, limit {MAX_FIELD_LEN})")
            args[key] = value

        unique_id = args.get("uniqueid", "")
        if not unique_id:
            raise PairingError("missing uniqueid")
        phase = _phase_of(args)
        device_name = args.get("devicename", "")
        if phase is PairPhase.GETSERVERCERT:
            if "salt" not in args:
                raise PairingError("getservercert without salt")
            if "clientcert" not in args:
                raise PairingError("getservercert without clientcert")
            salt = _unhex("salt", args["salt"], SALT_LEN)
            cert_pem = _unhex("clientcert", args["clientcert"])
            try:
                crypto.load_cert(cert_pem)
            except crypto.CertificateError as exc:
                raise PairingError(f"clientcert is not a PEM X.509 certificate: {exc.message}") from None
            return cls(phase, unique_id, device_name, salt=salt, client_cert_pem=cert_pem)
        if phase is PairPhase.CLIENTCHALLENGE:
            data = _unhex("clientchallenge", args[phase.value], CHALLENGE_LEN)
            return cls(phase, unique_id, device_name, client_challenge=data)
        if phase is PairPhase.SERVERCHALLENGERESP:
            data = _unhex("serverchallengeresp", args[phase.value], HASH_LEN)
            return cls(phase, unique_id, device_name, server_challenge_resp=data)
        if phase is PairPhase.CLIENTPAIRINGSECRET:
            # Real clients sign with RSA-2048 keys (moonlight-common-c, moonlight-qt).
            data = _unhex("clientpairingsecret", args[phase.value], SECRET_LEN + RSA2048_SIG_LEN)
            return cls(phase, unique_id, device_name, client_pairing_secret=data)
        return cls(phase, unique_id, device_name)


def _phase_of(args: Mapping[str, str]) -> PairPhase:
    # Sunshine looks at `phrase` first, then at which payload key is present; phases 2-4 carry no phrase.
    present = [p for p in _FIELD_PHASES if p.value in args]
    phrase = args.get("phrase")
    if phrase is not None:
        if present:
            raise PairingError(f"phrase={phrase!r} combined with {present[0].value}")
        if phrase == PairPhase.GETSERVERCERT.value:
            return PairPhase.GETSERVERCERT
        if phrase == PairPhase.PAIRCHALLENGE.value:
            return PairPhase.PAIRCHALLENGE
        raise PairingError(f"unknown phrase {phrase!r}")
    if not present:
        raise PairingError(
            "missing phrase (and none of clientchallenge, serverchallengeresp, clientpairingsecret)"
        )
    if len(present) > 1:
        raise PairingError("ambiguous pairing request: " + " and ".join(p.value for p in present))
    return present[0]


def pairchallenge_reply(client_is_paired: bool) -> dict[str, str]:
    """Phase 5 reply; the HTTPS layer knows whether the TLS client certificate is a paired one."""
    return {"paired": "1" if client_is_paired else "0"}


# --------------------------------------------------------------------------------------- host side


class ServerState(enum.Enum):
    """Where a host-side pairing stands; PAIRED and REJECTED are final."""

    WAITING_FOR_PIN = "waiting for PIN"
    PIN_ENTERED = "PIN entered"
    CERT_SENT = "server cert sent"
    CHALLENGE_SENT = "challenge response sent"
    SECRET_SENT = "pairing secret sent"
    PAIRED = "paired"
    REJECTED = "rejected"


class _Event(enum.Enum):
    PIN = "PIN entry"
    GETSERVERCERT = "getservercert"
    CLIENTCHALLENGE = "clientchallenge"
    SERVERCHALLENGERESP = "serverchallengeresp"
    SECRET_OK = "clientpairingsecret"
    SECRET_BAD = "clientpairingsecret (rejected)"


_S = ServerState
_TRANSITIONS: dict[tuple[ServerState, _Event], ServerState] = {
    (_S.WAITING_FOR_PIN, _Event.PIN): _S.PIN_ENTERED,
    (_S.PIN_ENTERED, _Event.GETSERVERCERT): _S.CERT_SENT,
    (_S.CERT_SENT, _Event.CLIENTCHALLENGE): _S.CHALLENGE_SENT,
    (_S.CHALLENGE_SENT, _Event.SERVERCHALLENGERESP): _S.SECRET_SENT,
    (_S.SECRET_SENT, _Event.SECRET_OK): _S.PAIRED,
    (_S.SECRET_SENT, _Event.SECRET_BAD): _S.REJECTED,
}


class ServerPairing:
    """One pairing attempt on the host, driven by the HTTP layer one phase at a time.

    Illegal orders raise PairingError and leave the state untouched (h11-style transition table).
    """

    def __init__(self, server_cert_pem: bytes, server_key_pem: bytes, salt: bytes, client_cert_pem: bytes):
        if len(salt) != SALT_LEN:
            raise PairingError(f"salt must be {SALT_LEN} bytes, got {len(salt)}")
        self._server_cert_pem = bytes(server_cert_pem)
        self._server_cert_sig = crypto.cert_signature(server_cert_pem)
        self._client_cert_pem = bytes(client_cert_pem)
        self._client_cert_sig = crypto.cert_signature(client_cert_pem)
        self._client_sig_len = crypto.rsa_signature_len(client_cert_pem)
        self._salt = bytes(salt)
        self._server_secret = crypto.random_bytes(SECRET_LEN)
        self._server_challenge = crypto.random_bytes(CHALLENGE_LEN)
        # Signing up front also proves the key is usable before a user is asked for a PIN.
        self._secret_sig = crypto.rsa_sign_sha256(server_key_pem, self._server_secret)
        self._key: bytes | None = None
        self._client_hash = b""
        self._state = ServerState.WAITING_FOR_PIN

    @classmethod
    def from_request(
        cls, request: PairRequest, server_cert_pem: bytes, server_key_pem: bytes
    ) -> ServerPairing:
        if request.phase is not PairPhase.GETSERVERCERT:
            raise PairingError(f"a pairing starts with getservercert, not {request.phase.value}")
        return cls(server_cert_pem, server_key_pem, request.salt, request.client_cert_pem)

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def verified(self) -> bool:
        return self._state is ServerState.PAIRED

    @property
    def client_cert_pem(self) -> bytes:
        return self._client_cert_pem

    def _check(self, event: _Event) -> ServerState:
        new = _TRANSITIONS.get((self._state, event))
        if new is None:
            expected = [e.value for (s, e) in _TRANSITIONS if s is self._state]
            raise PairingError(
                f"phase {event.value} out of order (expected {expected[0] if expected else 'nothing'}, "
                f"state: {self._state.value})"
            )
        return new

    def set_pin(self, pin: str) -> None:
        """The PIN the user typed on the host; a non-4-digit PIN raises ValueError."""
        new = self._check(_Event.PIN)
        self._key = crypto.pin_key(self._salt, pin)
        self._state = new

    def server_cert_reply(self) -> dict[str, str]:
        """Phase 1 reply, sent once the PIN is known."""
        self._state = self._check(_Event.GETSERVERCERT)
        return {"paired": "1", "plaincert": self._server_cert_pem.hex()}

    def on_client_challenge(self, data: bytes) -> dict[str, str]:
        """Phase 2: ``data`` is the decoded ``clientchallenge`` (16 encrypted bytes)."""
        new = self._check(_Event.CLIENTCHALLENGE)
        if len(data) != CHALLENGE_LEN:
            raise PairingError(f"clientchallenge must be {CHALLENGE_LEN} bytes, got {len(data)}")
        assert self._key is not None
        challenge = crypto.aes_ecb_decrypt(self._key, data)
        digest = _sha256(challenge, self._server_cert_sig, self._server_secret)
        response = crypto.aes_ecb_encrypt(self._key, digest + self._server_challenge)
        self._state = new
        return {"paired": "1", "challengeresponse": response.hex()}

    def on_server_challenge_resp(self, data: bytes) -> dict[str, str]:
        """Phase 3: keep the client's hash for phase 4, reveal our secret and its signature."""
        new = self._check(_Event.SERVERCHALLENGERESP)
        if len(data) != HASH_LEN:
            raise PairingError(f"serverchallengeresp must be {HASH_LEN} bytes, got {len(data)}")
        assert self._key is not None
        self._client_hash = crypto.aes_ecb_decrypt(self._key, data)
        self._state = new
        return {"paired": "1", "pairingsecret": (self._server_secret + self._secret_sig).hex()}

    def on_client_pairing_secret(self, data: bytes) -> tuple[dict[str, str], bool]:
        """Phase 4: check the client's hash from phase 3 and its signature; a wrong PIN fails here."""
        self._check(_Event.SECRET_OK)
        if len(data) != SECRET_LEN + self._client_sig_len:
            raise PairingError(
                f"clientpairingsecret must be {SECRET_LEN + self._client_sig_len} bytes, got {len(data)}"
            )
        secret, sig = data[:SECRET_LEN], data[SECRET_LEN:]
        expected = _sha256(self._server_challenge, self._client_cert_sig, secret)
        hash_ok = hmac.compare_digest(expected, self._client_hash)
        sig_ok = crypto.rsa_verify_sha256(self._client_cert_pem, sig, secret)
        ok = hash_ok and sig_ok
        self._state = self._check(_Event.SECRET_OK if ok else _Event.SECRET_BAD)
        if not ok:
            # Sunshine answers paired=0 with status 200 here; the client then reports a wrong PIN.
            logger.info("pairing rejected (hash ok: %s, signature ok: %s)", hash_ok, sig_ok)
        return {"paired": "1" if ok else "0"}, ok


# ------------------------------------------------------------------------------------- client side


class ClientState(enum.Enum):
    """Where a client-side pairing stands; PAIRED and FAILED are final."""

    START = enum.auto()
    CERT_REQUESTED = enum.auto()
    HAVE_SERVER_CERT = enum.auto()
    CHALLENGE_SENT = enum.auto()
    CHALLENGE_ANSWERED = enum.auto()
    RESPONSE_SENT = enum.auto()
    SERVER_VERIFIED = enum.auto()
    SECRET_SENT = enum.auto()
    SECRET_ACCEPTED = enum.auto()
    PAIRCHALLENGE_SENT = enum.auto()
    PAIRED = enum.auto()
    FAILED = enum.auto()


class ClientPairing:
    """What a Moonlight client does while pairing: query dicts out, reply fields in.

    Any failed reply moves to FAILED for good (moonlight-qt then sends /unpair and starts over).
    """

    def __init__(self, client_cert_pem: bytes, client_key_pem: bytes, pin: str, salt: bytes | None = None):
        self._salt = crypto.random_bytes(SALT_LEN) if salt is None else bytes(salt)
        if len(self._salt) != SALT_LEN:
            raise ValueError(f"salt must be {SALT_LEN} bytes")
        self._key = crypto.pin_key(self._salt, pin)
        self._client_cert_pem = bytes(client_cert_pem)
        self._client_key_pem = bytes(client_key_pem)
        self._client_cert_sig = crypto.cert_signature(client_cert_pem)
        self._challenge = crypto.random_bytes(CHALLENGE_LEN)
        self._client_secret = crypto.random_bytes(SECRET_LEN)
        self._server_cert_pem: bytes | None = None
        self._server_hash = b""
        self._server_challenge = b""
        self._state = ClientState.START

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def server_cert_pem(self) -> bytes | None:
        return self._server_cert_pem

    def _advance(self, expected: ClientState, new: ClientState, action: str) -> None:
        if self._state is not expected:
            raise PairingError(f"{action} out of order (state {self._state.name}, expected {expected.name})")
        self._state = new

    def _fail(self, message: str) -> PairingError:
        self._state = ClientState.FAILED
        return PairingError(message)

    def _query(self, **extra: str) -> dict[str, str]:
        return {"uniqueid": UNIQUE_ID, "devicename": DEVICE_NAME, "updateState": "1", **extra}

    def _reply_hex(self, fields: Mapping[str, str], name: str) -> bytes:
        # moonlight-qt checks paired=1 in every phase's reply.
        if fields.get("paired") != "1":
            raise self._fail(f"server answered paired={fields.get('paired')!r} (expected {name})")
        value = fields.get(name)
        if not value:
            raise self._fail(f"reply has no {name}")
        try:
            return binascii.unhexlify(value)
        except ValueError:
            raise self._fail(f"{name} in the reply is not valid hex") from None

    def getservercert_query(self) -> dict[str, str]:
        self._advance(ClientState.START, ClientState.CERT_REQUESTED, "getservercert")
        return self._query(
            phrase="getservercert", salt=self._salt.hex(), clientcert=self._client_cert_pem.hex()
        )

    def on_getservercert_reply(self, fields: Mapping[str, str]) -> None:
        self._advance(ClientState.CERT_REQUESTED, ClientState.HAVE_SERVER_CERT, "getservercert reply")
        if fields.get("paired") == "1" and not fields.get("plaincert"):
            # moonlight-qt: an empty plaincert means another pairing is already in progress.
            raise self._fail("server is busy with another pairing (no plaincert)")
        cert_pem = self._reply_hex(fields, "plaincert")
        try:
            crypto.load_cert(cert_pem)
        except crypto.CertificateError as exc:
            raise self._fail(f"plaincert is not a certificate: {exc.message}") from None
        self._server_cert_pem = cert_pem

    def clientchallenge_query(self) -> dict[str, str]:
        self._advance(ClientState.HAVE_SERVER_CERT, ClientState.CHALLENGE_SENT, "clientchallenge")
        return self._query(clientchallenge=crypto.aes_ecb_encrypt(self._key, self._challenge).hex())

    def on_clientchallenge_reply(self, fields: Mapping[str, str]) -> None:
        self._advance(ClientState.CHALLENGE_SENT, ClientState.CHALLENGE_ANSWERED, "clientchallenge reply")
        data = self._reply_hex(fields, "challengeresponse")
        if len(data) != HASH_LEN + CHALLENGE_LEN:
            raise self._fail(f"challengeresponse must be {HASH_LEN + CHALLENGE_LEN} bytes, got {len(data)}")
        plain = crypto.aes_ecb_decrypt(self._key, data)
        self._server_hash, self._server_challenge = plain[:HASH_LEN], plain[HASH_LEN:]

    def serverchallengeresp_query(self) -> dict[str, str]:
        self._advance(ClientState.CHALLENGE_ANSWERED, ClientState.RESPONSE_SENT, "serverchallengeresp")
        digest = _sha256(self._server_challenge, self._client_cert_sig, self._client_secret)
        return self._query(serverchallengeresp=crypto.aes_ecb_encrypt(self._key, digest).hex())

    def on_serverchallengeresp_reply(self, fields: Mapping[str, str]) -> None:
        self._advance(ClientState.RESPONSE_SENT, ClientState.SERVER_VERIFIED, "serverchallengeresp reply")
        data = self._reply_hex(fields, "pairingsecret")
        if len(data) <= SECRET_LEN:
            raise self._fail(f"pairingsecret too short ({len(data)} bytes)")
        server_secret, sig = data[:SECRET_LEN], data[SECRET_LEN:]
        assert self._server_cert_pem is not None
        # Same order as moonlight-qt: the signature first (MITM), then the PIN-dependent hash.
        if not crypto.rsa_verify_sha256(self._server_cert_pem, sig, server_secret):
            raise self._fail("server signature over its pairing secret does not verify (MITM?)")
        expected = _sha256(self._challenge, crypto.cert_signature(self._server_cert_pem), server_secret)
        if not hmac.compare_digest(expected, self._server_hash):
            raise self._fail("server failed the PIN check / MITM (wrong PIN?)")

    def clientpairingsecret_query(self) -> dict[str, str]:
        self._advance(ClientState.SERVER_VERIFIED, ClientState.SECRET_SENT, "clientpairingsecret")
        sig = crypto.rsa_sign_sha256(self._client_key_pem, self._client_secret)
        return self._query(clientpairingsecret=(self._client_secret + sig).hex())

    def on_clientpairingsecret_reply(self, fields: Mapping[str, str]) -> None:
        self._advance(ClientState.SECRET_SENT, ClientState.SECRET_ACCEPTED, "clientpairingsecret reply")
        if fields.get("paired") != "1":
            raise self._fail("wrong PIN or the server refused")

    def pairchallenge_query(self) -> dict[str, str]:
        self._advance(ClientState.SECRET_ACCEPTED, ClientState.PAIRCHALLENGE_SENT, "pairchallenge")
        return self._query(phrase="pairchallenge")

    def on_pairchallenge_reply(self, fields: Mapping[str, str]) -> None:
        self._advance(ClientState.PAIRCHALLENGE_SENT, ClientState.PAIRED, "pairchallenge reply")
        if fields.get("paired") != "1":
            raise self._fail("server refused pairchallenge over HTTPS")
