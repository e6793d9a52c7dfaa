"""One streaming session: a launch's keys, its RTSP handshake, control stream, pipeline and video.

Threads: everything here runs on the asyncio loop except `_on_frame`, which GStreamer calls on
its streaming thread; it packetizes (pure CPU, no I/O) and hands the datagrams to the loop with
call_soon_threadsafe, so the network never blocks the encoder.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moonhowl.config import AppConfig
from moonhowl.input import InputRouter
from moonhowl.input.devices import select_backend
from moonhowl.input.wayland import CompositorSeat, NoSeat
from moonhowl.net.rtsp import RtspListener
from moonhowl.net.udp import Address, PacedSender
from moonhowl.protocol import control
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.launch import LaunchRequest
from moonhowl.protocol.rtsp import RtspRequest, RtspResponse, RtspServerSession
from moonhowl.protocol.sdp import SS_ENC_CONTROL_V2, StreamConfig, StreamOffer
from moonhowl.protocol.video import FrameTooLargeError, Packetizer
from moonhowl.session.audio import SessionAudio
from moonhowl.session.desktop import Desktop
from moonhowl.state import PairedClient

if TYPE_CHECKING:
    from moonhowl.media.pipeline import EncodedFrame
    from moonhowl.protocol.enet import EnetPeer
    from moonhowl.session.manager import SessionManager
    from moonhowl.session.video import SessionVideo

log = logging.getLogger(__name__)

# A launch that never completes its RTSP handshake is abandoned after this long.
HANDSHAKE_TIMEOUT_S = 30.0
_PAYLOAD_ALPHABET = string.ascii_letters + string.digits


def _ping_payload() -> str:
    return "".join(secrets.choice(_PAYLOAD_ALPHABET) for _ in range(16))


@dataclass
class SessionStats:
    frames_encoded: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # before the client's address was known, or while waiting for an IDR
    keyframes_sent: int = 0
    idr_requests: int = 0
    bytes_sent: int = 0
    datagrams_sent: int = 0
    control_messages: int = 0
    control_errors: int = 0
    input_packets: int = 0
    last_fec_status: dict[str, int] = field(default_factory=dict)
    host_latency_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2000))

    def latency_percentile(self, q: float) -> float | None:
        samples = sorted(self.host_latency_ms)
        return samples[min(len(samples) - 1, int(q * len(samples)))] if samples else None


class Session:
    def __init__(self, manager: SessionManager, sid: int, slot: int, client: PairedClient, app: AppConfig,
                 launch: LaunchRequest) -> None:
        self.manager = manager
        self.id = sid
        self.slot = slot
        self.client = client
        self.app = app
        self.launch = launch
        self.log = logging.LoggerAdapter(log, {"session": sid})
        self.loop = asyncio.get_running_loop()
        self.stats = SessionStats()
        self.video_ping = _ping_payload()
        self.audio_ping = _ping_payload()
        self.connect_data = secrets.randbits(32)
        self.rtsp_port = 0
        self.config: StreamConfig | None = None
        self.cipher: control.ControlCipher | None = None
        self.control_peer: EnetPeer | None = None
        # The session's video (named pipeline for the callers that ask whether video runs).
        self.pipeline: SessionVideo | None = None
        # What the client is told when the session ends it (a video failure says so).
        self.termination_code = control.TERMINATION_GRACEFUL
        self.packetizer: Packetizer | None = None
        self.video_sender: PacedSender | None = None
        self.desktop: Desktop | None = None
        self.input: InputRouter | None = None
        self.audio: SessionAudio | None = None
        self.encoder_name = ""
        self.started = time.monotonic()
        self.last_control = time.monotonic()
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self._rtsp: RtspListener | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # Touched by the streaming thread: guarded so a peer change and a frame never interleave.
        self._lock = threading.Lock()
        self._frame_index = 0
        self._waiting_for_idr = True

    def _info(self, message: str, *args: Any) -> None:
        self.log.info("session %d: " + message, self.id, *args)

    def _warning(self, message: str, *args: Any) -> None:
        self.log.warning("session %d: " + message, self.id, *args)

    # --- start: RTSP --------------------------------------------------------------------------------
    async def start(self, bind: str, rtsp_port: int) -> None:
        manager = self.manager
        offer = StreamOffer(
            session_id=f"{self.id}-{secrets.token_hex(4)}", video_port=manager.video.port,
            audio_port=manager.audio.port, control_port=manager.control_port,
            video_ping_payload=self.video_ping, audio_ping_payload=self.audio_ping,
            control_connect_data=self.connect_data, h264="h264" in manager.encoders,
            hevc="hevc" in manager.encoders, av1="av1" in manager.encoders,
            # Video and audio encryption are not implemented yet: only the control stream.
            encryption_supported=SS_ENC_CONTROL_V2, encryption_requested=SS_ENC_CONTROL_V2)
        self.audio = SessionAudio(f"session-{self.id}", manager.audio_server,
                                  test_tone=self.app.kind == "test-pattern")
        if self.app.kind == "desktop":
            # The desktop and its apps start at launch, so the app is up by the time video flows;
            # the apps play into the session's own sink.
            launch = self.launch
            sound_env = await self.audio.prepare(launch.audio_channels)
            self.desktop = Desktop(f"session-{self.id}", self.app, launch.width, launch.height, launch.fps,
                                   on_app_exit=self._end_soon, extra_env=sound_env)
            try:
                await self.desktop.start()
            except Exception:
                await self.desktop.stop()
                raise
        self._rtsp = RtspListener(RtspServerSession(offer), self._on_rtsp, f"session {self.id}")
        self.rtsp_port = await self._rtsp.start(bind, rtsp_port)
        self._schedule_watchdog()
        self._info("launched %r for %s at %dx%d@%d; RTSP on port %d", self.app.title, self.client.name,
                   self.launch.width, self.launch.height, self.launch.fps, self.rtsp_port)

    def _on_rtsp(self, request: RtspRequest, response: RtspResponse) -> None:
        assert self._rtsp is not None
        if request.method == "ANNOUNCE" and self._rtsp.session.config is not None:
            self.config = self._rtsp.session.config
            self.cipher = control.ControlCipher(self.launch.rikey, is_host=True,
                                                v2=bool(self.config.encryption_flags & SS_ENC_CONTROL_V2))
        elif request.method == "PLAY" and self.pipeline is None:
            # Running time 0 of both pipelines: the test pattern's flash and its beep share it,
            # so picture and sound stay in step (docs/audio.md).
            start_ns = time.monotonic_ns()
            self._start_streaming(start_ns)
            if self.audio is not None and self.config is not None:
                self.audio.start(self.config, self.launch.rikey, self.launch.rikeyid, base_time_ns=start_ns)

    # --- streaming ----------------------------------------------------------------------------------
    def _start_streaming(self, base_time_ns: int | None = None) -> None:
        from moonhowl.session.video import SessionVideo

        config = self.config
        assert config is not None
        spec = self.manager.encoders[config.codec]
        self.encoder_name = spec.name
        fec = int(self.manager.host.config.get("stream", "fec_percentage"))
        self.packetizer = Packetizer(config.packet_size, fec, max(2, config.fec_min_required))
        if self.desktop is not None:
            # The desktop was made at launch for the launch's mode; the stream follows it.
            desktop = self.desktop
            width, height, fps = desktop.width, desktop.height, desktop.fps
        else:
            # The client's requested mode wins over the launch's if they differ (it asked last).
            width, height, fps = config.width, config.height, config.fps
        # Built and rebuilt (on another path when one fails) on the video's own thread.
        self.pipeline = SessionVideo(width, height, fps, spec, config.bitrate_kbps, on_frame=self._on_frame,
                                     on_failed=self._on_pipeline_error, desktop=self.desktop,
                                     name=f"session-{self.id}",
                                     paths=list(self.manager.host.config.get("stream", "video_paths")),
                                     base_time_ns=base_time_ns)
        self.pipeline.start()
        self._info("streaming %s with %s at %dx%d@%d, %d kbit/s, FEC %d%%", config.codec, spec.name,
                   width, height, fps, config.bitrate_kbps, fec)

    def on_video_ping(self, addr: Address) -> None:
        if self.video_sender is not None and self.video_sender.addr == addr:
            return
        self._info("video goes to %s:%d", *addr)
        with self._lock:
            self.video_sender = PacedSender(self.manager.video, addr)
            self._waiting_for_idr = True
        # Whatever the client saw before (if anything) is gone: start it on a keyframe.
        self.request_keyframe()

    def on_audio_ping(self, addr: Address) -> None:
        if self.audio is not None:
            self.audio.on_peer(addr, self.manager.audio)

    def request_keyframe(self) -> None:
        if self.pipeline is not None:
            self.pipeline.request_keyframe()

    def _on_frame(self, frame: EncodedFrame) -> None:
        """GStreamer streaming thread: packetize and hand over to the loop. Never raises."""
        try:
            self.stats.frames_encoded += 1
            with self._lock:
                sender, packetizer = self.video_sender, self.packetizer
                if sender is None or packetizer is None or (self._waiting_for_idr and not frame.is_keyframe):
                    self.stats.frames_dropped += 1
                    return
                self._waiting_for_idr = False
                self._frame_index += 1
                index = self._frame_index
            latency_ms = (time.monotonic_ns() - frame.capture_ns) / 1e6
            try:
                datagrams = packetizer.packetize(frame.data, index, frame.pts_ns * 9 // 100_000 & 0xFFFFFFFF,
                                                 frame.is_keyframe, latency_ms)
            except FrameTooLargeError as exc:
                self._warning("frame %d dropped: %s", index, exc)
                self.loop.call_soon_threadsafe(self.request_keyframe)
                return
            self.stats.host_latency_ms.append(latency_ms)
            self.stats.frames_sent += 1
            self.stats.keyframes_sent += frame.is_keyframe
            self.stats.bytes_sent += len(frame.data)
            self.stats.datagrams_sent += len(datagrams)
            self.loop.call_soon_threadsafe(sender.send, datagrams)
        except Exception:
            self.log.exception("session %d: frame handling failed", self.id)

    def _on_pipeline_error(self, message: str) -> None:
        # From the video's thread, once, when no video path is left. The client is told: Moonlight
        # shows ML_ERROR_FRAME_CONVERSION as "the host PC reported a fatal video encoding error".
        self.loop.call_soon_threadsafe(self._end_for_video, f"the video failed: {message}")

    def _end_for_video(self, reason: str) -> None:
        if self.end_reason is None:
            self.termination_code = control.TERMINATION_FRAME_CONVERSION
            self.manager.spawn(self.manager.end(self, reason, terminate_client=True))

    # --- control stream -----------------------------------------------------------------------------
    def _make_input(self) -> InputRouter:
        """Input goes to the desktop's seat, or is counted and dropped for the test pattern."""
        desktop = self.desktop
        if desktop is not None and desktop.compositor is not None:
            seat: CompositorSeat | NoSeat = CompositorSeat(desktop.compositor.seat)
            size = (desktop.width, desktop.height)
        else:
            seat, size = NoSeat(), (self.launch.width, self.launch.height)
        return InputRouter(seat, select_backend(log), size, send_feedback=self._send_feedback)

    def _send_feedback(self, message: Any) -> None:
        """Rumble and other host -> client messages of the input layer, on the control stream."""
        endpoint, peer = self.manager.control, self.control_peer
        if endpoint is not None and peer is not None and self.cipher is not None:
            endpoint.send(peer, control.CHANNEL_GENERIC, self.cipher.seal(message.TYPE, bytes(message)))

    def on_control_connected(self, peer: EnetPeer) -> None:
        self.control_peer = peer
        self.last_control = time.monotonic()
        self._info("control stream connected from %s:%d", *peer.address)

    def on_control(self, data: bytes) -> None:
        self.last_control = time.monotonic()
        if self.cipher is None:
            self.stats.control_errors += 1
            return
        try:
            msg_type, payload = self.cipher.open(data)
        except ProtocolError as exc:
            self.stats.control_errors += 1
            if self.stats.control_errors in (1, 100):
                self._warning("undecryptable control message dropped (%s); %d so far", exc,
                              self.stats.control_errors)
            return
        self.stats.control_messages += 1
        if msg_type in (control.REQUEST_IDR_FRAME, control.INVALIDATE_REF_FRAMES):
            # Reference frame invalidation is not supported: a keyframe repairs any loss.
            self.stats.idr_requests += 1
            self.log.debug("session %d: keyframe requested", self.id)
            self.request_keyframe()
        elif msg_type == control.FRAME_FEC_STATUS:
            try:
                status = control.FrameFecStatus.parse(payload)
                self.stats.last_fec_status = dataclasses.asdict(status)
            except ProtocolError:
                self.stats.control_errors += 1
        elif msg_type == control.INPUT_DATA:
            self.stats.input_packets += 1
            if self.input is None:
                self.input = self._make_input()
            self.input.feed(payload)

    def on_control_lost(self, reason: str) -> None:
        self.control_peer = None
        self._end_soon(f"control stream closed ({reason})")

    # --- ending -------------------------------------------------------------------------------------
    def _schedule_watchdog(self) -> None:
        self._watchdog = self.loop.call_later(1.0, self._check_alive)

    def _check_alive(self) -> None:
        now = time.monotonic()
        idle = float(self.manager.host.config.get("stream", "idle_timeout"))
        if self.pipeline is None and now - self.started > HANDSHAKE_TIMEOUT_S:
            self._end_soon(f"the client did not finish the RTSP handshake within {HANDSHAKE_TIMEOUT_S:g} s")
        elif self.pipeline is not None and now - self.last_control > idle:
            self._end_soon(f"no control traffic for {idle:g} s")
        else:
            self._schedule_watchdog()

    def _end_soon(self, reason: str) -> None:
        if self.end_reason is None:
            self.manager.spawn(self.manager.end(self, reason))

    async def end(self, reason: str, terminate_client: bool) -> None:
        """Frees everything the session holds. Idempotent; called through the manager."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self._info("ended: %s", reason)
        if self._watchdog is not None:
            self._watchdog.cancel()
        endpoint, peer = self.manager.control, self.control_peer
        if terminate_client and endpoint is not None and peer is not None and self.cipher is not None:
            message = self.cipher.seal(control.TERMINATION, bytes(control.Termination(self.termination_code)))
            endpoint.send(peer, control.CHANNEL_GENERIC, message)
            endpoint.disconnect(peer, later=True)  # after the termination message is delivered
        with self._lock:
            self.video_sender = None
        if self.input is not None:
            # Before the desktop goes: apps see every held key and button released.
            self.input.close()
        if self.pipeline is not None:
            await asyncio.to_thread(self.pipeline.stop)
        if self.audio is not None:
            await self.audio.stop()
        if self.desktop is not None:
            await self.desktop.stop()
        if self._rtsp is not None:
            await self._rtsp.close()
        self.ended.set()

    def describe(self) -> dict[str, Any]:
        config, stats = self.config, self.stats
        p50, p99 = stats.latency_percentile(0.5), stats.latency_percentile(0.99)
        video = self.pipeline.stats() if self.pipeline is not None else None
        return {
            "id": self.id, "client": self.client.id, "client_name": self.client.name, "app": self.app.title,
            "mode": f"{self.launch.width}x{self.launch.height}x{self.launch.fps}",
            "codec": config.codec if config else None, "encoder": self.encoder_name or None,
            "bitrate_kbps": config.bitrate_kbps if config else None, "rtsp_port": self.rtsp_port,
            "streaming": self.pipeline is not None,
            "renderer": self.desktop.renderer_name if self.desktop else None, "video_peer": list(self.video_sender.addr)
            if self.video_sender else None,
            "frames_sent": stats.frames_sent, "keyframes_sent": stats.keyframes_sent,
            "frames_dropped": stats.frames_dropped, "idr_requests": stats.idr_requests,
            "host_latency_ms_p50": p50, "host_latency_ms_p99": p99,
            # The encoder's own part of it (capture -> appsink), for comparison.
            "encoder_latency_ms_p50": video["encoder_latency_ms_p50"] if video else None,
            "encoder_latency_ms_p99": video["encoder_latency_ms_p99"] if video else None,
            # The frame path ("dmabuf:XR24:0x0", "system:BGRx", "test-pattern"), copies, fallbacks.
            "video_path": video["path"] if video else None,
            "video": video,
            "control_messages": stats.control_messages, "control_errors": stats.control_errors,
            "input": dataclasses.asdict(self.input.stats) if self.input else None,
            "audio": self.audio.describe() if self.audio else None,
        }
