"""All sessions of a host, and the sockets they share.

Control (ENet), video and audio each have one socket for every session: the ENet CONNECT data
(X-SS-Connect-Data) and the ping payloads (X-SS-Ping-Payload), fresh for every launch, say which
session a peer belongs to. RTSP is per session: moonlight-common-c takes the RTSP port from
sessionUrl0 (parseRtspPortNumberFromUrl), so session slot k listens on rtsp_port + k and two
clients, even behind one address, never mix up their handshakes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from moonhowl.net import enet as net_enet
from moonhowl.net.udp import MediaSocket
from moonhowl.protocol.enet import Connected, Disconnected, EnetPeer, Event, Received
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.launch import LaunchRequest
from moonhowl.session.apps import AppError
from moonhowl.session.session import Session
from moonhowl.state import PairedClient

if TYPE_CHECKING:
    from moonhowl.app import Host
    from moonhowl.media.audio_server import AudioServer
    from moonhowl.media.encoders import EncoderSpec

log = logging.getLogger(__name__)


class LaunchRefused(ProtocolError):
    status_code = 503


class SessionManager:
    def __init__(self, host: Host, encoders: dict[str, EncoderSpec]) -> None:
        self.host = host
        self.encoders = encoders
        self.sessions: dict[int, Session] = {}
        self.control: net_enet.EnetEndpoint | None = None
        self.video: MediaSocket
        self.audio: MediaSocket
        self._by_peer: dict[int, Session] = {}
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._audio_server: AudioServer | None = None
        self._audio_failed = False
        self._audio_lock = asyncio.Lock()

    async def audio_server(self) -> AudioServer | None:
        """The sound server, found or started on first use; None (said once) where there is none."""
        async with self._audio_lock:
            if self._audio_server is None and not self._audio_failed:
                from moonhowl.media.audio_server import AudioServer, AudioServerError

                server = AudioServer()
                try:
                    await server.start()
                    self._audio_server = server
                except (AudioServerError, OSError) as exc:
                    self._audio_failed = True
                    log.warning("no sound server: desktop sessions stream without audio (%s)", exc)
            return self._audio_server

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def control_port(self) -> int:
        assert self.control is not None
        return self.control.local_address[1]

    async def start(self, bind: str) -> None:
        config = self.host.config
        self.control = await net_enet.create_server(bind, config.port("control"), on_event=self._on_control_event)
        self.video = await MediaSocket.open("video", bind, config.port("video"))
        self.audio = await MediaSocket.open("audio", bind, config.port("audio"))

    # --- launching ----------------------------------------------------------------------------------
    def for_client(self, client: PairedClient) -> Session | None:
        return next((s for s in self.sessions.values() if s.client.id == client.id), None)

    async def launch(self, client: PairedClient, request: LaunchRequest) -> Session:
        app = self.host.config.app(request.app_id)
        if app is None:
            raise LaunchRefused(f"no app with id {request.app_id}")
        if not self.encoders:
            raise LaunchRefused("no working video encoder on this host (see `moonhowl doctor`)")
        old = self.for_client(client)
        if old is not None:
            await self.end(old, "the client launched again")
        limit = int(self.host.config.get("stream", "max_sessions"))
        used = {s.slot for s in self.sessions.values()}
        free = [slot for slot in range(limit) if slot not in used]
        if not free:
            raise LaunchRefused(f"the host is streaming to {limit} clients already (stream.max_sessions)")
        session = Session(self, self._next_id, free[0], client, app, request)
        self._next_id += 1
        base = self.host.config.port("rtsp")
        try:
            await session.start(str(self.host.config.get("server", "bind")), base + session.slot if base else 0)
        except AppError as exc:
            raise LaunchRefused(str(exc)) from None
        except Exception as exc:
            log.exception("launching %r failed", app.title)
            raise LaunchRefused(f"{app.title!r} could not start: {exc}") from None
        self.sessions[session.id] = session
        self.video.register(session.video_ping, session.on_video_ping)
        self.audio.register(session.audio_ping, session.on_audio_ping)
        return session

    async def resume(self, client: PairedClient, request: LaunchRequest) -> Session:
        session = self.for_client(client)
        if session is None:
            raise LaunchRefused("no session to resume: launch an app")
        app_id = session.app.id
        await self.end(session, "the client resumed with new keys")
        return await self.launch(client, dataclasses.replace(request, app_id=app_id))

    async def cancel(self, client: PairedClient) -> bool:
        session = self.for_client(client)
        if session is not None:
            await self.end(session, "cancelled by the client", terminate_client=True)
        return session is not None

    async def end(self, session: Session, reason: str, terminate_client: bool = False) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self.video.unregister(session.video_ping)
        self.audio.unregister(session.audio_ping)
        for key in [k for k, s in self._by_peer.items() if s is session]:
            del self._by_peer[key]
        await session.end(reason, terminate_client)

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await self.end(session, "the host is shutting down", terminate_client=True)
        if self.control is not None:
            # Give the termination messages a moment to leave before the socket closes.
            await asyncio.sleep(0.2)
            self.control.close()
        for media in (getattr(self, "video", None), getattr(self, "audio", None)):
            if media is not None:
                media.close()
        if self._audio_server is not None:
            await self._audio_server.stop()

    # --- control events -----------------------------------------------------------------------------
    def _on_control_event(self, event: Event) -> None:
        try:
            if isinstance(event, Connected):
                self._on_connected(event.peer, event.data)
            elif isinstance(event, Received):
                session = self._by_peer.get(id(event.peer))
                if session is not None:
                    session.on_control(event.data)
            elif isinstance(event, Disconnected):
                session = self._by_peer.pop(id(event.peer), None)
                if session is not None:
                    session.on_control_lost(event.reason)
        except Exception:
            log.exception("control event %s failed", type(event).__name__)

    def _on_connected(self, peer: EnetPeer, data: int) -> None:
        session = next((s for s in self.sessions.values() if s.connect_data == data), None)
        assert self.control is not None
        if session is None:
            log.warning("control connection from %s with unknown connect data %#x refused", peer.address, data)
            self.control.disconnect(peer)
            return
        self._by_peer[id(peer)] = session
        session.on_control_connected(peer)
