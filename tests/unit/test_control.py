"""Moonlight control-stream framing (AES-128-GCM v2 and legacy IVs) and message payloads."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moonhowl.protocol import control as c
from moonhowl.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


def pair(v2: bool = True) -> tuple[c.ControlCipher, c.ControlCipher]:
    return c.ControlCipher(KEY, is_host=True, v2=v2), c.ControlCipher(KEY, is_host=False, v2=v2)


def expected_packet(seq: int, msg_type: int, payload: bytes, iv: bytes) -> bytes:
    """Build a packet from the documented layout, independently of ControlCipher."""
    plaintext = struct.pack("<HH", msg_type, len(payload)) + payload
    sealed = AESGCM(KEY).encrypt(iv, plaintext, None)
    return struct.pack("<HHI", 1, 4 + 16 + len(plaintext), seq) + sealed[-16:] + sealed[:-16]


def test_known_answer_client_idr_request() -> None:
    _, client = pair()
    packet = client.seal(c.REQUEST_IDR_FRAME, c.IDR_REQUEST_PAYLOAD)
    iv = struct.pack("<I", 0) + bytes(6) + b"CC"
    assert packet == expected_packet(0, 0x0302, b"\x00\x00", iv)
    assert packet.hex() == "01001a000000000022302723537811166cb9bfead7dad4575cd629f5cafe"


def test_known_answer_host_termination_with_later_sequence() -> None:
    host, _ = pair()
    for _ in range(0x1234):
        host.seal(c.RUMBLE, b"")
    packet = host.seal(c.TERMINATION, bytes(c.Termination(c.TERMINATION_GRACEFUL)))
    iv = struct.pack("<I", 0x1234) + bytes(6) + b"HC"
    assert packet == expected_packet(0x1234, 0x0109, bytes.fromhex("80030023"), iv)


def test_known_answer_legacy_iv() -> None:
    _, client = pair(v2=False)
    for _ in range(0x101):
        client.seal(c.PERIODIC_PING, b"")
    packet = client.seal(c.START_B, c.START_B_PAYLOAD)
    assert packet == expected_packet(0x101, 0x0307, b"\x00", b"\x01" + bytes(15))


@pytest.mark.parametrize("v2", [True, False])
def test_round_trip_both_directions(v2: bool) -> None:
    host, client = pair(v2)
    for i in range(300):
        payload = bytes([i % 256]) * (i % 40)
        assert host.open(client.seal(c.INPUT_DATA, payload)) == (c.INPUT_DATA, payload)
        assert client.open(host.seal(c.RUMBLE, payload)) == (c.RUMBLE, payload)
    assert host.send_seq == client.send_seq == 300 and host.last_received_seq == 299


def test_direction_matters_in_v2() -> None:
    host, client = pair()
    with pytest.raises(c.ControlAuthError):
        client.open(client.seal(c.INPUT_DATA, b"loop"))  # 'CC' IV where 'HC' is expected
    with pytest.raises(c.ControlAuthError):
        host.open(host.seal(c.RUMBLE, b"loop"))


def test_tampered_packets_fail_authentication() -> None:
    host, client = pair()
    packet = bytearray(client.seal(c.INPUT_DATA, b"payload"))
    for index in (8, 23, 24, len(packet) - 1, 4):  # tag, ciphertext, seq (changes the IV)
        bad = bytearray(packet)
        bad[index] ^= 0x01
        with pytest.raises(c.ControlAuthError):
            host.open(bytes(bad))


def test_wrong_key_and_wrong_iv_mode_fail() -> None:
    packet = c.ControlCipher(KEY, is_host=False).seal(c.INPUT_DATA, b"x")
    with pytest.raises(c.ControlAuthError):
        c.ControlCipher(bytes(16), is_host=True).open(packet)
    with pytest.raises(c.ControlAuthError):
        c.ControlCipher(KEY, is_host=True, v2=False).open(packet)


def test_truncated_and_malformed_packets() -> None:
    host, client = pair()
    packet = client.seal(c.INPUT_DATA, b"0123456789")
    for length in range(8):
        with pytest.raises(c.ControlHeaderError):
            host.open(packet[:length])
    for length in range(8, len(packet)):
        with pytest.raises(c.ControlLengthError):
            host.open(packet[:length])
    with pytest.raises(c.ControlLengthError):
        host.open(packet + b"\x00")
    with pytest.raises(c.ControlHeaderError):
        host.open(b"\x02\x00" + packet[2:])  # not the encrypted header type
    runt = struct.pack("<HHI", 1, 20, 0) + bytes(16)  # no room for the inner header
    with pytest.raises(c.ControlLengthError):
        host.open(runt)
    # inner payload length larger than the data actually sealed
    sealed = AESGCM(KEY).encrypt(struct.pack("<I", 0) + bytes(6) + b"CC", struct.pack("<HH", 0x0206, 9), None)
    lying = struct.pack("<HHI", 1, 4 + 16 + 4, 0) + sealed[-16:] + sealed[:-16]
    with pytest.raises(c.ControlLengthError):
        host.open(lying)
    errors = (c.ControlHeaderError, c.ControlLengthError, c.ControlAuthError)
    assert all(issubclass(error, ProtocolError) for error in errors)


def test_seal_limits() -> None:
    host, _ = pair()
    with pytest.raises(ValueError):
        host.seal(c.RUMBLE, bytes(c.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        c.ControlCipher(bytes(15), is_host=True)
    assert len(host.seal(c.RUMBLE, bytes(c.MAX_PAYLOAD))) == 0xFFFF + 4


def test_termination_payloads() -> None:
    assert bytes(c.Termination()) == bytes.fromhex("80030023")
    assert c.Termination.parse(bytes.fromhex("80030023")).reason == c.TERMINATION_GRACEFUL
    assert c.Termination.parse(b"\x00\x01").reason == 0x0100  # old short form, LE16
    with pytest.raises(c.ControlLengthError):
        c.Termination.parse(b"\x01")


def test_client_message_layouts() -> None:
    ping = bytes.fromhex("0400 00000000 0000")  # length 4, timestamp, 2 unused bytes
    assert c.PeriodicPing.parse(ping) == c.PeriodicPing(0) and bytes(c.PeriodicPing()) == ping
    rfi = struct.pack("<qqq", 100, 105, 0)
    assert c.InvalidateRefFrames.parse(rfi) == c.InvalidateRefFrames(100, 105)
    assert bytes(c.InvalidateRefFrames(100, 105)) == rfi
    loss = struct.pack("<IIIQIII", 3, 50, 1000, 77, 0, 0, 0x14)
    assert c.LossStats.parse(loss) == c.LossStats(3, 50, 77) and bytes(c.LossStats(3, 50, 77)) == loss
    fec = struct.pack(">IHHHHHHHBBB", 9, 1, 2, 3, 4, 5, 6, 7, 20, 0, 1)
    parsed = c.FrameFecStatus.parse(fec)
    assert parsed.frame_index == 9 and parsed.fec_percentage == 20 and bytes(parsed) == fec
    for cls, size in ((c.InvalidateRefFrames, 16), (c.LossStats, 32), (c.FrameFecStatus, 21)):
        with pytest.raises(c.ControlLengthError):
            cls.parse(bytes(size - 1))


def test_host_message_layouts() -> None:
    assert bytes(c.Rumble(1, 0x1000, 0xFFFF)) == struct.pack("<IHHH", 0, 1, 0x1000, 0xFFFF)
    assert c.Rumble.parse(bytes(c.Rumble(1, 2, 3))) == c.Rumble(1, 2, 3)
    primaries = ((34000, 16000), (13250, 34500), (7500, 3000))
    meta = c.HdrMetadata(primaries, (15635, 16450), 1000, 50, 1000, 400, 600)
    hdr = c.HdrMode(True, meta)
    assert len(bytes(hdr)) == 27 and bytes(hdr)[:3] == b"\x01\xd0\x84" and c.HdrMode.parse(bytes(hdr)) == hdr
    assert c.HdrMode.parse(b"\x00") == c.HdrMode(False)
    assert bytes(c.RumbleTriggers(2, 3, 4)) == struct.pack("<HHH", 2, 3, 4)
    assert c.SetRgbLed.parse(bytes(c.SetRgbLed(1, 255, 0, 7))) == c.SetRgbLed(1, 255, 0, 7)
    assert c.SET_RGB_LED == c.FRAME_FEC_STATUS == 0x5502  # same number, opposite directions
