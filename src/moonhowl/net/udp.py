"""The shared video and audio UDP sockets: ping discovery and paced sending.

All sessions share one socket per stream kind. A client announces itself by sending its
X-SS-Ping-Payload (16 ASCII characters, then a BE32 counter: moonlight-common-c SS_PING) from
the socket it will receive on; the payload names the session, the source address is where that
session's packets go (FACTS: "take its address from it").
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

Address = tuple[str, int]
PING_PAYLOAD_LEN = 16
# A 1080p IDR at 20 Mbit/s is ~150 datagrams; a deep send buffer absorbs a frame's burst
# while the pacing below spreads larger ones.
SEND_BUFFER = 4 * 1024 * 1024
PACKETS_PER_BURST = 64
BURST_INTERVAL_S = 0.001


class MediaSocket(asyncio.DatagramProtocol):
    """One UDP port shared by all sessions: `register(payload, on_peer)` per session."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self._by_payload: dict[bytes, Callable[[Address], None]] = {}
        self.unknown_pings = 0

    @classmethod
    async def open(cls, name: str, bind: str, port: int) -> MediaSocket:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(name), local_addr=(bind, port))
        return protocol

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError as exc:
                log.info("%s: cannot raise the send buffer (%s)", self.name, exc)

    def register(self, ping_payload: str, on_peer: Callable[[Address], None]) -> None:
        self._by_payload[ping_payload.encode("ascii")] = on_peer

    def unregister(self, ping_payload: str) -> None:
        self._by_payload.pop(ping_payload.encode("ascii"), None)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        on_peer = self._by_payload.get(data[:PING_PAYLOAD_LEN])
        if on_peer is None:
            # Stray or stale pings (a client of an ended session) are normal; count them quietly.
            self.unknown_pings += 1
            if self.unknown_pings in (1, 100, 10000):
                log.info("%s: %d ping(s) for no session (latest from %s)", self.name, self.unknown_pings, addr)
            return
        try:
            on_peer(addr)
        except Exception:
            log.exception("%s: ping handler failed", self.name)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: its session times out on its own.
        log.debug("%s: %s", self.name, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PacedSender:
    """A session's outgoing datagrams to one address, in order, at most one burst per millisecond.

    A large frame goes out as bursts of PACKETS_PER_BURST so that it does not overflow the
    client's receive buffer; frames queue behind each other so sequence numbers stay in order.
    """

    def __init__(self, socket_: MediaSocket, addr: Address) -> None:
        self.socket = socket_
        self.addr = addr
        self._queue: deque[bytes] = deque()
        self._scheduled = False
        self.sent = 0

    def send(self, datagrams: list[bytes]) -> None:
        self._queue.extend(datagrams)
        if not self._scheduled:
            self._drain()

    def _drain(self) -> None:
        self._scheduled = False
        transport = self.socket.transport
        if transport is None or transport.is_closing():
            self._queue.clear()
            return
        for _ in range(min(PACKETS_PER_BURST, len(self._queue))):
            transport.sendto(self._queue.popleft(), self.addr)
            self.sent += 1
        if self._queue:
            self._scheduled = True
            asyncio.get_running_loop().call_later(BURST_INTERVAL_S, self._drain)

    @property
    def backlog(self) -> int:
        return len(self._queue)
