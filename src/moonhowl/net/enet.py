"""asyncio UDP adapter around the sans-IO :class:`~moonhowl.protocol.enet_peer.EnetHost`.

One :class:`EnetEndpoint` owns one UDP socket. It feeds received datagrams to the host, flushes
whatever the host wants to send right after every receive/send call, and runs the host's timers
from a ``loop.call_later`` tick (10 ms by default). Events go to ``on_event`` when given, else to
the :attr:`EnetEndpoint.events` queue.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from moonhowl.protocol.enet import Address
from moonhowl.protocol.enet_peer import (
    Connected,
    Disconnected,
    EnetHost,
    EnetPeer,
    Event,
    PeerState,
    Received,
)

log = logging.getLogger(__name__)

CONTROL_PORT = 47999
CONTROL_CHANNELS = 48  # moonlight-common-c CTRL_CHANNEL_COUNT
DEFAULT_TICK = 0.010
MAX_QUEUED_EVENTS = 10_000  # Received events beyond this wait in no queue: they are dropped


class EnetEndpoint(asyncio.DatagramProtocol):
    """An ENet host bound to one asyncio UDP socket."""

    def __init__(self, host: EnetHost, *, on_event: Callable[[Event], None] | None = None,
                 tick: float = DEFAULT_TICK) -> None:  # fmt: skip
        self.host = host
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.dropped_events = 0
        self._on_event = on_event
        self._tick_interval = tick
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[EnetPeer, asyncio.Future[Connected | Disconnected]] = {}
        self.closed: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's datagram transport does not subclass DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._timer = self._loop.call_later(self._tick_interval, self._tick)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._deliver(self.host.receive(data, addr, self._now()))
        self._flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) surface here on some platforms; ENet's own timeouts
        # decide when a peer is gone.
        log.debug("ENet socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ API
    @property
    def local_address(self) -> Address:
        if self._transport is None:
            raise RuntimeError("endpoint is closed")
        sockname: Address = self._transport.get_extra_info("sockname")
        return sockname

    def connect(self, address: Address, channel_count: int = CONTROL_CHANNELS, data: int = 0) -> EnetPeer:
        """Start connecting to ``address`` (a resolved socket address); see :func:`connect`."""
        peer = self.host.connect(address, channel_count, data, self._now())
        self._flush()
        return peer

    async def wait_connected(self, peer: EnetPeer, timeout: float | None = None) -> None:
        """Wait for a pending connection; raises ConnectionError if it fails."""
        if peer.state is PeerState.CONNECTED:
            return
        if peer.state is PeerState.DISCONNECTED:
            raise ConnectionError(f"ENet connection to {peer.address!r} failed")
        waiter = self._waiters.setdefault(peer, asyncio.get_running_loop().create_future())
        event = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        if isinstance(event, Disconnected):
            raise ConnectionError(f"ENet connection to {peer.address!r} failed: {event.reason}")

    def send(self, peer: EnetPeer, channel: int, data: bytes, reliable: bool = True, *,
             unsequenced: bool = False) -> bool:  # fmt: skip
        """Queue a packet and send it at once; False if the peer cannot take it."""
        ok = self.host.send(peer, channel, data, reliable, unsequenced=unsequenced)
        self._flush()
        return ok

    def disconnect(self, peer: EnetPeer, data: int = 0, *, later: bool = False) -> None:
        self.host.disconnect(peer, data, later=later)
        self._flush()

    def close(self) -> None:
        """Tell every peer we are leaving (one unacknowledged DISCONNECT each) and close."""
        for peer in self.host.peers:
            self.host.disconnect_now(peer)
        self._flush()
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ internals
    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _tick(self) -> None:
        self._flush()
        if self._transport is not None and self._loop is not None:
            self._timer = self._loop.call_later(self._tick_interval, self._tick)

    def _flush(self) -> None:
        if self._transport is None:
            return
        for datagram, address in self.host.poll(self._now()):
            self._transport.sendto(datagram, address)
        self._deliver(self.host.drain_events())

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Connected | Disconnected):
                waiter = self._waiters.pop(event.peer, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("ENet event handler failed on %r", event)
            elif isinstance(event, Received) and self.events.qsize() >= MAX_QUEUED_EVENTS:
                self.dropped_events += 1
                if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                    log.warning("ENet event queue full: dropped %d packets", self.dropped_events)
            else:
                self.events.put_nowait(event)


async def create_server(host: str = "0.0.0.0", port: int = CONTROL_PORT, *,
                        on_event: Callable[[Event], None] | None = None,
                        enet_host: EnetHost | None = None, tick: float = DEFAULT_TICK,
                        **host_options: Any) -> EnetEndpoint:  # fmt: skip
    """Bind an ENet server socket (port 0 picks a free port: see ``local_address``)."""
    loop = asyncio.get_running_loop()
    enet = enet_host or EnetHost(channel_limit=CONTROL_CHANNELS, **host_options)
    _, endpoint = await loop.create_datagram_endpoint(
        lambda: EnetEndpoint(enet, on_event=on_event, tick=tick), local_addr=(host, port)
    )
    log.info("ENet listening on %r", endpoint.local_address)
    return endpoint


async def connect(host: str, port: int = CONTROL_PORT, *, channel_count: int = CONTROL_CHANNELS,
                  data: int = 0, timeout: float = 10.0,
                  on_event: Callable[[Event], None] | None = None,
                  tick: float = DEFAULT_TICK) -> tuple[EnetEndpoint, EnetPeer]:  # fmt: skip
    """Connect as a client (moonhowl's test client); ``data`` is the CONNECT data
    (X-SS-Connect-Data). Raises ConnectionError or TimeoutError when it fails."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise ConnectionError(f"cannot resolve {host!r}")
    family, _, _, _, address = infos[0]
    bind = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
    enet = EnetHost(max_peers=1, handshake_timeout=timeout)
    _, endpoint = await loop.create_datagram_endpoint(
        lambda: EnetEndpoint(enet, on_event=on_event, tick=tick), local_addr=bind, family=family
    )
    try:
        peer = endpoint.connect(tuple(address), channel_count, data)
        await endpoint.wait_connected(peer, timeout + 1.0)
    except BaseException:
        endpoint.close()
        raise
    return endpoint, peer
