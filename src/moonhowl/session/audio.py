"""A session's sound: its own sink (desktop apps play into it) or the test tone, captured,
encoded to Opus, packetized (AES-CBC + Reed-Solomon) and sent to the client's audio address.

Audio never takes the session down: no sound server, a sink that cannot be made or a pipeline
that fails are logged once and the session keeps its video.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from moonhowl.net.udp import Address, MediaSocket, PacedSender
from moonhowl.protocol.audio import AudioPacketizer

if TYPE_CHECKING:
    from moonhowl.media.audio import AudioPipeline
    from moonhowl.media.audio_server import AudioServer, Sink
    from moonhowl.protocol.sdp import StreamConfig

log = logging.getLogger(__name__)


class SessionAudio:
    def __init__(self, name: str, server: Callable[[], Awaitable[AudioServer | None]], test_tone: bool) -> None:
        self.name = name
        self._server = server
        self.test_tone = test_tone
        self.sink: Sink | None = None
        self.pipeline: AudioPipeline | None = None
        self.packetizer: AudioPacketizer | None = None
        self.sender: PacedSender | None = None
        self.problem: str | None = None
        self.packets_dropped = 0  # before the client's audio address was known
        self._loop = asyncio.get_running_loop()

    async def prepare(self, channels: int) -> Mapping[str, str]:
        """For a desktop: makes the session's sink; returns the environment its apps need."""
        if self.test_tone:
            return {}
        server = await self._server()
        if server is None:
            self._fail("no sound server is available")
            return {}
        try:
            self.sink = await server.create_sink(self.name, channels)
        except Exception as exc:
            self._fail(f"the session's sink could not be made: {exc}")
            return {}
        return dict(self.sink.env)

    def start(self, config: StreamConfig, rikey: bytes, rikeyid: int, base_time_ns: int | None = None) -> None:
        """At PLAY: capture -> Opus -> packetizer, with the layout and encryption the client asked for."""
        from moonhowl.media.audio import TEST_TONE, AudioPipeline

        if not self.test_tone and self.sink is None:
            return  # prepare() already said why
        layout = config.opus_layout
        self.packetizer = AudioPacketizer(rikey, rikeyid, config.encrypt_audio, config.audio_packet_duration_ms)
        source = TEST_TONE if self.test_tone else self.sink.monitor_source  # type: ignore[union-attr]
        try:
            self.pipeline = AudioPipeline(
                source, layout.channels, layout, layout.bitrate, config.audio_packet_duration_ms, self._on_packet,
                server=self.sink.pulse_server if self.sink else None, on_error=self._on_error,
                base_time_ns=base_time_ns)
            self.pipeline.start()
        except Exception as exc:
            self.pipeline = None
            self._fail(f"the audio pipeline could not start: {exc}")
            return
        log.info("%s: audio %d ch, %d bit/s, %s, from %s", self.name, layout.channels, self.pipeline.bitrate,
                 "encrypted" if config.encrypt_audio else "clear", source)

    def on_peer(self, addr: Address, socket: MediaSocket) -> None:
        if self.sender is None or self.sender.addr != addr:
            log.info("%s: audio goes to %s:%d", self.name, *addr)
            self.sender = PacedSender(socket, addr)

    def _on_packet(self, opus: bytes, capture_ns: int) -> None:
        # GStreamer streaming thread: the packetizer keeps sequence state, so it runs on the loop.
        self._loop.call_soon_threadsafe(self._send, opus)

    def _send(self, opus: bytes) -> None:
        if self.sender is None or self.packetizer is None:
            self.packets_dropped += 1
            return
        try:
            self.sender.send(self.packetizer.packetize(opus))
        except ValueError as exc:
            self._fail(f"an Opus frame could not be packetized: {exc}")

    def _on_error(self, message: str) -> None:
        # From the GLib thread: stop the audio only; the session keeps its video.
        self._loop.call_soon_threadsafe(self._fail, f"audio capture failed: {message}")

    def _fail(self, why: str) -> None:
        if self.problem is None:
            log.warning("%s: no audio: %s", self.name, why)
            self.problem = why

    async def stop(self) -> None:
        if self.pipeline is not None:
            await asyncio.to_thread(self.pipeline.stop)
        if self.sink is not None:
            try:
                await self.sink.remove()
            except Exception as exc:
                log.info("%s: removing the sink failed: %s", self.name, exc)

    def describe(self) -> dict[str, Any]:
        stats = self.packetizer.stats if self.packetizer is not None else None
        return {"source": "test-tone" if self.test_tone else (self.sink.name if self.sink else None),
                "problem": self.problem,
                "packets": stats.packets if stats else None,
                "fec_packets": stats.fec_packets if stats else None,
                "dropped_before_peer": self.packets_dropped}
