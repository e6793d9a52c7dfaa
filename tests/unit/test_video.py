"""Video packetizer -> depacketizer round trips, and the wire fields as moonlight-common-c reads them."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest

from moonhowl.protocol import fec
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.video import (
    BadVersionError,
    Depacketizer,
    Frame,
    FrameTooLargeError,
    MissingExtensionError,
    Packetizer,
    TruncatedPacketError,
    VideoPacket,
)

pytestmark = pytest.mark.unit

PACKET_SIZE = 1392
PAYLOAD = PACKET_SIZE - 16


@dataclass
class Wire:
    """One datagram decoded with plain struct calls, the way Video.h lays it out."""

    header: int
    ptype: int
    seq: int
    ts: int
    ssrc: int
    reserved: bytes
    spi: int
    frame: int
    flags: int
    extra: int
    mflags: int
    mblocks: int
    fec_info: int
    payload: bytes

    @classmethod
    def of(cls, d: bytes) -> Wire:
        header, ptype, seq, ts, ssrc = struct.unpack_from(">BBHII", d, 0)
        spi, frame, flags, extra, mflags, mblocks, fec_info = struct.unpack_from("<IIBBBBI", d, 16)
        return cls(
            header,
            ptype,
            seq,
            ts,
            ssrc,
            d[12:16],
            spi,
            frame,
            flags,
            extra,
            mflags,
            mblocks,
            fec_info,
            d[32:],
        )

    @property
    def n_data(self) -> int:
        return self.fec_info >> 22

    @property
    def idx(self) -> int:
        return (self.fec_info >> 12) & 0x3FF

    @property
    def pct(self) -> int:
        return (self.fec_info >> 4) & 0xFF

    @property
    def block(self) -> int:
        return (self.mblocks >> 4) & 3

    @property
    def last_block(self) -> int:
        return (self.mblocks >> 6) & 3


def blocks_of(datagrams: list[bytes]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for d in datagrams:
        out.setdefault(Wire.of(d).block, []).append(d)
    return out


def push_all(dp: Depacketizer, datagrams: list[bytes]) -> list[Frame]:
    frames: list[Frame] = []
    for d in datagrams:
        frames += dp.push(d)
    return frames


def annexb(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def test_header_fields_as_the_client_reads_them() -> None:
    rng = random.Random(1)
    frame = annexb(rng, 40_000)
    pk = Packetizer(PACKET_SIZE, 20)
    out = pk.packetize(frame, 1, 9000, True, 12.34)
    wires = [Wire.of(d) for d in out]
    n_data = -(-(len(frame) + 8) // PAYLOAD)
    n_parity = -(-n_data * 20 // 100)
    assert len(out) == n_data + n_parity
    assert all(len(d) == PACKET_SIZE + 16 for d in out)
    for k, w in enumerate(wires):
        assert w.header == 0x90 and w.seq == k and w.ts == 9000 and w.frame == 1
        assert (w.n_data, w.idx, w.pct) == (n_data, k, 20)
        assert w.mblocks == 0  # block 0 of 1
        # The client's own parity count from fecInfo: ceil(nData * pct / 100).
        assert (w.n_data * w.pct + 99) // 100 == n_parity
    for k, w in enumerate(wires[:n_data]):
        assert w.ptype == 0 and w.ssrc == 0 and w.reserved == b"\0\0\0\0" and w.extra == 0
        assert w.spi == k << 8 and w.mflags == 0x10
        assert w.flags == 0x1 | (0x4 if k == 0 else 0) | (0x2 if k == n_data - 1 else 0)
    first = wires[0].payload
    assert first[0] == 0x01
    assert struct.unpack_from("<H", first, 1)[0] == 123  # 12.34 ms in 0.1 ms units
    assert first[3] == 2  # IDR
    last_len = struct.unpack_from("<H", first, 4)[0]
    assert last_len == (len(frame) + 8) % PAYLOAD and first[6:8] == b"\0\0"
    assert first[8:] == frame[: PAYLOAD - 8]
    assert wires[n_data - 1].payload[:last_len] == frame[-last_len:]
    assert wires[n_data - 1].payload[last_len:] == bytes(PAYLOAD - last_len)


def test_p_frame_type_latency_clamp_and_override() -> None:
    pk = Packetizer(PACKET_SIZE, 0)
    assert Wire.of(pk.packetize(b"\0\0\1x", 1, 0, False, 1e9)[0]).payload[:4] == b"\x01\xff\xff\x01"
    assert Wire.of(pk.packetize(b"\0\0\1x", 2, 0, False, -5)[0]).payload[:4] == b"\x01\x00\x00\x01"
    assert Wire.of(pk.packetize(b"\0\0\1x", 3, 0, False, 0, frame_type=5)[0]).payload[3] == 5


def test_rtp_sequence_continuous_across_data_parity_and_frames() -> None:
    rng = random.Random(2)
    pk = Packetizer(PACKET_SIZE, 20)
    seqs: list[int] = []
    for i, size in enumerate([1, 5_000, 40_000, 1_000, 300_000, 17]):
        seqs += [Wire.of(d).seq for d in pk.packetize(annexb(rng, size), i + 1, i * 1500, i == 0, 1.0)]
    assert seqs == list(range(len(seqs)))
    assert pk.next_sequence == len(seqs)


def test_sequence_and_stream_index_wrap() -> None:
    pk = Packetizer(PACKET_SIZE, 20)
    pk._sent = 0xFFFFFE  # just below the 24-bit streamPacketIndex wrap, and the 16-bit seq one
    wires = [Wire.of(d) for d in pk.packetize(bytes(3000), 1, 0, True, 0)]
    assert [w.seq for w in wires[:4]] == [0xFFFE, 0xFFFF, 0, 1]
    assert [w.spi >> 8 for w in wires[:3]] == [0xFFFFFE, 0xFFFFFF, 0]
    dp = Depacketizer()
    assert [f.data for f in push_all(dp, wires_to_bytes(wires))] == [bytes(3000)]


def wires_to_bytes(wires: list[Wire]) -> list[bytes]:
    out = []
    for w in wires:
        head = struct.pack(">BBHII", w.header, w.ptype, w.seq, w.ts, w.ssrc) + w.reserved
        nv = struct.pack("<IIBBBBI", w.spi, w.frame, w.flags, w.extra, w.mflags, w.mblocks, w.fec_info)
        out.append(head + nv + w.payload)
    return out


def test_minimum_parity_raises_advertised_percentage() -> None:
    wires = [Wire.of(d) for d in Packetizer(PACKET_SIZE, 20).packetize(b"x", 1, 0, True, 0)]
    assert len(wires) == 3  # 1 data + 2 parity (Sunshine: minRequiredFecPackets)
    assert {(w.n_data, w.pct) for w in wires} == {(1, 200)}
    wires = [Wire.of(d) for d in Packetizer(PACKET_SIZE, 20, 4).packetize(bytes(3 * PAYLOAD), 1, 0, True, 0)]
    # 4 data shards: 100*4//4 = 100 %, and the client's ceil(4*100/100) = 4 parity shards.
    assert len(wires) == 8 and {(w.n_data, w.pct) for w in wires} == {(4, 100)}
    wires = [Wire.of(d) for d in Packetizer(PACKET_SIZE, 0).packetize(bytes(5000), 1, 0, True, 0)]
    assert len(wires) == 4 and {w.pct for w in wires} == {0}


def expected_blocks(frame_len: int, pct: int) -> tuple[list[int], int]:
    """Sunshine videoBroadcastThread's split, redone here: data shards per block and FEC percentage."""
    blocksize = PACKET_SIZE + 16
    shards = -(-(frame_len + 8) // PAYLOAD)
    size = frame_len + 8 + shards * 32
    per = (255 * 100) // (100 + pct) * blocksize
    n = -(-size // per)
    if n > 4:
        pct, n = 0, 4
    aligned = -(-(size // n) // blocksize)
    counts = [aligned] * (n - 1)
    return [*counts, shards - sum(counts)], pct


@pytest.mark.parametrize("size", [300_000, 700_000, 1_100_000, 1_600_000])
def test_multi_block_layout_follows_sunshine(size: int) -> None:
    rng = random.Random(size)
    frame = annexb(rng, size)
    out = Packetizer(PACKET_SIZE, 20).packetize(frame, 7, 0, True, 0)
    counts, pct = expected_blocks(size, 20)
    blocks = blocks_of(out)
    assert [Wire.of(b[0]).n_data for b in blocks.values()] == counts
    for number, datagrams in blocks.items():
        wires = [Wire.of(d) for d in datagrams]
        n_data = wires[0].n_data
        assert all(w.last_block == len(counts) - 1 and w.block == number for w in wires)
        assert len(wires) == n_data + (n_data * wires[0].pct + 99) // 100
        assert len(wires) <= 255 or pct == 0
        assert wires[0].flags & 0x4 and wires[n_data - 1].flags & 0x2
        assert [w.idx for w in wires] == list(range(len(wires)))
    if pct == 0:  # over 4 blocks' worth: Sunshine sends it in 4 blocks without FEC
        assert len(out) == sum(counts) and all(Wire.of(d).pct == 0 for d in out)
    frames = push_all(Depacketizer(first_frame_index=7), out)
    assert [f.data == frame for f in frames] == [True]


def test_frame_beyond_protocol_limit_raises() -> None:
    with pytest.raises(FrameTooLargeError):
        Packetizer(64, 20).packetize(bytes(4 * 1024 * 48), 1, 0, True, 0)


@pytest.mark.parametrize("size", [1, 7, PAYLOAD - 8, PAYLOAD - 7, PAYLOAD, 2 * PAYLOAD - 8, 40_000, 250_000])
def test_round_trip_without_loss(size: int) -> None:
    rng = random.Random(size)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    frames = [annexb(rng, size), annexb(rng, max(1, size // 3))]
    got = push_all(
        dp, pk.packetize(frames[0], 1, 100, True, 2.5) + pk.packetize(frames[1], 2, 1600, False, 0)
    )
    assert [(f.frame_index, f.is_idr, f.data, f.fec_repaired) for f in got] == [
        (1, True, frames[0], 0),
        (2, False, frames[1], 0),
    ]
    assert got[0].host_latency_ms == 2.5 and got[0].timestamp_90k == 100
    assert dp.stats.frames == 2 and dp.stats.lost_frames == 0 and not dp.needs_idr


@pytest.mark.parametrize("size", [1, 5_000, 40_000, 400_000])
def test_loss_up_to_parity_is_repaired_in_any_order(size: int) -> None:
    rng = random.Random(size + 1)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    for index in range(1, 4):
        frame = annexb(rng, size)
        sent: list[bytes] = []
        lost_data = 0
        for datagrams in blocks_of(pk.packetize(frame, index, index * 1500, index == 1, 0)).values():
            n_data = Wire.of(datagrams[0]).n_data
            drop = set(rng.sample(range(len(datagrams)), len(datagrams) - n_data))
            lost_data += sum(1 for k in drop if k < n_data)
            sent += [d for k, d in enumerate(datagrams) if k not in drop]
        rng.shuffle(sent)
        got = push_all(dp, sent)
        assert [(f.frame_index, f.data == frame, f.fec_repaired) for f in got] == [(index, True, lost_data)]
    assert dp.stats.lost_frames == 0 and dp.stats.unrecoverable_blocks == 0


def test_repaired_shard_has_what_the_client_checks() -> None:
    # moonlight-common-c's FEC validation compares flags, streamPacketIndex, reserved and payload of a
    # rebuilt packet with the dropped one, and overwrites RTP header, frameIndex and multiFecBlocks.
    rng = random.Random(3)
    out = Packetizer(PACKET_SIZE, 20).packetize(annexb(rng, 20_000), 1, 777, True, 0)
    n_data = Wire.of(out[0]).n_data
    n_parity = len(out) - n_data
    for k in (0, n_data // 2, n_data - 1):
        shards: list[bytes | None] = list(out)
        shards[k] = None
        rebuilt = fec.decode(shards, n_data, n_parity)[k]
        assert rebuilt[16:20] == out[k][16:20]
        assert rebuilt[24:27] == out[k][24:27]
        assert rebuilt[32:] == out[k][32:]
        assert rebuilt[8:16] == out[k][8:16]  # SSRC and reserved are also intact


def lose_frame(pk: Packetizer, index: int, rng: random.Random, *, beyond_parity: bool) -> list[bytes]:
    datagrams = pk.packetize(annexb(rng, 30_000), index, 0, False, 0)
    if not beyond_parity:
        return datagrams
    n_parity = len(datagrams) - Wire.of(datagrams[0]).n_data
    drop = set(rng.sample(range(len(datagrams)), n_parity + 1))
    return [d for k, d in enumerate(datagrams) if k not in drop]


def test_loss_beyond_parity_loses_frame_until_next_idr() -> None:
    rng = random.Random(4)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    got = push_all(dp, pk.packetize(b"\0\0\0\1idr", 1, 0, True, 0))
    got += push_all(dp, lose_frame(pk, 2, rng, beyond_parity=True))
    assert not dp.needs_idr  # still within the reorder window: parts of frame 2 may be late
    for index in (3, 4, 5):
        got += push_all(dp, lose_frame(pk, index, rng, beyond_parity=False))
    assert dp.needs_idr
    assert dp.stats.lost_frames == 1 and dp.stats.unrecoverable_blocks == 1
    idr = b"\0\0\0\1" + annexb(rng, 50_000)
    got += push_all(dp, pk.packetize(idr, 6, 0, True, 0))
    assert [f.frame_index for f in got] == [1, 6] and got[-1].data == idr
    assert not dp.needs_idr
    assert dp.stats.dropped_frames == 3  # P-frames 3-5 depend on the lost frame 2


def test_loss_without_fec_loses_the_frame() -> None:
    pk, dp = Packetizer(PACKET_SIZE, 0), Depacketizer(reorder_window=0)
    push_all(dp, pk.packetize(b"a", 1, 0, True, 0))
    push_all(dp, pk.packetize(bytes(5000), 2, 0, False, 0)[1:])
    got = push_all(dp, pk.packetize(b"c", 3, 0, True, 0))
    assert [f.data for f in got] == [b"c"]
    assert (dp.stats.frames, dp.stats.lost_frames, dp.stats.unrecoverable_blocks) == (2, 1, 1)


def test_whole_frames_missing_count_as_lost() -> None:
    rng = random.Random(5)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    out = [pk.packetize(annexb(rng, 3000), i, 0, i in (1, 9), 0) for i in range(1, 10)]
    got = push_all(dp, out[0] + out[3] + out[4] + out[5] + out[6] + out[7] + out[8])  # frames 2, 3 gone
    assert dp.stats.lost_frames == 2 and dp.stats.unrecoverable_blocks == 0
    assert [f.frame_index for f in got] == [1, 9] and dp.stats.dropped_frames == 5
    dp2 = Depacketizer()
    push_all(dp2, pk.packetize(b"x", 1000, 0, True, 0))  # a jump: frames 1..999 lost, O(1)
    assert dp2.stats.lost_frames == 999


def test_interleaved_frames_come_out_in_order() -> None:
    rng = random.Random(6)
    pk, dp = Packetizer(PACKET_SIZE, 10), Depacketizer()
    frames = [annexb(rng, 20_000 + i) for i in range(6)]
    packets = [pk.packetize(f, i + 1, 0, i == 0, 0) for i, f in enumerate(frames)]
    got: list[Frame] = []
    for a, b in zip(packets[0::2], packets[1::2], strict=True):
        mixed = a + b
        rng.shuffle(mixed)
        got += push_all(dp, mixed)
    assert [f.data for f in got] == frames


def test_duplicates_and_late_packets_are_ignored() -> None:
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    out = pk.packetize(bytes(10_000), 1, 0, True, 0)
    got = dp.push(out[0]) + dp.push(out[0])
    assert dp.stats.duplicate_packets == 1
    got += push_all(dp, out[1:])
    assert len(got) == 1
    assert push_all(dp, out) == []
    assert dp.stats.late_packets >= len(out) and dp.stats.malformed_packets == 0


def test_memory_is_bounded() -> None:
    rng = random.Random(7)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer(reorder_window=2)
    for i in range(1, 60):
        push_all(dp, lose_frame(pk, i, rng, beyond_parity=True))
        assert len(dp._frames) <= 3
    assert dp.stats.lost_frames >= 56


def test_flush_settles_pending_frames() -> None:
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    assert [f.data for f in push_all(dp, pk.packetize(b"a", 1, 0, True, 0))] == [b"a"]
    lost = pk.packetize(b"b" * 5000, 2, 0, False, 0)
    push_all(dp, lost[:1])  # frame 2: one data shard of five arrives
    assert push_all(dp, pk.packetize(b"c", 3, 0, False, 0)) == []  # held behind frame 2
    assert dp.flush() == []  # frame 2 lost, so P-frame 3 is undecodable
    assert (dp.stats.lost_frames, dp.stats.dropped_frames, dp.stats.unrecoverable_blocks) == (1, 1, 1)
    assert dp.needs_idr and dp.flush() == []


def test_complete_idr_after_a_gap_is_not_held() -> None:
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer(reorder_window=5)
    push_all(dp, pk.packetize(b"a", 1, 0, True, 0))
    push_all(dp, pk.packetize(b"b" * 3000, 2, 0, False, 0)[:1])
    got = push_all(dp, pk.packetize(b"c", 3, 0, True, 0))
    assert [f.frame_index for f in got] == [3] and dp.stats.lost_frames == 1 and not dp.needs_idr


def test_video_packet_round_trip_and_errors() -> None:
    datagram = Packetizer(PACKET_SIZE, 20).packetize(bytes(100), 3, 42, True, 0)[0]
    pkt = VideoPacket.parse(datagram)
    assert bytes(pkt) == datagram
    assert (pkt.sequence, pkt.timestamp, pkt.frame_index, pkt.shard_index, pkt.data_shards) == (
        0,
        42,
        3,
        0,
        1,
    )
    assert (pkt.parity_shards, pkt.block_index, pkt.last_block_index, pkt.fec_percentage) == (2, 0, 0, 200)
    made = VideoPacket(
        sequence=5, timestamp=1, frame_index=2, flags=7, fec_info=1 << 22, multi_fec_blocks=0, payload=b"z"
    )
    assert Wire.of(bytes(made)).spi == 5 << 8 and VideoPacket.parse(bytes(made)) == VideoPacket.parse(
        bytes(made)
    )
    for bad, error in [
        (datagram[:31], TruncatedPacketError),
        (b"\x50" + datagram[1:], BadVersionError),
        (b"\x80" + datagram[1:], MissingExtensionError),
    ]:
        with pytest.raises(error):
            VideoPacket.parse(bad)
        assert issubclass(error, ProtocolError)


def test_malformed_datagrams_are_counted_and_dropped() -> None:
    rng = random.Random(8)
    pk, dp = Packetizer(PACKET_SIZE, 20), Depacketizer()
    good = pk.packetize(bytes(5000), 1, 0, True, 0)
    bad = [
        b"",
        b"\x90",
        good[0][:31],
        b"\x50" + good[0][1:],
        b"\x80" + good[0][1:],
        good[0][:28] + struct.pack("<I", 0),  # zero data shards
        good[0][:28] + struct.pack("<I", 4 << 22 | 9 << 12 | 20 << 4),  # shard index past the block
        good[0][:24] + b"\x09" + good[0][25:],  # undefined flag bit on a data shard
        good[0][:27] + b"\x10" + good[0][28:],  # block 1 of 1
    ]
    for d in bad:
        assert dp.push(d) == []
    assert dp.stats.malformed_packets == len(bad)
    # Fuzz: random bytes and bit-flipped real packets never raise.
    for _ in range(3000):
        mutated = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(32 if rng.random() < 0.8 else len(mutated))] = rng.randrange(256)
        dp.push(bytes(mutated) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 80)))
    for _ in range(200):
        dp.push(rng.randbytes(rng.randint(0, 1500)))
    assert dp.stats.malformed_packets > len(bad)
