"""moonhowl's streaming client against a minimal fake host on loopback.

The fake host is test scaffolding built from the sans-IO cores (RtspServerSession, the ENet
endpoint, ControlCipher, the video Packetizer); moonhowl's real host is tested elsewhere. Frames
are random bytes, so the client runs with decode=False.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from moonhowl.client import cli as client_cli
from moonhowl.client.gamestream import GameStreamClient, GameStreamError
from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.net.enet import EnetEndpoint, create_server
from moonhowl.net.http import server_ssl_context
from moonhowl.protocol import control, crypto, xml
from moonhowl.protocol.enet import Connected, Disconnected, EnetPeer, Event, Received
from moonhowl.protocol.rtsp import RtspReader, RtspRequest, RtspServerSession
from moonhowl.protocol.sdp import StreamOffer
from moonhowl.protocol.video import Packetizer

pytestmark = pytest.mark.integration

VIDEO_PING = "VideoPing0123456"
AUDIO_PING = "AudioPing6543210"
CONNECT_DATA = 0x5EED1234
APPS = [(1, "Desktop"), (2, "Test pattern")]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)


def _bound(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    return sock


class FakeHost:
    """HTTP(S) + RTSP + ENet control + UDP video/audio, just enough for one stream."""

    def __init__(self, client_cert: bytes, *, fec_percentage: int = 20, fps: int = 60,
                 frame_bytes: tuple[int, int] = (6000, 12000), latency_ms: float = 3.5,
                 gamesession: str = "1", access_units: list[tuple[bytes, bool]] | None = None) -> None:
        self.client_cert = client_cert
        self.access_units = access_units  # real (bitstream, is IDR) frames to send, in a loop
        self.fec_percentage, self.fps, self.frame_bytes = fec_percentage, fps, frame_bytes
        self.latency_ms, self.gamesession = latency_ms, gamesession
        self.cert_pem, self._key_pem = crypto.generate_identity("fake host")
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.rtsp: RtspServerSession | None = None
        self.rtsp_seen: list[str] = []
        self.cipher: control.ControlCipher | None = None
        self.control: list[tuple[int, int, bytes]] = []  # (channel, type, payload) as received
        self.connect_data: int | None = None
        self.peer: EnetPeer | None = None
        self.disconnected = asyncio.Event()
        self.video_pings: list[bytes] = []
        self.audio_pings: list[bytes] = []
        self.video_addr: Any = None
        self.audio_addr: Any = None
        self.frames_sent = 0
        self.idr_frames_sent = 0
        self.idr_pending = False
        self.withhold: dict[int, int] = {}  # frame index -> leading data shards not sent
        self.sending = True
        self._rng = random.Random(7)
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanup: list[Callable[[], Any]] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        app = web.Application()
        for path in ("/serverinfo", "/applist", "/launch", "/resume", "/cancel"):
            app.router.add_get(path, self._http)
        runner = web.AppRunner(app)
        await runner.setup()
        self._cleanup.append(runner.cleanup)
        http_sock, https_sock = _bound(socket.SOCK_STREAM), _bound(socket.SOCK_STREAM)
        self.http_port, self.https_port = http_sock.getsockname()[1], https_sock.getsockname()[1]
        await web.SockSite(runner, http_sock).start()
        tls = server_ssl_context(self.cert_pem, self._key_pem, [self.client_cert])
        await web.SockSite(runner, https_sock, ssl_context=tls).start()

        rtsp = await asyncio.start_server(self._rtsp_connection, "127.0.0.1", 0)
        self.rtsp_port = rtsp.sockets[0].getsockname()[1]
        self._cleanup.append(rtsp.close)
        self.enet: EnetEndpoint = await create_server("127.0.0.1", 0, on_event=self._on_control)
        self._cleanup.append(self.enet.close)
        video = await loop.create_datagram_endpoint(lambda: _Udp(self._on_video_ping), sock=_bound(socket.SOCK_DGRAM))
        audio = await loop.create_datagram_endpoint(lambda: _Udp(self._on_audio_ping), sock=_bound(socket.SOCK_DGRAM))
        self.video, self.audio = video[1], audio[1]
        self._cleanup += [video[0].close, audio[0].close]
        self.video_port = video[0].get_extra_info("sockname")[1]
        self.audio_port = audio[0].get_extra_info("sockname")[1]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for step in reversed(self._cleanup):
            result = step()
            if asyncio.iscoroutine(result):
                await result

    def client(self, identity: ClientIdentity) -> GameStreamClient:
        return GameStreamClient("127.0.0.1", self.http_port, self.https_port, identity=identity,
                                server_cert_pem=self.cert_pem)

    # ------------------------------------------------------------------ HTTP(S)
    async def _http(self, request: web.Request) -> web.Response:
        path = request.path
        self.requests.append((path, list(request.query.items())))
        if path == "/serverinfo":
            body = xml.response({"hostname": "fake", "appversion": "7.1.431.-1", "GfeVersion": "3.23.0.74",
                                 "HttpsPort": self.https_port, "state": "SUNSHINE_SERVER_FREE",
                                 "currentgame": 0, "PairStatus": 1})
        elif path == "/applist":
            body = xml.applist(APPS)
        elif path == "/cancel":
            body = xml.response({"cancel": 1})
        else:
            self.cipher = control.ControlCipher(bytes.fromhex(request.query["rikey"]), is_host=True)
            self.rtsp = RtspServerSession(StreamOffer(
                session_id="FAKE1", video_port=self.video_port, audio_port=self.audio_port,
                control_port=self.enet.local_address[1], video_ping_payload=VIDEO_PING,
                audio_ping_payload=AUDIO_PING, control_connect_data=CONNECT_DATA))
            flag = "gamesession" if path == "/launch" else "resume"
            body = xml.response({flag: self.gamesession, "sessionUrl0": f"rtsp://127.0.0.1:{self.rtsp_port}"})
        return web.Response(body=body, content_type="text/xml")

    async def _rtsp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtspReader(RtspRequest)
        try:
            while chunk := await reader.read(4096):
                requests = parser.feed(chunk)
                if requests:
                    assert self.rtsp is not None
                    self.rtsp_seen.append(requests[0].method)
                    writer.write(bytes(self.rtsp.handle(requests[0])))
                    await writer.drain()
                    break
        finally:
            writer.close()

    # ------------------------------------------------------------------ control
    def _on_control(self, event: Event) -> None:
        if isinstance(event, Connected):
            self.connect_data, self.peer = event.data, event.peer
        elif isinstance(event, Received):
            assert self.cipher is not None
            msg_type, payload = self.cipher.open(event.data)
            self.control.append((event.channel, msg_type, payload))
            if msg_type == control.REQUEST_IDR_FRAME and event.channel == control.CHANNEL_URGENT:
                self.idr_pending = True
        elif isinstance(event, Disconnected):
            self.disconnected.set()

    def terminate(self, reason: int) -> None:
        assert self.cipher is not None and self.peer is not None
        self.enet.send(self.peer, control.CHANNEL_GENERIC,
                       self.cipher.seal(control.TERMINATION, bytes(control.Termination(reason))))

    def received(self, msg_type: int, channel: int | None = None) -> list[bytes]:
        return [p for c, t, p in self.control if t == msg_type and (channel is None or c == channel)]

    # ------------------------------------------------------------------ media
    def _on_video_ping(self, data: bytes, addr: Any) -> None:
        self.video_pings.append(data)
        if self.video_addr is None and data[:16] == VIDEO_PING.encode():
            self.video_addr = addr
            self._tasks.append(asyncio.get_running_loop().create_task(self._send_video()))

    def _on_audio_ping(self, data: bytes, addr: Any) -> None:
        self.audio_pings.append(data)
        if self.audio_addr is None and data[:16] == AUDIO_PING.encode():
            self.audio_addr = addr
            self._tasks.append(asyncio.get_running_loop().create_task(self._send_audio()))

    async def _send_video(self) -> None:
        assert self.rtsp is not None and self.rtsp.config is not None and self.video.transport is not None
        packetizer = Packetizer(self.rtsp.config.packet_size, self.fec_percentage)
        index = 0
        while self.sending:
            index += 1
            if self.access_units:
                frame, idr = self.access_units[(index - 1) % len(self.access_units)]
            else:
                idr, self.idr_pending = index == 1 or self.idr_pending, False
                frame = os.urandom(self._rng.randint(*self.frame_bytes))
            datagrams = packetizer.packetize(frame, index, index * 90000 // self.fps, idr, self.latency_ms)
            for datagram in datagrams[self.withhold.get(index, 0):]:
                self.video.transport.sendto(datagram, self.video_addr)
            self.frames_sent += 1
            self.idr_frames_sent += idr
            await asyncio.sleep(1 / self.fps)

    async def _send_audio(self) -> None:
        assert self.audio.transport is not None
        seq = 0
        while self.sending:
            for _ in range(4):  # 4 x 5 ms Opus packets every 20 ms; content does not matter here
                self.audio.transport.sendto(struct.pack(">BBHII", 0x80, 97, seq, seq * 5, 0) + bytes(60),
                                            self.audio_addr)
                seq += 1
            await asyncio.sleep(0.02)


@pytest.fixture
async def fake_host() -> AsyncIterator[Callable[..., Any]]:
    hosts: list[FakeHost] = []

    async def start(identity: ClientIdentity, **kwargs: Any) -> FakeHost:
        host = FakeHost(identity.cert_pem, **kwargs)
        await host.start()
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        await host.stop()


@pytest.fixture(scope="module")
def identity() -> ClientIdentity:
    return ClientIdentity.generate()


async def test_handshake_pings_frames_and_clean_stop(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity)
    session = await StreamSession.start(host.client(identity), 2, 1280, 720, 60, bitrate_kbps=20000,
                                        decode=False)
    async with session:
        assert not await session.wait(1.0)
        stats = session.stats()
    launch = dict(next(q for p, q in host.requests if p == "/launch"))
    assert launch["appid"] == "2" and launch["mode"] == "1280x720x60" and launch["corever"] == "1"
    assert launch["surroundAudioInfo"] == "196610" and launch["rikey"] == session.rikey.hex()
    assert launch["rikeyid"] == str(session.rikeyid)
    assert host.rtsp_seen == ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "SETUP", "ANNOUNCE", "PLAY"]
    assert host.rtsp is not None and host.rtsp.config is not None and host.rtsp.config.encrypt_control
    assert host.connect_data == CONNECT_DATA
    # ControlStream.c startControlStream: start A (0x0302 00 00), start B (0x0307 00), generic channel.
    assert host.control[:2] == [(control.CHANNEL_GENERIC, control.REQUEST_IDR_FRAME, b"\0\0"),
                                (control.CHANNEL_GENERIC, control.START_B, b"\0")]
    assert len(host.received(control.PERIODIC_PING, control.CHANNEL_GENERIC)) >= 5  # every 100 ms
    statuses = [control.FrameFecStatus.parse(p) for p in host.received(control.FRAME_FEC_STATUS)]
    assert statuses and all(s.received_data_packets == s.total_data_packets for s in statuses)
    assert host.received(control.REQUEST_IDR_FRAME, control.CHANNEL_URGENT) == []
    assert host.video_pings[0] == VIDEO_PING.encode() + b"\0\0\0\1"
    assert host.audio_pings[0] == AUDIO_PING.encode() + b"\0\0\0\1"
    assert len(host.video_pings) >= 2  # every 500 ms
    assert stats.frames >= 40 and stats.lost_frames == 0 and stats.idr_frames == 1
    assert stats.fps > 30 and stats.bitrate_kbps > 1000 and stats.audio_packets > 50
    assert stats.host_latency_p50_ms == stats.host_latency_p99_ms == 3.5
    assert stats.error is None and stats.termination_reason is None
    await asyncio.wait_for(host.disconnected.wait(), 3)  # graceful ENet disconnect on stop()
    assert "/cancel" not in [p for p, _ in host.requests]


async def test_on_purpose_loss_is_repaired_by_fec(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity, fec_percentage=60)
    session = await StreamSession.start(host.client(identity), 1, 640, 480, 60, loss_percent=10.0,
                                        seed=1, decode=False)
    async with session:
        await session.wait(1.5)
    stats = session.stats()
    assert stats.dropped_on_purpose > 0 and stats.fec_repaired_shards > 0
    assert stats.frames >= 0.9 * (host.frames_sent - 3)  # the last frames may still be in flight
    statuses = [control.FrameFecStatus.parse(p) for p in host.received(control.FRAME_FEC_STATUS)]
    assert any(s.received_data_packets < s.total_data_packets for s in statuses)  # the host hears of it


async def test_unrecoverable_frame_gets_an_idr_request(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity)
    host.withhold[10] = 3  # 3 data shards missing, 2 parity shards: beyond repair
    session = await StreamSession.start(host.client(identity), 1, 640, 480, 60, decode=False)
    async with session:
        await session.wait(1.0)
    stats = session.stats()
    assert stats.lost_frames == 1 and stats.frame_gaps == 1 and stats.idr_requests >= 1
    assert host.received(control.REQUEST_IDR_FRAME, control.CHANNEL_URGENT) == [b"\0\0"] * stats.idr_requests
    assert host.idr_frames_sent >= 2 and stats.idr_frames >= 2  # the stream recovered
    assert stats.frames >= host.frames_sent - 3 - stats.dropped_frames - 1


async def test_termination_message_ends_the_session(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity)
    session = await StreamSession.start(host.client(identity), 1, 640, 480, 60, decode=False)
    async with session:
        await asyncio.sleep(0.3)
        host.terminate(control.TERMINATION_GRACEFUL)
        assert await session.wait(2.0)
    stats = session.stats()
    assert stats.termination_reason == control.TERMINATION_GRACEFUL and stats.error is None and stats.frames > 0

    host2: FakeHost = await fake_host(identity)
    session = await StreamSession.start(host2.client(identity), 1, 640, 480, 60, decode=False)
    async with session:
        await asyncio.sleep(0.3)
        host2.terminate(control.TERMINATION_FRAME_CONVERSION)
        assert await session.wait(2.0)
    assert session.error is not None and "0x800e9403" in session.error


async def test_silent_host_ends_the_session_with_an_error(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity)
    session = await StreamSession.start(host.client(identity), 1, 640, 480, 60, decode=False, stall_timeout=0.5)
    async with session:
        await asyncio.sleep(0.3)
        host.sending = False
        assert await session.wait(3.0)
    assert session.error is not None and "stopped sending video" in session.error
    assert session.stats().frames > 0


async def test_refused_launch_and_cancel(fake_host: Any, identity: ClientIdentity) -> None:
    host: FakeHost = await fake_host(identity, gamesession="0")
    client = host.client(identity)
    with pytest.raises(GameStreamError, match="gamesession"):
        await StreamSession.start(client, 1, 640, 480, 60, decode=False)
    await client.cancel()
    assert [p for p, _ in host.requests] == ["/serverinfo", "/launch", "/cancel"]


async def test_cli_stream_prints_progress_and_a_table(fake_host: Any, identity: ClientIdentity, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    host: FakeHost = await fake_host(identity)
    identity_dir = tmp_path / "client"
    identity_dir.mkdir()
    (identity_dir / "client.pem").write_bytes(identity.cert_pem)
    (identity_dir / "client.key").write_bytes(identity.key_pem)
    pinned = identity_dir / "hosts" / f"127.0.0.1_{host.http_port}.pem"
    pinned.parent.mkdir()
    pinned.write_bytes(host.cert_pem)
    parser = argparse.ArgumentParser()
    client_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["client", "stream", "127.0.0.1", "--port", str(host.http_port), "--identity",
                              str(identity_dir), "--app", "test pattern", "--mode", "640x480x60",
                              "--seconds", "1.5", "--loss", "5", "--no-decode"])
    rc = await asyncio.to_thread(client_cli.run, args)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "streaming 'Test pattern' (ID 2)" in out
    assert sum(1 for line in out.splitlines() if " s  frames " in line) >= 1
    assert "FEC repairs" in out and "host latency  p50 3.5 ms, p99 3.5 ms" in out
    assert dict(next(q for p, q in host.requests if p == "/launch"))["appid"] == "2"
    assert [p for p, _ in host.requests][-1] == "/cancel"  # the CLI quits the app unless --keep-app


def h264_access_units(count: int, width: int, height: int) -> list[tuple[bytes, bool]]:
    """``count`` H.264 access units (Annex-B, SPS/PPS before every IDR) from x264, with IDR flags."""
    try:
        # Through moonhowl.media.glib: GstApp must be imported before the first appsink exists, or
        # PyGObject caches a GstAppSink wrapper without pull_sample() for the whole process.
        from moonhowl.media.glib import Gst, init
    except (ImportError, ValueError) as exc:
        pytest.skip(f"GStreamer's Python bindings are not importable here ({exc}): run inside ./moonhowl")
    init()
    if any(Gst.ElementFactory.find(e) is None for e in ("x264enc", "h264parse", "avdec_h264")):
        pytest.skip("x264enc, h264parse or avdec_h264 is missing")
    pipeline = Gst.parse_launch(
        f"videotestsrc num-buffers={count} pattern=ball ! video/x-raw,format=I420,width={width},height={height},"
        "framerate=60/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! "
        "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! "
        "appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, bool]] = []
    try:
        while (sample := sink.emit("pull-sample")) is not None:
            buffer = sample.get_buffer()
            units.append((buffer.extract_dup(0, buffer.get_size()),
                          not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)))
    finally:
        pipeline.set_state(Gst.State.NULL)
    return units


async def test_real_h264_is_decoded(fake_host: Any, identity: ClientIdentity) -> None:
    units = await asyncio.to_thread(h264_access_units, 60, 320, 240)  # 2 GOPs: the loop restarts at an IDR
    assert units[0][1] and units[30][1] and not units[1][1]
    host: FakeHost = await fake_host(identity, access_units=units)
    session = await StreamSession.start(host.client(identity), 1, 320, 240, 60, decode=True)
    decoder = session._decoder
    async with session:
        await session.wait(1.5)
    stats = session.stats()
    assert stats.frames >= 60 and stats.decode_errors == 0
    assert stats.decoded_frames >= stats.frames - 1, stats  # flushed on stop
    assert decoder is not None
    frame = decoder.last_frame()  # type: ignore[attr-defined]
    assert frame is not None and frame[:2] == (320, 240)
