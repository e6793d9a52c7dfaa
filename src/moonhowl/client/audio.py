"""The client's audio: datagrams -> AudioDepacketizer -> Opus decoding (GStreamer) -> PCM.

    appsrc caps=audio/x-opus,channel-mapping-family=255,stream-count=S,coupled-count=C,
                channel-mapping=<layout mapping> ! opusdec plc=true ! S16LE 48 kHz ! appsink

The decoder is set up exactly like moonlight-common-c's (``opus_multistream_decoder_create`` with
the streams, coupled streams and mapping parsed from DESCRIBE, ``startAudioStream``): family 255
makes opusdec use the mapping as given and put the channels out in the client's order (FL FR C LFE
BL BR SL SR), without reordering them for a Vorbis layout. Lost packets become GAP events, which
opusdec conceals (the client calls ``decodeAndPlaySample(NULL, 0)``).

PCM is kept (the last ``max_seconds``) so that tests and benchmarks can write a WAV file or measure
the tone on each channel (:func:`dominant_frequency`, :func:`tone_level_db`, pure Python).

Threads: push() from one thread (the client's asyncio loop); decoded PCM arrives on GStreamer's
streaming thread; both sides share one condition variable.
"""

from __future__ import annotations

import array
import cmath
import logging
import math
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moonhowl.media.glib import GLib, Gst, GstApp, get_loop_thread, init
from moonhowl.protocol.audio import AudioDepacketizer, AudioFrame
from moonhowl.protocol.sdp import OpusLayout

log = logging.getLogger(__name__)

__all__ = ["AudioReceiver", "AudioReceiverStats", "Tone", "dominant_frequency", "goertzel_power",
           "tone_level_db"]

SAMPLE_RATE = 48000
# Fill at most this much of a hole in the sequence with concealment; a longer jump (a resync)
# just moves the timeline on, as the client's audio renderer would.
MAX_CONCEALED_GAP_NS = 200_000_000
_FFT_MAX = 8192


# ---------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Tone:
    frequency_hz: float  # the strongest spectral peak; 0.0 for silence
    level_db: float  # RMS of the whole window in dBFS (a full-scale sine is 0 dB); -inf for silence


def _fft(values: list[complex]) -> list[complex]:
    """Iterative radix-2 FFT; len(values) is a power of two."""
    n = len(values)
    out = values[:]
    j = 0
    for i in range(1, n):  # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            out[i], out[j] = out[j], out[i]
    size = 2
    while size <= n:
        half = size // 2
        step = cmath.exp(-2j * math.pi / size)
        twiddles = [step ** k for k in range(half)]
        for start in range(0, n, size):
            for k in range(half):
                a = out[start + k]
                b = out[start + k + half] * twiddles[k]
                out[start + k] = a + b
                out[start + k + half] = a - b
        size *= 2
    return out


def _rms_db(samples: Sequence[int]) -> float:
    if not samples:
        return -math.inf
    rms = math.sqrt(sum(v * v for v in samples) / len(samples))
    # A full-scale sine has RMS 32767/sqrt(2): call that 0 dBFS.
    return 20 * math.log10(rms * math.sqrt(2) / 32767) if rms > 0 else -math.inf


def dominant_frequency(samples: Sequence[int], rate: int = SAMPLE_RATE, *, min_hz: float = 20.0) -> Tone:
    """The strongest frequency of one channel's samples (Hann window, FFT of up to 8192 points,
    parabolic interpolation between bins: well within 1 Hz for a clean tone)."""
    level = _rms_db(samples)
    n = 1
    while n * 2 <= min(len(samples), _FFT_MAX):
        n *= 2
    if n < 64 or level == -math.inf:
        return Tone(0.0, level)
    window = [0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)]
    spectrum = _fft([complex(samples[i] * window[i]) for i in range(n)])
    magnitudes = [abs(c) for c in spectrum[: n // 2]]
    lowest = max(1, math.ceil(min_hz * n / rate))
    k = max(range(lowest, n // 2 - 1), key=magnitudes.__getitem__)
    a, b, c = (math.log(magnitudes[i] + 1e-12) for i in (k - 1, k, k + 1))
    denominator = a - 2 * b + c
    offset = 0.5 * (a - c) / denominator if denominator else 0.0
    return Tone((k + offset) * rate / n, level)


def goertzel_power(samples: Sequence[int], frequency: float, rate: int = SAMPLE_RATE) -> float:
    """Squared magnitude of one DFT term at ``frequency`` (not restricted to bin centres)."""
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for v in samples:
        s1, s2 = v + coefficient * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coefficient * s1 * s2


def tone_level_db(samples: Sequence[int], frequency: float, rate: int = SAMPLE_RATE) -> float:
    """Amplitude of the ``frequency`` component in dBFS (0 dB = a full-scale sine at it)."""
    if not samples:
        return -math.inf
    amplitude = 2 * math.sqrt(max(goertzel_power(samples, frequency, rate), 0.0)) / len(samples)
    return 20 * math.log10(amplitude / 32767) if amplitude > 0 else -math.inf


# ---------------------------------------------------------------------------------------------- receiver
@dataclass(frozen=True)
class AudioReceiverStats:
    packets: int  # data datagrams
    fec_packets: int
    frames: int  # Opus frames out of the depacketizer (received or repaired)
    repaired: int
    lost: int
    unrecoverable_blocks: int
    malformed: int
    decrypt_failures: int
    concealed_frames: int  # frames decoded by concealment (lost packets and skipped blocks)
    decoded_ms: float  # PCM produced, concealment included
    decode_errors: int


class AudioReceiver:
    """One stream's audio on the client side. ``layout`` is what DESCRIBE announced for the
    channel count and quality the client asked for (DescribeInfo.opus_layouts / StreamConfig.opus_layout)."""

    def __init__(self, key: bytes, rikeyid: int, encrypted: bool, layout: OpusLayout, *,
                 packet_duration_ms: int = 5, decode: bool = True, max_seconds: float = 120.0) -> None:
        self.layout = layout
        self.channels = layout.channels
        self.packet_duration_ms = packet_duration_ms
        self.depacketizer = AudioDepacketizer(key, rikeyid, encrypted)
        self._frame_ns = packet_duration_ms * 1_000_000
        self._samples_per_frame = SAMPLE_RATE * packet_duration_ms // 1000
        self._max_bytes = int(max_seconds * SAMPLE_RATE) * 2 * self.channels
        self._cond = threading.Condition()
        self._pcm = bytearray()
        self._dropped_bytes = 0
        self._decoded_samples = 0
        self._expected_samples = 0
        self._concealed = 0
        self._decode_errors = 0
        self._first_index: int | None = None
        self._last_index: int | None = None
        self._pts_shift = 0
        self._closed = False
        self._src: GstApp.AppSrc | None = None
        self._pipeline: Gst.Pipeline | None = None
        if decode:
            self._build_decoder()

    def _build_decoder(self) -> None:
        init()
        mapping = ",".join(f"(int){m}" for m in self.layout.mapping)
        caps = (f"audio/x-opus,rate={SAMPLE_RATE},channels={self.channels},channel-mapping-family=255,"
                f"stream-count={self.layout.streams},coupled-count={self.layout.coupled_streams},"
                f"channel-mapping=<{mapping}>")
        description = (f"appsrc name=src format=time is-live=false caps=\"{caps}\" ! opusdec plc=true "
                       f"! audio/x-raw,format=S16LE,rate={SAMPLE_RATE},channels={self.channels} "
                       "! appsink name=sink emit-signals=true sync=false")
        try:
            pipeline = Gst.parse_launch(description)
        except GLib.Error as exc:
            raise RuntimeError(f"the Opus decoder pipeline does not build: {exc.message}") from exc
        src, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
        assert src is not None and sink is not None
        sink.connect("new-sample", self._on_new_sample)
        get_loop_thread().add_bus_watch(pipeline.get_bus(), self._on_bus_message)
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError("the Opus decoder pipeline does not start")
        self._pipeline, self._src = pipeline, src

    # --- input ---------------------------------------------------------------------------------------
    def push(self, datagram: bytes) -> None:
        """One audio datagram from the host (never raises on bad input)."""
        for frame in self.depacketizer.push_frames(datagram):
            self._decode(frame)

    def _decode(self, frame: AudioFrame) -> None:
        if self._first_index is None:
            self._first_index = frame.index
        if self._last_index is not None and frame.index > self._last_index + 1:
            # A block skipped entirely: conceal it, unless the hole is long (then just jump on).
            hole = frame.index - self._last_index - 1
            if hole * self._frame_ns <= MAX_CONCEALED_GAP_NS:
                for index in range(self._last_index + 1, frame.index):
                    self._push(index, b"")
            else:
                self._pts_shift += hole * self._frame_ns
        self._last_index = frame.index
        self._push(frame.index, frame.payload)

    def _push(self, index: int, payload: bytes) -> None:
        assert self._first_index is not None
        if not payload:
            self._concealed += 1
        src = self._src
        if src is None:
            return
        pts = (index - self._first_index) * self._frame_ns - self._pts_shift
        with self._cond:
            self._expected_samples += self._samples_per_frame
        if payload:
            buffer = Gst.Buffer.new_wrapped(payload)
            buffer.pts = pts
            buffer.duration = self._frame_ns
            src.push_buffer(buffer)
        else:
            # opusdec runs packet loss concealment for a gap (tested with GStreamer 1.26; an empty
            # buffer or a timestamp jump alone produces nothing).
            src.send_event(Gst.Event.new_gap(pts, self._frame_ns))

    def finish(self) -> None:
        """End of stream: what the depacketizer still holds comes out, holes concealed."""
        for frame in self.depacketizer.flush_frames():
            self._decode(frame)

    def flush(self, timeout: float = 2.0) -> bool:
        """Waits until everything pushed so far is decoded; False on timeout."""
        if self._src is None:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._decoded_samples < self._expected_samples:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stops the decoder (idempotent); the PCM stays readable."""
        if self._closed:
            return
        self._closed = True
        pipeline, self._pipeline, self._src = self._pipeline, None, None
        if pipeline is not None:
            get_loop_thread().remove_bus_watch(pipeline.get_bus())
            pipeline.set_state(Gst.State.NULL)

    # --- output --------------------------------------------------------------------------------------
    @property
    def stats(self) -> AudioReceiverStats:
        d = self.depacketizer.stats
        with self._cond:
            decoded_ms = self._decoded_samples * 1000 / SAMPLE_RATE
            concealed, errors = self._concealed, self._decode_errors
        return AudioReceiverStats(d.packets, d.fec_packets, d.frames, d.repaired, d.lost, d.unrecoverable_blocks,
                                  d.malformed, d.decrypt_failures, concealed, decoded_ms, errors)

    def pcm(self) -> bytes:
        """The kept PCM: S16LE, interleaved, ``channels`` channels, 48 kHz."""
        with self._cond:
            return bytes(self._pcm)

    @property
    def pcm_start_s(self) -> float:
        """Stream time of the first kept sample (older PCM beyond max_seconds was dropped)."""
        with self._cond:
            return self._dropped_bytes / (2 * self.channels * SAMPLE_RATE)

    def channel(self, index: int, start_s: float = 0.0, duration_s: float | None = None) -> array.array[int]:
        """One channel's samples from ``start_s`` (seconds into the kept PCM)."""
        if not 0 <= index < self.channels:
            raise ValueError(f"channel {index} of {self.channels}")
        samples = array.array("h", self.pcm())
        first = int(start_s * SAMPLE_RATE) * self.channels + index
        last = len(samples) if duration_s is None else first + int(duration_s * SAMPLE_RATE) * self.channels
        return samples[first:last:self.channels]

    def tones(self, start_s: float = 0.0, duration_s: float = 0.1) -> list[Tone]:
        """The dominant frequency and level of each channel over a window of the kept PCM."""
        return [dominant_frequency(self.channel(c, start_s, duration_s)) for c in range(self.channels)]

    def write_wav(self, path: str | Path) -> None:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(self.channels)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(self.pcm())

    # --- GStreamer callbacks -------------------------------------------------------------------------
    def _on_new_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        try:
            sample = sink.pull_sample()
            if sample is None:
                return Gst.FlowReturn.FLUSHING
            buffer = sample.get_buffer()
            data = buffer.extract_dup(0, buffer.get_size())
            with self._cond:
                self._pcm += data
                if len(self._pcm) > self._max_bytes:
                    excess = len(self._pcm) - self._max_bytes
                    excess -= excess % (2 * self.channels)
                    del self._pcm[:excess]
                    self._dropped_bytes += excess
                self._decoded_samples += len(data) // (2 * self.channels)
                self._cond.notify_all()
            return Gst.FlowReturn.OK
        except Exception:
            log.exception("audio decoder appsink handler failed")
            return Gst.FlowReturn.ERROR

    def _on_bus_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            with self._cond:
                self._decode_errors += 1
                self._cond.notify_all()
            log.error("audio decoder error: %s (%s)", error.message, debug)
        elif message.type == Gst.MessageType.WARNING:
            warning, _debug = message.parse_warning()
            with self._cond:
                self._decode_errors += 1
            log.warning("audio decoder warning: %s", warning.message)
