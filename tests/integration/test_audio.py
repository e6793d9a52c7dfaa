"""Session audio end to end on this machine: a real pulseaudio run by AudioServer, apps playing into
a session sink (gst-launch with the sink's PULSE_* environment, as an app launched in the session),
AudioPipeline capturing its monitor, the encrypted packetizer, one lost packet per FEC group, the
client's AudioReceiver decoding, and the tone measured on each channel.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
except (ImportError, ValueError) as exc:
    pytest.skip(f"GStreamer's Python bindings (gi) are not importable here ({exc}); "
                "run inside the runtime: ./moonhowl exec python -m pytest", allow_module_level=True)

from moonhowl.client.audio import AudioReceiver, dominant_frequency, tone_level_db
from moonhowl.media.audio import (
    BEEP_HZ,
    TEST_TONE,
    TONE_HZ,
    AudioLayoutError,
    AudioPipeline,
    beep_active,
    encoder_plan,
    next_beep_ns,
    tone_pcm,
)
from moonhowl.media.audio_server import AudioServer, Sink
from moonhowl.protocol.audio import AudioPacketizer
from moonhowl.protocol.sdp import OPUS_LAYOUTS, OpusLayout

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pulseaudio") is None or shutil.which("gst-launch-1.0") is None,
                       reason="needs pulseaudio and gst-launch-1.0 (the runtime has both)"),
]

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
RIKEYID = -5  # a negative rikeyid, as moonlight-qt sends half the time
STEREO = OPUS_LAYOUTS[2, False]
# GStreamer channel-mask bits of Moonlight's channel order FL FR C LFE BL BR SL SR.
POSITION_BITS = (0, 1, 2, 3, 4, 5, 10, 11)
# One frequency per channel, none a multiple of another within the set.
CHANNEL_HZ = (300, 530, 770, 1130, 1390, 1670, 1930, 2290)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AudioServer]:
    audio = AudioServer(tmp_path / "pulse", use_existing=False)
    await audio.start()
    yield audio
    await audio.stop()


class App:
    """gst-launch playing into a sink through the environment a session's app gets."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def play(cls, sink: Sink, description: str) -> App:
        env = dict(os.environ, **sink.env)
        proc = await asyncio.create_subprocess_exec(
            "gst-launch-1.0", "-q", *description.split(), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        app = cls(proc)
        await app.wait_connected(sink)
        return app

    async def wait_connected(self, sink: Sink, timeout: float = 5.0) -> None:
        """Until the server lists a playback stream on the sink (the app reached the server)."""
        deadline = time.monotonic() + timeout
        sink_index = None
        while time.monotonic() < deadline:
            sinks = await sink.server.pactl("list", "short", "sinks")
            sink_index = next((line.split("\t")[0] for line in sinks.splitlines()
                               if line.split("\t")[1:2] == [sink.name]), None)
            inputs = await sink.server.pactl("list", "short", "sink-inputs")
            if any(line.split("\t")[1:2] == [sink_index] for line in inputs.splitlines()):
                await asyncio.sleep(0.2)  # past the stream's start-up silence
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        err = await self.proc.stderr.read() if self.proc.stderr and self.proc.returncode is not None else b""
        raise AssertionError(f"the app never connected to {sink.name}: {err.decode(errors='replace')}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 3)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def tone_app(freq: int, *, channel: int | None = None) -> str:
    """A stereo app: a tone on both channels, or panned fully onto ``channel`` (0 left, 1 right)."""
    pan = "" if channel is None else f"! audiopanorama panorama={-1 if channel == 0 else 1} "
    return (f"audiotestsrc is-live=true freq={freq} volume=0.5 ! audio/x-raw,channels=1,rate=48000 "
            f"{pan}! audioconvert ! audio/x-raw,channels=2 ! pulsesink")


def multichannel_app(channels: int) -> str:
    """CHANNEL_HZ[c] on channel c of a 2-, 6- or 8-channel stream."""
    mask = sum(1 << b for b in POSITION_BITS[:channels])
    sources = " ".join(
        f"audiotestsrc is-live=true freq={CHANNEL_HZ[c]} volume=0.4 ! "
        f"audio/x-raw,channels=1,rate=48000,channel-mask=(bitmask){1 << POSITION_BITS[c]:#x} ! i.sink_{c}"
        for c in range(channels))
    return (f"interleave name=i ! audioconvert ! audio/x-raw,channels={channels},channel-mask=(bitmask){mask:#x} "
            f"! pulsesink {sources}")


class Capture:
    """An AudioPipeline whose packets are collected with their capture times."""

    def __init__(self, source: str, layout: OpusLayout, *, server: str | None = None,
                 bitrate: int | None = None, base_time_ns: int | None = None) -> None:
        self.packets: list[tuple[bytes, int]] = []
        self.errors: list[str] = []
        self.error_event = threading.Event()
        self._lock = threading.Lock()
        self.pipeline = AudioPipeline(source, layout.channels, layout, bitrate or layout.bitrate or 96000, 5,
                                      self._on_packet, server=server, on_error=self._on_error,
                                      base_time_ns=base_time_ns)

    def _on_packet(self, data: bytes, capture_ns: int) -> None:
        with self._lock:
            self.packets.append((data, capture_ns))

    def _on_error(self, text: str) -> None:
        self.errors.append(text)
        self.error_event.set()

    async def run(self, seconds: float) -> list[tuple[bytes, int]]:
        self.pipeline.start()
        await asyncio.sleep(seconds)
        self.pipeline.stop()
        with self._lock:
            return list(self.packets)


def over_the_network(packets: list[tuple[bytes, int]], layout: OpusLayout,
                     lose: Callable[[int, int], bool] | None = None) -> AudioReceiver:
    """Encrypted packetizer -> (losses) -> the client's receiver; returns it flushed."""
    packetizer = AudioPacketizer(KEY, RIKEYID, encrypt=True)
    receiver = AudioReceiver(KEY, RIKEYID, True, layout)
    whole_blocks = len(packets) - len(packets) % 4  # a stopped stream ends mid-block; that is not loss
    for opus, _capture_ns in packets[:whole_blocks]:
        for datagram in packetizer.packetize(opus):
            seq = int.from_bytes(datagram[2:4], "big")
            if lose is None or datagram[1] != 97 or not lose(seq // 4, seq % 4):
                receiver.push(datagram)
    receiver.finish()
    assert receiver.flush(5.0), "the decoder did not catch up"
    receiver.close()
    return receiver


def one_loss_per_group(block: int, index: int) -> bool:
    """Loses one data packet in every FEC group after the first, at a rotating position."""
    return block > 0 and index == block % 4


# ---------------------------------------------------------------------------------------------- pure parts
def test_encoder_plans_for_every_announced_layout() -> None:
    # Stereo needs nothing; 5.1 normal: opusenc's (FL FR) (RL RR) FC LFE slots must carry
    # (FL FR) (C LFE) BL BR, Sunshine's identity mapping over 4 streams / 2 coupled.
    assert encoder_plan(OPUS_LAYOUTS[2, False]).permutation == (0, 1)
    assert not encoder_plan(OPUS_LAYOUTS[2, True]).needs_mix_matrix
    plan = encoder_plan(OPUS_LAYOUTS[6, False])
    assert (plan.positioned, plan.permutation) == (True, (0, 1, 4, 5, 2, 3))
    plan = encoder_plan(OPUS_LAYOUTS[8, False])
    assert (plan.positioned, plan.permutation) == (True, (0, 1, 4, 5, 6, 7, 2, 3))
    for channels in (6, 8):
        plan = encoder_plan(OPUS_LAYOUTS[channels, True])
        assert not plan.positioned and not plan.needs_mix_matrix  # one mono stream per channel
    with pytest.raises(AudioLayoutError):
        encoder_plan(OpusLayout(6, 3, 3, (0, 1, 2, 3, 4, 5)))
    with pytest.raises(AudioLayoutError):
        encoder_plan(OpusLayout(6, 4, 2, (0, 1, 2, 3, 4, 4)))


def test_the_beep_schedule_is_whole_seconds_of_running_time() -> None:
    assert beep_active(0) and beep_active(1_049_999_999) and beep_active(7_000_000_000)
    assert not beep_active(1_050_000_000) and not beep_active(999_999_999) and not beep_active(-1)
    assert next_beep_ns(-5) == 0 and next_beep_ns(1) == 1_000_000_000
    assert next_beep_ns(2_000_000_000) == 2_000_000_000


def test_the_test_tone_is_a_tone_with_a_beep_in_its_first_50_ms() -> None:
    pcm = array.array("h", tone_pcm(2))
    left = pcm[0::2]
    assert pcm[0::2] == pcm[1::2]
    assert abs(dominant_frequency(left[240:2160]).frequency_hz - BEEP_HZ) <= 2
    assert abs(dominant_frequency(left[4800:48000]).frequency_hz - TONE_HZ) <= 2
    assert tone_level_db(left[4800:48000], BEEP_HZ) < -60


def test_dominant_frequency_and_levels() -> None:
    tone = [round(16384 * math.sin(2 * math.pi * 1234.5 * n / 48000)) for n in range(4800)]
    found = dominant_frequency(tone)
    assert abs(found.frequency_hz - 1234.5) < 1 and abs(found.level_db - -6.02) < 0.1
    assert abs(tone_level_db(tone, 1234.5) - -6.02) < 0.5
    assert dominant_frequency([0] * 4800).frequency_hz == 0.0


# ---------------------------------------------------------------------------------------------- tests
async def test_an_apps_tone_arrives_at_the_right_frequency_on_the_right_channel(server: AudioServer) -> None:
    sink = await server.create_sink(1, 2)
    app = await App.play(sink, tone_app(TONE_HZ, channel=0))
    try:
        capture = Capture(sink.monitor_source, STEREO, server=sink.pulse_server)
        packets = await capture.run(1.5)
    finally:
        await app.stop()
    assert not capture.errors
    stats = capture.pipeline.stats
    assert len(stats.packet_sizes) == 1, "CBR: every packet the same length (the client's FEC needs it)"
    assert stats.packets >= 200  # 1.5 s of 5 ms frames (300), less the start-up, with slack for load
    receiver = over_the_network(packets, STEREO, one_loss_per_group)
    rx = receiver.stats
    groups = len(packets) // 4
    assert rx.repaired >= groups - 2 and rx.lost == 0 and rx.unrecoverable_blocks == 0
    assert rx.decrypt_failures == 0 and rx.decode_errors == 0
    end = receiver.channel(0).buffer_info()[1] / 48000
    left, right = receiver.channel(0, end - 0.5, 0.4), receiver.channel(1, end - 0.5, 0.4)
    tone = dominant_frequency(left)
    assert abs(tone.frequency_hz - TONE_HZ) <= 10, tone
    assert tone.level_db > -20, tone  # volume 0.5 = -6 dBFS, less Opus and mixing
    assert dominant_frequency(right).level_db < tone.level_db - 30  # the right channel stays silent


async def test_a_second_session_hears_nothing_of_the_first(server: AudioServer) -> None:
    first = await server.create_sink("a", 2)
    second = await server.create_sink("b", 2)
    assert first.env["PULSE_SINK"] != second.env["PULSE_SINK"]
    app_a = await App.play(first, tone_app(TONE_HZ, channel=0))
    app_b = await App.play(second, tone_app(880))
    try:
        capture_a = Capture(first.monitor_source, STEREO, server=first.pulse_server)
        capture_b = Capture(second.monitor_source, STEREO, server=second.pulse_server)
        packets_a, packets_b = await asyncio.gather(capture_a.run(1.2), capture_b.run(1.2))
    finally:
        await app_a.stop()
        await app_b.stop()
    a = over_the_network(packets_a, STEREO, one_loss_per_group)
    b = over_the_network(packets_b, STEREO)
    end_a = a.channel(0).buffer_info()[1] / 48000
    end_b = b.channel(0).buffer_info()[1] / 48000
    for channel in (0, 1):
        samples = a.channel(channel, end_a - 0.5, 0.4)
        assert tone_level_db(samples, 880) < -70, f"880 Hz leaked into the first session (channel {channel})"
    assert abs(dominant_frequency(a.channel(0, end_a - 0.5, 0.4)).frequency_hz - TONE_HZ) <= 10
    for channel in (0, 1):
        tone = dominant_frequency(b.channel(channel, end_b - 0.5, 0.4))
        assert abs(tone.frequency_hz - 880) <= 10, tone
        assert tone_level_db(b.channel(channel, end_b - 0.5, 0.4), TONE_HZ) < -70


@pytest.mark.parametrize(("channels", "high_quality"), [(2, True), (6, False), (6, True), (8, False), (8, True)])
async def test_every_layout_routes_every_channel(server: AudioServer, channels: int, high_quality: bool) -> None:
    """The streams opusenc makes decode with the announced mapping to the channels the app played."""
    layout = OPUS_LAYOUTS[channels, high_quality]
    sink = await server.create_sink(f"{channels}{int(high_quality)}", channels)
    app = await App.play(sink, multichannel_app(channels))
    try:
        capture = Capture(sink.monitor_source, layout, server=sink.pulse_server)
        packets = await capture.run(1.2)
    finally:
        await app.stop()
    assert not capture.errors, capture.errors
    receiver = over_the_network(packets, layout, one_loss_per_group)
    end = receiver.channel(0).buffer_info()[1] / 48000
    heard = [round(dominant_frequency(receiver.channel(c, end - 0.4, 0.3)).frequency_hz) for c in range(channels)]
    for c in range(channels):
        assert abs(heard[c] - CHANNEL_HZ[c]) <= 10, f"channel {c} carries {heard[c]} Hz: {heard}"


async def test_audio_server_dying_is_reported_and_recovered(server: AudioServer) -> None:
    sink = await server.create_sink(7, 2)
    app = await App.play(sink, tone_app(TONE_HZ))
    events: list[str] = []
    restarted = asyncio.Event()

    def on_event(event: str) -> None:
        events.append(event)
        if event == "restarted":
            restarted.set()

    server.add_listener(on_event)
    capture = Capture(sink.monitor_source, STEREO, server=sink.pulse_server)
    capture.pipeline.start()
    try:
        await asyncio.sleep(0.5)
        assert capture.packets and not capture.errors
        old_pid = server.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        # The capture pipeline reports the loss (the session keeps its video) ...
        assert await asyncio.to_thread(capture.error_event.wait, 5.0), "the capture pipeline did not report"
        assert capture.pipeline.stop() is True
        # ... and the server comes back with the session's sink under the same name.
        await asyncio.wait_for(restarted.wait(), 10)
        assert events[:2] == ["died", "restarted"]
        assert server.pid not in (None, old_pid)
        assert sink.name in await server.pactl("list", "short", "sinks")
    finally:
        capture.pipeline.stop()
        await app.stop()
    # A session can rebuild its capture on the restored sink.
    app = await App.play(sink, tone_app(TONE_HZ))
    try:
        again = Capture(sink.monitor_source, STEREO, server=sink.pulse_server)
        packets = await again.run(0.8)
    finally:
        await app.stop()
    assert not again.errors and len(packets) > 50
    receiver = over_the_network(packets, STEREO)
    end = receiver.channel(0).buffer_info()[1] / 48000
    assert abs(dominant_frequency(receiver.channel(0, end - 0.3, 0.25)).frequency_hz - TONE_HZ) <= 10


async def test_sinks_are_removed_and_an_existing_server_is_reused(server: AudioServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SERVER", server.server)
    shared = AudioServer(use_existing=True)
    await shared.start()
    try:
        assert not shared.owned and shared.server == server.server
        sink = await shared.create_sink("shared", 6)
        listed = await server.pactl("list", "short", "sinks")
        assert "moonhowl_sshared\t" in listed and "6ch 48000Hz" in listed
        await sink.remove()
        assert "moonhowl_sshared" not in await server.pactl("list", "short", "sinks")
    finally:
        await shared.stop()
    assert server.pid is not None  # stopping a user of a shared server leaves the server running


async def test_the_test_tone_beeps_at_whole_seconds_of_running_time() -> None:
    base = time.monotonic_ns()
    capture = Capture(TEST_TONE, STEREO, base_time_ns=base)
    packets = await capture.run(2.3)
    assert not capture.errors
    receiver = over_the_network(packets, STEREO, one_loss_per_group)
    first_running_ns = packets[0][1] - base
    assert 0 <= first_running_ns < 50_000_000  # capture times are on the shared time base

    def at(running_s: float, duration_s: float) -> float:
        start = running_s - first_running_ns / 1e9
        return dominant_frequency(receiver.channel(0, start, duration_s)).frequency_hz

    for second in (1, 2):
        assert abs(at(second + 0.010, 0.030) - BEEP_HZ) <= 10  # the beep: [k s, k s + 50 ms)
        assert abs(at(second + 0.100, 0.100) - TONE_HZ) <= 10  # and the steady tone after it
        assert abs(at(second - 0.150, 0.100) - TONE_HZ) <= 10
    # Capture times are the running time of each packet's first sample, on a gapless 5 ms grid
    # (opusenc's first packet holds only 2.5 ms after its lookahead, so the grid sits at k*5 - 2.5 ms).
    running = [c - base for _, c in packets]
    assert all(b - a == 5_000_000 for a, b in itertools.pairwise(running[1:]))
    for second in (1, 2):
        assert sum(c <= second * 1_000_000_000 < c + 5_000_000 for c in running) == 1
