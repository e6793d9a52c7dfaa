"""ENet 1.3 sans-IO host: wire format, connection, reliable delivery over a bad link, limits."""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from moonhowl.protocol import enet as w
from moonhowl.protocol.enet_peer import (
    Connected,
    Disconnected,
    EnetHost,
    EnetPeer,
    Event,
    PeerState,
    Received,
)

pytestmark = pytest.mark.unit

SERVER = ("192.0.2.1", 47999)
CLIENT = ("192.0.2.2", 40000)
OTHER = ("192.0.2.3", 40001)
Addr = tuple[str, int]


class Link:
    """Two EnetHosts joined by a simulated network: seeded loss, duplication and reordering."""

    def __init__(self, server: EnetHost, *, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 seed: int = 1) -> None:  # fmt: skip
        self.server = server
        self.clients: dict[tuple[str, int], EnetHost] = {}
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.now = 100.0
        self.up = True
        self.in_flight: list[tuple[float, bytes, tuple[str, int], tuple[str, int]]] = []
        self.events: dict[str, list[Event]] = defaultdict(list)

    def client(self, address: tuple[str, int] = CLIENT, **kw: Any) -> EnetHost:
        host = EnetHost(max_peers=1, **kw)
        self.clients[address] = host
        return host

    def _emit(self, src: Addr, dst: Addr, datagrams: Sequence[tuple[bytes, object]]) -> None:
        for data, _ in datagrams:
            if not self.up or self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                delay = 0.005 + (self.rng.random() * 0.05 if self.rng.random() < self.reorder else 0.0)
                self.in_flight.append((self.now + delay, data, src, dst))

    def step(self, dt: float = 0.01) -> None:
        self.now += dt
        due = sorted((m for m in self.in_flight if m[0] <= self.now), key=lambda m: m[0])
        self.in_flight = [m for m in self.in_flight if m[0] > self.now]
        for _, data, src, dst in due:
            if dst == SERVER:
                self.events["server"] += self.server.receive(data, src, self.now)
            elif dst in self.clients:
                self.events[str(dst)] += self.clients[dst].receive(data, SERVER, self.now)
        for datagram, address in self.server.poll(self.now):
            self._emit(SERVER, address, [(datagram, address)])
        self.events["server"] += self.server.drain_events()
        for address, host in self.clients.items():
            self._emit(address, SERVER, host.poll(self.now))
            self.events[str(address)] += host.drain_events()

    def run(self, seconds: float, dt: float = 0.01) -> None:
        for _ in range(int(seconds / dt)):
            self.step(dt)

    def take(self, who: str) -> list[Event]:
        events, self.events[who] = self.events[who], []
        return events


def connected_pair(link: Link, data: int = 0x1234ABCD, channels: int = 48) -> tuple[EnetPeer, EnetPeer]:
    client = link.client()
    peer = client.connect(SERVER, channels, data, link.now)
    server_events: list[Connected] = []
    client_events: list[Connected] = []
    for _ in range(1000):  # at most 10 s: a lossy link may need retransmissions
        link.step()
        server_events += [e for e in link.take("server") if isinstance(e, Connected)]
        client_events += [e for e in link.take(str(CLIENT)) if isinstance(e, Connected)]
        if server_events and client_events:
            break
    assert len(server_events) == 1 and len(client_events) == 1
    assert client_events[0].peer is peer
    return peer, server_events[0].peer


def received(events: list[Event]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = defaultdict(list)
    for event in events:
        if isinstance(event, Received):
            out[event.channel].append(event.data)
    return out


# --------------------------------------------------------------------------- wire format
def test_command_sizes_match_protocol_h() -> None:
    sizes: dict[type[w.Command], int] = {
             w.Acknowledge: 8, w.Connect: 48, w.VerifyConnect: 44, w.Disconnect: 8, w.Ping: 4,
             w.SendReliable: 6, w.SendUnreliable: 8, w.SendUnsequenced: 8, w.SendFragment: 24,
             w.BandwidthLimit: 12, w.ThrottleConfigure: 16, w.SendUnreliableFragment: 24}  # fmt: skip
    for cls, size in sizes.items():
        assert cls.size() == size and len(bytes(cls())) == size


def test_connect_bytes_known_answer() -> None:
    # ENetProtocolConnect from protocol.h, big endian, after a 4-byte header with sentTime.
    expected = struct.pack("!HH", 0x8FFF, 0x1234) + struct.pack(
        "!BBHHBBIIIIIIIIII", 0x82, 0xFF, 1, 0, 0xFF, 0xFF, 1392, 65536, 48, 0, 0, 5000, 2, 2,
        0xDEADBEEF, 0x1234ABCD)  # fmt: skip
    connect = w.Connect(reliable_seq=1, channel_count=48, connect_id=0xDEADBEEF, data=0x1234ABCD)
    datagram = w.Datagram(w.Header(sent_time=0x1234), (connect,))
    assert bytes(datagram) == expected
    assert w.Datagram.parse(expected) == datagram


def test_header_peer_session_and_flags() -> None:
    header = w.Header(peer_id=0x123, session_id=2, sent_time=None)
    assert bytes(header) == struct.pack("!H", 0x123 | 2 << 12)
    assert w.Header.parse(bytes(header) + b"xx") == (header, 2)
    parsed, offset = w.Header.parse(struct.pack("!HH", 0x8000 | 0x4000 | 7, 9))
    assert (parsed.peer_id, parsed.compressed, parsed.sent_time, offset) == (7, True, 9, 4)


def test_every_command_round_trips() -> None:
    commands: tuple[w.Command, ...] = (
        w.Acknowledge(channel_id=3, reliable_seq=9, received_reliable_seq=9, received_sent_time=77),
        w.VerifyConnect(outgoing_peer_id=5, incoming_session_id=1, outgoing_session_id=2, connect_id=3),
        w.Disconnect(flags=w.FLAG_UNSEQUENCED, data=42), w.Ping(reliable_seq=4),
        w.SendReliable(channel_id=1, reliable_seq=2, data=b"abc"),
        w.SendUnreliable(channel_id=1, reliable_seq=2, unreliable_seq=3, data=b""),
        w.SendUnsequenced(channel_id=0, unsequenced_group=65535, data=b"u"),
        w.SendFragment(channel_id=4, reliable_seq=10, start_seq=9, fragment_count=3, fragment_number=1,
                       total_length=300, fragment_offset=100, data=b"f" * 100),
        w.SendUnreliableFragment(start_seq=1, fragment_count=2, total_length=4, data=b"ab"),
        w.BandwidthLimit(incoming_bandwidth=1, outgoing_bandwidth=2),
        w.ThrottleConfigure(interval=1, acceleration=2, deceleration=3),
    )  # fmt: skip
    datagram = w.Datagram(w.Header(peer_id=1, session_id=3, sent_time=5), commands)
    parsed = w.Datagram.parse(bytes(datagram))
    assert bytes(parsed) == bytes(datagram)
    assert [type(c) for c in parsed.commands] == [type(c) for c in commands]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x80\x00\x00", b"\x00\x00\x86", b"\x00\x00\x0d\x00\x00\x00",
     b"\x00\x00\x86\x00\x00\x01\x00\x10abc", b"\x00\x00\x82\xff\x00\x01" + bytes(10)],
)  # fmt: skip
def test_malformed_datagrams_raise_wire_error(data: bytes) -> None:
    with pytest.raises(w.EnetWireError):
        w.Datagram.parse(data)


# --------------------------------------------------------------------------- connection
def test_connect_carries_data_and_channel_count() -> None:
    link = Link(EnetHost(max_peers=4))
    client_peer, server_peer = connected_pair(link, data=0xCAFEF00D)
    assert server_peer.connect_data == 0xCAFEF00D and server_peer.channel_count == 48
    assert client_peer.state is server_peer.state is PeerState.CONNECTED
    assert client_peer.outgoing_peer_id == server_peer.peer_id
    assert server_peer.outgoing_peer_id == client_peer.peer_id
    assert client_peer.outgoing_session_id == server_peer.incoming_session_id
    assert server_peer.outgoing_session_id == client_peer.incoming_session_id


def test_server_channel_limit_and_mtu_negotiation() -> None:
    link = Link(EnetHost(channel_limit=4, mtu=1200))
    client_peer, server_peer = connected_pair(link, channels=48)
    assert server_peer.channel_count == client_peer.channel_count == 4
    assert server_peer.mtu == client_peer.mtu == 1200


def test_max_peers_refuses_extra_connections() -> None:
    server = EnetHost(max_peers=1)
    link = Link(server)
    connected_pair(link)
    other = link.client(OTHER)
    peer = other.connect(SERVER, 2, 0, link.now)
    link.run(10.5)  # the client gives up after its handshake timeout (10 s)
    assert server.stats.rejected_connects >= 1
    assert [e.reason for e in link.take(str(OTHER)) if isinstance(e, Disconnected)] == ["timeout"]
    assert peer.state is PeerState.DISCONNECTED and len(server.peers) == 1


def test_disconnect_both_sides_and_slot_reuse_with_new_session() -> None:
    server = EnetHost(max_peers=2)
    link = Link(server)
    client_peer, server_peer = connected_pair(link)
    old_session = server_peer.incoming_session_id
    link.clients[CLIENT].disconnect(client_peer, 7)
    link.run(0.5)
    assert [(e.reason, e.data) for e in link.take("server") if isinstance(e, Disconnected)] == [("remote", 7)]
    assert [e.reason for e in link.take(str(CLIENT)) if isinstance(e, Disconnected)] == ["local"]
    assert server.peers == [] and link.clients[CLIENT].peers == []
    _, again = connected_pair(link)
    assert again.peer_id == server_peer.peer_id and again.incoming_session_id != old_session


def test_server_disconnect_later_delivers_queued_data_first() -> None:
    link = Link(EnetHost(), loss=0.15, seed=5)
    _, server_peer = connected_pair(link)
    for i in range(20):
        link.server.send(server_peer, 1, b"bye%d" % i)
    link.server.disconnect(server_peer, 0x80030023, later=True)
    link.run(10.0)
    events = link.take(str(CLIENT))
    assert received(events)[1] == [b"bye%d" % i for i in range(20)]
    assert [(e.reason, e.data) for e in events if isinstance(e, Disconnected)] == [("remote", 0x80030023)]


def test_disconnect_now_notifies_remote() -> None:
    link = Link(EnetHost())
    _, server_peer = connected_pair(link)
    link.server.disconnect_now(server_peer, 3)
    assert [e.reason for e in link.server.drain_events() if isinstance(e, Disconnected)] == ["local"]
    link.run(0.1)
    events = link.take(str(CLIENT))
    assert [(e.reason, e.data) for e in events if isinstance(e, Disconnected)] == [("remote", 3)]


def test_timeout_when_the_link_dies() -> None:
    link = Link(EnetHost())
    _, server_peer = connected_pair(link)
    link.up = False
    start = link.now
    for _ in range(4000):
        link.step(0.01)
        if server_peer.state is PeerState.DISCONNECTED:
            break
    assert [e.reason for e in link.take("server") if isinstance(e, Disconnected)] == ["timeout"]
    assert 5.0 <= link.now - start <= 31.0  # ENet's timeout minimum / maximum
    link.run(31.0)
    assert [e.reason for e in link.take(str(CLIENT)) if isinstance(e, Disconnected)] == ["timeout"]


def test_moonlight_timeout_settings_time_out_after_ten_seconds() -> None:
    link = Link(EnetHost())
    client_peer, _ = connected_pair(link)
    link.clients[CLIENT].set_timeout(client_peer, 2, 10.0, 10.0)
    link.up = False
    start = link.now
    while client_peer.state is not PeerState.DISCONNECTED:
        link.step(0.01)
    assert 10.0 <= link.now - start <= 20.0  # checked when an RTO expires after the 10 s


def test_half_open_connection_is_dropped_silently() -> None:
    server = EnetHost(handshake_timeout=2.0)
    connect = w.Connect(reliable_seq=1, channel_count=2, connect_id=1, data=5)
    server.receive(bytes(w.Datagram(w.Header(sent_time=0), (connect,))), OTHER, 0.0)
    assert len(server.peers) == 1 and server.peers[0].state is PeerState.ACKNOWLEDGING_CONNECT
    datagrams = server.poll(0.01)
    verify = w.Datagram.parse(datagrams[0][0]).commands[0]
    assert isinstance(verify, w.VerifyConnect) and verify.connect_id == 1 and verify.channel_count == 2
    server.poll(2.5)
    assert server.peers == [] and server.drain_events() == []


# --------------------------------------------------------------------------- delivery
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_reliable_ordered_delivery_over_lossy_reordering_duplicating_link(seed: int) -> None:
    link = Link(EnetHost(), loss=0.1, dup=0.1, reorder=0.3, seed=seed)
    client_peer, server_peer = connected_pair(link)
    client, rng = link.clients[CLIENT], random.Random(seed)
    sent_up: dict[int, list[bytes]] = defaultdict(list)
    sent_down: dict[int, list[bytes]] = defaultdict(list)
    for i in range(300):
        channel = rng.randrange(4)
        message = b"%d:%d:" % (i, channel) + rng.randbytes(rng.randrange(0, 200))
        assert client.send(client_peer, channel, message)
        sent_up[channel].append(message)
        if i % 3 == 0:
            assert link.server.send(server_peer, channel + 10, message[::-1])
            sent_down[channel + 10].append(message[::-1])
        link.step(0.002)
    link.run(20.0)
    assert received(link.take("server")) == sent_up
    assert received(link.take(str(CLIENT))) == sent_down
    assert link.server.stats.retransmissions > 0 and server_peer.state is PeerState.CONNECTED


@pytest.mark.parametrize("loss", [0.0, 0.15])
def test_fragmented_packets_reassemble(loss: float) -> None:
    link = Link(EnetHost(), loss=loss, reorder=0.3, seed=7)
    client_peer, _ = connected_pair(link)
    blobs = [random.Random(i).randbytes(n) for i, n in enumerate((1364, 1365, 20_000, 100_000))]
    for blob in blobs:
        assert link.clients[CLIENT].send(client_peer, 2, blob)
    link.clients[CLIENT].send(client_peer, 2, b"after")
    link.run(30.0)
    assert received(link.take("server"))[2] == [*blobs, b"after"]


def test_rtt_estimate_follows_the_link() -> None:
    link = Link(EnetHost())
    client_peer, server_peer = connected_pair(link)
    for _ in range(20):
        link.clients[CLIENT].send(client_peer, 0, b"x")
        link.run(0.2)
    assert 5 <= client_peer.round_trip_time <= 40 and 5 <= server_peer.round_trip_time <= 40


def test_unreliable_and_unsequenced_delivery() -> None:
    link = Link(EnetHost())
    client_peer, server_peer = connected_pair(link)
    client = link.clients[CLIENT]
    for i in range(5):
        client.send(client_peer, 3, b"u%d" % i, reliable=False)
        client.send(client_peer, 4, b"s%d" % i, reliable=False, unsequenced=True)
    link.run(0.2)
    got = received(link.take("server"))
    assert got[3] == [b"u%d" % i for i in range(5)] and sorted(got[4]) == [b"s%d" % i for i in range(5)]
    # a replayed unsequenced datagram is delivered once only
    command = w.SendUnsequenced(channel_id=4, unsequenced_group=77, data=b"once")
    header = w.Header(server_peer.peer_id, client_peer.outgoing_session_id)
    raw = bytes(w.Datagram(header, (command,)))
    events = link.server.receive(raw, CLIENT, link.now) + link.server.receive(raw, CLIENT, link.now)
    assert received(events)[4] == [b"once"]


def test_send_window_bounds_data_in_flight() -> None:
    link = Link(EnetHost())
    client_peer, _ = connected_pair(link)
    link.up = False
    for _ in range(200):
        link.clients[CLIENT].send(client_peer, 0, bytes(1000))
    link.step()
    assert 0 < client_peer.in_transit <= max(client_peer.window_size, client_peer.mtu)
    link.up = True
    link.run(5.0)
    assert len(received(link.take("server"))[0]) == 200


# --------------------------------------------------------------------------- hostile input
def _raw(peer: EnetPeer, *commands: w.Command, session: int | None = None) -> bytes:
    header = w.Header(peer.peer_id, peer.incoming_session_id if session is None else session, 0)
    return bytes(w.Datagram(header, commands))


def test_malformed_datagrams_are_dropped_without_harming_other_peers() -> None:
    server = EnetHost(max_peers=4)
    link = Link(server)
    client_peer, server_peer = connected_pair(link)
    good = w.SendReliable(channel_id=0, reliable_seq=1, data=b"evil")
    bad_inputs = [
        b"",
        b"\x01",
        b"\x80\x00\x00",  # truncated header / sentTime
        struct.pack("!HH", server_peer.peer_id, 0) + b"\x0f\x00\x00\x00",  # unknown command 15
        struct.pack("!HH", server_peer.peer_id, 0) + b"\x86\x00\x00",  # truncated command
        struct.pack("!H", 0x4000 | server_peer.peer_id) + bytes(good),  # compressed
        _raw(server_peer, w.SendReliable(channel_id=0, reliable_seq=1, data=b"x" * 10))[:-3],  # data cut
        bytes(w.Datagram(w.Header(0x800), (good,))),  # peer ID out of range
        bytes(w.Datagram(w.Header(3), (good,))),  # free slot
        _raw(server_peer, good, session=(server_peer.incoming_session_id + 1) & 3),  # wrong session
        bytes(w.Datagram(w.Header(), (good,))),  # data with no peer
        _raw(server_peer, w.SendReliable(channel_id=200, reliable_seq=1, data=b"x")),  # bad channel
    ]
    for raw in bad_inputs:
        assert server.receive(raw, CLIENT, link.now) == []
    assert server.receive(_raw(server_peer, good), OTHER, link.now) == []  # right peer, wrong address
    rng = random.Random(99)
    valid = _raw(server_peer, w.Ping(reliable_seq=1), good)
    for _ in range(3000):  # mutation fuzzing from another address: never raises, never disturbs
        mutated = bytearray(valid if rng.random() < 0.7 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(1, 4)):
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        server.receive(bytes(mutated[: rng.randrange(len(mutated) + 1)]), OTHER, link.now)
    assert server.stats.malformed >= 5 and server.stats.dropped >= 5
    link.take("server")
    link.clients[CLIENT].send(client_peer, 5, b"still fine")
    link.run(1.0)
    assert b"still fine" in received(link.take("server"))[5]
    assert server_peer.state is PeerState.CONNECTED


def test_out_of_order_flood_is_bounded() -> None:
    server = EnetHost(max_waiting_data=64 * 1024, max_waiting_commands=500)
    link = Link(server)
    _, server_peer = connected_pair(link)
    for seq in range(2, 5000):  # sequence 1 never comes: everything must wait
        server.receive(_raw(server_peer, w.SendReliable(channel_id=0, reliable_seq=seq, data=bytes(600))),
                       CLIENT, link.now)  # fmt: skip
    assert server_peer.waiting_data <= 64 * 1024 and server_peer.waiting_commands <= 500
    assert server.stats.over_limit > 0
    huge = w.SendFragment(channel_id=1, reliable_seq=9, start_seq=9, fragment_count=2, fragment_number=0,
                          total_length=1 << 30, data=b"x")  # fmt: skip
    server.receive(_raw(server_peer, huge), CLIENT, link.now)
    assert server_peer.waiting_data <= 64 * 1024
    for seq in range(20000):  # acks are bounded too
        server.receive(_raw(server_peer, w.Ping(reliable_seq=seq & 0xFFFF)), CLIENT, link.now)
    assert len(server_peer.acks) <= 4096


def test_connect_flood_fills_only_the_slots() -> None:
    server = EnetHost(max_peers=8, handshake_timeout=1.0)
    for i in range(1000):
        connect = w.Connect(reliable_seq=1, channel_count=48, connect_id=i)
        server.receive(bytes(w.Datagram(w.Header(sent_time=0), (connect,))), ("198.51.100.7", i), 0.0)
    assert len(server.peers) == 8 and server.stats.rejected_connects == 992
    server.poll(1.5)
    assert server.peers == []


def test_outgoing_buffer_is_bounded() -> None:
    link = Link(EnetHost(max_outgoing_data=10_000))
    _, server_peer = connected_pair(link)
    link.up = False
    results = [link.server.send(server_peer, 0, bytes(1000)) for _ in range(20)]
    assert results.count(True) < 12 and not results[-1]


def test_send_rejects_bad_channel_and_unconnected_peer() -> None:
    link = Link(EnetHost())
    client_peer, _ = connected_pair(link, channels=2)
    with pytest.raises(ValueError):
        link.clients[CLIENT].send(client_peer, 2, b"x")
    link.clients[CLIENT].disconnect_now(client_peer)
    assert not link.clients[CLIENT].send(client_peer, 0, b"x")


def test_disconnect_without_sent_time_still_frees_the_slot() -> None:
    server = EnetHost()
    link = Link(server)
    _, server_peer = connected_pair(link)
    header = w.Header(server_peer.peer_id, server_peer.incoming_session_id, None)  # no sentTime
    events = server.receive(bytes(w.Datagram(header, (w.Disconnect(flags=w.FLAG_ACKNOWLEDGE, data=1),))),
                            CLIENT, link.now)  # fmt: skip
    assert [(e.reason, e.data) for e in events if isinstance(e, Disconnected)] == [("remote", 1)]
    server.poll(link.now)
    assert server.peers == []
