"""moonhowl.protocol.audio: the wire layout real clients parse, FEC repair and AES-CBC, all sans-IO."""

from __future__ import annotations

import itertools
import struct

import pytest

from moonhowl.protocol.audio import (
    DATA_SHARDS,
    PARITY_ROWS,
    PT_AUDIO,
    PT_FEC,
    AudioDecryptError,
    AudioDepacketizer,
    AudioFecPacket,
    AudioPacket,
    AudioPacketizer,
    BadAudioVersionError,
    BadFecHeaderError,
    TruncatedAudioPacketError,
    UnknownAudioPayloadTypeError,
    audio_iv,
    decrypt_payload,
    encrypt_payload,
    fec_parity,
    fec_recover,
    parse_audio_datagram,
)

KEY = bytes(range(16))
RIKEYID = -123456789  # launch's rikeyid is a signed decimal


def frames(n: int, size: int = 60) -> list[bytes]:
    """Distinct CBR-like Opus frames: equal length, different content."""
    return [bytes((i * 7 + k) & 0xFF for k in range(size)) for i in range(n)]


def packetize_all(packetizer: AudioPacketizer, opus: list[bytes]) -> list[bytes]:
    return [d for f in opus for d in packetizer.packetize(f)]


def split_blocks(datagrams: list[bytes]) -> list[list[bytes]]:
    """Groups of 6 datagrams: 4 data + 2 parity (what packetize emits per block)."""
    return [datagrams[i:i + 6] for i in range(0, len(datagrams), 6)]


def receive(depacketizer: AudioDepacketizer, datagrams: list[bytes]) -> list[bytes]:
    out = [f for d in datagrams for f in depacketizer.push(d)]
    return out + depacketizer.flush()


def gf_mul_reference(a: int, b: int) -> int:
    """Bitwise carry-less multiply modulo x^8+x^4+x^3+x^2+1: independent of fec.py's tables."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return product


# ---------------------------------------------------------------------------------------------- wire layout
def test_data_packets_have_the_rtp_header_the_client_expects() -> None:
    p = AudioPacketizer(KEY, RIKEYID, encrypt=False, packet_duration_ms=5)
    out = packetize_all(p, frames(3))
    assert len(out) == 3
    for seq, datagram in enumerate(out):
        header, ptype, s, ts, ssrc = struct.unpack_from(">BBHII", datagram)
        assert (header, ptype, s, ts, ssrc) == (0x80, PT_AUDIO, seq, 5 * seq, 0)
        assert datagram[12:] == frames(3)[seq]


def test_every_fourth_packet_is_followed_by_two_parity_packets() -> None:
    p = AudioPacketizer(KEY, RIKEYID, encrypt=True, packet_duration_ms=10)
    out = packetize_all(p, frames(8))
    assert len(out) == 12
    kinds = [d[1] for d in out]
    assert kinds == [PT_AUDIO] * 4 + [PT_FEC] * 2 + [PT_AUDIO] * 4 + [PT_FEC] * 2
    for block, base in ((out[0:6], 0), (out[6:12], 4)):
        for x, fec in enumerate(block[4:]):
            header, ptype, rtp_seq, rtp_ts, rtp_ssrc = struct.unpack_from(">BBHII", fec)
            # Sunshine: rtp seq = last data seq + 1 + x, RTP timestamp/SSRC 0.
            assert (header, ptype, rtp_seq, rtp_ts, rtp_ssrc) == (0x80, PT_FEC, base + 4 + x, 0, 0)
            index, data_pt, base_seq, base_ts, ssrc = struct.unpack_from(">BBHII", fec, 12)
            assert (index, data_pt, base_seq, base_ts, ssrc) == (x, PT_AUDIO, base, base * 10, 0)
            # Parity is exactly as long as the (encrypted) payloads: the client requires equal sizes.
            assert len(fec) - 24 == len(block[0]) - 12


def test_parity_is_the_fixed_matrix_over_the_encrypted_payloads() -> None:
    p = AudioPacketizer(KEY, RIKEYID, encrypt=True)
    out = packetize_all(p, frames(4, size=37))
    payloads = [d[12:] for d in out[:4]]
    assert all(len(x) == 48 for x in payloads)  # 37 bytes + PKCS#7 = 3 AES blocks
    for j in range(2):
        expected = bytes(
            gf_mul_reference(PARITY_ROWS[j][0], a) ^ gf_mul_reference(PARITY_ROWS[j][1], b)
            ^ gf_mul_reference(PARITY_ROWS[j][2], c) ^ gf_mul_reference(PARITY_ROWS[j][3], d)
            for a, b, c, d in zip(*payloads, strict=True))
        assert out[4 + j][24:] == expected


def test_packet_dataclasses_round_trip() -> None:
    data = AudioPacket(65535, 0xFFFFFFFF, b"opus", ssrc=7)
    assert AudioPacket.parse(bytes(data)) == data
    fec = AudioFecPacket(9, 1, 4, 20, b"\x01\x02", ssrc=3)
    assert AudioFecPacket.parse(bytes(fec)) == fec
    assert isinstance(parse_audio_datagram(bytes(fec)), AudioFecPacket)
    assert isinstance(parse_audio_datagram(bytes(data)), AudioPacket)


def test_rtp_sequence_and_timestamp_wrap() -> None:
    p = AudioPacketizer(KEY, 0, encrypt=False, packet_duration_ms=5)
    p._seq, p._timestamp = 65534, 0xFFFFFFFE  # white-box: jump near the wrap
    out = [d for d in packetize_all(p, frames(4)) if d[1] == PT_AUDIO]
    assert [struct.unpack_from(">H", d, 2)[0] for d in out] == [65534, 65535, 0, 1]
    assert [struct.unpack_from(">I", d, 4)[0] for d in out] == [0xFFFFFFFE, 3, 8, 13]


def test_frames_too_large_for_the_client_buffer_are_refused() -> None:
    p = AudioPacketizer(KEY, 0, encrypt=True)
    with pytest.raises(ValueError, match="too large"):
        p.packetize(bytes(1380))  # 1392 once padded, + 24 header bytes of the parity packet > 1400
    assert p.next_sequence == 0  # nothing consumed


def test_uneven_payloads_get_no_parity() -> None:
    p = AudioPacketizer(KEY, 0, encrypt=False)
    out = packetize_all(p, [b"a" * 10, b"b" * 10, b"c" * 11, b"d" * 10])
    assert len(out) == 4  # the client would disable FEC for the session on a size mismatch
    assert p.stats.uneven_blocks == 1


# ---------------------------------------------------------------------------------------------- crypto
def test_iv_is_rikeyid_plus_seq_big_endian_then_zeros() -> None:
    assert audio_iv(0x01020304, 0x10) == bytes.fromhex("01020314") + bytes(12)
    # A negative rikeyid is the same uint32; the sum wraps like the client's uint32_t arithmetic.
    assert audio_iv(-1, 1) == bytes(16)
    assert audio_iv(0xFFFFFFFF, 2) == bytes.fromhex("00000001") + bytes(12)


def test_encryption_known_answer_fips197() -> None:
    """FIPS-197 C.1: AES-128(000102..0f, 00112233..eeff) = 69c4e0d8..c55a.

    CBC's first block is AES(P1 XOR IV); with IV = BE32(rikeyid + seq) || 0, choosing
    rikeyid + seq = 0x00112233 and P1 = 0^4 || 44556677..eeff makes P1 XOR IV the FIPS plaintext.
    """
    key = bytes(range(16))
    seq = 5
    rikeyid = 0x00112233 - seq
    plaintext = bytes(4) + bytes.fromhex("445566778899aabbccddeeff")
    ciphertext = encrypt_payload(key, rikeyid, seq, plaintext)
    assert len(ciphertext) == 32  # a whole block of PKCS#7 padding follows 16 bytes
    assert ciphertext[:16] == bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")
    assert decrypt_payload(key, rikeyid, seq, ciphertext) == plaintext


def test_packetizer_encrypts_each_packet_with_its_own_iv() -> None:
    p = AudioPacketizer(KEY, RIKEYID, encrypt=True)
    out = packetize_all(p, [b"same frame"] * 2)
    assert out[0][12:] != out[1][12:]
    for seq, d in enumerate(out):
        assert decrypt_payload(KEY, RIKEYID, seq, d[12:]) == b"same frame"


def test_decrypt_rejects_bad_lengths_and_wrong_keys() -> None:
    ciphertext = encrypt_payload(KEY, 1, 2, b"x" * 20)
    with pytest.raises(AudioDecryptError):
        decrypt_payload(KEY, 1, 2, ciphertext[:-1])
    with pytest.raises(AudioDecryptError):
        decrypt_payload(KEY, 1, 2, b"")
    with pytest.raises(AudioDecryptError):
        decrypt_payload(bytes(16), 1, 2, ciphertext)
    with pytest.raises(ValueError, match="16-byte"):
        AudioPacketizer(b"short", 0, encrypt=True)


# ---------------------------------------------------------------------------------------------- FEC math
def test_every_pair_of_data_shards_is_recoverable() -> None:
    data = [bytes([i * 50 + k for k in range(5)]) for i in range(4)]
    parity = fec_parity(data)
    shards: list[bytes | None] = [*data, *parity]
    for lost in itertools.combinations(range(6), 2):
        damaged = [None if i in lost else s for i, s in enumerate(shards)]
        assert fec_recover(damaged) == data, lost


def test_three_lost_shards_cannot_be_recovered() -> None:
    data = frames(4, 8)
    damaged: list[bytes | None] = [None, None, None, data[3], *fec_parity(data)]
    with pytest.raises(ValueError, match="3 audio data shards lost"):
        fec_recover(damaged)


# ---------------------------------------------------------------------------------------------- depacketizer
@pytest.mark.parametrize("encrypt", [False, True])
def test_round_trip(encrypt: bool) -> None:
    opus = frames(40)
    datagrams = packetize_all(AudioPacketizer(KEY, RIKEYID, encrypt), opus)
    d = AudioDepacketizer(KEY, RIKEYID, encrypt)
    assert receive(d, datagrams) == opus
    s = d.stats
    assert (s.packets, s.fec_packets, s.frames, s.repaired, s.lost, s.malformed) == (40, 20, 40, 0, 0, 0)


# The first block goes through intact in the loss tests: like RtpAudioQueue, a receiver whose first
# datagram is not seq 0 cannot tell a loss from joining late, and starts at the next block.
@pytest.mark.parametrize("lost_index", range(DATA_SHARDS))
def test_every_single_loss_in_a_group_is_repaired(lost_index: int) -> None:
    opus = frames(32)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, RIKEYID, True), opus))
    d = AudioDepacketizer(KEY, RIKEYID, True)
    got = []
    for n, block in enumerate(blocks):
        for i, datagram in enumerate(block):
            if n == 0 or i != lost_index:
                got.extend(d.push_frames(datagram))
    assert [f.payload for f in got] == opus
    assert [f.recovered for f in got] == [i >= 4 and i % 4 == lost_index for i in range(32)]
    assert [f.index for f in got] == list(range(32))
    assert (d.stats.repaired, d.stats.lost, d.stats.unrecoverable_blocks) == (7, 0, 0)


@pytest.mark.parametrize("lost", list(itertools.combinations(range(6), 2)))
def test_two_losses_in_a_group_are_repaired(lost: tuple[int, int]) -> None:
    opus = frames(16)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, RIKEYID, True), opus))
    d = AudioDepacketizer(KEY, RIKEYID, True)
    datagrams = blocks[0] + [x for b in blocks[1:] for i, x in enumerate(b) if i not in lost]
    assert receive(d, datagrams) == opus
    assert d.stats.repaired == 3 * sum(i < 4 for i in lost)
    assert d.stats.lost == 0


def test_three_lost_in_a_group_are_counted_and_concealed() -> None:
    opus = frames(12)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, RIKEYID, True), opus))
    d = AudioDepacketizer(KEY, RIKEYID, True)
    datagrams = blocks[0] + [blocks[1][3], *blocks[1][4:]] + blocks[2]
    out = receive(d, datagrams)
    # The placeholders keep the timing: the client plays concealment for zero-length entries.
    assert out == [*opus[:4], b"", b"", b"", *opus[7:]]
    s = d.stats
    assert (s.lost, s.unrecoverable_blocks, s.repaired, s.frames) == (3, 1, 0, 9)


def test_a_block_lost_entirely_is_skipped_and_counted() -> None:
    opus = frames(12)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, 0, False), opus))
    d = AudioDepacketizer(KEY, 0, False)
    out = receive(d, blocks[0] + blocks[2])
    assert out == opus[:4] + opus[8:]  # like RtpAudioQueue: no placeholders for a vanished block
    assert (d.stats.lost, d.stats.unrecoverable_blocks) == (4, 1)


def test_reordered_packets_come_out_in_order() -> None:
    opus = frames(8)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, 0, False), opus))
    d = AudioDepacketizer(KEY, 0, False)
    b0, b1 = blocks
    order = [b0[0], b0[2], b0[1], b0[3], b0[4], b0[5], b1[1], b1[0], b1[3], b1[2], b1[4], b1[5]]
    assert receive(d, order) == opus
    assert d.stats.lost == 0 and d.stats.repaired == 0


def test_duplicates_and_late_packets_are_counted_not_delivered() -> None:
    opus = frames(8)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, 0, False), opus))
    d = AudioDepacketizer(KEY, 0, False)
    out = [f for x in [blocks[0][0], blocks[0][0], *blocks[0][1:], *blocks[1], blocks[0][2]] for f in d.push(x)]
    assert out == opus
    assert d.stats.duplicates == 1
    assert d.stats.late == 1


def test_a_stream_joined_mid_block_starts_at_the_next_block() -> None:
    opus = frames(12)
    datagrams = packetize_all(AudioPacketizer(KEY, 0, False), opus)
    d = AudioDepacketizer(KEY, 0, False)
    assert receive(d, datagrams[2:]) == opus[4:]
    assert d.stats.lost == 0


def test_sequence_numbers_wrap_without_loss() -> None:
    p = AudioPacketizer(KEY, RIKEYID, encrypt=True)
    p._seq = 65528  # white-box: 8 frames before the wrap, a multiple of 4 like a real stream
    opus = frames(16)
    blocks = split_blocks(packetize_all(p, opus))
    d = AudioDepacketizer(KEY, RIKEYID, True)
    got = [f for b in blocks for i, x in enumerate(b) if i != 1 for f in d.push_frames(x)]
    assert [f.payload for f in got] == opus
    assert [f.index for f in got] == list(range(65528, 65544))
    assert d.stats.repaired == 4


def test_a_jump_in_sequence_numbers_resynchronises() -> None:
    opus = frames(8)
    d = AudioDepacketizer(KEY, 0, False)
    first = AudioPacketizer(KEY, 0, False)
    assert receive(d, packetize_all(first, opus[:4])) == opus[:4]
    later = AudioPacketizer(KEY, 0, False)
    later._seq = 20000
    assert [f for x in packetize_all(later, opus[4:]) for f in d.push(x)] == opus[4:]
    assert d.stats.resyncs == 1


def test_a_restarted_sequence_is_followed_after_a_few_late_packets() -> None:
    opus = frames(40)
    d = AudioDepacketizer(KEY, 0, False)
    ahead = AudioPacketizer(KEY, 0, False)
    ahead._seq = 5000
    assert receive(d, packetize_all(ahead, opus[:8])) == opus[:8]
    restarted = packetize_all(AudioPacketizer(KEY, 0, False), opus[8:])  # seq 0 again
    out = [f for x in restarted for f in d.push(x)]
    # 11 data packets look late; the 12th makes the depacketizer follow the new numbering.
    assert out == opus[8 + 11:]
    assert d.stats.resyncs == 1 and d.stats.late == 11


def test_empty_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        AudioPacketizer(KEY, 0, encrypt=False).packetize(b"")


@pytest.mark.parametrize(("datagram", "error"), [
    (b"", TruncatedAudioPacketError),
    (b"\x80\x61\x00", TruncatedAudioPacketError),
    (bytes([0x40, 97]) + bytes(10), BadAudioVersionError),
    (bytes([0x80, 96]) + bytes(14), UnknownAudioPayloadTypeError),
    (bytes([0x80, PT_FEC]) + bytes(20), TruncatedAudioPacketError),
    (bytes([0x80, PT_FEC]) + bytes(10) + bytes([2, 97]) + bytes(14), BadFecHeaderError),
    (bytes([0x80, PT_FEC]) + bytes(10) + bytes([0, 97, 0, 5]) + bytes(12), BadFecHeaderError),
])
def test_malformed_datagrams_are_counted_never_raised(datagram: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_audio_datagram(datagram)
    d = AudioDepacketizer(KEY, 0, True)
    assert d.push(datagram) == []
    assert d.stats.malformed == 1


def test_undecryptable_payloads_become_concealment() -> None:
    opus = frames(8)
    datagrams = packetize_all(AudioPacketizer(KEY, 7, True), opus)
    bad = bytearray(datagrams[1])
    bad.pop()  # no longer whole AES blocks
    d = AudioDepacketizer(KEY, 7, True)
    out = receive(d, [datagrams[0], bytes(bad), *datagrams[2:]])
    assert out == [opus[0], b"", *opus[2:]]
    assert d.stats.decrypt_failures == 1
    wrong = AudioDepacketizer(bytes(16), 7, True)
    assert receive(wrong, datagrams) == [b""] * 8
    assert wrong.stats.decrypt_failures == 8


def test_parity_with_a_wrong_length_does_not_corrupt_the_block() -> None:
    opus = frames(8)
    blocks = split_blocks(packetize_all(AudioPacketizer(KEY, 0, False), opus))
    d = AudioDepacketizer(KEY, 0, False)
    short_parity = blocks[0][4][:-3]
    out = receive(d, [blocks[0][0], blocks[0][2], blocks[0][3], short_parity, *blocks[1]])
    assert out == [opus[0], b"", opus[2], opus[3], *opus[4:]]
    assert d.stats.fec_invalid == 1
