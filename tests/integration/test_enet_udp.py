"""The asyncio ENet adapter over real UDP on 127.0.0.1, and interop with the C ENet (pyenet)."""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from moonhowl.net.enet import EnetEndpoint, connect, create_server
from moonhowl.protocol import control
from moonhowl.protocol.enet_peer import Connected, Disconnected, Event, Received

pytestmark = pytest.mark.integration


E = TypeVar("E", Connected, Received, Disconnected)


async def next_event(endpoint: EnetEndpoint, kind: type[E], timeout: float = 5.0) -> E:
    async def wait() -> E:
        while True:
            event = await endpoint.events.get()
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def server() -> AsyncIterator[EnetEndpoint]:
    endpoint = await create_server("127.0.0.1", 0)
    yield endpoint
    endpoint.close()


async def test_connect_exchange_and_disconnect(server: EnetEndpoint) -> None:
    port = server.local_address[1]
    client, peer = await connect("127.0.0.1", port, data=0x1234ABCD, timeout=5)
    try:
        connected = await next_event(server, Connected)
        assert connected.data == 0x1234ABCD and connected.peer.channel_count == 48
        blob = bytes(range(256)) * 200
        client.send(peer, control.CHANNEL_URGENT, b"reliable")
        client.send(peer, 5, blob)
        client.send(peer, 6, b"unsequenced", reliable=False, unsequenced=True)
        got = {}
        for _ in range(3):
            event = await next_event(server, Received)
            got[event.channel] = event.data
        assert got == {control.CHANNEL_URGENT: b"reliable", 5: blob, 6: b"unsequenced"}
        server.send(connected.peer, 0, b"down")
        assert (await next_event(client, Received)).data == b"down"
        client.disconnect(peer, 42)
        gone = await next_event(server, Disconnected)
        assert (gone.reason, gone.data) == ("remote", 42)
        assert (await next_event(client, Disconnected)).reason == "local"
    finally:
        client.close()


async def test_encrypted_control_messages_through_enet(server: EnetEndpoint) -> None:
    key = bytes(range(16))
    host_cipher, client_cipher = control.ControlCipher(key, True), control.ControlCipher(key, False)
    client, peer = await connect("127.0.0.1", server.local_address[1], data=7, timeout=5)
    try:
        server_peer = (await next_event(server, Connected)).peer
        client.send(peer, control.CHANNEL_URGENT, client_cipher.seal(control.REQUEST_IDR_FRAME, b"\0\0"))
        client.send(peer, 0, client_cipher.seal(control.PERIODIC_PING, bytes(control.PeriodicPing())))
        opened = [host_cipher.open((await next_event(server, Received)).data) for _ in range(2)]
        assert sorted(opened) == [(0x0200, bytes(control.PeriodicPing())), (0x0302, b"\0\0")]
        server.send(server_peer, 0, host_cipher.seal(control.TERMINATION, bytes(control.Termination())))
        msg_type, payload = client_cipher.open((await next_event(client, Received)).data)
        assert (msg_type, control.Termination.parse(payload).reason) == (0x0109, 0x80030023)
    finally:
        client.close()


async def test_close_notifies_peers_and_callbacks_receive_events() -> None:
    seen: list[Event] = []
    endpoint = await create_server("127.0.0.1", 0, on_event=seen.append)
    try:
        client, _ = await connect("127.0.0.1", endpoint.local_address[1], timeout=5)
        client.close()
        for _ in range(100):
            if any(isinstance(e, Disconnected) for e in seen):
                break
            await asyncio.sleep(0.02)
        assert [type(e) for e in seen] == [Connected, Disconnected]
        assert isinstance(seen[1], Disconnected) and seen[1].reason == "remote"
        assert endpoint.events.empty()
    finally:
        endpoint.close()


async def test_connect_times_out_against_a_silent_port() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        start = time.monotonic()
        with pytest.raises((ConnectionError, TimeoutError)):
            await connect("127.0.0.1", silent.getsockname()[1], timeout=0.5)
        assert time.monotonic() - start < 3.0
    finally:
        silent.close()


# --------------------------------------------------------------------------- pyenet interop
def _pyenet() -> Any:
    try:
        return importlib.import_module("enet")
    except ImportError:
        pytest.skip("pyenet is not installed")


async def test_pyenet_client_against_our_server(server: EnetEndpoint) -> None:
    enet = _pyenet()
    port = server.local_address[1]
    seen: list[tuple[Any, ...]] = []

    def client() -> None:
        host = enet.Host(None, 1, 0, 0, 0)
        peer = host.connect(enet.Address(b"127.0.0.1", port), 48, 0x00C0FFEE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = host.service(10)
            if event.type == enet.EVENT_TYPE_CONNECT:
                peer.send(0, enet.Packet(b"hello", enet.PACKET_FLAG_RELIABLE))
                peer.send(5, enet.Packet(bytes(range(256)) * 40, enet.PACKET_FLAG_RELIABLE))
                peer.send(7, enet.Packet(b"unseq", enet.PACKET_FLAG_UNSEQUENCED))
            elif event.type == enet.EVENT_TYPE_RECEIVE:
                seen.append((event.channelID, event.packet.data))
                if len(seen) == 2:
                    peer.disconnect(99)
            elif event.type == enet.EVENT_TYPE_DISCONNECT:
                seen.append(("disconnect",))
                return

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    connected = await next_event(server, Connected)
    assert connected.data == 0x00C0FFEE and connected.peer.channel_count == 48
    got = {}
    for _ in range(3):
        event = await next_event(server, Received)
        got[event.channel] = event.data
    assert got == {0: b"hello", 5: bytes(range(256)) * 40, 7: b"unseq"}
    server.send(connected.peer, 3, b"pong")
    server.send(connected.peer, 4, b"Z" * 5000)
    gone = await next_event(server, Disconnected)
    assert (gone.reason, gone.data) == ("remote", 99)
    await asyncio.to_thread(thread.join, 5)
    assert seen == [(3, b"pong"), (4, b"Z" * 5000), ("disconnect",)]


async def test_our_client_against_pyenet_server() -> None:
    enet = _pyenet()
    host = enet.Host(enet.Address(b"127.0.0.1", 0), 4, 48, 0, 0)
    port = host.address.port
    seen: list[tuple[Any, ...]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            event = host.service(10)
            if event.type == enet.EVENT_TYPE_CONNECT:
                seen.append(("connect", event.data))
            elif event.type == enet.EVENT_TYPE_RECEIVE:
                seen.append((event.channelID, len(event.packet.data)))
                reply = enet.Packet(event.packet.data[::-1], enet.PACKET_FLAG_RELIABLE)
                event.peer.send(event.channelID, reply)
            elif event.type == enet.EVENT_TYPE_DISCONNECT:
                seen.append(("disconnect", event.data))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client, peer = await connect("127.0.0.1", port, data=0xCAFE, timeout=5)
        client.send(peer, 1, b"abc")
        client.send(peer, 2, b"q" * 4000 + b"!")
        replies = {}
        for _ in range(2):
            event = await next_event(client, Received)
            replies[event.channel] = event.data
        assert replies == {1: b"cba", 2: b"!" + b"q" * 4000}
        client.disconnect(peer, 5)
        assert (await next_event(client, Disconnected)).reason == "local"
        client.close()
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 5)
    assert seen == [("connect", 0xCAFE), (1, 3), (2, 4001), ("disconnect", 5)]
