"""One session's audio capture: the sink's monitor (or the test tone) -> Opus in 5 ms CBR frames.

    pulsesrc device=<sink>.monitor (5 ms fragments) ! audioconvert ! audioresample
      ! audio/x-raw,format=S16LE,rate=48000,channels=N,channel-mask=<Moonlight order>
      [! audioconvert mix-matrix=<permutation>] [! capssetter channel-mask=0]
      ! opusenc frame-size=5 bitrate-type=cbr audio-type=restricted-lowdelay ! appsink

The encoder settings are Sunshine's (``audio.cpp`` ``encodeThread``): 48 kHz,
OPUS_APPLICATION_RESTRICTED_LOWDELAY, OPUS_SET_VBR(0), the packet duration the client asked for
(``x-nv-aqos.packetDuration``; 5 ms). CBR also keeps every packet the same length, which the
client's audio FEC requires (see protocol/audio.py).

Multistream: the client decodes with the (streams, coupled streams, mapping) that the DESCRIBE
reply announced (protocol/sdp.py OPUS_LAYOUTS, Sunshine's ``stream_configs``), so the encoder must
put the same channels into the same streams. GStreamer's opusenc does not take a mapping; it
derives one from the input's channel positions. What it does in GStreamer 1.26 (measured with a
distinct tone per channel, decoded stream by stream; see :data:`_OPUSENC_CODED_FROM_INPUT`):

* stereo: one coupled stream (L, R) -- the same as every stereo layout;
* 5.1 positioned: 4 streams, 2 coupled: (FL FR) (RL RR) FC LFE;
* 7.1 positioned: 5 streams, 3 coupled: (FL FR) (SL SR) (FC LFE) RL RR. opusenc hands libopus its
  coded->input table where libopus expects input->coded; for 5.1 that table is its own inverse,
  for 7.1 it is not, hence the unusual pairs;
* unpositioned input (channel-mask 0): family 255, one mono stream per channel in input order.

The stream and coupled-stream counts of Sunshine's normal-quality layouts (4/2, 5/3) match the
positioned cases and those of its high-quality layouts (6/0, 8/0) the unpositioned one, so a
channel permutation in front of the encoder (audioconvert's mix-matrix) makes the encoded streams
carry exactly the channels the announced mapping expects (for 5.1: (FL FR) (C LFE) BL BR, as
Sunshine's identity mapping over 4 streams / 2 coupled means). tests/integration/test_audio.py
checks every layout channel by channel. The one thing that cannot match: opusenc caps its bitrate
at 650 kbit/s, so Sunshine's high-quality 5.1/7.1 rates (1536/2048 kbit/s) are capped; the client
does not depend on the rate (CBR frames of any constant length decode the same way).

The "Test pattern" app's sound is generated here (:data:`TEST_TONE`): a steady 440 Hz tone plus a
50 ms 1 kHz beep at every whole second of running time (:func:`beep_active`), so the video side can
draw a flash at the same instants. Sessions share the instant by giving both pipelines the same
``base_time_ns`` (monotonic clock).

Threads: on_packet and the probe run on the GStreamer streaming thread; bus messages on the
process's GLib loop thread, and on_error on either. Neither may block: hand over with call_soon_threadsafe.
"""

from __future__ import annotations

import array
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moonhowl.media.glib import GLib, Gst, GstApp, ReportsErrorOnce, get_loop_thread, init
from moonhowl.protocol.sdp import OpusLayout

log = logging.getLogger(__name__)

__all__ = [
    "BEEP_DURATION_NS",
    "BEEP_HZ",
    "BEEP_PERIOD_NS",
    "TEST_TONE",
    "TONE_HZ",
    "AudioLayoutError",
    "AudioPipeline",
    "AudioPipelineError",
    "AudioPipelineStats",
    "EncoderPlan",
    "beep_active",
    "clamp_bitrate",
    "encoder_plan",
    "next_beep_ns",
    "tone_pcm",
]

SAMPLE_RATE = 48000
SECOND_NS = 1_000_000_000
TEST_TONE = "test-tone"  # pass as monitor_source for the "Test pattern" app
TONE_HZ = 440
BEEP_HZ = 1000
BEEP_PERIOD_NS = SECOND_NS
BEEP_DURATION_NS = 50_000_000
TONE_LEVEL = 0.25  # -12 dBFS: loud enough to measure, quiet enough to leave headroom for the beep
BEEP_LEVEL = 0.5
# opusenc's bitrate property range (bit/s); the client takes any CBR rate.
OPUSENC_MIN_BITRATE = 4000
OPUSENC_MAX_BITRATE = 650000
FRAME_SIZES_MS = (5, 10, 20)  # what Moonlight clients ask for (x-nv-aqos.packetDuration)
STOP_TIMEOUT_S = 3.0
_LATENCY_WINDOW = 20_000  # ~100 s of 5 ms packets

# GStreamer channel-mask bits of Moonlight's channel order (FL FR FC LFE RL RR SL SR): GStreamer
# orders a mask's channels by position enum, which for these masks is Moonlight's order.
_POSITION_BITS = (0, 1, 2, 3, 4, 5, 10, 11)
# opusenc 1.26, positioned input: coded channel j carries input channel [j] (measured, see above).
_OPUSENC_CODED_FROM_INPUT: dict[int, tuple[int, int, tuple[int, ...]]] = {
    2: (1, 1, (0, 1)),
    6: (4, 2, (0, 1, 4, 5, 2, 3)),
    8: (5, 3, (0, 1, 6, 7, 2, 3, 4, 5)),
}

# pulsesrc: 5 ms reads (one Opus frame), at most 20 ms buffered. PulseAudio's default (200 ms
# buffer, 10 ms fragments) would add up to 10 ms to every packet and grow under load.
_PULSE_LATENCY_US = 5000
_PULSE_BUFFER_US = 20000
# sync=false: packets leave as soon as they are encoded (the source is live and paces itself).
_APPSINK = "appsink name=sink emit-signals=true sync=false max-buffers=16 drop=false"


class AudioPipelineError(RuntimeError):
    """The audio pipeline cannot be built or started."""


class AudioLayoutError(ValueError):
    """An Opus layout that GStreamer's opusenc cannot produce stream for stream."""


# ---------------------------------------------------------------------------------------------- test tone
def beep_active(running_time_ns: int) -> bool:
    """True while the test tone's beep sounds: [k s, k s + 50 ms) of running time, k >= 0.

    The video side draws its flash for frames whose running time makes this true.
    """
    return running_time_ns >= 0 and running_time_ns % BEEP_PERIOD_NS < BEEP_DURATION_NS


def next_beep_ns(running_time_ns: int) -> int:
    """Running time of the first beep that starts at or after running_time_ns."""
    if running_time_ns <= 0:
        return 0
    return -(-running_time_ns // BEEP_PERIOD_NS) * BEEP_PERIOD_NS


def tone_pcm(channels: int) -> bytes:
    """One second of the test tone, S16LE interleaved, the beep in its first 50 ms.

    440 and 1000 cycles fit a second exactly, so the second loops without a seam.
    """
    beep_samples = BEEP_DURATION_NS * SAMPLE_RATE // SECOND_NS
    samples = array.array("h", bytes(2 * SAMPLE_RATE * channels))
    for n in range(SAMPLE_RATE):
        value = TONE_LEVEL * math.sin(2 * math.pi * TONE_HZ * n / SAMPLE_RATE)
        if n < beep_samples:
            value += BEEP_LEVEL * math.sin(2 * math.pi * BEEP_HZ * n / SAMPLE_RATE)
        v = round(value * 32767)
        for c in range(channels):
            samples[n * channels + c] = v
    return samples.tobytes()


# ---------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class EncoderPlan:
    """How to feed opusenc so that its streams match an announced OpusLayout."""

    channels: int
    streams: int
    coupled_streams: int
    channel_mask: int  # Moonlight order, as captured
    positioned: bool  # False: strip the positions (opusenc family 255, all mono streams)
    permutation: tuple[int, ...]  # encoder input slot i takes captured channel permutation[i]

    @property
    def needs_mix_matrix(self) -> bool:
        return self.permutation != tuple(range(self.channels))

    def mix_matrix(self) -> str:
        """audioconvert's mix-matrix (rows = outputs) as a gst-launch value."""
        rows = []
        for out in range(self.channels):
            row = ", ".join("(float)1.0" if self.permutation[out] == i else "(float)0.0" for i in range(self.channels))
            rows.append(f"<{row}>")
        return "<" + ", ".join(rows) + ">"


def channel_mask(channels: int) -> int:
    """GStreamer channel-mask of Moonlight's 2/6/8-channel order."""
    if channels not in _OPUSENC_CODED_FROM_INPUT:
        raise AudioLayoutError(f"GameStream audio has 2, 6 or 8 channels, not {channels}")
    return sum(1 << bit for bit in _POSITION_BITS[:channels])


def encoder_plan(layout: OpusLayout) -> EncoderPlan:
    """The permutation that makes opusenc's streams those of ``layout`` (see the module doc)."""
    n = layout.channels
    mask = channel_mask(n)
    if sorted(layout.mapping) != list(range(n)):
        raise AudioLayoutError(f"mapping {layout.mapping} is not a permutation of {n} channels")
    # The client puts decoded (coded) channel mapping[ch] out as channel ch, so coded channel j
    # must carry captured channel wanted[j].
    wanted = [0] * n
    for ch, coded in enumerate(layout.mapping):
        wanted[coded] = ch
    streams, coupled, coded_from_input = _OPUSENC_CODED_FROM_INPUT[n]
    positioned = True
    if (layout.streams, layout.coupled_streams) != (streams, coupled):
        if (layout.streams, layout.coupled_streams) != (n, 0):
            raise AudioLayoutError(
                f"opusenc cannot make {layout.streams} streams / {layout.coupled_streams} coupled of {n} channels")
        positioned, coded_from_input = False, tuple(range(n))
    permutation = [0] * n
    for j in range(n):
        permutation[coded_from_input[j]] = wanted[j]
    return EncoderPlan(n, layout.streams, layout.coupled_streams, mask, positioned, tuple(permutation))


def clamp_bitrate(bitrate: int) -> int:
    return max(OPUSENC_MIN_BITRATE, min(OPUSENC_MAX_BITRATE, bitrate))


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class AudioPipelineStats:
    packets: int
    bytes: int
    packet_sizes: tuple[int, ...]  # distinct Opus packet sizes seen (one with CBR)
    latency_p50_ms: float  # capture (first sample) -> appsink; 0.0 before the first packet
    latency_p99_ms: float
    latency_max_ms: float
    callback_errors: int


def _percentile(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class AudioPipeline(ReportsErrorOnce):
    """Captures one session's sink monitor (or the test tone) and hands out Opus frames.

    ``on_packet(opus_frame, capture_ns)``: ``capture_ns`` is the monotonic time (time.monotonic_ns)
    of the first sample the frame represents: base time + the frame's running time, which opusenc
    stamps after its 2.5 ms lookahead (so the frames sit on a grid k * 5 ms - 2.5 ms; the first
    frame holds 2.5 ms). ``bitrate`` in bit/s: pass ``opus_layout.bitrate`` (Sunshine's rate for the
    channel count and quality), capped to opusenc's 650 kbit/s. ``on_error(text)`` once, when the pipeline fails
    after start (the sound server died, the sink vanished); the session keeps its video.
    """

    def __init__(self, monitor_source: str, channels: int, opus_layout: OpusLayout, bitrate: int,
                 packet_duration_ms: int, on_packet: Callable[[bytes, int], None], *,
                 server: str | None = None, on_error: Callable[[str], None] | None = None,
                 base_time_ns: int | None = None) -> None:
        init()
        if channels != opus_layout.channels:
            raise AudioLayoutError(f"{channels} channels but the Opus layout has {opus_layout.channels}")
        if packet_duration_ms not in FRAME_SIZES_MS:
            raise ValueError(f"packet duration {packet_duration_ms} ms not in {FRAME_SIZES_MS}")
        self.plan = encoder_plan(opus_layout)
        self.monitor_source = monitor_source
        self.channels = channels
        self.layout = opus_layout
        self.bitrate = clamp_bitrate(bitrate)
        if self.bitrate != bitrate:
            log.info("Opus bitrate %d bit/s outside opusenc's range: using %d", bitrate, self.bitrate)
        self.packet_duration_ms = packet_duration_ms
        self._on_packet = on_packet
        self._on_error = on_error
        self._error_label = f"audio pipeline {monitor_source}"
        self._base_time_ns = base_time_ns
        self._frame_ns = packet_duration_ms * 1_000_000
        self.description = f"{self._source(server)} ! {self._encoder()} ! {_APPSINK}"
        try:
            pipeline = Gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise AudioPipelineError(f"the audio pipeline does not build: {exc.message}") from exc
        self._pipeline: Gst.Pipeline = pipeline
        # The system clock is CLOCK_MONOTONIC, so running time + base time is time.monotonic_ns():
        # the same time base as the video pipeline and the client's timestamps.
        pipeline.use_clock(Gst.SystemClock.obtain())
        sink = pipeline.get_by_name("sink")
        if sink is None:
            raise AudioPipelineError("the audio pipeline lacks its appsink")
        self._sink: GstApp.AppSink = sink
        self._lock = threading.Lock()
        self._packets = self._bytes = self._callback_errors = 0
        self._sizes: set[int] = set()
        self._latencies: deque[int] = deque(maxlen=_LATENCY_WINDOW)
        self._started = self._stopped = self._error_reported = False
        self._stop_done = threading.Event()
        self._in_callback = threading.local()
        self._caps_checked = False
        self._handlers: list[tuple[Gst.Element, int]] = [(sink, sink.connect("new-sample", self._on_new_sample))]
        self._tone: bytes | None = None
        self._tone_next_pts: int | None = None
        if monitor_source == TEST_TONE:
            tone = pipeline.get_by_name("tone")
            assert tone is not None
            self._tone = tone_pcm(channels)
            self._handlers.append((tone, tone.connect("need-data", self._on_need_data)))

    def _source(self, server: str | None) -> str:
        caps = (f"audio/x-raw,format=S16LE,layout=interleaved,rate={SAMPLE_RATE},channels={self.channels},"
                f"channel-mask=(bitmask){self.plan.channel_mask:#x}")
        if self.monitor_source == TEST_TONE:
            # identity sync=true paces the app source at the clock, as a sound card would.
            return (f"appsrc name=tone is-live=true format=time max-bytes=0 block=false caps=\"{caps}\" "
                    f"! identity sync=true")
        server_prop = f" server=\"{server}\"" if server else ""
        return (f"pulsesrc name=src device=\"{self.monitor_source}\"{server_prop} client-name=moonhowl "
                f"buffer-time={_PULSE_BUFFER_US} latency-time={_PULSE_LATENCY_US} provide-clock=false "
                f"! audioconvert ! audioresample ! {caps}")

    def _encoder(self) -> str:
        parts = []
        plan = self.plan
        if plan.needs_mix_matrix:
            parts.append(f"audioconvert mix-matrix=\"{plan.mix_matrix()}\" "
                         f"! audio/x-raw,channels={plan.channels},channel-mask=(bitmask){plan.channel_mask:#x}")
        if not plan.positioned:
            # audioconvert refuses a 0 channel-mask for > 2 channels; capssetter relabels the
            # buffers as unpositioned, which is what makes opusenc use one mono stream each.
            parts.append("capssetter join=true replace=false caps=\"audio/x-raw,channel-mask=(bitmask)0x0\"")
        parts.append(f"opusenc name=enc frame-size={self.packet_duration_ms} bitrate-type=cbr "
                     f"audio-type=restricted-lowdelay bandwidth=fullband bitrate={self.bitrate}")
        return " ! ".join(parts)

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._stopped:
                raise AudioPipelineError("a stopped AudioPipeline cannot be restarted; build a new one")
            if self._started:
                return
            self._started = True
        if self._base_time_ns is not None:
            # A shared base time puts this pipeline's running time on the same axis as the video's
            # (beep_active() then agrees with the flash).
            self._pipeline.set_start_time(Gst.CLOCK_TIME_NONE)
            self._pipeline.set_base_time(self._base_time_ns)
        get_loop_thread().add_bus_watch(self._pipeline.get_bus(), self._on_bus_message)
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.stop()
            raise AudioPipelineError(f"the audio pipeline for {self.monitor_source} failed to start")
        log.info("audio pipeline %s: %d ch, %d/%d streams, %d bit/s, %d ms started", self.monitor_source,
                 self.channels, self.plan.streams, self.plan.coupled_streams, self.bitrate, self.packet_duration_ms)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """To NULL; idempotent, any thread (also from on_packet). True once NULL was reached."""
        in_callback = getattr(self._in_callback, "active", False)
        with self._lock:
            already, self._stopped = self._stopped, True
        if already:
            return self._stop_done.is_set() if in_callback else self._stop_done.wait(timeout)
        get_loop_thread().remove_bus_watch(self._pipeline.get_bus())
        done = self._stop_done

        def to_null() -> None:
            try:
                self._pipeline.set_state(Gst.State.NULL)
                for element, handler in self._handlers:
                    element.disconnect(handler)  # the handlers hold self: break the cycle
                self._handlers.clear()
            except Exception:
                log.exception("setting the audio pipeline to NULL failed")
            finally:
                done.set()

        threading.Thread(target=to_null, name="moonhowl-audio-stop", daemon=True).start()
        if in_callback:
            return False  # NULL waits for this very streaming thread to return
        if not done.wait(timeout):
            log.error("the audio pipeline did not reach NULL within %.1f s; abandoning it", timeout)
            return False
        return True

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    @property
    def base_time_ns(self) -> int:
        """Monotonic ns of running time 0 (valid once started)."""
        return int(self._pipeline.get_base_time())

    def set_bitrate(self, bitrate: int) -> None:
        enc = self._pipeline.get_by_name("enc")
        if enc is not None:
            self.bitrate = clamp_bitrate(bitrate)
            enc.set_property("bitrate", self.bitrate)

    @property
    def stats(self) -> AudioPipelineStats:
        with self._lock:
            latencies = sorted(self._latencies)
            head = (self._packets, self._bytes, tuple(sorted(self._sizes)))
            errors = self._callback_errors
        if not latencies:
            return AudioPipelineStats(*head, 0.0, 0.0, 0.0, errors)
        ms = 1e-6
        return AudioPipelineStats(*head, _percentile(latencies, 0.5) * ms, _percentile(latencies, 0.99) * ms,
                                  latencies[-1] * ms, errors)

    # --- callbacks from C ------------------------------------------------------------------------------
    def _on_need_data(self, src: GstApp.AppSrc, _length: int) -> None:
        """Test tone, appsrc streaming thread: the next frame of the looping one-second tone."""
        try:
            tone = self._tone
            assert tone is not None
            frame = self._frame_ns
            if self._tone_next_pts is None:
                # Start at the current running time (a shared base time may lie in the past), on a
                # frame boundary, so the beeps fall on whole seconds of running time.
                clock = self._pipeline.get_clock()
                now = clock.get_time() - self._pipeline.get_base_time() if clock is not None else 0
                self._tone_next_pts = max(0, -(-int(now) // frame) * frame)
            pts = self._tone_next_pts
            self._tone_next_pts = pts + frame
            bytes_per_sample = 2 * self.channels
            first = (pts * SAMPLE_RATE // SECOND_NS) % SAMPLE_RATE
            count = frame * SAMPLE_RATE // SECOND_NS
            start, end = first * bytes_per_sample, (first + count) * bytes_per_sample
            data = tone[start:end] if end <= len(tone) else tone[start:] + tone[:end - len(tone)]
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.pts = pts
            buffer.duration = frame
            src.push_buffer(buffer)
        except Exception:
            log.exception("test tone generation failed")

    def _check_caps(self, sample: Gst.Sample) -> None:
        """Once: the encoder made the stream structure the client will decode with."""
        self._caps_checked = True
        caps = sample.get_caps()
        # From the caps string: Gst 1.26's overrides wrap get_structure() in a context manager.
        text = caps.to_string() if caps is not None else ""
        streams = re.search(r"stream-count=\(int\)(\d+)", text)
        coupled = re.search(r"coupled-count=\(int\)(\d+)", text)
        if streams is None or coupled is None:
            return
        got = (int(streams.group(1)), int(coupled.group(1)))
        if got != (self.plan.streams, self.plan.coupled_streams):
            self._report_error(f"opusenc made {got[0]} streams / {got[1]} coupled, the client expects "
                               f"{self.plan.streams}/{self.plan.coupled_streams}", None)

    def _on_new_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        """Encoder streaming thread: one Opus frame is ready."""
        self._in_callback.active = True
        try:
            sample = sink.pull_sample()
            if sample is None:
                return Gst.FlowReturn.FLUSHING
            if not self._caps_checked:
                self._check_caps(sample)
            buffer = sample.get_buffer()
            out_ns = time.monotonic_ns()
            data = buffer.extract_dup(0, buffer.get_size())
            capture_ns = out_ns
            segment = sample.get_segment()
            if buffer.pts != Gst.CLOCK_TIME_NONE and segment is not None:
                running = segment.to_running_time(Gst.Format.TIME, buffer.pts)
                if running != Gst.CLOCK_TIME_NONE:
                    capture_ns = min(out_ns, int(self._pipeline.get_base_time()) + int(running))
            with self._lock:
                if self._stopped:
                    return Gst.FlowReturn.FLUSHING
                self._packets += 1
                self._bytes += len(data)
                self._sizes.add(len(data))
                self._latencies.append(out_ns - capture_ns)
            try:
                self._on_packet(data, capture_ns)
            except Exception:
                self._callback_errors += 1
                if self._callback_errors <= 3:
                    log.exception("on_packet failed")
            return Gst.FlowReturn.OK
        except Exception:
            log.exception("audio appsink handler failed")
            return Gst.FlowReturn.ERROR
        finally:
            self._in_callback.active = False
