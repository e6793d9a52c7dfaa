"""Moonlight control-stream messages: the encrypted v2 framing and the payloads a host handles.

Every control message travels as one ENet packet (see :mod:`moonhowl.protocol.enet_peer`)::

    LE16 0x0001 | LE16 length | LE32 seq | GCM tag (16) | AES-128-GCM ciphertext
    length    = 4 (seq) + 16 (tag) + len(plaintext)
    plaintext = LE16 type | LE16 payload length | payload

The key is the launch ``rikey``; there is no associated data. Each direction numbers its own
messages from 0. The IV depends on what RTSP negotiated (moonlight-common-c ``ControlStream.c``
``encryptControlMessage``/``decryptControlMessageToV1``, Sunshine ``stream.cpp``):

* ``SS_ENC_CONTROL_V2`` (``x-ss-general.encryptionEnabled`` bit 0x1): 12 bytes,
  ``LE32 seq | 6 zero bytes | 'C','C'`` from the client and ``... | 'H','C'`` from the host;
* otherwise NVIDIA's legacy form: 16 bytes, all zero but byte 0 = ``seq & 0xFF``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moonhowl.protocol.errors import ProtocolError

ENCRYPTED_HEADER_TYPE = 0x0001
TAG_LENGTH = 16
_HEADER = struct.Struct("<HHI")
_INNER = struct.Struct("<HH")
MAX_PAYLOAD = 0xFFFF - 4 - TAG_LENGTH - _INNER.size  # the length field is 16 bits

# Message types of the encrypted (gen 7) stream: moonlight-common-c packetTypesGen7Enc, Video.h.
# Client -> host
REQUEST_IDR_FRAME = 0x0302  # also sent as "start A" right after connecting; payload 00 00
START_B = 0x0307  # payload 00
INVALIDATE_REF_FRAMES = 0x0301
LOSS_STATS = 0x0201  # legacy; clients send PERIODIC_PING to hosts >= 7.1.415
FRAME_STATS = 0x0204
INPUT_DATA = 0x0206  # payload: one input packet (BE32 size + LE32 magic, moonlight-common-c Input.h)
PERIODIC_PING = 0x0200  # every 100 ms, reliable
FRAME_FEC_STATUS = 0x5502  # Sunshine extension, unsequenced; same number as SET_RGB_LED
# Host -> client
TERMINATION = 0x0109
RUMBLE = 0x010B
HDR_MODE = 0x010E
RUMBLE_TRIGGERS = 0x5500
SET_MOTION_EVENT = 0x5501
SET_RGB_LED = 0x5502
SET_ADAPTIVE_TRIGGERS = 0x5503

# Termination reasons (HRESULTs, moonlight-common-c ControlStream.c)
TERMINATION_GRACEFUL = 0x80030023  # NVST_DISCONN_SERVER_TERMINATED_CLOSED
TERMINATION_FRAME_CONVERSION = 0x800E9403
TERMINATION_PROTECTED_CONTENT = 0x800E9302

# ENet channels the client uses (moonlight-common-c Limelight-internal.h)
CHANNEL_GENERIC = 0x00
CHANNEL_URGENT = 0x01  # IDR and reference frame invalidation requests
CHANNEL_KEYBOARD = 0x02
CHANNEL_MOUSE = 0x03
CHANNEL_PEN = 0x04
CHANNEL_TOUCH = 0x05
CHANNEL_UTF8 = 0x06
CHANNEL_GAMEPAD_BASE = 0x10  # + controller number
CHANNEL_SENSOR_BASE = 0x20  # + controller number
CHANNEL_COUNT = 0x30

IDR_REQUEST_PAYLOAD = b"\x00\x00"
START_B_PAYLOAD = b"\x00"


class ControlError(ProtocolError):
    """A control-stream packet that cannot be accepted."""


class ControlHeaderError(ControlError):
    """Not an encrypted control packet (too short for the header, or a wrong header type)."""


class ControlLengthError(ControlError):
    """A length field disagrees with the data."""


class ControlAuthError(ControlError):
    """The GCM tag does not verify: wrong key, wrong IV mode, or tampering."""


class ControlCipher:
    """Seals outgoing and opens incoming control messages for one side of one session."""

    def __init__(self, key: bytes, is_host: bool, *, v2: bool = True) -> None:
        if len(key) != 16:
            raise ValueError("the control stream key (rikey) is 16 bytes")
        self._aead = AESGCM(key)
        self.is_host = is_host
        self.v2 = v2
        self.send_seq = 0
        self.last_received_seq: int | None = None

    def iv(self, seq: int, from_host: bool) -> bytes:
        if self.v2:
            return struct.pack("<I", seq) + bytes(6) + (b"HC" if from_host else b"CC")
        return bytes([seq & 0xFF]) + bytes(15)

    def seal(self, msg_type: int, payload: bytes) -> bytes:
        """Encrypt one message with our next sequence number."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"control payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        seq, self.send_seq = self.send_seq, (self.send_seq + 1) & 0xFFFFFFFF
        plaintext = _INNER.pack(msg_type, len(payload)) + payload
        sealed = self._aead.encrypt(self.iv(seq, self.is_host), plaintext, None)
        ciphertext, tag = sealed[:-TAG_LENGTH], sealed[-TAG_LENGTH:]
        return _HEADER.pack(ENCRYPTED_HEADER_TYPE, 4 + TAG_LENGTH + len(plaintext), seq) + tag + ciphertext

    def open(self, packet: bytes) -> tuple[int, bytes]:
        """Decrypt one message from the other side; returns (type, payload)."""
        if len(packet) < _HEADER.size:
            raise ControlHeaderError(f"control packet of {len(packet)} bytes is shorter than its header")
        header_type, length, seq = _HEADER.unpack_from(packet)
        if header_type != ENCRYPTED_HEADER_TYPE:
            raise ControlHeaderError(f"unencrypted control packet (type {header_type:#06x})")
        if length < 4 + TAG_LENGTH + _INNER.size:
            raise ControlLengthError(f"encrypted control packet too short (length {length})")
        if 4 + length != len(packet):
            raise ControlLengthError(f"control length field {length} but {len(packet) - 4} bytes follow")
        tag, ciphertext = packet[8 : 8 + TAG_LENGTH], packet[8 + TAG_LENGTH :]
        try:
            plaintext = self._aead.decrypt(self.iv(seq, not self.is_host), ciphertext + tag, None)
        except InvalidTag:
            raise ControlAuthError(f"control packet {seq} failed authentication") from None
        msg_type, payload_length = _INNER.unpack_from(plaintext)
        if payload_length > len(plaintext) - _INNER.size:
            raise ControlLengthError(
                f"control message {msg_type:#06x} claims {payload_length} bytes, has {len(plaintext) - 4}"
            )
        self.last_received_seq = seq
        return msg_type, plaintext[_INNER.size : _INNER.size + payload_length]


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise ControlLengthError(f"{what} payload is {len(payload)} bytes, needs {size}")


@dataclass(frozen=True, slots=True)
class Termination:
    """Host -> client 0x0109: why the stream ends (BE32 HRESULT)."""

    TYPE: ClassVar[int] = TERMINATION
    reason: int = TERMINATION_GRACEFUL

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        if len(payload) >= 4:
            return cls(struct.unpack_from(">I", payload)[0])
        _need(payload, 2, "termination")  # the old short form: LE16
        return cls(struct.unpack_from("<H", payload)[0])

    def __bytes__(self) -> bytes:
        return struct.pack(">I", self.reason)


@dataclass(frozen=True, slots=True)
class InvalidateRefFrames:
    """Client -> host 0x0301: frames ``first..last`` were lost (LE64 first, LE64 last, LE64 0)."""

    TYPE: ClassVar[int] = INVALIDATE_REF_FRAMES
    first_frame: int
    last_frame: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, 16, "invalidate reference frames")
        first, last = struct.unpack_from("<QQ", payload)
        return cls(first, last)

    def __bytes__(self) -> bytes:
        return struct.pack("<QQQ", self.first_frame, self.last_frame, 0)


@dataclass(frozen=True, slots=True)
class PeriodicPing:
    """Client -> host 0x0200: ``LE16 4 | LE32 timestamp (0 today) | 2 unused bytes``."""

    TYPE: ClassVar[int] = PERIODIC_PING
    timestamp: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(struct.unpack_from("<I", payload, 2)[0] if len(payload) >= 6 else 0)

    def __bytes__(self) -> bytes:
        return struct.pack("<HIH", 4, self.timestamp, 0)


@dataclass(frozen=True, slots=True)
class LossStats:
    """Client -> host 0x0201 (clients for hosts older than 7.1.415), 32 bytes::

    LE32 loss count | LE32 report interval ms | LE32 1000 | LE64 last good frame | LE32 0 | LE32 0 | LE32 0x14
    """

    TYPE: ClassVar[int] = LOSS_STATS
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIQIII")
    loss_count: int = 0
    interval_ms: int = 50
    last_good_frame: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, cls._STRUCT.size, "loss stats")
        loss, interval, _, last_good, *_ = cls._STRUCT.unpack_from(payload)
        return cls(loss, interval, last_good)

    def __bytes__(self) -> bytes:
        return self._STRUCT.pack(self.loss_count, self.interval_ms, 1000, self.last_good_frame, 0, 0, 0x14)


@dataclass(frozen=True, slots=True)
class FrameFecStatus:
    """Client -> host 0x5502 (Sunshine extension): per-frame FEC outcome, 21 bytes big endian."""

    TYPE: ClassVar[int] = FRAME_FEC_STATUS
    _STRUCT: ClassVar[struct.Struct] = struct.Struct(">IHHHHHHHBBB")
    frame_index: int
    highest_received_seq: int
    next_contiguous_seq: int
    missing_before_highest: int
    total_data_packets: int
    total_parity_packets: int
    received_data_packets: int
    received_parity_packets: int
    fec_percentage: int
    block_index: int
    block_count: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, cls._STRUCT.size, "frame FEC status")
        return cls(*cls._STRUCT.unpack_from(payload))

    def __bytes__(self) -> bytes:
        return self._STRUCT.pack(
            self.frame_index, self.highest_received_seq, self.next_contiguous_seq,
            self.missing_before_highest, self.total_data_packets, self.total_parity_packets,
            self.received_data_packets, self.received_parity_packets, self.fec_percentage,
            self.block_index, self.block_count,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rumble:
    """Host -> client 0x010b: ``LE32 0 | LE16 controller | LE16 low-frequency | LE16 high-frequency``."""

    TYPE: ClassVar[int] = RUMBLE
    controller: int
    low_frequency: int
    high_frequency: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, 10, "rumble")
        _, controller, low, high = struct.unpack_from("<IHHH", payload)
        return cls(controller, low, high)

    def __bytes__(self) -> bytes:
        return struct.pack("<IHHH", 0, self.controller, self.low_frequency, self.high_frequency)


@dataclass(frozen=True, slots=True)
class HdrMetadata:
    """SS_HDR_METADATA (LE16 each): chromaticities normalised to 50000, luminances in nits
    except ``min_display_luminance`` (1/10000 nit)."""

    display_primaries: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0), (0, 0))
    white_point: tuple[int, int] = (0, 0)
    max_display_luminance: int = 0
    min_display_luminance: int = 0
    max_content_light_level: int = 0
    max_frame_average_light_level: int = 0
    max_full_frame_luminance: int = 0


@dataclass(frozen=True, slots=True)
class HdrMode:
    """Host -> client 0x010e: ``u8 enabled`` then (Sunshine) SS_HDR_METADATA, 27 bytes in all."""

    TYPE: ClassVar[int] = HDR_MODE
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<B13H")
    enabled: bool
    metadata: HdrMetadata = HdrMetadata()

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, 1, "HDR mode")
        if len(payload) < cls._STRUCT.size:  # GFE sends only the flag
            return cls(bool(payload[0]))
        enabled, *v = cls._STRUCT.unpack_from(payload)
        primaries = ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))
        return cls(bool(enabled), HdrMetadata(primaries, (v[6], v[7]), *v[8:13]))

    def __bytes__(self) -> bytes:
        m = self.metadata
        return self._STRUCT.pack(
            int(self.enabled), *(c for xy in m.display_primaries for c in xy), *m.white_point,
            m.max_display_luminance, m.min_display_luminance, m.max_content_light_level,
            m.max_frame_average_light_level, m.max_full_frame_luminance,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RumbleTriggers:
    """Host -> client 0x5500: ``LE16 controller | LE16 left | LE16 right``."""

    TYPE: ClassVar[int] = RUMBLE_TRIGGERS
    controller: int
    left: int
    right: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, 6, "rumble triggers")
        return cls(*struct.unpack_from("<HHH", payload))

    def __bytes__(self) -> bytes:
        return struct.pack("<HHH", self.controller, self.left, self.right)


@dataclass(frozen=True, slots=True)
class SetRgbLed:
    """Host -> client 0x5502: ``LE16 controller | u8 r | u8 g | u8 b``."""

    TYPE: ClassVar[int] = SET_RGB_LED
    controller: int
    r: int
    g: int
    b: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, 5, "set RGB LED")
        return cls(*struct.unpack_from("<HBBB", payload))

    def __bytes__(self) -> bytes:
        return struct.pack("<HBBB", self.controller, self.r, self.g, self.b)
