"""GameStream audio RTP: host-side packetizer and client-side depacketizer (sans-IO).

Wire layout, as Sunshine writes it (``stream.cpp`` ``audioBroadcastThread``) and moonlight-common-c
reads it (``AudioStream.c``, ``RtpAudioQueue.c``):

* data packet: RTP ``{0x80, PT 97, BE16 seq, BE32 timestamp, BE32 ssrc 0}`` + the Opus frame, or
  with SS_ENC_AUDIO its AES-128-CBC ciphertext (key = rikey, IV = ``BE32(rikeyid + seq)`` and 12
  zero bytes, PKCS#7 padding: Sunshine's ``cbc_t`` with padding on, the client's
  ``PltDecryptMessage(ALGORITHM_AES_CBC, ... CIPHER_FLAG_FINISH)``). seq counts data packets from 0;
  the timestamp is in milliseconds and advances by the packet duration.
* after every 4th data packet (seq % 4 == 3), 2 parity packets: RTP ``{0x80, PT 127, seq + 1 + x,
  ts 0, ssrc 0}`` + AUDIO_FEC_HEADER ``{u8 fecShardIndex, u8 payloadType 97, BE16
  baseSequenceNumber, BE32 baseTimestamp, BE32 ssrc}`` + the parity shard. The parity packets'
  RTP seq numbers repeat the next block's data numbers; the client ignores them and files the
  packet by the FEC header's base sequence number.

The parity covers the RTP *payloads* only (encrypted ones when encryption is on): the client feeds
``dataPackets[i] + 1`` (past the 12-byte RTP header) and the parity bytes after the FEC header to
nanors, with ``blockSize = datagram length - 12`` taken from the first packet of the block.
Shards are never padded: Sunshine encodes ``bytes`` of the last data packet for all four, and the
client disables audio FEC for the rest of the session ("Audio block size mismatch") when a block
has packets of different lengths. Constant lengths come from CBR Opus (Sunshine sets
``OPUS_SET_VBR(0)``), which the host pipeline uses as well.

The code is Reed-Solomon 4+2 over GF(2^8) (polynomial 0x11D, nanors' field), but with the fixed
parity rows ``77 40 38 0e`` / ``c7 a7 0d 6c`` that both sides copy over nanors' own matrix
("the one Nvidia uses for audio data", RtpAudioQueue.c ``RtpaInitializeQueue``). Parity shard j
is the XOR over i of ``row_j[i] * payload_i``. Every 2x2 submatrix of those rows is invertible,
so any two lost data packets of a block can be rebuilt.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.fec import gf_inv, gf_mul

log = logging.getLogger(__name__)

__all__ = [
    "DATA_SHARDS",
    "FEC_SHARDS",
    "MAX_DATAGRAM",
    "PARITY_ROWS",
    "PT_AUDIO",
    "PT_FEC",
    "AudioDecryptError",
    "AudioDepacketizer",
    "AudioFecPacket",
    "AudioFrame",
    "AudioPacket",
    "AudioPacketError",
    "AudioPacketizer",
    "AudioReceiveStats",
    "AudioSendStats",
    "audio_iv",
    "decrypt_payload",
    "encrypt_payload",
    "fec_parity",
    "fec_recover",
    "parse_audio_datagram",
]

PT_AUDIO = 97  # RtpAudioQueue.c RTP_PAYLOAD_TYPE_AUDIO
PT_FEC = 127  # RtpAudioQueue.c RTP_PAYLOAD_TYPE_FEC
DATA_SHARDS = 4  # Limelight-internal.h RTPA_DATA_SHARDS
FEC_SHARDS = 2  # RTPA_FEC_SHARDS
RTP_HEADER_BYTE = 0x80  # RTPv2, no extension (the recovered packets get exactly this byte)
PARITY_ROWS: tuple[tuple[int, ...], ...] = ((0x77, 0x40, 0x38, 0x0E), (0xC7, 0xA7, 0x0D, 0x6C))
# AudioStream.c MAX_PACKET_SIZE: the client receives into a 1400-byte buffer, so anything longer
# is truncated there (and then fails to decrypt or decode).
MAX_DATAGRAM = 1400
AES_BLOCK = 16
# More pending FEC blocks than this means the stream jumped (host restarted its counter, or a long
# outage); the depacketizer then resynchronises instead of waiting for the gap to fill.
MAX_PENDING_BLOCKS = 16
# This many data packets in a row from before the current position means the sequence restarted.
LATE_RUN_RESYNC = 3 * DATA_SHARDS

_RTP = struct.Struct(">BBHII")
_FEC = struct.Struct(">BBHII")
RTP_HEADER_SIZE = _RTP.size  # 12
FEC_HEADER_SIZE = _FEC.size  # 12: sizeof(AUDIO_FEC_HEADER)


class AudioPacketError(ProtocolError):
    """An audio datagram that cannot be parsed."""


class TruncatedAudioPacketError(AudioPacketError):
    """Shorter than the RTP header (or RTP + FEC header for a parity packet)."""


class BadAudioVersionError(AudioPacketError):
    """RTP version is not 2."""


class UnknownAudioPayloadTypeError(AudioPacketError):
    """Neither 97 (Opus) nor 127 (FEC); the client logs "Invalid RTP audio payload type"."""


class BadFecHeaderError(AudioPacketError):
    """Shard index >= 2 or a base sequence number not on a 4-packet boundary (RtpAudioQueue.c
    rejects both; the latter disables FEC for the session)."""


class AudioDecryptError(ProtocolError):
    """A payload that is not whole AES blocks or whose PKCS#7 padding is wrong (wrong key/IV)."""


# ---------------------------------------------------------------------------------------------- packets
@dataclass(frozen=True)
class AudioPacket:
    """One RTP data packet (PT 97): the (possibly encrypted) Opus frame as payload."""

    sequence: int
    timestamp: int
    payload: bytes
    ssrc: int = 0
    payload_type: int = PT_AUDIO
    header_byte: int = RTP_HEADER_BYTE

    @classmethod
    def parse(cls, datagram: bytes) -> AudioPacket:
        header, ptype, seq, ts, ssrc = _parse_rtp(datagram)
        if ptype != PT_AUDIO:
            raise UnknownAudioPayloadTypeError(f"payload type {ptype} is not audio ({PT_AUDIO})")
        return cls(seq, ts, bytes(datagram[RTP_HEADER_SIZE:]), ssrc, ptype, header)

    def __bytes__(self) -> bytes:
        head = _RTP.pack(self.header_byte, self.payload_type, self.sequence & 0xFFFF,
                         self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)
        return head + self.payload


@dataclass(frozen=True)
class AudioFecPacket:
    """One parity packet (RTP PT 127 + AUDIO_FEC_HEADER + parity shard)."""

    sequence: int  # RTP seq: Sunshine sends base + 4 + shard_index; the client ignores it
    shard_index: int
    base_sequence: int
    base_timestamp: int
    parity: bytes
    ssrc: int = 0  # the FEC header's copy of the data packets' SSRC
    payload_type: int = PT_AUDIO  # the FEC header's payloadType: the data packets' PT
    rtp_timestamp: int = 0
    rtp_ssrc: int = 0
    header_byte: int = RTP_HEADER_BYTE

    @classmethod
    def parse(cls, datagram: bytes) -> AudioFecPacket:
        header, ptype, seq, ts, rtp_ssrc = _parse_rtp(datagram)
        if ptype != PT_FEC:
            raise UnknownAudioPayloadTypeError(f"payload type {ptype} is not audio FEC ({PT_FEC})")
        if len(datagram) < RTP_HEADER_SIZE + FEC_HEADER_SIZE:
            raise TruncatedAudioPacketError(
                f"audio FEC datagram of {len(datagram)} bytes < {RTP_HEADER_SIZE + FEC_HEADER_SIZE}")
        index, data_pt, base_seq, base_ts, ssrc = _FEC.unpack_from(datagram, RTP_HEADER_SIZE)
        if index >= FEC_SHARDS:
            raise BadFecHeaderError(f"FEC shard index {index} >= {FEC_SHARDS}")
        if base_seq % DATA_SHARDS:
            raise BadFecHeaderError(f"FEC base sequence number {base_seq} is not a multiple of {DATA_SHARDS}")
        parity = bytes(datagram[RTP_HEADER_SIZE + FEC_HEADER_SIZE:])
        return cls(seq, index, base_seq, base_ts, parity, ssrc, data_pt, ts, rtp_ssrc, header)

    def __bytes__(self) -> bytes:
        rtp = _RTP.pack(self.header_byte, PT_FEC, self.sequence & 0xFFFF, self.rtp_timestamp & 0xFFFFFFFF,
                        self.rtp_ssrc & 0xFFFFFFFF)
        fec = _FEC.pack(self.shard_index, self.payload_type, self.base_sequence & 0xFFFF,
                        self.base_timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)
        return rtp + fec + self.parity


def _parse_rtp(datagram: bytes) -> tuple[int, int, int, int, int]:
    if len(datagram) < RTP_HEADER_SIZE:
        raise TruncatedAudioPacketError(f"audio datagram of {len(datagram)} bytes < {RTP_HEADER_SIZE}")
    header, ptype, seq, ts, ssrc = _RTP.unpack_from(datagram, 0)
    if header >> 6 != 2:
        raise BadAudioVersionError(f"RTP version {header >> 6}, expected 2")
    # The client compares the whole byte with 97/127 (packetType), so the marker bit is not masked.
    return header, ptype, seq, ts, ssrc


def parse_audio_datagram(datagram: bytes) -> AudioPacket | AudioFecPacket:
    """The data or parity packet in ``datagram``; raises an AudioPacketError subclass otherwise."""
    if len(datagram) >= 2 and datagram[1] == PT_FEC:
        return AudioFecPacket.parse(datagram)
    return AudioPacket.parse(datagram)


# ---------------------------------------------------------------------------------------------- crypto
def audio_iv(rikeyid: int, sequence: int) -> bytes:
    """``BE32(rikeyid + seq)`` then 12 zero bytes (AudioStream.c ``decodeInputData``).

    rikeyid is the launch's signed decimal ``rikeyid``; both sides add in uint32 arithmetic.
    """
    return ((rikeyid + sequence) & 0xFFFFFFFF).to_bytes(4, "big") + bytes(12)


def _check_key(key: bytes) -> None:
    if len(key) != 16:
        raise ValueError(f"the audio key is the 16-byte rikey, got {len(key)} bytes")


def encrypt_payload(key: bytes, rikeyid: int, sequence: int, plaintext: bytes) -> bytes:
    """AES-128-CBC with PKCS#7: always 1..16 bytes longer than the plaintext."""
    _check_key(key)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(audio_iv(rikeyid, sequence))).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def decrypt_payload(key: bytes, rikeyid: int, sequence: int, ciphertext: bytes) -> bytes:
    """Inverse of :func:`encrypt_payload`; raises AudioDecryptError on bad length or padding."""
    _check_key(key)
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise AudioDecryptError(f"audio ciphertext of {len(ciphertext)} bytes is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(audio_iv(rikeyid, sequence))).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise AudioDecryptError(f"bad PKCS#7 padding in audio packet {sequence} (wrong key?)") from exc


# ---------------------------------------------------------------------------------------------- FEC
@lru_cache(maxsize=256)
def _mul_table(c: int) -> bytes:
    """Translate table for "multiply every byte by c" in nanors' field."""
    return bytes(gf_mul(c, x) for x in range(256))


def _combine(coefficients: Sequence[int], shards: Sequence[bytes], acc: int = 0) -> int:
    """XOR of c * shard over the pairs, as a little-endian int (one translate + one XOR each)."""
    for c, shard in zip(coefficients, shards, strict=True):
        if c == 1:
            acc ^= int.from_bytes(shard, "little")
        elif c:
            acc ^= int.from_bytes(shard.translate(_mul_table(c)), "little")
    return acc


def fec_parity(payloads: Sequence[bytes]) -> list[bytes]:
    """The two parity shards of four equal-length payloads (nanors ``reed_solomon_encode`` with the
    audio matrix)."""
    if len(payloads) != DATA_SHARDS:
        raise ValueError(f"an audio FEC block has {DATA_SHARDS} data shards, got {len(payloads)}")
    size = len(payloads[0])
    if any(len(p) != size for p in payloads):
        raise ValueError("audio FEC shards differ in length")
    shards = [bytes(p) for p in payloads]
    return [_combine(row, shards).to_bytes(size, "little") for row in PARITY_ROWS]


def fec_recover(shards: Sequence[bytes | None]) -> list[bytes]:
    """The 4 data shards from 6 slots (4 data, 2 parity; None = lost).

    Raises ValueError when more data shards are lost than parity shards arrived, or the lengths
    differ (the client gives up on such a block too).
    """
    if len(shards) != DATA_SHARDS + FEC_SHARDS:
        raise ValueError(f"expected {DATA_SHARDS + FEC_SHARDS} shard slots, got {len(shards)}")
    present = [s for s in shards if s is not None]
    if not present:
        raise ValueError("no shards received")
    size = len(present[0])
    if any(len(s) != size for s in present):
        raise ValueError("audio FEC shards differ in length")
    data = list(shards[:DATA_SHARDS])
    missing = [i for i, s in enumerate(data) if s is None]
    if not missing:
        return [bytes(s) for s in data if s is not None]
    rows = [j for j in range(FEC_SHARDS) if shards[DATA_SHARDS + j] is not None][: len(missing)]
    if len(rows) < len(missing):
        raise ValueError(f"{len(missing)} audio data shards lost, {len(rows)} parity shards received")
    known = [i for i in range(DATA_SHARDS) if data[i] is not None]
    known_shards = [bytes(s) for s in data if s is not None]
    # parity_r + sum over known i of P[r][i] d_i = sum over lost e of P[r][e] d_e (GF addition is XOR).
    syndromes = []
    for r in rows:
        parity = shards[DATA_SHARDS + r]
        assert parity is not None
        acc = _combine([PARITY_ROWS[r][i] for i in known], known_shards, int.from_bytes(parity, "little"))
        syndromes.append(acc.to_bytes(size, "little"))
    out = [s if s is not None else b"" for s in data]
    if len(missing) == 1:
        (e,), (r,) = missing, rows
        out[e] = syndromes[0].translate(_mul_table(gf_inv(PARITY_ROWS[r][e])))
        return [bytes(s) for s in out]
    # Two unknowns: invert [[a b] [c d]] = 1/det [[d b] [c a]] (minus is plus in GF(2^8)).
    e0, e1 = missing
    a, b = PARITY_ROWS[rows[0]][e0], PARITY_ROWS[rows[0]][e1]
    c, d = PARITY_ROWS[rows[1]][e0], PARITY_ROWS[rows[1]][e1]
    det = gf_mul(a, d) ^ gf_mul(b, c)
    if det == 0:  # cannot happen with these rows (the unit test checks every pair)
        raise ValueError("singular audio FEC submatrix")
    inv = gf_inv(det)
    out[e0] = _combine([gf_mul(inv, d), gf_mul(inv, b)], syndromes).to_bytes(size, "little")
    out[e1] = _combine([gf_mul(inv, c), gf_mul(inv, a)], syndromes).to_bytes(size, "little")
    return [bytes(s) for s in out]


# ---------------------------------------------------------------------------------------------- host side
@dataclass(frozen=True)
class AudioSendStats:
    packets: int  # data packets
    fec_packets: int
    bytes: int  # datagram bytes, both kinds
    uneven_blocks: int  # blocks whose payloads differed in length (no parity sent for them)


class AudioPacketizer:
    """Opus frames in, the datagrams of one session's audio stream out (Sunshine ``audioBroadcastThread``).

    ``rikeyid`` is the launch's ``rikeyid`` (signed or not; used modulo 2^32). Not thread-safe: call
    ``packetize`` from one thread (the encoder's streaming thread or the asyncio loop).
    """

    def __init__(self, key: bytes, rikeyid: int, encrypt: bool, packet_duration_ms: int = 5,
                 *, fec: bool = True, ssrc: int = 0) -> None:
        _check_key(key)
        if packet_duration_ms <= 0:
            raise ValueError(f"packet duration must be positive, got {packet_duration_ms} ms")
        self.key = bytes(key)
        self.rikeyid = rikeyid & 0xFFFFFFFF
        self.encrypt = encrypt
        self.packet_duration_ms = packet_duration_ms
        self.fec = fec
        self.ssrc = ssrc & 0xFFFFFFFF
        self._seq = 0  # 16-bit: starts at 0 (FACTS §1); 65536 is a multiple of 4, so blocks stay aligned
        self._timestamp = 0
        self._block: list[bytes] = []
        self._block_base: tuple[int, int] = (0, 0)
        self._packets = self._fec_packets = self._bytes = self._uneven = 0

    @property
    def next_sequence(self) -> int:
        return self._seq

    @property
    def stats(self) -> AudioSendStats:
        return AudioSendStats(self._packets, self._fec_packets, self._bytes, self._uneven)

    def packetize(self, opus_frame: bytes) -> list[bytes]:
        """The data datagram for one Opus frame, followed by the block's 2 parity datagrams when the
        frame completes a 4-packet block."""
        if not opus_frame:
            raise ValueError("an empty Opus frame (the client reads zero-length entries as lost packets)")
        seq, ts = self._seq, self._timestamp
        payload = encrypt_payload(self.key, self.rikeyid, seq, opus_frame) if self.encrypt else bytes(opus_frame)
        if RTP_HEADER_SIZE + FEC_HEADER_SIZE + len(payload) > MAX_DATAGRAM:
            # The parity packet must fit the client's 1400-byte buffer too; an Opus bitrate the
            # pipeline caps (opusenc <= 650 kbit/s, <= 410 bytes per 5 ms) never comes close.
            raise ValueError(f"Opus frame of {len(opus_frame)} bytes is too large for a {MAX_DATAGRAM}-byte datagram")
        out = [bytes(AudioPacket(seq, ts, payload, self.ssrc))]
        if seq % DATA_SHARDS == 0:
            self._block = []
            self._block_base = (seq, ts)
        self._block.append(payload)
        self._seq = (seq + 1) & 0xFFFF
        self._timestamp = (ts + self.packet_duration_ms) & 0xFFFFFFFF
        self._packets += 1
        if self.fec and seq % DATA_SHARDS == DATA_SHARDS - 1 and len(self._block) == DATA_SHARDS:
            out.extend(self._parity_packets(seq))
        self._bytes += sum(len(d) for d in out)
        return out

    def _parity_packets(self, last_seq: int) -> list[bytes]:
        block, (base_seq, base_ts) = self._block, self._block_base
        if any(len(p) != len(block[0]) for p in block):
            # The client would switch audio FEC off for the whole session on such a block
            # (RtpAudioQueue.c "Audio block size mismatch"); sending no parity keeps it on.
            self._uneven += 1
            if self._uneven in (1, 100, 10000):
                log.warning("audio FEC skipped for %d block(s) with payloads of different lengths "
                            "(is the Opus encoder in CBR mode?)", self._uneven)
            return []
        parity = fec_parity(block)
        self._fec_packets += FEC_SHARDS
        return [bytes(AudioFecPacket((last_seq + 1 + x) & 0xFFFF, x, base_seq, base_ts, parity[x], self.ssrc))
                for x in range(FEC_SHARDS)]


# ---------------------------------------------------------------------------------------------- client side
@dataclass(frozen=True)
class AudioFrame:
    """One Opus frame out of the depacketizer, in sequence order."""

    index: int  # the RTP sequence number, unwrapped (keeps counting past 65535)
    payload: bytes  # the Opus frame; b"" for a packet that was lost (decode it as concealment)
    recovered: bool = False  # rebuilt from parity

    @property
    def lost(self) -> bool:
        return not self.payload


@dataclass(frozen=True)
class AudioReceiveStats:
    packets: int  # data datagrams received (duplicates and late ones included)
    fec_packets: int
    frames: int  # frames delivered with data (received or recovered)
    repaired: int  # data packets rebuilt from parity
    lost: int  # data packets never delivered (placeholders and skipped blocks)
    unrecoverable_blocks: int  # blocks with a loss that FEC could not repair
    malformed: int  # datagrams that do not parse
    duplicates: int
    late: int  # data packets for a block already delivered or given up (late or repeated)
    decrypt_failures: int
    fec_invalid: int  # blocks whose shard lengths differ (no repair possible)
    resyncs: int


class _Block:
    __slots__ = ("base", "data", "failed", "parity", "rebuilt")

    def __init__(self, base: int) -> None:
        self.base = base
        self.data: list[bytes | None] = [None] * DATA_SHARDS
        self.parity: list[bytes | None] = [None] * FEC_SHARDS
        self.rebuilt = [False] * DATA_SHARDS
        self.failed = False  # already counted as unrecoverable / invalid

    def received(self) -> int:
        return sum(s is not None for s in self.data) + sum(s is not None for s in self.parity)


class AudioDepacketizer:
    """The client's RtpAudioQueue + decryption: datagrams in, Opus frames out in sequence order.

    In-order data packets come out at once. A gap waits for its block's parity; a block that cannot
    be completed is given up as soon as a packet of a later block arrives, as moonlight-common-c
    does when it has seen no reordering (``handleMissingPackets``): its missing packets come out as
    empty placeholders (the client's zero-length entries, which trigger Opus concealment). Blocks
    lost entirely are skipped without placeholders, like the client. The first packets are handled
    like the client's "synchronizing" state: unless the first datagram is the first data packet
    of a block, delivery starts at the next block boundary.

    Never raises on network input: bad datagrams are counted in :attr:`stats` and dropped.
    """

    def __init__(self, key: bytes, rikeyid: int, encrypted: bool) -> None:
        if encrypted:
            _check_key(key)
        self.key = bytes(key)
        self.rikeyid = rikeyid & 0xFFFFFFFF
        self.encrypted = encrypted
        self._next: int | None = None  # unwrapped seq of the next frame to deliver
        self._blocks: dict[int, _Block] = {}  # by unwrapped base seq
        self._packets = self._fec_packets = self._frames = self._repaired = self._lost = 0
        self._unrecoverable = self._malformed = self._duplicates = self._late = 0
        self._decrypt_failures = self._fec_invalid = self._resyncs = 0
        self._late_run = 0  # consecutive late data packets

    @property
    def stats(self) -> AudioReceiveStats:
        return AudioReceiveStats(self._packets, self._fec_packets, self._frames, self._repaired, self._lost,
                                 self._unrecoverable, self._malformed, self._duplicates, self._late,
                                 self._decrypt_failures, self._fec_invalid, self._resyncs)

    def push(self, datagram: bytes) -> list[bytes]:
        """Opus frames now ready, in order; b"" stands for a lost frame (conceal it)."""
        return [f.payload for f in self.push_frames(datagram)]

    def push_frames(self, datagram: bytes) -> list[AudioFrame]:
        try:
            packet = parse_audio_datagram(datagram)
        except AudioPacketError as exc:
            self._malformed += 1
            if self._malformed in (1, 100, 10000):
                log.warning("malformed audio datagram (%d so far): %s", self._malformed, exc.message)
            return []
        try:
            return self._accept(packet)
        except Exception:  # a bug here must cost one datagram, never the receive loop
            self._malformed += 1
            log.exception("audio datagram handling failed")
            return []

    def flush(self) -> list[bytes]:
        """End of stream: gives up on everything pending; what can be delivered, b"" for holes."""
        return [f.payload for f in self.flush_frames()]

    def flush_frames(self) -> list[AudioFrame]:
        out: list[AudioFrame] = []
        while self._blocks and self._next is not None:
            self._drain(out, give_up=True)
        return out

    # --- internals --------------------------------------------------------------------------------
    def _unwrap(self, seq16: int) -> int:
        ref = self._next if self._next is not None else seq16
        return ref + ((seq16 - ref + 0x8000) & 0xFFFF) - 0x8000

    def _accept(self, packet: AudioPacket | AudioFecPacket) -> list[AudioFrame]:
        is_data = isinstance(packet, AudioPacket)
        if isinstance(packet, AudioPacket):
            self._packets += 1
            seq = self._unwrap(packet.sequence)
            base = seq - seq % DATA_SHARDS
        else:
            self._fec_packets += 1
            base = self._unwrap(packet.base_sequence)
            seq = base
        if self._next is None:
            # RtpAudioQueue.c starts on the next block boundary so that it never begins mid-block;
            # a stream whose very first datagram opens a block can start right there.
            starts_block = is_data and seq == base
            self._next = base if starts_block else base + DATA_SHARDS
        if base + DATA_SHARDS <= self._next:
            if not is_data:
                return []  # parity for a block already delivered in order: the normal case
            self._late_run += 1
            if self._late_run < LATE_RUN_RESYNC:
                self._late += 1
                return []
            # The host started counting again (a rebuilt stream): follow it instead of dropping it
            # as "late" for up to 32768 packets.
            self._resync(seq)
        elif base - self._next > MAX_PENDING_BLOCKS * DATA_SHARDS:
            self._resync(seq)
        if is_data:
            self._late_run = 0
        block = self._blocks.get(base)
        if block is None:
            block = self._blocks[base] = _Block(base)
        if isinstance(packet, AudioPacket):
            slot = seq - base
            if block.data[slot] is not None:
                self._duplicates += 1
                return []
            if seq < self._next:
                self._late += 1  # its slot was already given up as lost
                return []
            block.data[slot] = packet.payload
        else:
            if block.parity[packet.shard_index] is not None:
                self._duplicates += 1
                return []
            block.parity[packet.shard_index] = packet.parity
        out: list[AudioFrame] = []
        self._drain(out, give_up=False)
        return out

    def _resync(self, target: int) -> None:
        """Drops what is pending and continues at target (the data packet just received, or a
        parity packet's block)."""
        assert self._next is not None
        self._late_run = 0
        pending = sum(1 for b in self._blocks.values() for i, d in enumerate(b.data)
                      if b.base + i >= self._next and d is None)
        self._lost += pending
        self._resyncs += 1
        log.warning("audio sequence jumped from %d to %d: resynchronising", self._next & 0xFFFF, target & 0xFFFF)
        self._blocks.clear()
        self._next = target

    def _drain(self, out: list[AudioFrame], *, give_up: bool) -> None:
        """Delivers what is ready at the head; gives up a stuck head block once a later one exists."""
        while self._blocks:
            assert self._next is not None
            head_base = self._next - self._next % DATA_SHARDS
            block = self._blocks.get(head_base)
            if block is None:
                # Every packet of the blocks up to the earliest one we hold was lost: skip to it
                # without placeholders (handleMissingPackets "a previous FEC block was completely lost").
                earliest = min(self._blocks)
                self._lost += earliest - self._next
                self._unrecoverable += (earliest - head_base) // DATA_SHARDS
                self._next = earliest
                continue
            slot = self._next - head_base
            payload = block.data[slot]
            if payload is None and self._repair(block):
                payload = block.data[slot]
            if payload is None:
                later = len(self._blocks) > 1
                if not (give_up or later):
                    return  # wait for the rest of this block
                if not block.failed:
                    block.failed = True
                    self._unrecoverable += 1
                self._lost += 1
                out.append(AudioFrame(self._next, b""))
            else:
                out.append(self._deliver(self._next, payload, block.rebuilt[slot]))
            self._next += 1
            if self._next - head_base == DATA_SHARDS:
                del self._blocks[head_base]
                if give_up:
                    return

    def _repair(self, block: _Block) -> bool:
        """Rebuilds the block's missing data shards when enough shards are in; True on success."""
        if block.failed or block.received() < DATA_SHARDS:
            return False
        missing = [i for i, d in enumerate(block.data) if d is None]
        try:
            data = fec_recover([*block.data, *block.parity])
        except ValueError as exc:
            block.failed = True
            self._fec_invalid += 1
            self._unrecoverable += 1
            log.info("audio block %d not repairable: %s", block.base & 0xFFFF, exc)
            return False
        for i in missing:
            block.data[i] = data[i]
            block.rebuilt[i] = True
        self._repaired += len(missing)
        return True

    def _deliver(self, index: int, payload: bytes, recovered: bool) -> AudioFrame:
        if self.encrypted:
            try:
                payload = decrypt_payload(self.key, self.rikeyid, index & 0xFFFF, payload)
            except AudioDecryptError as exc:
                self._decrypt_failures += 1
                self._lost += 1
                if self._decrypt_failures in (1, 100, 10000):
                    log.warning("audio decryption failed (%d so far): %s", self._decrypt_failures, exc.message)
                return AudioFrame(index, b"")
        self._frames += 1
        return AudioFrame(index, payload, recovered)
