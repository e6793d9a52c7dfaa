"""ENet 1.3 wire format: the protocol header and one frozen dataclass per command.

Layout (all big endian, as in ENet's ``protocol.h``; no checksum, no compression):

* header: ``BE16 peerID | flags`` where bits 0-11 are the peer ID (0xFFF = none yet), bits 12-13
  the session ID, bit 14 "compressed" and bit 15 "sentTime present", then ``BE16 sentTime``
  (the sender's clock in ms, low 16 bits) when bit 15 is set.
* then commands, each starting with ``u8 command | u8 channelID | BE16 reliableSequenceNumber``;
  the low 4 bits of ``command`` are the command number, 0x80 asks for an acknowledgement and
  0x40 marks an unsequenced command.

This module also holds the plain data a connection keeps (:class:`EnetPeer`) and the events;
the state machine that drives them is :class:`moonhowl.protocol.enet_peer.EnetHost`.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from moonhowl.protocol.errors import ProtocolError

MAXIMUM_PEER_ID = 0xFFF
MINIMUM_MTU = 576
MAXIMUM_MTU = 4096
MAXIMUM_PACKET_COMMANDS = 32
MINIMUM_WINDOW_SIZE = 4096
MAXIMUM_WINDOW_SIZE = 65536
MINIMUM_CHANNEL_COUNT = 1
MAXIMUM_CHANNEL_COUNT = 255
MAXIMUM_FRAGMENT_COUNT = 1024 * 1024

COMMAND_MASK = 0x0F
FLAG_ACKNOWLEDGE = 0x80
FLAG_UNSEQUENCED = 0x40
HEADER_FLAG_COMPRESSED = 1 << 14
HEADER_FLAG_SENT_TIME = 1 << 15
HEADER_SESSION_MASK = 3 << 12
HEADER_SESSION_SHIFT = 12

# Command numbers (ENetProtocolCommand).
CMD_ACKNOWLEDGE = 1
CMD_CONNECT = 2
CMD_VERIFY_CONNECT = 3
CMD_DISCONNECT = 4
CMD_PING = 5
CMD_SEND_RELIABLE = 6
CMD_SEND_UNRELIABLE = 7
CMD_SEND_FRAGMENT = 8
CMD_SEND_UNSEQUENCED = 9
CMD_BANDWIDTH_LIMIT = 10
CMD_THROTTLE_CONFIGURE = 11
CMD_SEND_UNRELIABLE_FRAGMENT = 12

_CMD_HEADER = struct.Struct("!BBH")
_U16 = struct.Struct("!H")


class EnetWireError(ProtocolError):
    """A datagram that does not parse as ENet 1.3."""


@dataclass(frozen=True, slots=True)
class Header:
    """The protocol header of one datagram."""

    peer_id: int = MAXIMUM_PEER_ID
    session_id: int = 0
    sent_time: int | None = None
    compressed: bool = False

    @classmethod
    def parse(cls, data: bytes) -> tuple[Self, int]:
        """Parse the header; returns it and the offset of the first command."""
        if len(data) < 2:
            raise EnetWireError("datagram shorter than the ENet header")
        (word,) = _U16.unpack_from(data, 0)
        sent_time: int | None = None
        offset = 2
        if word & HEADER_FLAG_SENT_TIME:
            if len(data) < 4:
                raise EnetWireError("header announces sentTime but the datagram ends")
            (sent_time,) = _U16.unpack_from(data, 2)
            offset = 4
        header = cls(
            peer_id=word & MAXIMUM_PEER_ID,
            session_id=(word & HEADER_SESSION_MASK) >> HEADER_SESSION_SHIFT,
            sent_time=sent_time,
            compressed=bool(word & HEADER_FLAG_COMPRESSED),
        )
        return header, offset

    def __bytes__(self) -> bytes:
        word = (self.peer_id & MAXIMUM_PEER_ID) | ((self.session_id & 3) << HEADER_SESSION_SHIFT)
        if self.compressed:
            word |= HEADER_FLAG_COMPRESSED
        if self.sent_time is None:
            return _U16.pack(word)
        return struct.pack("!HH", word | HEADER_FLAG_SENT_TIME, self.sent_time & 0xFFFF)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    """Fields every command has: its channel, reliable sequence number and flag bits.

    Subclasses list their body fields in wire order in ``WIRE``; ``"#len"`` marks the BE16
    dataLength that is followed by ``data``.
    """

    NUMBER: ClassVar[int] = 0
    BODY: ClassVar[struct.Struct] = struct.Struct("!")
    WIRE: ClassVar[tuple[str, ...]] = ()
    DEFAULT_FLAGS: ClassVar[int] = 0

    channel_id: int = 0xFF
    reliable_seq: int = 0
    flags: int = -1  # FLAG_ACKNOWLEDGE / FLAG_UNSEQUENCED bits; -1 means the command's usual ones

    def __post_init__(self) -> None:
        flags = self.DEFAULT_FLAGS if self.flags < 0 else self.flags & (FLAG_ACKNOWLEDGE | FLAG_UNSEQUENCED)
        object.__setattr__(self, "flags", flags)

    @property
    def command_byte(self) -> int:
        return self.NUMBER | self.flags

    @property
    def wants_ack(self) -> bool:
        return bool(self.command_byte & FLAG_ACKNOWLEDGE)

    @classmethod
    def size(cls) -> int:
        """Encoded size without payload data."""
        return _CMD_HEADER.size + cls.BODY.size

    def __bytes__(self) -> bytes:
        payload: bytes = getattr(self, "data") if "#len" in self.WIRE else b""  # noqa: B009
        values = [len(payload) if name == "#len" else getattr(self, name) for name in self.WIRE]
        head = _CMD_HEADER.pack(self.command_byte, self.channel_id & 0xFF, self.reliable_seq & 0xFFFF)
        return head + self.BODY.pack(*values) + payload

    @classmethod
    def _build(cls, common: dict[str, Any], values: tuple[int, ...], payload: bytes) -> Self:
        fields: dict[str, Any] = {name: v for name, v in zip(cls.WIRE, values, strict=True) if name != "#len"}
        if "#len" in cls.WIRE:
            fields["data"] = payload
        return cls(**common, **fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledge(_Base):
    NUMBER: ClassVar[int] = CMD_ACKNOWLEDGE
    BODY: ClassVar[struct.Struct] = struct.Struct("!HH")
    WIRE: ClassVar[tuple[str, ...]] = ("received_reliable_seq", "received_sent_time")
    received_reliable_seq: int = 0
    received_sent_time: int = 0


_HANDSHAKE = (
    "outgoing_peer_id", "incoming_session_id", "outgoing_session_id", "mtu", "window_size",
    "channel_count", "incoming_bandwidth", "outgoing_bandwidth", "throttle_interval",
    "throttle_acceleration", "throttle_deceleration", "connect_id",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyConnect(_Base):
    """The server's answer to CONNECT (``outgoing_peer_id`` is the server-side peer slot)."""

    NUMBER: ClassVar[int] = CMD_VERIFY_CONNECT
    BODY: ClassVar[struct.Struct] = struct.Struct("!HBBIIIIIIIII")
    WIRE: ClassVar[tuple[str, ...]] = _HANDSHAKE
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE
    outgoing_peer_id: int = 0
    incoming_session_id: int = 0
    outgoing_session_id: int = 0
    mtu: int = 1392
    window_size: int = MAXIMUM_WINDOW_SIZE
    channel_count: int = 1
    incoming_bandwidth: int = 0
    outgoing_bandwidth: int = 0
    throttle_interval: int = 5000
    throttle_acceleration: int = 2
    throttle_deceleration: int = 2
    connect_id: int = 0  # opaque: ENet copies these 4 bytes without byte swapping


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(VerifyConnect):
    """CONNECT: VerifyConnect's fields plus the application's 32-bit ``data``."""

    NUMBER: ClassVar[int] = CMD_CONNECT
    BODY: ClassVar[struct.Struct] = struct.Struct("!HBBIIIIIIIIII")
    WIRE: ClassVar[tuple[str, ...]] = (*_HANDSHAKE, "data")
    incoming_session_id: int = 0xFF
    outgoing_session_id: int = 0xFF
    data: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect(_Base):
    NUMBER: ClassVar[int] = CMD_DISCONNECT
    BODY: ClassVar[struct.Struct] = struct.Struct("!I")
    WIRE: ClassVar[tuple[str, ...]] = ("data",)
    data: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(_Base):
    NUMBER: ClassVar[int] = CMD_PING
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReliable(_Base):
    NUMBER: ClassVar[int] = CMD_SEND_RELIABLE
    BODY: ClassVar[struct.Struct] = struct.Struct("!H")
    WIRE: ClassVar[tuple[str, ...]] = ("#len",)
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUnreliable(_Base):
    NUMBER: ClassVar[int] = CMD_SEND_UNRELIABLE
    BODY: ClassVar[struct.Struct] = struct.Struct("!HH")
    WIRE: ClassVar[tuple[str, ...]] = ("unreliable_seq", "#len")
    unreliable_seq: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUnsequenced(_Base):
    NUMBER: ClassVar[int] = CMD_SEND_UNSEQUENCED
    BODY: ClassVar[struct.Struct] = struct.Struct("!HH")
    WIRE: ClassVar[tuple[str, ...]] = ("unsequenced_group", "#len")
    DEFAULT_FLAGS: ClassVar[int] = FLAG_UNSEQUENCED
    unsequenced_group: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFragment(_Base):
    """One fragment of a packet larger than the MTU (reliable: each fragment is acknowledged)."""

    NUMBER: ClassVar[int] = CMD_SEND_FRAGMENT
    BODY: ClassVar[struct.Struct] = struct.Struct("!HHIIII")
    WIRE: ClassVar[tuple[str, ...]] = (
        "start_seq", "#len", "fragment_count", "fragment_number", "total_length", "fragment_offset",
    )  # fmt: skip
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE
    start_seq: int = 0
    fragment_count: int = 1
    fragment_number: int = 0
    total_length: int = 0
    fragment_offset: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUnreliableFragment(SendFragment):
    """Same layout as SendFragment; ``start_seq`` is an unreliable sequence number."""

    NUMBER: ClassVar[int] = CMD_SEND_UNRELIABLE_FRAGMENT
    DEFAULT_FLAGS: ClassVar[int] = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthLimit(_Base):
    NUMBER: ClassVar[int] = CMD_BANDWIDTH_LIMIT
    BODY: ClassVar[struct.Struct] = struct.Struct("!II")
    WIRE: ClassVar[tuple[str, ...]] = ("incoming_bandwidth", "outgoing_bandwidth")
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE
    incoming_bandwidth: int = 0
    outgoing_bandwidth: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleConfigure(_Base):
    NUMBER: ClassVar[int] = CMD_THROTTLE_CONFIGURE
    BODY: ClassVar[struct.Struct] = struct.Struct("!III")
    WIRE: ClassVar[tuple[str, ...]] = ("interval", "acceleration", "deceleration")
    DEFAULT_FLAGS: ClassVar[int] = FLAG_ACKNOWLEDGE
    interval: int = 5000
    acceleration: int = 2
    deceleration: int = 2


Command = (
    Acknowledge | Connect | VerifyConnect | Disconnect | Ping | SendReliable | SendUnreliable
    | SendUnsequenced | SendFragment | BandwidthLimit | ThrottleConfigure
)  # fmt: skip

_ALL_CLASSES: tuple[type[Command], ...] = (
    Acknowledge, Connect, VerifyConnect, Disconnect, Ping, SendReliable, SendUnreliable,
    SendFragment, SendUnsequenced, BandwidthLimit, ThrottleConfigure, SendUnreliableFragment,
)  # fmt: skip
_CLASSES: dict[int, type[Command]] = {cls.NUMBER: cls for cls in _ALL_CLASSES}
# Offset of the BE16 dataLength inside commands that carry data.
_DATA_LENGTH_AT: dict[int, int] = {
    cls.NUMBER: _CMD_HEADER.size + struct.calcsize("!" + cls.BODY.format[1 : 1 + cls.WIRE.index("#len")])
    for cls in _ALL_CLASSES
    if "#len" in cls.WIRE
}


def command_size(command: Command) -> int:
    """Encoded size of one command including its payload."""
    payload = getattr(command, "data", b"")
    return command.size() + (len(payload) if isinstance(payload, bytes) else 0)


def iter_commands(data: bytes, offset: int) -> Iterator[Command]:
    """Yield the commands of a datagram from ``offset``; raise EnetWireError at the first bad one.

    Commands before the bad one are yielded first, so a caller can act on them (as ENet does).
    """
    end = len(data)
    while offset < end:
        if offset + _CMD_HEADER.size > end:
            raise EnetWireError(f"truncated command header at offset {offset}")
        command_byte, channel_id, reliable_seq = _CMD_HEADER.unpack_from(data, offset)
        number = command_byte & COMMAND_MASK
        cls = _CLASSES.get(number)
        if cls is None:
            raise EnetWireError(f"unknown ENet command {number} at offset {offset}")
        size = cls.size()
        if offset + size > end:
            raise EnetWireError(f"truncated {cls.__name__} at offset {offset}")
        values = cls.BODY.unpack_from(data, offset + _CMD_HEADER.size)
        payload = b""
        length_at = _DATA_LENGTH_AT.get(number)
        if length_at is not None:
            (length,) = _U16.unpack_from(data, offset + length_at)
            if offset + size + length > end:
                raise EnetWireError(f"{cls.__name__} data runs past the datagram ({length} bytes)")
            payload = bytes(data[offset + size : offset + size + length])
            size += length
        common: dict[str, Any] = {
            "channel_id": channel_id,
            "reliable_seq": reliable_seq,
            "flags": command_byte & (FLAG_ACKNOWLEDGE | FLAG_UNSEQUENCED),
        }
        yield cls._build(common, values, payload)
        offset += size


@dataclass(frozen=True, slots=True)
class Datagram:
    """A whole datagram: header and commands."""

    header: Header
    commands: tuple[Command, ...]

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Strict parse: any malformed part raises EnetWireError."""
        header, offset = Header.parse(data)
        if header.compressed:
            raise EnetWireError("compressed ENet datagrams are not supported")
        return cls(header, tuple(iter_commands(data, offset)))

    def __bytes__(self) -> bytes:
        return bytes(self.header) + b"".join(bytes(command) for command in self.commands)


# --------------------------------------------------------------------------- connection state

Address = tuple[Any, ...]
DEFAULT_MTU = 1392
DEFAULT_ROUND_TRIP_TIME = 500  # ms
THROTTLE_DEFAULTS = (5000, 2, 2)  # interval ms, acceleration, deceleration


class PeerState(enum.Enum):
    CONNECTING = "connecting"  # we sent CONNECT (client side)
    ACKNOWLEDGING_CONNECT = "acknowledging_connect"  # we sent VERIFY_CONNECT (server side)
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"  # we sent DISCONNECT, waiting for its ack
    ACKNOWLEDGING_DISCONNECT = "acknowledging_disconnect"  # remote disconnected, our ack pending
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Connected:
    peer: EnetPeer
    data: int  # the CONNECT command's data (X-SS-Connect-Data for Moonlight); 0 on the client


@dataclass(frozen=True, slots=True)
class Received:
    peer: EnetPeer
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Disconnected:
    peer: EnetPeer
    reason: Literal["remote", "timeout", "local"]
    data: int = 0  # the DISCONNECT command's data when reason == "remote"


Event = Connected | Received | Disconnected


@dataclass(slots=True)
class EnetStats:
    datagrams_received: int = 0
    datagrams_sent: int = 0
    malformed: int = 0  # unparsable datagrams or commands
    dropped: int = 0  # unknown peer, wrong address/session, command invalid in the peer's state
    rejected_connects: int = 0
    over_limit: int = 0  # commands refused because a buffer limit was reached
    retransmissions: int = 0
    timeouts: int = 0


@dataclass(slots=True)
class OutgoingCommand:
    command: Command
    size: int
    reliable: bool
    send_attempts: int = 0
    sent_time: int = 0
    rto: int = 0  # ms; doubled on every retransmission


@dataclass(slots=True)
class FragmentAssembly:
    """A fragmented packet being reassembled."""

    fragment_count: int
    buffer: bytearray
    seen: bytearray
    remaining: int

    @classmethod
    def new(cls, total_length: int, fragment_count: int) -> FragmentAssembly:
        seen = bytearray((fragment_count + 7) // 8)
        return cls(fragment_count, bytearray(total_length), seen, fragment_count)

    def add(self, number: int, offset: int, data: bytes) -> None:
        if self.seen[number >> 3] & (1 << (number & 7)):
            return
        self.seen[number >> 3] |= 1 << (number & 7)
        self.remaining -= 1
        self.buffer[offset : offset + len(data)] = data[: len(self.buffer) - offset]


RELIABLE_WINDOWS, RELIABLE_WINDOW_SIZE, FREE_RELIABLE_WINDOWS = 16, 0x1000, 8
UNSEQUENCED_WINDOW_SIZE, FREE_UNSEQUENCED_WINDOWS = 1024, 32


def reliable_window(incoming: int, seq: int) -> int:
    """How many 4096-sequence windows ``seq`` is ahead of ``incoming`` (ENet's wrap rule:
    anything behind counts as 16 windows further on)."""
    window = seq // RELIABLE_WINDOW_SIZE + (RELIABLE_WINDOWS if seq < incoming else 0)
    return window - incoming // RELIABLE_WINDOW_SIZE


def in_reliable_window(incoming: int, seq: int) -> bool:
    """ENet accepts reliable commands at most FREE_RELIABLE_WINDOWS - 1 windows ahead."""
    return 0 <= reliable_window(incoming, seq) < FREE_RELIABLE_WINDOWS - 1


@dataclass(slots=True)
class ChannelState:
    outgoing_reliable_seq: int = 0
    outgoing_unreliable_seq: int = 0
    incoming_reliable_seq: int = 0
    incoming_unreliable_seq: int = 0
    pending: dict[int, bytes | FragmentAssembly] = field(default_factory=dict)  # reliable, by seq
    held: list[tuple[int, int, bytes]] = field(default_factory=list)  # unreliable, ahead of reliable
    unreliable_fragments: dict[tuple[int, int], FragmentAssembly] = field(default_factory=dict)


class EnetPeer:
    """One connection. Read-only for users: :class:`~moonhowl.protocol.enet_peer.EnetHost` owns it."""

    def __init__(self, slot: int, address: Address, now: int, *, is_client: bool, mtu: int,
                 timeouts: tuple[int, int, int]) -> None:  # fmt: skip
        self.peer_id = slot
        self.address = address
        self.is_client = is_client
        self.state = PeerState.DISCONNECTED
        self.connect_id = 0
        self.connect_data = 0
        self.outgoing_peer_id = MAXIMUM_PEER_ID
        self.incoming_session_id = 0xFF
        self.outgoing_session_id = 0xFF
        self.mtu = mtu
        self.window_size = MAXIMUM_WINDOW_SIZE
        self.channels: list[ChannelState] = []
        self.throttle = THROTTLE_DEFAULTS
        self.round_trip_time = DEFAULT_ROUND_TRIP_TIME  # ms
        self.round_trip_time_variance = 0
        self.timeout_limit, self.timeout_minimum, self.timeout_maximum = timeouts
        self.created = now
        self.last_receive_time: int | None = None  # time of the last ack (ENet's lastReceiveTime)
        self.earliest_timeout: int | None = None
        self.announced = False  # a Connected event was emitted
        self.disconnect_later: int | None = None
        self.outgoing_reliable_seq = 0  # channel 0xFF commands
        self.outgoing_unsequenced_group = 0
        self.incoming_unsequenced_group = 0
        self.unsequenced_window = 0
        self.outgoing: deque[OutgoingCommand] = deque()
        self.sent: dict[tuple[int, int], OutgoingCommand] = {}  # (channel, seq) -> awaiting its ack
        self.acks: deque[tuple[int, int, int, bool]] = deque()  # channel, seq, sentTime, is DISCONNECT
        self.outgoing_data = 0
        self.in_transit = 0
        self.waiting_data = 0
        self.waiting_commands = 0

    @property
    def channel_count(self) -> int:
        return len(self.channels)

    def update_round_trip_time(self, rtt: int, now: int) -> None:
        """ENet's smoothed RTT and variance update from one acknowledgement."""
        if self.last_receive_time is None:
            self.round_trip_time, self.round_trip_time_variance = rtt, (rtt + 1) // 2
        else:
            self.round_trip_time_variance -= self.round_trip_time_variance // 4
            diff = abs(rtt - self.round_trip_time)
            self.round_trip_time_variance += diff // 4
            self.round_trip_time += diff // 8 if rtt >= self.round_trip_time else -(diff // 8)
        self.last_receive_time, self.earliest_timeout = now, None

    def accept_unsequenced(self, group: int) -> bool:
        """ENet's unsequenced window: False for duplicates and groups too far ahead."""
        index = group % UNSEQUENCED_WINDOW_SIZE
        if group < self.incoming_unsequenced_group:
            group += 0x10000
        if group >= self.incoming_unsequenced_group + FREE_UNSEQUENCED_WINDOWS * UNSEQUENCED_WINDOW_SIZE:
            return False
        group &= 0xFFFF
        if group - index != self.incoming_unsequenced_group:
            self.incoming_unsequenced_group, self.unsequenced_window = group - index, 0
        elif self.unsequenced_window >> index & 1:
            return False
        self.unsequenced_window |= 1 << index
        return True

    def __repr__(self) -> str:
        return f"<EnetPeer {self.peer_id} {self.address!r} {self.state.value}>"
