"""moonhowl.protocol.pairing: both sides in memory, request decoding, phase order."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from moonhowl.protocol import crypto, xml
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.pairing import (
    UNIQUE_ID,
    ClientPairing,
    ClientState,
    PairingError,
    PairPhase,
    PairRequest,
    ServerPairing,
    ServerState,
    pairchallenge_reply,
)

pytestmark = pytest.mark.unit

Identity = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def server_id() -> Identity:
    return crypto.generate_identity("Sunshine Gamestream Host")


@pytest.fixture(scope="module")
def client_id() -> Identity:
    return crypto.generate_identity("NVIDIA GameStream Client")


def wire(fields: Mapping[str, str]) -> dict[str, str]:
    """Send reply fields through the XML layer, as the HTTP server and client would."""
    reply = xml.parse(xml.response(fields))
    assert reply.status_code == 200
    return reply.fields


def request(query: Mapping[str, str]) -> PairRequest:
    # What aiohttp's MultiDict.items() gives the server, plus the uuid every request carries.
    return PairRequest.from_query([*query.items(), ("uuid", "f00d")])


def start(
    server_id: Identity, client_id: Identity, client_pin: str = "1234", server_pin: str = "1234"
) -> tuple[ClientPairing, ServerPairing]:
    client = ClientPairing(*client_id, pin=client_pin)
    req = request(client.getservercert_query())
    server = ServerPairing.from_request(req, *server_id)
    assert server.state is ServerState.WAITING_FOR_PIN
    server.set_pin(server_pin)
    client.on_getservercert_reply(wire(server.server_cert_reply()))
    assert client.server_cert_pem == server_id[0]
    return client, server


def phase2_3(client: ClientPairing, server: ServerPairing) -> None:
    req = request(client.clientchallenge_query())
    assert req.phase is PairPhase.CLIENTCHALLENGE
    client.on_clientchallenge_reply(wire(server.on_client_challenge(req.client_challenge)))
    req = request(client.serverchallengeresp_query())
    assert req.phase is PairPhase.SERVERCHALLENGERESP
    client.on_serverchallengeresp_reply(wire(server.on_server_challenge_resp(req.server_challenge_resp)))


# ----------------------------------------------------------------------------- whole pairings


def test_full_pairing_with_the_right_pin(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    assert server.client_cert_pem == client_id[0]
    phase2_3(client, server)
    req = request(client.clientpairingsecret_query())
    assert req.phase is PairPhase.CLIENTPAIRINGSECRET
    fields, ok = server.on_client_pairing_secret(req.client_pairing_secret)
    assert ok and fields == {"paired": "1"}
    assert server.verified and server.state is ServerState.PAIRED
    client.on_clientpairingsecret_reply(wire(fields))
    req = request(client.pairchallenge_query())
    assert req.phase is PairPhase.PAIRCHALLENGE
    client.on_pairchallenge_reply(wire(pairchallenge_reply(True)))
    assert client.state is ClientState.PAIRED


def test_wrong_pin_is_caught_by_the_client_in_phase_3(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id, client_pin="1234", server_pin="4321")
    # Phase 2 "works" on both sides: each decrypts the other's data into garbage.
    req = request(client.clientchallenge_query())
    client.on_clientchallenge_reply(wire(server.on_client_challenge(req.client_challenge)))
    req = request(client.serverchallengeresp_query())
    reply = wire(server.on_server_challenge_resp(req.server_challenge_resp))
    # The server's signature is genuine, but its PIN-dependent hash does not match.
    with pytest.raises(PairingError, match="failed the PIN check"):
        client.on_serverchallengeresp_reply(reply)
    assert client.state is ClientState.FAILED
    with pytest.raises(PairingError, match="out of order"):
        client.clientpairingsecret_query()

    # A client that ignored that and went on would get paired=0 in phase 4: the host's only chance.
    secret = crypto.random_bytes(16)
    fields, ok = server.on_client_pairing_secret(secret + crypto.rsa_sign_sha256(client_id[1], secret))
    assert (fields, ok) == ({"paired": "0"}, False)
    assert server.state is ServerState.REJECTED and not server.verified


def test_server_rejects_a_secret_signed_by_another_key(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    phase2_3(client, server)
    data = bytearray(request(client.clientpairingsecret_query()).client_pairing_secret)
    data[-1] ^= 0x01  # right hash, broken signature
    fields, ok = server.on_client_pairing_secret(bytes(data))
    assert not ok and fields == {"paired": "0"}
    with pytest.raises(PairingError, match="wrong PIN or the server refused"):
        client.on_clientpairingsecret_reply(wire(fields))
    assert client.state is ClientState.FAILED


def test_server_rejects_a_different_client_secret(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    phase2_3(client, server)
    other = b"\x00" * 16  # validly signed, but not the secret hashed in phase 3
    fields, ok = server.on_client_pairing_secret(other + crypto.rsa_sign_sha256(client_id[1], other))
    assert not ok and fields == {"paired": "0"}


def test_client_detects_a_forged_server_signature(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    req = request(client.clientchallenge_query())
    client.on_clientchallenge_reply(wire(server.on_client_challenge(req.client_challenge)))
    req = request(client.serverchallengeresp_query())
    reply = server.on_server_challenge_resp(req.server_challenge_resp)
    raw = bytearray(bytes.fromhex(reply["pairingsecret"]))
    raw[20] ^= 0xFF
    with pytest.raises(PairingError, match="MITM"):
        client.on_serverchallengeresp_reply({"paired": "1", "pairingsecret": raw.hex()})


def test_client_accepts_uppercase_hex(server_id: Identity, client_id: Identity) -> None:
    client = ClientPairing(*client_id, pin="0000")
    upper = {k: v.upper() for k, v in client.getservercert_query().items() if k in ("salt", "clientcert")}
    req = PairRequest.from_query([("uniqueid", UNIQUE_ID), ("phrase", "getservercert"), *upper.items()])
    server = ServerPairing.from_request(req, *server_id)
    server.set_pin("0000")
    fields = server.server_cert_reply()
    client.on_getservercert_reply({"paired": "1", "plaincert": fields["plaincert"].upper()})
    challenge = client.clientchallenge_query()["clientchallenge"].upper()
    req = PairRequest.from_query([("uniqueid", UNIQUE_ID), ("clientchallenge", challenge)])
    reply = server.on_client_challenge(req.client_challenge)
    client.on_clientchallenge_reply({"paired": "1", "challengeresponse": reply["challengeresponse"].upper()})
    assert client.state is ClientState.CHALLENGE_ANSWERED


def test_client_queries_look_like_moonlight(client_id: Identity) -> None:
    salt = bytes(range(16))
    client = ClientPairing(*client_id, pin="1234", salt=salt)
    query = client.getservercert_query()
    assert query["uniqueid"] == "0123456789ABCDEF"
    assert query["devicename"] == "roth" and query["updateState"] == "1"
    assert query["phrase"] == "getservercert"
    assert query["salt"] == salt.hex()
    assert bytes.fromhex(query["clientcert"]) == client_id[0]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"paired": "0"}, "paired='0'"),
        ({}, "paired=None"),
        ({"paired": "1"}, "busy with another pairing"),
        ({"paired": "1", "plaincert": "zz"}, "not valid hex"),
        ({"paired": "1", "plaincert": b"hello".hex()}, "not a certificate"),
    ],
)
def test_client_rejects_bad_getservercert_replies(
    client_id: Identity, reply: dict[str, str], message: str
) -> None:
    client = ClientPairing(*client_id, pin="1234")
    client.getservercert_query()
    with pytest.raises(PairingError, match=message):
        client.on_getservercert_reply(reply)
    assert client.state is ClientState.FAILED


def test_client_rejects_short_challengeresponse(server_id: Identity, client_id: Identity) -> None:
    client, _ = start(server_id, client_id)
    client.clientchallenge_query()
    with pytest.raises(PairingError, match="48 bytes"):
        client.on_clientchallenge_reply({"paired": "1", "challengeresponse": "00" * 32})


def test_client_rejects_bad_pin_and_salt(client_id: Identity) -> None:
    with pytest.raises(ValueError, match="4 ASCII digits"):
        ClientPairing(*client_id, pin="12345")
    with pytest.raises(ValueError, match="salt"):
        ClientPairing(*client_id, pin="1234", salt=b"short")


# ------------------------------------------------------------------------------------ order


def test_client_out_of_order_leaves_state(client_id: Identity) -> None:
    client = ClientPairing(*client_id, pin="1234")
    with pytest.raises(PairingError, match="out of order"):
        client.clientchallenge_query()
    with pytest.raises(PairingError, match="out of order"):
        client.on_getservercert_reply({"paired": "1"})
    assert client.state is ClientState.START


@pytest.fixture
def fresh_server(server_id: Identity, client_id: Identity) -> ServerPairing:
    return ServerPairing(*server_id, salt=bytes(16), client_cert_pem=client_id[0])


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda s: s.server_cert_reply(), "expected PIN entry"),
        (lambda s: s.on_client_challenge(bytes(16)), r"clientchallenge out of order \(expected PIN entry"),
        (lambda s: s.on_server_challenge_resp(bytes(32)), "phase serverchallengeresp out of order"),
        (lambda s: s.on_client_pairing_secret(bytes(272)), "phase clientpairingsecret out of order"),
    ],
)
def test_server_phases_before_pin_are_refused(
    fresh_server: ServerPairing, call: Callable[[ServerPairing], object], expected: str
) -> None:
    with pytest.raises(PairingError, match=expected):
        call(fresh_server)
    assert fresh_server.state is ServerState.WAITING_FOR_PIN


def test_server_skipping_a_phase_leaves_state(fresh_server: ServerPairing) -> None:
    fresh_server.set_pin("1111")
    with pytest.raises(PairingError, match=r"phase PIN entry out of order \(expected getservercert"):
        fresh_server.set_pin("2222")
    fresh_server.server_cert_reply()
    assert fresh_server.state is ServerState.CERT_SENT
    with pytest.raises(PairingError, match=r"serverchallengeresp out of order \(expected clientchallenge"):
        fresh_server.on_server_challenge_resp(bytes(32))
    with pytest.raises(PairingError, match="phase getservercert out of order"):
        fresh_server.server_cert_reply()
    assert fresh_server.state is ServerState.CERT_SENT
    # Bad payload length is refused without advancing either.
    with pytest.raises(PairingError, match="16 bytes"):
        fresh_server.on_client_challenge(bytes(32))
    assert fresh_server.state is ServerState.CERT_SENT
    fresh_server.on_client_challenge(bytes(16))
    assert fresh_server.state is ServerState.CHALLENGE_SENT


def test_server_refuses_everything_after_pairing(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    phase2_3(client, server)
    data = request(client.clientpairingsecret_query()).client_pairing_secret
    assert server.on_client_pairing_secret(data)[1]
    for call in (
        lambda: server.on_client_pairing_secret(data),
        lambda: server.on_client_challenge(bytes(16)),
        lambda: server.set_pin("1234"),
    ):
        with pytest.raises(PairingError, match=r"out of order \(expected nothing"):
            call()
        assert server.state is ServerState.PAIRED


def test_server_pairing_secret_length_checked(server_id: Identity, client_id: Identity) -> None:
    client, server = start(server_id, client_id)
    phase2_3(client, server)
    with pytest.raises(PairingError, match="272 bytes"):
        server.on_client_pairing_secret(bytes(100))
    assert server.state is ServerState.SECRET_SENT


def test_server_construction_checks(server_id: Identity, client_id: Identity) -> None:
    with pytest.raises(PairingError, match="salt must be 16 bytes"):
        ServerPairing(*server_id, salt=bytes(8), client_cert_pem=client_id[0])
    with pytest.raises(crypto.CertificateError):
        ServerPairing(*server_id, salt=bytes(16), client_cert_pem=b"junk")
    req = PairRequest(PairPhase.CLIENTCHALLENGE, UNIQUE_ID, client_challenge=bytes(16))
    with pytest.raises(PairingError, match="starts with getservercert"):
        ServerPairing.from_request(req, *server_id)


# ------------------------------------------------------------------------------ PairRequest


@pytest.fixture(scope="module")
def cert_hex(client_id: Identity) -> str:
    return client_id[0].hex()


def phase1(cert_hex: str, **override: str | None) -> list[tuple[str, str]]:
    base: dict[str, str | None] = {
        "uniqueid": UNIQUE_ID,
        "uuid": "abc",
        "devicename": "roth",
        "updateState": "1",
        "phrase": "getservercert",
        "salt": "00112233445566778899AABBCCDDEEFF",
        "clientcert": cert_hex,
    }
    base.update(override)
    return [(k, v) for k, v in base.items() if v is not None]


def test_request_phase1_decodes(cert_hex: str, client_id: Identity) -> None:
    req = PairRequest.from_query(phase1(cert_hex))
    assert req.phase is PairPhase.GETSERVERCERT
    assert req.unique_id == UNIQUE_ID and req.device_name == "roth"
    assert req.salt == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert req.client_cert_pem == client_id[0]


@pytest.mark.parametrize(
    ("query", "phase", "attr", "length"),
    [
        ([("clientchallenge", "ab" * 16)], PairPhase.CLIENTCHALLENGE, "client_challenge", 16),
        ([("serverchallengeresp", "AB" * 32)], PairPhase.SERVERCHALLENGERESP, "server_challenge_resp", 32),
        ([("clientpairingsecret", "0f" * 272)], PairPhase.CLIENTPAIRINGSECRET, "client_pairing_secret", 272),
        ([("phrase", "pairchallenge")], PairPhase.PAIRCHALLENGE, None, 0),
    ],
)
def test_request_phases_2_to_5_decode(
    query: list[tuple[str, str]], phase: PairPhase, attr: str | None, length: int
) -> None:
    req = PairRequest.from_query([("uniqueid", UNIQUE_ID), ("uuid", "1"), ("uuid", "2"), *query])
    assert req.phase is phase
    if attr is not None:
        assert len(getattr(req, attr)) == length


def test_request_duplicated_field(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="duplicated field 'salt'"):
        PairRequest.from_query([*phase1(cert_hex), ("salt", "00" * 16)])


def test_request_duplicated_uniqueid() -> None:
    with pytest.raises(PairingError, match="duplicated field 'uniqueid'"):
        PairRequest.from_query([("uniqueid", "a"), ("uniqueid", "b"), ("phrase", "pairchallenge")])


def test_request_missing_uniqueid(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="missing uniqueid"):
        PairRequest.from_query(phase1(cert_hex, uniqueid=None))


def test_request_empty_uniqueid(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="missing uniqueid"):
        PairRequest.from_query(phase1(cert_hex, uniqueid=""))


def test_request_missing_phrase() -> None:
    with pytest.raises(PairingError, match="missing phrase"):
        PairRequest.from_query([("uniqueid", UNIQUE_ID), ("salt", "00" * 16)])


def test_request_unknown_phrase(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="unknown phrase 'unpair'"):
        PairRequest.from_query(phase1(cert_hex, phrase="unpair"))


def test_request_phrase_with_phase_field() -> None:
    with pytest.raises(PairingError, match="combined with clientchallenge"):
        PairRequest.from_query(
            [("uniqueid", "x"), ("phrase", "pairchallenge"), ("clientchallenge", "00" * 16)]
        )


def test_request_two_phase_fields() -> None:
    query = [("uniqueid", "x"), ("clientchallenge", "00" * 16), ("serverchallengeresp", "00" * 32)]
    with pytest.raises(PairingError, match="ambiguous"):
        PairRequest.from_query(query)


def test_request_missing_salt(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="without salt"):
        PairRequest.from_query(phase1(cert_hex, salt=None))


def test_request_missing_clientcert(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="without clientcert"):
        PairRequest.from_query(phase1(cert_hex, clientcert=None))


@pytest.mark.parametrize("salt", ["zz" * 16, "0" * 31, "00 11" + "22" * 14, "\u0660" * 32])
def test_request_salt_bad_hex(cert_hex: str, salt: str) -> None:
    with pytest.raises(PairingError, match="salt is not valid hex"):
        PairRequest.from_query(phase1(cert_hex, salt=salt))


@pytest.mark.parametrize("salt", ["", "00" * 15, "00" * 17])
def test_request_salt_wrong_length(cert_hex: str, salt: str) -> None:
    with pytest.raises(PairingError, match="salt must be 16 bytes"):
        PairRequest.from_query(phase1(cert_hex, salt=salt))


@pytest.mark.parametrize(
    ("key", "hex_len", "message"),
    [
        ("clientchallenge", 30, "clientchallenge must be 16 bytes, got 15"),
        ("clientchallenge", 64, "clientchallenge must be 16 bytes, got 32"),
        ("serverchallengeresp", 32, "serverchallengeresp must be 32 bytes, got 16"),
        ("clientpairingsecret", 2 * (16 + 128), "clientpairingsecret must be 272 bytes, got 144"),
    ],
)
def test_request_payload_wrong_length(key: str, hex_len: int, message: str) -> None:
    with pytest.raises(PairingError, match=message):
        PairRequest.from_query([("uniqueid", UNIQUE_ID), (key, "a" * hex_len)])


@pytest.mark.parametrize("key", ["clientchallenge", "serverchallengeresp", "clientpairingsecret"])
def test_request_payload_bad_hex(key: str) -> None:
    with pytest.raises(PairingError, match=f"{key} is not valid hex"):
        PairRequest.from_query([("uniqueid", UNIQUE_ID), (key, "g" * 32)])


def test_request_clientcert_bad_hex(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="clientcert is not valid hex"):
        PairRequest.from_query(phase1(cert_hex, clientcert=cert_hex[:-1]))


def test_request_clientcert_not_pem(cert_hex: str) -> None:
    with pytest.raises(PairingError, match=r"not a PEM X\.509 certificate"):
        PairRequest.from_query(phase1(cert_hex, clientcert=b"hello world".hex()))


def test_request_clientcert_der_instead_of_pem(cert_hex: str, client_id: Identity) -> None:
    der = crypto.cert_der(client_id[0])
    with pytest.raises(PairingError, match=r"not a PEM X\.509 certificate"):
        PairRequest.from_query(phase1(cert_hex, clientcert=der.hex()))


def test_request_clientcert_truncated(cert_hex: str) -> None:
    with pytest.raises(PairingError, match=r"not a PEM X\.509 certificate") as info:
        PairRequest.from_query(phase1(cert_hex, clientcert=cert_hex[: len(cert_hex) // 2]))
    assert isinstance(info.value, ProtocolError) and info.value.status_code == 400


def test_request_clientcert_too_large(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="clientcert too large"):
        PairRequest.from_query(phase1(cert_hex, clientcert="00" * (8 * 1024 + 1)))


def test_request_clientcert_at_size_limit_is_decoded(cert_hex: str) -> None:
    padded = cert_hex + "0a" * ((16 * 1024 - len(cert_hex)) // 2)  # trailing newlines after the PEM
    assert len(padded) <= 16 * 1024
    assert PairRequest.from_query(phase1(cert_hex, clientcert=padded)).phase is PairPhase.GETSERVERCERT


def test_request_other_field_too_large(cert_hex: str) -> None:
    with pytest.raises(PairingError, match="field 'devicename' too large"):
        PairRequest.from_query(phase1(cert_hex, devicename="x" * 2000))
