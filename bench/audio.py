"""Audio latency: from the session sink to the packet leaving, and the test tone's beep to its packet.

Run inside the runtime: ./moonhowl exec python bench/audio.py [--seconds 10] [--channels 2]

Three measurements, all on time.monotonic_ns (GStreamer's system clock is CLOCK_MONOTONIC):

* app marker -> packet sent: an in-process "app" (appsrc ! pulsesink, sync on the system clock)
  plays a 20 ms 1 kHz burst every 250 ms into the session sink. Burst k is due at the app
  pipeline's base time + k * 250 ms + its reported latency (what pulsesink aligns playback to).
  AudioPipeline captures the sink's monitor; each Opus frame goes through the encrypted
  AudioPacketizer at once, and the time after packetize is "sent". The packets are decoded (as a
  client would) to find which packet carries each burst onset. This includes the app side's own
  buffering as PulseAudio reports it, the monitor, pulsesrc's 5 ms reads, the 5 ms Opus frame and
  its 2.5 ms lookahead, the encoder and the packetizer.
* capture -> packet sent: the same packets, from pulsesrc's timestamp of each frame's first sample
  (AudioPipeline's capture_ns) to sent: the host's own processing.
* test tone beep -> packet sent: the "Test pattern" app's beep is due at whole seconds of running
  time (media.audio.beep_active); the packet that carries its first sample leaves this much later.
  This is the audio half of the audio/video offset; the video side draws the flash for the frame
  whose running time starts the beep.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence

from moonhowl.client.audio import AudioReceiver
from moonhowl.media.audio import TEST_TONE, AudioPipeline, channel_mask, clamp_bitrate
from moonhowl.media.audio_server import AudioServer
from moonhowl.media.glib import Gst, GstApp, init
from moonhowl.protocol.audio import AudioDepacketizer, AudioPacketizer
from moonhowl.protocol.sdp import OPUS_LAYOUTS, OpusLayout

KEY = bytes(range(16))
RIKEYID = 0x12345678
RATE = 48000
FRAME_SAMPLES = 240
MARKER_PERIOD_NS = 250_000_000
MARKER_NS = 20_000_000
MARKER_HZ = 1000
ONSET_THRESHOLD = 4000  # of 32767; the burst has amplitude ~16000, silence decodes to ~0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Sender:
    """Collects (opus, capture_ns, sent_ns) as a session would send them."""

    def __init__(self) -> None:
        self.packetizer = AudioPacketizer(KEY, RIKEYID, encrypt=True)
        self.frames: list[tuple[bytes, int, int]] = []
        self.datagrams: list[bytes] = []
        self.packetize_ns: list[int] = []
        self._lock = threading.Lock()

    def on_packet(self, opus: bytes, capture_ns: int) -> None:
        start = time.monotonic_ns()
        datagrams = self.packetizer.packetize(opus)
        sent = time.monotonic_ns()
        with self._lock:
            self.frames.append((opus, capture_ns, sent))
            self.datagrams.extend(datagrams)
            self.packetize_ns.append(sent - start)


def decode(datagrams: list[bytes], layout: OpusLayout) -> array.array[int]:
    receiver = AudioReceiver(KEY, RIKEYID, True, layout)
    for d in datagrams:
        receiver.push(d)
    receiver.finish()
    receiver.flush(10.0)
    receiver.close()
    return receiver.channel(0)


def onsets(samples: array.array[int]) -> list[int]:
    """Sample indexes where a burst starts after at least 50 ms of quiet."""
    found, quiet = [], 0
    for i, v in enumerate(samples):
        if abs(v) >= ONSET_THRESHOLD:
            if quiet >= RATE // 20:
                found.append(i)
            quiet = 0
        else:
            quiet += 1
    return found


class MarkerApp:
    """appsrc ! pulsesink into the sink, on the system clock: bursts due at known instants."""

    def __init__(self, server: str, sink: str, channels: int) -> None:
        caps = (f"audio/x-raw,format=S16LE,layout=interleaved,rate={RATE},channels={channels},"
                f"channel-mask=(bitmask){channel_mask(channels):#x}")
        self.pipeline = Gst.parse_launch(
            f"appsrc name=src is-live=true format=time caps=\"{caps}\" ! pulsesink server=\"{server}\" "
            f"device=\"{sink}\" buffer-time=20000 latency-time=5000 sync=true")
        self.pipeline.use_clock(Gst.SystemClock.obtain())
        self.channels = channels
        period = RATE * MARKER_PERIOD_NS // 1_000_000_000
        burst = RATE * MARKER_NS // 1_000_000_000
        one = array.array("h", bytes(2 * period * channels))
        for n in range(burst):
            v = round(16000 * math.sin(2 * math.pi * MARKER_HZ * n / RATE))
            for c in range(channels):
                one[n * channels + c] = v
        self.period_pcm = one.tobytes()
        self.next_sample = 0
        src = self.pipeline.get_by_name("src")
        assert src is not None
        src.connect("need-data", self._need_data)

    def _need_data(self, src: GstApp.AppSrc, _length: int) -> None:
        period = len(self.period_pcm) // (2 * self.channels)
        start = self.next_sample % period
        data = self.period_pcm[start * 2 * self.channels:(start + FRAME_SAMPLES) * 2 * self.channels]
        buffer = Gst.Buffer.new_wrapped(data)
        buffer.pts = self.next_sample * 1_000_000_000 // RATE
        buffer.duration = FRAME_SAMPLES * 1_000_000_000 // RATE
        self.next_sample += FRAME_SAMPLES
        src.push_buffer(buffer)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)

    def latency_ns(self) -> int:
        query = Gst.Query.new_latency()
        if not self.pipeline.query(query):
            return 0
        _live, minimum, _maximum = query.parse_latency()
        return int(minimum)

    @property
    def base_time(self) -> int:
        return int(self.pipeline.get_base_time())

    def stop(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)


async def sink_latency(server: AudioServer, seconds: float, layout: OpusLayout) -> dict[str, list[float]]:
    sink = await server.create_sink("bench", layout.channels)
    sender = Sender()
    capture = AudioPipeline(sink.monitor_source, layout.channels, layout, layout.bitrate, 5, sender.on_packet,
                            server=sink.pulse_server)
    capture.start()
    await asyncio.sleep(0.3)  # the capture is running before the app starts, as in a session
    app = MarkerApp(sink.pulse_server, sink.name, layout.channels)
    app.start()
    await asyncio.sleep(0.5)
    app_latency = app.latency_ns()
    await asyncio.sleep(seconds)
    app.stop()
    capture.stop()
    await sink.remove()
    frames = sender.frames
    pcm = decode(sender.datagrams, layout)
    marker, host = [], []
    for onset in onsets(pcm):
        p = onset // FRAME_SAMPLES
        if p >= len(frames):
            continue
        _opus, capture_ns, sent = frames[p]
        due_base = app.base_time + app_latency
        k = (sent - due_base) // MARKER_PERIOD_NS
        marker.append((sent - (due_base + k * MARKER_PERIOD_NS)) / 1e6)
        host.append((sent - capture_ns) / 1e6)
    print(f"app pipeline reported latency {app_latency / 1e6:.1f} ms; {len(frames)} packets; "
          f"capture stats: {capture.stats}", file=sys.stderr)
    return {"app marker -> packet sent": marker, "capture -> packet sent (host)": host,
            "capture -> packet sent (all packets)": [(s - c) / 1e6 for _, c, s in frames],
            "packetize, AES + FEC (per frame)": [n / 1e6 for n in sender.packetize_ns]}


async def beep_offset(seconds: float, layout: OpusLayout) -> dict[str, list[float]]:
    sender = Sender()
    base = time.monotonic_ns()
    tone = AudioPipeline(TEST_TONE, layout.channels, layout, layout.bitrate, 5, sender.on_packet, base_time_ns=base)
    tone.start()
    await asyncio.sleep(seconds + 0.1)
    tone.stop()
    offsets = []
    for _opus, capture_ns, sent in sender.frames:
        running = capture_ns - base
        # The packet holding the beep's first sample: its 5 ms start at or just before k s.
        k = -(-running // 1_000_000_000)
        if k >= 1 and running <= k * 1_000_000_000 < running + 5_000_000:
            offsets.append((sent - (base + k * 1_000_000_000)) / 1e6)
    return {"test tone beep -> packet sent": offsets}


def depacketize_cost(layout: OpusLayout) -> dict[str, list[float]]:
    packetizer = AudioPacketizer(KEY, RIKEYID, encrypt=True)
    frame = os.urandom(max(60, layout.bitrate * 5 // 8000))
    datagrams = [d for _ in range(2000) for d in packetizer.packetize(frame)]
    times = []
    for lose in (False, True):
        depacketizer = AudioDepacketizer(KEY, RIKEYID, True)
        start = time.perf_counter_ns()
        n = 0
        for i, d in enumerate(datagrams):
            if lose and i % 6 == 1:
                continue  # one data packet per FEC group: every block is repaired
            depacketizer.push(d)
            n += 1
        times.append((time.perf_counter_ns() - start) / n / 1e6)
    return {"depacketize per datagram (no loss)": [times[0]], "depacketize per datagram (1 loss/group)": [times[1]]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=2, choices=(2, 6, 8))
    parser.add_argument("--high-quality", action="store_true")
    args = parser.parse_args()
    init()
    layout = OPUS_LAYOUTS[args.channels, args.high_quality]
    server = AudioServer(use_existing=False)
    await server.start()
    try:
        results = await sink_latency(server, args.seconds, layout)
    finally:
        await server.stop()
    results.update(await beep_offset(args.seconds, layout))
    results.update(depacketize_cost(layout))
    print(f"\naudio, {layout.channels} ch, {layout.streams}/{layout.coupled_streams} streams, "
          f"{clamp_bitrate(layout.bitrate) // 1000} kbit/s, 5 ms packets, {args.seconds:.0f} s, "
          f"{os.cpu_count()} CPUs")
    print(f"{'measurement':42} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in results.items():
        if not values:
            print(f"{name:42} {0:>6}")
            continue
        print(f"{name:42} {len(values):>6} {statistics.median(values):>8.3f} {percentile(values, 0.99):>8.3f} "
              f"{max(values):>8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
