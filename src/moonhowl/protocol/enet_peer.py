"""Sans-IO ENet 1.3 host: connection state machine, reliable ordered channels, retransmission.

Feed it datagrams with :meth:`EnetHost.receive`, call :meth:`EnetHost.poll` every few ms and send
the datagrams it returns. Behaviour follows ENet 1.3's ``protocol.c``/``peer.c`` (session IDs,
reliable windows, RTT estimate and RTO back-off, timeout rule, unsequenced window), without
bandwidth throttling, checksums or compression. Network input never raises: bad datagrams are
dropped and counted in :attr:`EnetHost.stats`; every buffer a remote peer can fill is bounded.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque
from typing import Literal

from moonhowl.protocol import enet as w
from moonhowl.protocol.enet import (
    Address,
    ChannelState,
    Connected,
    Disconnected,
    EnetPeer,
    EnetStats,
    Event,
    FragmentAssembly,
    OutgoingCommand,
    PeerState,
    Received,
)

__all__ = ["Connected", "Disconnected", "EnetHost", "EnetPeer", "EnetStats", "Event", "PeerState", "Received"]

log = logging.getLogger(__name__)

PING_INTERVAL = 500  # ms
MAX_PENDING_ACKS = 4096
MAX_UNRELIABLE_ASSEMBLIES = 16  # per channel
MAX_DATAGRAMS_PER_POLL = 64  # per peer
_FRAGMENT_OVERHEAD = 4 + w.SendFragment.size()  # header with sentTime + SEND_FRAGMENT
_CONNECTING = (PeerState.CONNECTING, PeerState.ACKNOWLEDGING_CONNECT)
Reason = Literal["remote", "timeout", "local"]


class EnetHost:
    """An ENet host (server, or client via :meth:`connect`), driven by the caller's clock.

    ``now`` arguments are seconds from any monotonic clock. :meth:`receive` returns the events
    pending so far; events raised while polling (timeouts) or by local calls are fetched with
    :meth:`drain_events`.
    """

    def __init__(
        self, *, max_peers: int = 16, channel_limit: int = w.MAXIMUM_CHANNEL_COUNT,
        mtu: int = w.DEFAULT_MTU, max_packet_size: int = 1 << 20, max_waiting_data: int = 4 << 20,
        max_waiting_commands: int = 4096, max_outgoing_data: int = 8 << 20,
        timeout_limit: int = 32, timeout_minimum: float = 5.0, timeout_maximum: float = 30.0,
        handshake_timeout: float = 10.0, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        if not 1 <= max_peers <= w.MAXIMUM_PEER_ID:
            raise ValueError(f"max_peers must be 1..{w.MAXIMUM_PEER_ID}")
        self.mtu = max(w.MINIMUM_MTU, min(w.MAXIMUM_MTU, mtu))
        self.channel_limit = max(w.MINIMUM_CHANNEL_COUNT, min(w.MAXIMUM_CHANNEL_COUNT, channel_limit))
        self.max_packet_size = max_packet_size
        self.max_waiting_data = max_waiting_data  # per peer: out-of-order and reassembly buffers
        self.max_waiting_commands = max_waiting_commands  # per peer: buffered incoming commands
        self.max_outgoing_data = max_outgoing_data  # per peer: queued, unacknowledged output
        self.default_timeouts = (timeout_limit, int(timeout_minimum * 1000), int(timeout_maximum * 1000))
        self.handshake_timeout = int(handshake_timeout * 1000)
        self.stats = EnetStats()
        self._rng = rng or random.SystemRandom()
        self._slots: list[EnetPeer | None] = [None] * max_peers
        self._sessions: list[tuple[int, int]] = [(0xFF, 0xFF)] * max_peers  # last (in, out) per slot
        self._events: list[Event] = []
        self._immediate: list[tuple[bytes, Address]] = []
        self._now = 0

    # ------------------------------------------------------------------ public API
    @property
    def peers(self) -> list[EnetPeer]:
        return [peer for peer in self._slots if peer is not None]

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def connect(self, address: Address, channel_count: int, data: int, now: float) -> EnetPeer:
        """Start a connection (client side); a Connected or Disconnected event follows."""
        if not w.MINIMUM_CHANNEL_COUNT <= channel_count <= w.MAXIMUM_CHANNEL_COUNT:
            raise ValueError(f"channel_count must be 1..{w.MAXIMUM_CHANNEL_COUNT}")
        self._now = _ms(now)
        slot = self._free_slot()
        if slot is None:
            raise RuntimeError("no free peer slot")
        peer = self._new_peer(slot, address, is_client=True)
        peer.incoming_session_id, peer.outgoing_session_id = self._sessions[slot]
        peer.state = PeerState.CONNECTING
        peer.connect_id = self._rng.getrandbits(32)
        peer.channels = [ChannelState() for _ in range(channel_count)]
        self._queue_system(peer, w.Connect(
            outgoing_peer_id=slot, incoming_session_id=peer.incoming_session_id,
            outgoing_session_id=peer.outgoing_session_id, mtu=peer.mtu, window_size=peer.window_size,
            channel_count=channel_count, throttle_interval=peer.throttle[0],
            throttle_acceleration=peer.throttle[1], throttle_deceleration=peer.throttle[2],
            connect_id=peer.connect_id, data=data & 0xFFFFFFFF,
        ))  # fmt: skip
        return peer

    def set_timeout(self, peer: EnetPeer, limit: int, minimum: float, maximum: float) -> None:
        """Like enet_peer_timeout (Moonlight's client uses 2, 10 s, 10 s)."""
        peer.timeout_limit, peer.timeout_minimum = limit, int(minimum * 1000)
        peer.timeout_maximum = int(maximum * 1000)

    def send(self, peer: EnetPeer, channel: int, data: bytes, reliable: bool = True, *,
             unsequenced: bool = False) -> bool:  # fmt: skip
        """Queue a packet; False when the peer is not connected or its send buffer is full.

        Packets larger than one datagram go as reliable fragments (as ENet does by default).
        """
        if peer.state is not PeerState.CONNECTED or peer.disconnect_later is not None:
            return False
        if not 0 <= channel < peer.channel_count:
            raise ValueError(f"channel {channel} out of range 0..{peer.channel_count - 1}")
        if len(data) > self.max_packet_size or peer.outgoing_data + len(data) > self.max_outgoing_data:
            self.stats.over_limit += 1
            return False
        ch = peer.channels[channel]
        fragment_length = peer.mtu - _FRAGMENT_OVERHEAD
        if len(data) > fragment_length:
            start = (ch.outgoing_reliable_seq + 1) & 0xFFFF
            count = -(-len(data) // fragment_length)
            for number, offset in enumerate(range(0, len(data), fragment_length)):
                ch.outgoing_reliable_seq = (ch.outgoing_reliable_seq + 1) & 0xFFFF
                self._queue(peer, w.SendFragment(
                    channel_id=channel, reliable_seq=ch.outgoing_reliable_seq, start_seq=start,
                    fragment_count=count, fragment_number=number, total_length=len(data),
                    fragment_offset=offset, data=data[offset : offset + fragment_length],
                ))  # fmt: skip
            ch.outgoing_unreliable_seq = 0
            return True
        command: w.Command
        if unsequenced and not reliable:
            peer.outgoing_unsequenced_group = (peer.outgoing_unsequenced_group + 1) & 0xFFFF
            group = peer.outgoing_unsequenced_group
            command = w.SendUnsequenced(channel_id=channel, unsequenced_group=group, data=data)
        elif reliable or ch.outgoing_unreliable_seq >= 0xFFFF:
            ch.outgoing_reliable_seq = (ch.outgoing_reliable_seq + 1) & 0xFFFF
            ch.outgoing_unreliable_seq = 0
            command = w.SendReliable(channel_id=channel, reliable_seq=ch.outgoing_reliable_seq, data=data)
        else:
            ch.outgoing_unreliable_seq += 1
            command = w.SendUnreliable(channel_id=channel, reliable_seq=ch.outgoing_reliable_seq,
                                       unreliable_seq=ch.outgoing_unreliable_seq, data=data)  # fmt: skip
        self._queue(peer, command)
        return True

    def disconnect(self, peer: EnetPeer, data: int = 0, *, later: bool = False) -> None:
        """Graceful disconnect: a Disconnected(reason="local") event follows once it is acknowledged.

        Unsent data is dropped (as in ENet) unless ``later`` is set, which first delivers what is
        already queued (ENet's disconnect_later).
        """
        if later and peer.state is PeerState.CONNECTED and (peer.outgoing or peer.sent):
            peer.disconnect_later = data
            return
        if peer.state is PeerState.CONNECTED:
            self._reset_queues(peer)
            self._queue_system(peer, w.Disconnect(flags=w.FLAG_ACKNOWLEDGE, data=data & 0xFFFFFFFF))
            peer.state = PeerState.DISCONNECTING
        elif peer.state in _CONNECTING:
            self.disconnect_now(peer, data)

    def disconnect_now(self, peer: EnetPeer, data: int = 0) -> None:
        """Send one unacknowledged DISCONNECT and forget the peer at once."""
        if peer.state is PeerState.DISCONNECTED:
            return
        if peer.state is not PeerState.ACKNOWLEDGING_DISCONNECT:
            command = w.Disconnect(flags=w.FLAG_UNSEQUENCED, data=data & 0xFFFFFFFF)
            datagram = w.Datagram(self._header(peer, sent_time=False), (command,))
            self._immediate.append((bytes(datagram), peer.address))
        self._free(peer, "local")

    def receive(self, datagram: bytes, address: Address, now: float) -> list[Event]:
        """Process one datagram from ``address``; returns all pending events."""
        self._now = _ms(now)
        self.stats.datagrams_received += 1
        try:
            header, offset = w.Header.parse(datagram)
            if header.compressed:
                raise w.EnetWireError("compressed datagram")
        except w.EnetWireError as exc:
            self.stats.malformed += 1
            log.debug("dropping datagram from %r: %s", address, exc)
            return self.drain_events()
        peer: EnetPeer | None = None
        if header.peer_id != w.MAXIMUM_PEER_ID:
            peer = self._slots[header.peer_id] if header.peer_id < len(self._slots) else None
            if (peer is None or peer.address != address
                    or (peer.outgoing_peer_id < w.MAXIMUM_PEER_ID
                        and header.session_id != peer.incoming_session_id)):  # fmt: skip
                self.stats.dropped += 1
                return self.drain_events()
        try:
            for command in w.iter_commands(datagram, offset):
                if peer is None:
                    peer = self._handle_connect(command, address)
                    if peer is None:
                        break
                    continue  # CONNECT is answered by VERIFY_CONNECT, not acknowledged
                if not self._handle(peer, command):
                    self.stats.dropped += 1
                    break
                if command.wants_ack:
                    if header.sent_time is None:
                        break
                    self._queue_ack(peer, command, header.sent_time)
        except w.EnetWireError as exc:
            self.stats.malformed += 1
            log.debug("malformed command from %r: %s", address, exc)
        return self.drain_events()

    def poll(self, now: float) -> list[tuple[bytes, Address]]:
        """Run timers (retransmission, pings, timeouts) and return the datagrams to send."""
        self._now = _ms(now)
        out, self._immediate = self._immediate, []
        for peer in self.peers:
            if peer.state in _CONNECTING and self._now - peer.created >= self.handshake_timeout:
                self.stats.timeouts += 1
                self._free(peer, "timeout")
                continue
            if self._check_timeouts(peer):
                continue
            if peer.state is PeerState.ACKNOWLEDGING_DISCONNECT and not peer.acks:
                self._free(peer, None)  # its DISCONNECT came without sentTime: nothing to ack
                continue
            if peer.disconnect_later is not None and not peer.outgoing and not peer.sent:
                data, peer.disconnect_later = peer.disconnect_later, None
                self.disconnect(peer, data)
            out.extend(self._flush(peer))
        self.stats.datagrams_sent += len(out)
        return out

    # ------------------------------------------------------------------ incoming
    def _handle_connect(self, command: w.Command, address: Address) -> EnetPeer | None:
        if not isinstance(command, w.Connect):
            self.stats.dropped += 1
            return None
        if not w.MINIMUM_CHANNEL_COUNT <= command.channel_count <= w.MAXIMUM_CHANNEL_COUNT:
            self.stats.rejected_connects += 1
            return None
        if any(p.address == address and p.connect_id == command.connect_id for p in self.peers):
            return None  # a retransmitted CONNECT: our VERIFY_CONNECT is being retransmitted too
        slot = self._free_slot()
        if slot is None:
            self.stats.rejected_connects += 1
            log.info("refusing ENet connection from %r: all %d slots used", address, len(self._slots))
            return None
        peer = self._new_peer(slot, address, is_client=False)
        peer.state = PeerState.ACKNOWLEDGING_CONNECT
        peer.connect_id, peer.connect_data = command.connect_id, command.data
        peer.outgoing_peer_id = command.outgoing_peer_id
        peer.channels = [ChannelState() for _ in range(min(command.channel_count, self.channel_limit))]
        previous_in, previous_out = self._sessions[slot]
        peer.outgoing_session_id = _next_session(command.incoming_session_id, previous_out)
        peer.incoming_session_id = _next_session(command.outgoing_session_id, previous_in)
        self._sessions[slot] = (peer.incoming_session_id, peer.outgoing_session_id)
        peer.mtu = min(self.mtu, max(w.MINIMUM_MTU, min(w.MAXIMUM_MTU, command.mtu)))
        if command.incoming_bandwidth:
            window = (command.incoming_bandwidth // 65536) * w.MINIMUM_WINDOW_SIZE
            peer.window_size = max(w.MINIMUM_WINDOW_SIZE, min(w.MAXIMUM_WINDOW_SIZE, window))
        peer.throttle = (command.throttle_interval, command.throttle_acceleration,
                         command.throttle_deceleration)  # fmt: skip
        self._queue_system(peer, w.VerifyConnect(
            outgoing_peer_id=slot, incoming_session_id=peer.outgoing_session_id,
            outgoing_session_id=peer.incoming_session_id, mtu=peer.mtu,
            window_size=max(w.MINIMUM_WINDOW_SIZE, min(w.MAXIMUM_WINDOW_SIZE, command.window_size)),
            channel_count=peer.channel_count, throttle_interval=command.throttle_interval,
            throttle_acceleration=command.throttle_acceleration,
            throttle_deceleration=command.throttle_deceleration, connect_id=command.connect_id,
        ))  # fmt: skip
        log.debug("ENet CONNECT from %r -> slot %d, %d channels", address, slot, peer.channel_count)
        return peer

    def _handle(self, peer: EnetPeer, command: w.Command) -> bool:
        """Apply one command; False stops processing the rest of the datagram (as ENet does)."""
        if peer.state is PeerState.DISCONNECTED or isinstance(command, w.Connect):
            return False
        if isinstance(command, w.Acknowledge):
            return self._handle_ack(peer, command)
        if isinstance(command, w.VerifyConnect):
            return self._handle_verify_connect(peer, command)
        if isinstance(command, w.Disconnect):
            return self._handle_disconnect(peer, command)
        if peer.state is not PeerState.CONNECTED:
            return False
        if isinstance(command, w.Ping | w.BandwidthLimit | w.ThrottleConfigure):
            return True
        if not command.channel_id < peer.channel_count:
            return False
        ch = peer.channels[command.channel_id]
        if isinstance(command, w.SendUnsequenced):
            if peer.accept_unsequenced(command.unsequenced_group):
                self._events.append(Received(peer, command.channel_id, command.data))
            return True
        if isinstance(command, w.SendUnreliableFragment):
            return self._handle_unreliable_fragment(peer, ch, command)
        if isinstance(command, w.SendFragment):
            return self._handle_fragment(peer, ch, command)
        if isinstance(command, w.SendReliable):
            seq = command.reliable_seq
            if not w.in_reliable_window(ch.incoming_reliable_seq, seq) or seq == ch.incoming_reliable_seq:
                return True  # old duplicate (still acknowledged) or too far ahead
            if seq in ch.pending:
                return True
            if not self._reserve(peer, len(command.data)):
                return False
            ch.pending[seq] = command.data
            self._dispatch_reliable(peer, command.channel_id)
            return True
        return self._handle_unreliable(peer, command.channel_id, command.reliable_seq,
                                       command.unreliable_seq, command.data)  # fmt: skip

    def _handle_ack(self, peer: EnetPeer, command: w.Acknowledge) -> bool:
        sent = command.received_sent_time | (self._now & ~0xFFFF)
        if (sent & 0x8000) > (self._now & 0x8000):
            sent -= 0x10000
        if sent > self._now:
            return True
        peer.update_round_trip_time(max(self._now - sent, 1), self._now)
        number = self._remove_sent(peer, command.received_reliable_seq, command.channel_id)
        if peer.state is PeerState.ACKNOWLEDGING_CONNECT:
            if number != w.CMD_VERIFY_CONNECT:
                return False
            peer.state, peer.announced = PeerState.CONNECTED, True
            self._events.append(Connected(peer, peer.connect_data))
            log.info("ENet peer %d connected from %r (data %#x)", peer.peer_id, peer.address,
                     peer.connect_data)  # fmt: skip
        elif peer.state is PeerState.DISCONNECTING:
            if number != w.CMD_DISCONNECT:
                return False
            self._free(peer, "local")
        return True

    def _handle_verify_connect(self, peer: EnetPeer, command: w.VerifyConnect) -> bool:
        if peer.state is not PeerState.CONNECTING:
            return True
        throttle = (command.throttle_interval, command.throttle_acceleration, command.throttle_deceleration)
        if (not w.MINIMUM_CHANNEL_COUNT <= command.channel_count <= w.MAXIMUM_CHANNEL_COUNT
                or throttle != peer.throttle or command.connect_id != peer.connect_id):  # fmt: skip
            self._free(peer, "remote")
            return False
        self._remove_sent(peer, 1, 0xFF)  # our CONNECT
        del peer.channels[command.channel_count :]
        peer.outgoing_peer_id = command.outgoing_peer_id
        peer.incoming_session_id = command.incoming_session_id
        peer.outgoing_session_id = command.outgoing_session_id
        peer.mtu = min(peer.mtu, max(w.MINIMUM_MTU, min(w.MAXIMUM_MTU, command.mtu)))
        peer.window_size = min(peer.window_size, max(w.MINIMUM_WINDOW_SIZE, command.window_size))
        peer.state, peer.announced = PeerState.CONNECTED, True
        self._events.append(Connected(peer, 0))
        return True

    def _handle_disconnect(self, peer: EnetPeer, command: w.Disconnect) -> bool:
        if peer.state is PeerState.ACKNOWLEDGING_DISCONNECT:
            return True
        if peer.state is PeerState.CONNECTED and command.wants_ack:
            self._reset_queues(peer)
            peer.state = PeerState.ACKNOWLEDGING_DISCONNECT  # freed once the ack is sent
            self._events.append(Disconnected(peer, "remote", command.data))
            log.info("ENet peer %d (%r) disconnected: remote", peer.peer_id, peer.address)
        else:
            self._free(peer, "remote", command.data)
        return True

    def _fragment_ok(self, command: w.SendFragment) -> bool:
        return (len(command.data) > 0 and command.fragment_count <= w.MAXIMUM_FRAGMENT_COUNT
                and command.fragment_number < command.fragment_count
                and command.total_length <= self.max_packet_size
                and command.fragment_offset < command.total_length
                and len(command.data) <= command.total_length - command.fragment_offset)  # fmt: skip

    def _handle_fragment(self, peer: EnetPeer, ch: ChannelState, command: w.SendFragment) -> bool:
        start = command.start_seq
        if not w.in_reliable_window(ch.incoming_reliable_seq, start) or start == ch.incoming_reliable_seq:
            return True
        if not self._fragment_ok(command) or command.total_length < command.fragment_count:
            return False
        assembly = ch.pending.get(start)
        if assembly is None:
            if not self._reserve(peer, command.total_length):
                return False
            assembly = ch.pending[start] = FragmentAssembly.new(command.total_length, command.fragment_count)
        elif not isinstance(assembly, FragmentAssembly) or _shape(assembly) != _shape(command):
            return False
        assembly.add(command.fragment_number, command.fragment_offset, command.data)
        if assembly.remaining == 0:
            self._dispatch_reliable(peer, command.channel_id)
        return True

    def _handle_unreliable_fragment(self, peer: EnetPeer, ch: ChannelState, command: w.SendFragment) -> bool:
        base, start = command.reliable_seq, command.start_seq
        if not w.in_reliable_window(ch.incoming_reliable_seq, base) or (
            base == ch.incoming_reliable_seq and start <= ch.incoming_unreliable_seq
        ):
            return True
        if not self._fragment_ok(command):
            return False
        assembly = ch.unreliable_fragments.get((base, start))
        if assembly is None:
            if len(ch.unreliable_fragments) >= MAX_UNRELIABLE_ASSEMBLIES or not self._reserve(
                peer, command.total_length
            ):
                return False
            assembly = FragmentAssembly.new(command.total_length, command.fragment_count)
            ch.unreliable_fragments[(base, start)] = assembly
        elif _shape(assembly) != _shape(command):
            return False
        assembly.add(command.fragment_number, command.fragment_offset, command.data)
        if assembly.remaining:
            return True
        del ch.unreliable_fragments[(base, start)]
        self._release(peer, len(assembly.buffer))
        return self._handle_unreliable(peer, command.channel_id, base, start, bytes(assembly.buffer))

    def _handle_unreliable(self, peer: EnetPeer, channel: int, base: int, seq: int, data: bytes) -> bool:
        """Deliver an unreliable packet now, hold it until its reliable base arrives, or drop it."""
        ch = peer.channels[channel]
        if base == ch.incoming_reliable_seq:
            if seq > ch.incoming_unreliable_seq:
                ch.incoming_unreliable_seq = seq
                self._events.append(Received(peer, channel, data))
        elif w.in_reliable_window(ch.incoming_reliable_seq, base):
            if not self._reserve(peer, len(data)):
                return False
            ch.held.append((base, seq, data))
        return True

    def _dispatch_reliable(self, peer: EnetPeer, channel: int) -> None:
        ch = peer.channels[channel]
        while True:
            seq = (ch.incoming_reliable_seq + 1) & 0xFFFF
            item = ch.pending.get(seq)
            if item is None or (isinstance(item, FragmentAssembly) and item.remaining):
                return
            del ch.pending[seq]
            data, advance = (bytes(item.buffer), item.fragment_count) if isinstance(
                item, FragmentAssembly) else (item, 1)  # fmt: skip
            self._release(peer, len(data))
            if advance > 1:  # drop anything queued under the other fragments' sequence numbers
                for stale in [k for k in ch.pending if (k - seq) & 0xFFFF < advance]:
                    item = ch.pending.pop(stale)
                    self._release(peer, len(item.buffer if isinstance(item, FragmentAssembly) else item))
            ch.incoming_reliable_seq = (seq + advance - 1) & 0xFFFF
            ch.incoming_unreliable_seq = 0
            self._events.append(Received(peer, channel, data))
            held, ch.held = ch.held, []
            for base, useq, udata in sorted(held, key=lambda entry: entry[1]):
                self._release(peer, len(udata))
                self._handle_unreliable(peer, channel, base, useq, udata)
            for key in list(ch.unreliable_fragments):
                if not w.in_reliable_window(ch.incoming_reliable_seq, key[0]):
                    self._release(peer, len(ch.unreliable_fragments.pop(key).buffer))

    def _reserve(self, peer: EnetPeer, size: int) -> bool:
        if (peer.waiting_data + size > self.max_waiting_data
                or peer.waiting_commands >= self.max_waiting_commands):  # fmt: skip
            self.stats.over_limit += 1
            return False
        peer.waiting_data += size
        peer.waiting_commands += 1
        return True

    def _release(self, peer: EnetPeer, size: int) -> None:
        peer.waiting_data -= size
        peer.waiting_commands -= 1

    def _queue_ack(self, peer: EnetPeer, command: w.Command, sent_time: int) -> None:
        is_disconnect = isinstance(command, w.Disconnect)
        if peer.state is not PeerState.CONNECTED and not (
            peer.state is PeerState.ACKNOWLEDGING_DISCONNECT and is_disconnect
        ):
            return
        if command.channel_id < peer.channel_count:  # ENet never acks the two windows past the free ones
            ahead = w.reliable_window(peer.channels[command.channel_id].incoming_reliable_seq,
                                      command.reliable_seq)  # fmt: skip
            if w.FREE_RELIABLE_WINDOWS - 1 <= ahead <= w.FREE_RELIABLE_WINDOWS:
                return
        if len(peer.acks) < MAX_PENDING_ACKS:
            peer.acks.append((command.channel_id, command.reliable_seq, sent_time, is_disconnect))

    # ------------------------------------------------------------------ outgoing
    def _queue(self, peer: EnetPeer, command: w.Command) -> None:
        size = w.command_size(command)
        peer.outgoing.append(OutgoingCommand(command, size, command.wants_ack))
        peer.outgoing_data += size

    def _queue_system(self, peer: EnetPeer, command: w.VerifyConnect | w.Disconnect | w.Ping) -> None:
        """Queue a channel-0xFF command, numbered with the peer-wide reliable sequence."""
        peer.outgoing_reliable_seq = (peer.outgoing_reliable_seq + 1) & 0xFFFF
        seq = peer.outgoing_reliable_seq if command.wants_ack else 0
        self._queue(peer, dataclasses.replace(command, channel_id=0xFF, reliable_seq=seq))

    def _remove_sent(self, peer: EnetPeer, seq: int, channel: int) -> int:
        """Forget an acknowledged command; returns its command number (0 if unknown)."""
        out = peer.sent.pop((channel, seq), None)
        if out is not None:
            peer.in_transit -= out.size
        else:  # acknowledged after its retransmission was queued
            key = (channel, seq)
            out = next((o for o in peer.outgoing if o.reliable and o.send_attempts > 0
                        and (o.command.channel_id, o.command.reliable_seq) == key), None)  # fmt: skip
            if out is None:
                return 0
            peer.outgoing.remove(out)
        peer.outgoing_data -= out.size
        return out.command.NUMBER

    def _check_timeouts(self, peer: EnetPeer) -> bool:
        """Requeue expired reliable commands with a doubled RTO; True if the peer timed out."""
        expired = []
        for key, out in peer.sent.items():
            if self._now - out.sent_time < out.rto:
                continue
            if peer.earliest_timeout is None or out.sent_time < peer.earliest_timeout:
                peer.earliest_timeout = out.sent_time
            waited = self._now - peer.earliest_timeout
            if waited >= peer.timeout_maximum or (
                (1 << (out.send_attempts - 1)) >= peer.timeout_limit and waited >= peer.timeout_minimum
            ):
                self.stats.timeouts += 1
                self._free(peer, "local" if peer.state is PeerState.DISCONNECTING else "timeout")
                return True
            out.rto *= 2
            expired.append(key)
        for key in reversed(expired):
            out = peer.sent.pop(key)
            peer.in_transit -= out.size
            peer.outgoing.appendleft(out)
            self.stats.retransmissions += 1
        return False

    def _header(self, peer: EnetPeer, *, sent_time: bool) -> w.Header:
        session = peer.outgoing_session_id & 3 if peer.outgoing_peer_id < w.MAXIMUM_PEER_ID else 0
        return w.Header(peer.outgoing_peer_id, session, self._now & 0xFFFF if sent_time else None)

    def _flush(self, peer: EnetPeer) -> list[tuple[bytes, Address]]:
        """Pack acks, queued commands and a ping if due into datagrams of at most one MTU."""
        if (peer.state is PeerState.CONNECTED and not peer.sent
                and self._now - (peer.last_receive_time or peer.created) >= PING_INTERVAL
                and not any(out.reliable for out in peer.outgoing)):  # fmt: skip
            self._queue_system(peer, w.Ping())  # keeps the RTT fresh and detects a dead link
        datagrams: list[tuple[bytes, Address]] = []
        window = max(peer.window_size, peer.mtu)
        for _ in range(MAX_DATAGRAMS_PER_POLL):
            commands: list[w.Command] = []
            size, has_reliable, acked_disconnect, blocked = 4, False, False, False
            while peer.acks and len(commands) < w.MAXIMUM_PACKET_COMMANDS and size + 8 <= peer.mtu:
                channel, seq, sent_time, is_disconnect = peer.acks.popleft()
                commands.append(w.Acknowledge(channel_id=channel, reliable_seq=seq, received_reliable_seq=seq,
                                              received_sent_time=sent_time))  # fmt: skip
                size += 8
                acked_disconnect |= is_disconnect
            remaining: deque[OutgoingCommand] = deque()
            while peer.outgoing:
                out = peer.outgoing.popleft()
                if len(commands) >= w.MAXIMUM_PACKET_COMMANDS or size + out.size > peer.mtu:
                    remaining.append(out)
                    remaining.extend(peer.outgoing)
                    peer.outgoing.clear()
                    break
                if out.reliable:
                    if blocked or peer.in_transit + out.size > window:
                        blocked = True  # window full: later unreliable commands may still go
                        remaining.append(out)
                        continue
                    out.send_attempts += 1
                    out.rto = out.rto or peer.round_trip_time + 4 * peer.round_trip_time_variance
                    out.sent_time = self._now
                    peer.sent[(out.command.channel_id, out.command.reliable_seq)] = out
                    peer.in_transit += out.size
                    has_reliable = True
                else:
                    peer.outgoing_data -= out.size
                commands.append(out.command)
                size += out.size
            peer.outgoing = remaining
            if not commands:
                break
            datagram = w.Datagram(self._header(peer, sent_time=has_reliable), tuple(commands))
            datagrams.append((bytes(datagram), peer.address))
            if acked_disconnect:
                self._free(peer, None)
                break
            if not peer.acks and (not peer.outgoing or blocked):
                break
        return datagrams

    # ------------------------------------------------------------------ bookkeeping
    def _free_slot(self) -> int | None:
        return next((i for i, peer in enumerate(self._slots) if peer is None), None)

    def _new_peer(self, slot: int, address: Address, *, is_client: bool) -> EnetPeer:
        peer = EnetPeer(slot, address, self._now, is_client=is_client, mtu=self.mtu,
                        timeouts=self.default_timeouts)  # fmt: skip
        self._slots[slot] = peer
        return peer

    def _reset_queues(self, peer: EnetPeer) -> None:
        peer.outgoing.clear()
        peer.sent.clear()
        peer.acks.clear()
        peer.outgoing_data = peer.in_transit = peer.waiting_data = peer.waiting_commands = 0
        for ch in peer.channels:
            ch.pending.clear()
            ch.held.clear()
            ch.unreliable_fragments.clear()

    def _free(self, peer: EnetPeer, reason: Reason | None, data: int = 0) -> None:
        """Release the peer's slot; emit Disconnected if the user knows the peer."""
        was = peer.state
        self._reset_queues(peer)
        peer.state = PeerState.DISCONNECTED
        if self._slots[peer.peer_id] is peer:
            self._slots[peer.peer_id] = None
            self._sessions[peer.peer_id] = (peer.incoming_session_id, peer.outgoing_session_id)
        known = peer.announced or peer.is_client
        if reason is not None and known and was is not PeerState.ACKNOWLEDGING_DISCONNECT:
            self._events.append(Disconnected(peer, reason, data))
            log.info("ENet peer %d (%r) disconnected: %s", peer.peer_id, peer.address, reason)


def _ms(now: float) -> int:
    return int(now * 1000)


def _next_session(requested: int, previous: int) -> int:
    """ENet's session ID choice: the requested (or previous) one plus one, never the previous."""
    session = ((previous if requested == 0xFF else requested) + 1) & 3
    return session if session != previous else (session + 1) & 3


def _shape(item: FragmentAssembly | w.SendFragment) -> tuple[int, int]:
    if isinstance(item, FragmentAssembly):
        return len(item.buffer), item.fragment_count
    return item.total_length, item.fragment_count
