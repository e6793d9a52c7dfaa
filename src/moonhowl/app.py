"""Composition root: builds the host from its configuration and state and runs its listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from moonhowl import config as config_mod
from moonhowl.api import server as api_server
from moonhowl.media.encoders import EncoderSpec
from moonhowl.net import http
from moonhowl.pairing import PairingService
from moonhowl.protocol import xml
from moonhowl.protocol.launch import LaunchRequest
from moonhowl.session.manager import SessionManager
from moonhowl.state import HostState, PairedClient

log = logging.getLogger(__name__)

# ServerCodecModeSupport bits (moonlight-common-c Limelight.h SCM_*): a client aborts on 0.
SCM_H264 = 0x1
SCM_HEVC = 0x100
SCM_AV1_MAIN8 = 0x10000
CODEC_BITS = {"h264": SCM_H264, "hevc": SCM_HEVC, "av1": SCM_AV1_MAIN8}
# Sunshine advertises 8K (7680 x 4320 luma samples x 60... as a count of pixels per frame).
MAX_LUMA_PIXELS_HEVC = 1869449984


class StartupError(Exception):
    """The server cannot start (port in use, API socket taken); the message says what to do."""


class Host:
    """One moonhowl server: identity, pairing, listeners and (later) sessions."""

    def __init__(self, config: config_mod.Config, state: HostState,
                 encoders: dict[str, EncoderSpec] | None = None) -> None:
        """`encoders` (codec -> row) skips the startup probe; tests pass one probed once."""
        self.config = config
        self.state = state
        self.pairing = PairingService(state, float(config.get("pairing", "pin_timeout")))
        self.ports: dict[str, int] = {}
        self.encoders = encoders
        self.sessions = SessionManager(self, encoders or {})
        self._runners: list[web.AppRunner] = []
        self._tls: ssl.SSLContext | None = None
        self._stopped = asyncio.Event()

    # --- what the HTTP layer asks ----------------------------------------------------------------
    def port(self, name: str) -> int:
        """The port a listener really has (configured as 0 in tests: the kernel chose one)."""
        return self.ports.get(name) or self.config.port(name)

    @property
    def codecs(self) -> tuple[str, ...]:
        return tuple(self.sessions.encoders)

    def current_game(self, client: PairedClient | None) -> int:
        """The app the asking client streams: others see the host as free and launch their own."""
        session = self.sessions.for_client(client) if client is not None else None
        return session.app.id if session is not None else 0

    def codec_mode_support(self) -> int:
        bits = 0
        for codec in self.codecs:
            bits |= CODEC_BITS[codec]
        # moonlight-common-c aborts on 0; H.264 is what a host with no encoder would fail at launch.
        return bits or SCM_H264

    def max_luma_pixels_hevc(self) -> int:
        return MAX_LUMA_PIXELS_HEVC if "hevc" in self.codecs else 0

    def mac_address(self) -> str:
        for iface in sorted(Path("/sys/class/net").glob("*")):
            if iface.name == "lo":
                continue
            with contextlib.suppress(OSError):
                mac = (iface / "address").read_text().strip()
                if mac and mac != "00:00:00:00:00:00":
                    return mac
        return "00:00:00:00:00:00"

    def advertised_ip(self, request: web.Request | None = None) -> str:
        configured = str(self.config.get("server", "advertise_ip"))
        if configured:
            return configured
        # The address the client reached us on is the one it can reach us on again.
        if request is not None and request.transport is not None:
            sockname = request.transport.get_extra_info("sockname")
            if sockname and sockname[0] not in ("0.0.0.0", "::"):
                return str(sockname[0])
        return "127.0.0.1"

    def stream_routes(self) -> Mapping[str, Callable[..., Any]]:
        return {"/launch": self._launch, "/resume": self._resume, "/cancel": self._cancel}

    async def _launch(self, request: web.Request, client: PairedClient) -> bytes:
        launch = LaunchRequest.from_query(request.query.items())
        session = await self.sessions.launch(client, launch)
        return xml.response({"sessionUrl0": f"rtsp://{self.advertised_ip(request)}:{session.rtsp_port}",
                             "gamesession": 1})

    async def _resume(self, request: web.Request, client: PairedClient) -> bytes:
        launch = LaunchRequest.from_query(request.query.items(), resume=True)
        session = await self.sessions.resume(client, launch)
        return xml.response({"sessionUrl0": f"rtsp://{self.advertised_ip(request)}:{session.rtsp_port}",
                             "resume": 1})

    async def _cancel(self, request: web.Request, client: PairedClient) -> bytes:
        await self.sessions.cancel(client)
        return xml.response({"cancel": 1})

    def status(self) -> dict[str, Any]:
        return {
            "hostname": self.config.hostname,
            "uniqueid": self.state.unique_id,
            "ports": dict(self.ports),
            "codecs": list(self.codecs),
            "paired_clients": len(self.state.clients),
            "pairings": [p.describe() for p in self.pairing.pending],
            "sessions": [s.describe() for s in self.sessions.sessions.values()],
        }

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        bind = str(self.config.get("server", "bind"))
        if self.encoders is None:
            self.sessions.encoders = await asyncio.to_thread(probe_encoders, self.config)
        handlers = http.GameStreamHttp(self)
        self._tls = http.server_ssl_context(self.state.cert_pem, self.state.key_pem,
                                            [c.cert_pem.encode() for c in self.state.clients])
        self.state.on_change(self._trust_new_clients)
        try:
            self.ports["http"] = await self._serve_tcp(handlers.make_app(https=False), bind, "http", None)
            self.ports["https"] = await self._serve_tcp(handlers.make_app(https=True), bind, "https",
                                                        self._tls)
            await self._serve_api()
            await self.sessions.start(bind)
        except BaseException:
            await self.stop()
            raise
        log.info("moonhowl %r serving on %s: http %d, https %d, control %d, video %d, audio %d; api %s; "
                 "codecs: %s", self.config.hostname, bind, self.ports["http"], self.ports["https"],
                 self.sessions.control_port, self.sessions.video.port, self.sessions.audio.port,
                 self.config.api_socket, ", ".join(f"{c} ({s.name})" for c, s in self.sessions.encoders.items()))

    async def _serve_tcp(self, app: web.Application, bind: str, name: str,
                         tls: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, max_line_size=http.MAX_LINE)
        await runner.setup()
        self._runners.append(runner)
        port = self.config.port(name)
        site = web.TCPSite(runner, bind, port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {bind}:{port} for {name} ({exc.strerror}); is another "
                               f"server running? Set server.{name}_port to move it") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _serve_api(self) -> None:
        path = self.config.api_socket
        if len(str(path).encode()) > 100:
            raise StartupError(f"the API socket path {path} is too long for a unix socket; "
                               f"set server.api_socket to a shorter path")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if await _socket_answers(path):
                raise StartupError(f"another moonhowl is already using {path} (same state directory?)")
            path.unlink()
        runner = web.AppRunner(api_server.make_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        old_umask = os.umask(0o177)  # the socket is created 0600: only this user may pair clients
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old_umask)

    def _trust_new_clients(self) -> None:
        # New connections see certificates added to the live context; a removed client stays in
        # the TLS store until restart but every request is checked against the paired list.
        if self._tls is not None:
            for client in self.state.clients:
                self._tls.load_verify_locations(cadata=client.cert_pem)

    async def stop(self) -> None:
        await self.sessions.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        with contextlib.suppress(FileNotFoundError):
            if self.ports:
                self.config.api_socket.unlink()
        self._stopped.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopped.set)
        await self.start()
        await self._stopped.wait()
        log.info("shutting down")
        await self.stop()


async def _socket_answers(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def probe_encoders(config: config_mod.Config) -> dict[str, EncoderSpec]:
    """Per codec, the configured forced pipeline or the first encoder row that works here."""
    from moonhowl.media import probe
    from moonhowl.media.encoders import CODECS

    chosen: dict[str, EncoderSpec] = {}
    for codec in CODECS:
        forced = str(config.get("encoders", f"force_{codec}"))
        if forced:
            chosen[codec] = EncoderSpec("forced", codec, (), forced)
    order = {codec: list(config.get("encoders", codec)) for codec in CODECS if codec not in chosen}
    chosen.update(probe.cached_working(order, float(config.get("encoders", "min_fps"))))
    if not chosen:
        log.error("no video encoder works on this host: clients can pair but not stream")
    return chosen
