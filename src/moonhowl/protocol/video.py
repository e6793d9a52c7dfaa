"""GameStream video RTP: host-side packetizer and a client-side depacketizer (sans-IO).

Wire layout of one datagram (``packet_size + 16`` bytes), as moonlight-common-c reads it
(``Video.h``, ``RtpVideoQueue.c``, ``VideoDepacketizer.c``) and Sunshine writes it (``stream.cpp``):

    0   RTP: 0x90 (v2 + extension bit, which the client requires), PT, BE16 seq, BE32 90 kHz ts, SSRC
    12  4 reserved bytes (the client skips them because of the extension bit)
    16  NV_VIDEO_PACKET, little-endian: u32 streamPacketIndex (seq << 8), u32 frameIndex, u8 flags,
        u8 extraFlags, u8 multiFecFlags (0x10), u8 multiFecBlocks (block << 4 | lastBlock << 6),
        u32 fecInfo (dataShards << 22 | shardIndex << 12 | fecPercent << 4)
    32  payload, ``packet_size - 16`` bytes; the last data shard of a frame is zero-padded

FEC covers the whole datagram from the RTP header on: the client feeds full ``packetSize + 16``-byte
packets to nanors. Like Sunshine, the parity is computed with the per-block header fields filled in
(spi, flags, multiFec*, frameIndex) and the RTP header / fecInfo still zero; afterwards the RTP header
byte, seq, timestamp, frameIndex, multiFecBlocks and fecInfo are stamped on every shard, parity
included. A repaired shard therefore has correct flags, streamPacketIndex and payload (which the
client checks) and garbage where the stamps went (which the client overwrites), and a parity packet's
PT, SSRC, streamPacketIndex and flags bytes are parity, not header values.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import ClassVar

from moonhowl.protocol import fec
from moonhowl.protocol.errors import ProtocolError

FLAG_CONTAINS_PIC_DATA = 0x1
FLAG_EOF = 0x2  # last data shard of a FEC block
FLAG_SOF = 0x4  # first data shard of a FEC block

HEADER_SIZE = 32  # RTP 12 + reserved 4 + NV_VIDEO_PACKET 16
NV_HEADER_SIZE = 16
FRAME_HEADER_SIZE = 8
MAX_FEC_BLOCKS = 4  # 2 bits of multiFecBlocks
MAX_BLOCK_SHARDS = 1023  # 10-bit shard index / data count in fecInfo
RTP_HEADER_BYTE = 0x90
MULTI_FEC_FLAGS = 0x10
FRAME_TYPE_P = 1
FRAME_TYPE_IDR = 2

_HEADER = struct.Struct(">BBHII4s")  # RTP + reserved
_NV = struct.Struct("<IIBBBBI")
_FRAME_HEADER = struct.Struct("<BHBHBB")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


class VideoPacketError(ProtocolError):
    """A video datagram that cannot be parsed."""


class TruncatedPacketError(VideoPacketError):
    """Shorter than the 32 bytes of RTP + reserved + NV_VIDEO_PACKET headers."""


class BadVersionError(VideoPacketError):
    """RTP version is not 2."""


class MissingExtensionError(VideoPacketError):
    """RTP extension bit clear: the client would look for NV_VIDEO_PACKET 4 bytes too early."""


class FrameTooLargeError(ValueError):
    """A frame needs more than 4 x 1023 shards; lower the bitrate or request an IDR."""


@dataclass(frozen=True)
class VideoPacket:
    """One video datagram."""

    sequence: int
    timestamp: int
    frame_index: int
    flags: int
    fec_info: int
    multi_fec_blocks: int
    payload: bytes
    stream_packet_index: int = -1  # -1: derive as sequence << 8 on output
    multi_fec_flags: int = MULTI_FEC_FLAGS
    extra_flags: int = 0
    header_byte: int = RTP_HEADER_BYTE
    payload_type: int = 0
    ssrc: int = 0
    reserved: bytes = b"\0\0\0\0"

    @classmethod
    def parse(cls, datagram: bytes) -> VideoPacket:
        if len(datagram) < HEADER_SIZE:
            raise TruncatedPacketError(f"video datagram of {len(datagram)} bytes < {HEADER_SIZE}")
        header, ptype, seq, ts, ssrc, reserved = _HEADER.unpack_from(datagram, 0)
        if header >> 6 != 2:
            raise BadVersionError(f"RTP version {header >> 6}, expected 2")
        if not header & 0x10:
            raise MissingExtensionError("RTP header without the extension bit (0x10)")
        spi, frame, flags, extra, mflags, mblocks, fec_info = _NV.unpack_from(datagram, 16)
        head = (seq, ts, frame, flags, fec_info, mblocks, bytes(datagram[HEADER_SIZE:]))
        return cls(*head, spi, mflags, extra, header, ptype, ssrc, reserved)

    def __bytes__(self) -> bytes:
        spi = self.stream_packet_index if self.stream_packet_index >= 0 else (self.sequence << 8)
        rtp = (self.header_byte, self.payload_type, self.sequence, self.timestamp, self.ssrc, self.reserved)
        nv = (self.frame_index, self.flags, self.extra_flags, self.multi_fec_flags, self.multi_fec_blocks)
        return _HEADER.pack(*rtp) + _NV.pack(spi & 0xFFFFFFFF, *nv, self.fec_info) + self.payload

    @property
    def block_index(self) -> int:
        return (self.multi_fec_blocks >> 4) & 0x3

    @property
    def last_block_index(self) -> int:
        return (self.multi_fec_blocks >> 6) & 0x3

    @property
    def shard_index(self) -> int:
        return (self.fec_info >> 12) & 0x3FF

    @property
    def data_shards(self) -> int:
        return self.fec_info >> 22

    @property
    def fec_percentage(self) -> int:
        return (self.fec_info >> 4) & 0xFF

    @property
    def parity_shards(self) -> int:
        """What the client derives: ceil(data * pct / 100) (RtpVideoQueue.c)."""
        return (self.data_shards * self.fec_percentage + 99) // 100


def _fec_info(data_shards: int, shard_index: int, percentage: int) -> int:
    return data_shards << 22 | shard_index << 12 | percentage << 4


def _data_flags(k: int, n_data: int) -> int:
    """Flags of data shard k of a block: Sunshine marks every block's first and last data shard."""
    return FLAG_CONTAINS_PIC_DATA | (FLAG_SOF if k == 0 else 0) | (FLAG_EOF if k == n_data - 1 else 0)


def _block_parity(n_data: int, percentage: int, min_parity: int) -> tuple[int, int]:
    """(parity shards, percentage to advertise) for one block, as Sunshine's fec::encode picks them.

    The client recomputes the parity count as ceil(n_data * pct / 100) from the advertised percentage,
    so the returned count always equals that, even after raising it to the minimum.
    """
    if percentage == 0:
        return 0, 0
    parity = (n_data * percentage + 99) // 100
    if parity < min_parity:
        # Sunshine raises the advertised percentage so the client expects the extra shards.
        parity = min(min_parity, fec.MAX_SHARDS - n_data)
        percentage = 100 * parity // n_data
    # The field is 8 bits and nanors caps data + parity at 255.
    while parity > 0 and (percentage > 255 or n_data + parity > fec.MAX_SHARDS):
        parity -= 1
        percentage = 100 * parity // n_data
    parity = (n_data * percentage + 99) // 100
    return parity, percentage


class Packetizer:
    """Splits Annex-B frames into FEC-protected video datagrams (Sunshine ``videoBroadcastThread``)."""

    def __init__(self, packet_size: int, fec_percentage: int, min_required_fec_packets: int = 2) -> None:
        if not 32 <= packet_size <= 65507 - 16:
            raise ValueError(f"packet_size {packet_size} out of range")
        if not 0 <= fec_percentage <= 255:
            raise ValueError(f"fec_percentage {fec_percentage} not in 0..255")
        if min_required_fec_packets < 0:
            raise ValueError("min_required_fec_packets < 0")
        self.packet_size = packet_size
        self.fec_percentage = fec_percentage
        self.min_required_fec_packets = min_required_fec_packets
        self.payload_size = packet_size - NV_HEADER_SIZE
        self.block_size = packet_size + 16
        # Unbounded count of datagrams sent; RTP seq is its low 16 bits, streamPacketIndex its low 24.
        self._sent = 0

    @property
    def next_sequence(self) -> int:
        return self._sent & 0xFFFF

    def _split_blocks(self, n_shards: int, stream_len: int) -> tuple[list[tuple[int, int]], int]:
        """[(first shard, shard count)] per FEC block and the FEC percentage to use for this frame."""
        pct = self.fec_percentage
        # Sunshine measures the frame with a 32-byte header slot in front of every shard.
        size = n_shards * HEADER_SIZE + stream_len
        max_data_shards = fec.MAX_SHARDS * 100 // (100 + pct)
        per_block_bytes = max_data_shards * self.block_size
        blocks = -(-size // per_block_bytes)
        if blocks > MAX_FEC_BLOCKS:
            # Sunshine: too big for 4 FEC blocks, so send it in 4 blocks without parity.
            pct = 0
            blocks = MAX_FEC_BLOCKS
        per_block = -(-(size // blocks) // self.block_size)
        if per_block > MAX_BLOCK_SHARDS:
            raise FrameTooLargeError(f"frame needs {per_block} shards per FEC block (max {MAX_BLOCK_SHARDS})")
        spans: list[tuple[int, int]] = []
        start = 0
        for b in range(blocks):
            count = n_shards - start if b == blocks - 1 else min(per_block, n_shards - start)
            if count <= 0:
                break
            spans.append((start, count))
            start += count
        return spans, pct

    def packetize(
        self,
        frame: bytes,
        frame_index: int,
        timestamp_90k: int,
        is_idr: bool,
        host_latency_ms: float,
        *,
        frame_type: int | None = None,
    ) -> list[bytes]:
        """Datagrams for one frame, in send order (block 0 data, block 0 parity, block 1 data, ...).

        ``frame_type`` overrides the header's type byte (e.g. 5 for the first P-frame after reference
        frame invalidation); by default it is 2 for IDR, 1 otherwise.
        """
        ps = self.payload_size
        ftype = frame_type if frame_type is not None else (FRAME_TYPE_IDR if is_idr else FRAME_TYPE_P)
        latency = min(max(int(host_latency_ms * 10 + 0.5), 0), 0xFFFF)
        total = len(frame) + FRAME_HEADER_SIZE
        last_len = total % ps or ps
        stream = _FRAME_HEADER.pack(0x01, latency, ftype, last_len, 0, 0) + frame
        n_shards = -(-total // ps)
        spans, pct = self._split_blocks(n_shards, total)
        last_block = len(spans) - 1
        frame_index &= 0xFFFFFFFF
        ts = _BE32.pack(timestamp_90k & 0xFFFFFFFF)
        frame_le = _LE32.pack(frame_index)
        out: list[bytes] = []
        for block, (first, n_data) in enumerate(spans):
            n_parity, block_pct = _block_parity(n_data, pct, self.min_required_fec_packets)
            mblocks = block << 4 | last_block << 6
            base = self._sent
            payloads = [stream[(first + k) * ps : (first + k + 1) * ps] for k in range(n_data)]
            payloads[-1] = payloads[-1].ljust(ps, b"\0")
            # Headers as they are when Sunshine runs FEC: RTP part and fecInfo still zero.
            headers: list[bytes] = []
            for k in range(n_data):
                flags = _data_flags(k, n_data)
                spi = ((base + k) & 0xFFFFFF) << 8
                headers.append(bytes(16) + _NV.pack(spi, frame_index, flags, 0, MULTI_FEC_FLAGS, mblocks, 0))
            bodies = payloads
            if n_parity:
                parity = fec.encode([h + p for h, p in zip(headers, payloads, strict=True)], n_parity)
                headers += [s[:HEADER_SIZE] for s in parity]
                bodies = payloads + [s[HEADER_SIZE:] for s in parity]
            for k, (pre, body) in enumerate(zip(headers, bodies, strict=True)):
                # Stamp what Sunshine stamps after FEC, on data and parity shards alike.
                hdr = bytearray(pre)
                hdr[0] = RTP_HEADER_BYTE
                hdr[2:4] = _BE16.pack((base + k) & 0xFFFF)
                hdr[4:8] = ts
                hdr[20:24] = frame_le
                hdr[27] = mblocks
                hdr[28:32] = _LE32.pack(_fec_info(n_data, k, block_pct))
                out.append(bytes(hdr) + body)
            self._sent += n_data + n_parity
        return out


@dataclass(frozen=True)
class Frame:
    """A reassembled frame: ``data`` is the Annex-B bitstream without the 8-byte frame header."""

    frame_index: int
    is_idr: bool
    data: bytes
    host_latency_ms: float
    fec_repaired: int
    frame_type: int = FRAME_TYPE_P
    timestamp_90k: int = 0


@dataclass
class DepacketizerStats:
    packets: int = 0
    malformed_packets: int = 0
    duplicate_packets: int = 0
    late_packets: int = 0  # for frames already emitted or given up
    frames: int = 0  # emitted
    lost_frames: int = 0  # never arrived, or arrived but could not be rebuilt
    repaired_shards: int = 0
    unrecoverable_blocks: int = 0
    dropped_frames: int = 0  # complete, but discarded while waiting for an IDR


class _Block:
    __slots__ = ("base_seq", "data", "done", "n_data", "n_parity", "pct", "received", "shards")

    def __init__(self, pkt: VideoPacket) -> None:
        self.n_data = pkt.data_shards
        self.pct = pkt.fec_percentage
        self.n_parity = pkt.parity_shards
        self.base_seq = (pkt.sequence - pkt.shard_index) & 0xFFFF
        self.shards: list[bytes | None] = [None] * (self.n_data + self.n_parity)
        self.received = 0
        self.done = False
        self.data: list[bytes] = []  # full data datagrams once done


class _FrameAssembly:
    __slots__ = ("blocks", "failed", "last_block", "repaired", "timestamp")

    def __init__(self, last_block: int, timestamp: int) -> None:
        self.blocks: dict[int, _Block] = {}
        self.last_block = last_block
        self.failed = False
        self.repaired = 0
        self.timestamp = timestamp

    def complete(self) -> bool:
        return len(self.blocks) == self.last_block + 1 and all(b.done for b in self.blocks.values())


class Depacketizer:
    """Client-side reassembly with FEC repair, like moonlight-common-c's RtpVideoQueue + depacketizer.

    Never raises on network input: bad datagrams are counted and dropped. Frames come out in
    frame-index order. A frame still incomplete once packets of a frame more than ``reorder_window``
    frames newer arrive is given up as lost; a lost frame sets ``needs_idr`` (the caller should ask the
    host for an IDR) and later non-IDR frames are dropped until an IDR frame arrives.
    """

    _MAX_GAP: ClassVar[int] = 1 << 20  # a jump this large is a new stream, not a long loss

    def __init__(self, *, first_frame_index: int = 1, reorder_window: int = 2) -> None:
        self.stats = DepacketizerStats()
        self.needs_idr = False
        self.reorder_window = max(0, reorder_window)
        self._next = first_frame_index
        self._frames: dict[int, _FrameAssembly] = {}

    def push(self, datagram: bytes) -> list[Frame]:
        self.stats.packets += 1
        try:
            pkt = VideoPacket.parse(datagram)
        except ProtocolError:
            self.stats.malformed_packets += 1
            return []
        if not self._valid(pkt):
            self.stats.malformed_packets += 1
            return []
        index = pkt.frame_index
        if index < self._next:
            self.stats.late_packets += 1
            return []
        if index - self._next > self._MAX_GAP:
            self.stats.malformed_packets += 1
            return []
        out: list[Frame] = []
        horizon = index - self.reorder_window
        if horizon > self._next:
            out.extend(self._advance(horizon))
        asm = self._frames.get(index)
        if asm is None:
            asm = self._frames[index] = _FrameAssembly(pkt.last_block_index, pkt.timestamp)
        elif asm.last_block != pkt.last_block_index:
            self.stats.malformed_packets += 1
            return out
        self._add(asm, pkt, bytes(datagram))
        if index > self._next and asm.complete() and not asm.failed and self._is_idr(asm):
            # An IDR makes every older frame useless to the decoder: settle them now rather than
            # hold a picture the user is waiting for until the reorder window passes.
            out.extend(self._advance(index))
        out.extend(self._drain())
        return out

    def flush(self) -> list[Frame]:
        """Emit what is complete and give up on the rest (end of stream)."""
        if not self._frames:
            return []
        return self._advance(max(self._frames) + 1)

    @staticmethod
    def _is_idr(asm: _FrameAssembly) -> bool:
        first = asm.blocks[0].data[0]
        return len(first) > HEADER_SIZE + 3 and first[HEADER_SIZE + 3] == FRAME_TYPE_IDR

    @staticmethod
    def _valid(pkt: VideoPacket) -> bool:
        n_data, n_parity = pkt.data_shards, pkt.parity_shards
        if n_data == 0 or pkt.shard_index >= n_data + n_parity or pkt.block_index > pkt.last_block_index:
            return False
        if n_parity and n_data + n_parity > fec.MAX_SHARDS:
            return False
        return not (pkt.shard_index < n_data and pkt.flags & ~0x7)

    def _add(self, asm: _FrameAssembly, pkt: VideoPacket, datagram: bytes) -> None:
        if asm.failed:
            self.stats.late_packets += 1
            return
        block = asm.blocks.get(pkt.block_index)
        if block is None:
            block = asm.blocks[pkt.block_index] = _Block(pkt)
        elif (
            block.n_data != pkt.data_shards
            or block.pct != pkt.fec_percentage
            or block.base_seq != (pkt.sequence - pkt.shard_index) & 0xFFFF
        ):
            self.stats.malformed_packets += 1
            return
        if block.done:
            self.stats.late_packets += 1
            return
        if block.shards[pkt.shard_index] is not None:
            self.stats.duplicate_packets += 1
            return
        block.shards[pkt.shard_index] = datagram
        block.received += 1
        if block.received >= block.n_data:
            self._finish_block(asm, block)

    def _finish_block(self, asm: _FrameAssembly, block: _Block) -> None:
        n_data = block.n_data
        data = block.shards[:n_data]
        missing = sum(1 for s in data if s is None)
        rebuilt: list[bytes] = []
        if missing:
            # Shorter datagrams are zero-padded to full size, as the client does before nanors.
            size = max(len(s) for s in block.shards if s is not None)
            padded = [s.ljust(size, b"\0") if s is not None else None for s in block.shards]
            with contextlib.suppress(fec.FecError):
                rebuilt = fec.decode(padded, n_data, block.n_parity)
        # Received shards stay as they came (exact lengths); only lost ones come from the repair.
        full = [s if s is not None else (rebuilt[i] if rebuilt else b"") for i, s in enumerate(data)]
        block.shards = []
        if (missing and not rebuilt) or not self._sane(full):
            # moonlight-common-c likewise refuses repaired packets whose flags or indices are off.
            asm.failed = True
            self.stats.unrecoverable_blocks += 1
            return
        block.data = full
        block.done = True
        asm.repaired += missing
        self.stats.repaired_shards += missing

    @staticmethod
    def _sane(shards: list[bytes]) -> bool:
        n = len(shards)
        base = _LE32.unpack_from(shards[0], 16)[0] >> 8
        for k, s in enumerate(shards):
            flags = s[24]
            if flags != _data_flags(k, n) or (_LE32.unpack_from(s, 16)[0] >> 8) != (base + k) & 0xFFFFFF:
                return False
        return True

    def _advance(self, horizon: int) -> list[Frame]:
        """Settle every frame below ``horizon``: emit complete ones in order, count the rest lost."""
        out: list[Frame] = []
        while self._next < horizon:
            asm = self._frames.pop(self._next, None)
            if asm is None:
                # Buffered frames are all >= _next, so the frames before the first of them never arrived.
                stop = min(min(self._frames, default=horizon), horizon)
                self._lose(stop - self._next)
                self._next = stop
                continue
            if not asm.failed and not asm.complete():
                self.stats.unrecoverable_blocks += sum(
                    1 for b in range(asm.last_block + 1) if not (b in asm.blocks and asm.blocks[b].done)
                )
                asm.failed = True
            out += self._settle(asm)
        return out + self._drain()

    def _drain(self) -> list[Frame]:
        out: list[Frame] = []
        while (asm := self._frames.get(self._next)) is not None and (asm.failed or asm.complete()):
            del self._frames[self._next]
            out += self._settle(asm)
        return out

    def _settle(self, asm: _FrameAssembly) -> list[Frame]:
        """Emit or give up the frame at ``_next`` (already removed from the buffer) and move on."""
        frame = None if asm.failed else self._assemble(self._next, asm)
        self._next += 1
        if frame is None:
            self._lose(1)
            return []
        if frame.is_idr:
            self.needs_idr = False
        elif self.needs_idr:
            self.stats.dropped_frames += 1
            return []
        self.stats.frames += 1
        return [frame]

    def _lose(self, count: int) -> None:
        self.stats.lost_frames += count
        self.needs_idr = True

    @staticmethod
    def _assemble(index: int, asm: _FrameAssembly) -> Frame | None:
        """The frame from its data shards, or None if its frame header does not add up."""
        shards = [s for b in range(asm.last_block + 1) for s in asm.blocks[b].data]
        stream = b"".join(s[HEADER_SIZE:] for s in shards)
        last_payload = len(shards[-1]) - HEADER_SIZE
        if len(stream) < FRAME_HEADER_SIZE:
            return None
        kind, latency, ftype, last_len, _, _ = _FRAME_HEADER.unpack_from(stream, 0)
        # 0x01: the 8-byte header hosts send; 0x81: GFE's 44-byte one (moonlight-common-c, >= 7.1.450).
        header_len = {0x01: FRAME_HEADER_SIZE, 0x81: 44}.get(kind)
        # lastPayloadLen trims the zero padding exactly (the client does this for AV1).
        end = len(stream) - last_payload + last_len
        if header_len is None or not 0 < last_len <= last_payload or end < header_len:
            return None
        data = stream[header_len:end]
        return Frame(index, ftype == FRAME_TYPE_IDR, data, latency / 10, asm.repaired, ftype, asm.timestamp)
