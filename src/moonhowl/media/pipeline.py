"""One streaming session's video pipeline: a live source -> an EncoderSpec's encoder -> appsink.

    <source> name=src ! video/x-raw,width=W,height=H,framerate=F/1
      ! queue (2 buffers, leaky downstream) ! <spec.fragment(kbps)> ! appsink name=sink

or, for a session's desktop, from a source element and a chain fragment (media/chains.py) that
negotiate their own caps and memory:

    moonhowlsrc name=src ... ! queue (2 buffers, leaky downstream) ! <chain> ! appsink name=sink

The test pattern flashes while the "Test pattern" app's beep sounds (media/audio.py
beep_active: 50 ms at every whole second of running time), so that a user, the tests and
bench/av_sync.py can see audio/video sync end to end: a white band across the middle half of the
picture, drawn by the capture-time probe into the frame videotestsrc has just made (copies of a
white row per plane, about 1.5 MB at 1080p I420, only on the flash's frames). The bars keep
moving above and below it, so the flash frames cost the encoder about what the others do. Both
pipelines of a session share one time base: the system clock (CLOCK_MONOTONIC, as the audio
pipeline uses) and the same base time (``base_time_ns``), so a running time means the same
instant in both.

Threads: the appsink callback and the capture-time pad probe run on GStreamer streaming threads;
bus messages arrive on the process's GLib loop thread (glib.get_loop_thread()). Neither may block:
on_frame and on_error are expected to hand over with loop.call_soon_threadsafe. Everything that
crosses into C catches, logs and returns a safe value.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from moonhowl.media.audio import beep_active
from moonhowl.media.encoders import EncoderSpec
from moonhowl.media.glib import GLib, Gst, GstApp, GstVideo, ReportsErrorOnce, get_loop_thread, init

log = logging.getLogger(__name__)

# GStreamer GL picks its window system from the environment. A server has none of its own (no X,
# and a WAYLAND_DISPLAY would be the user's session, not ours), so without these glupload fails
# with "Failed to initialize egl: EGL_NOT_INITIALIZED" (seen here) and every GL chain fails.
# EGL's surfaceless platform works headless on Mesa and on a GPU (FACTS section 2). Set at import,
# long before the first GL element exists; setdefault leaves a user's own choice alone.
os.environ.setdefault("GST_GL_PLATFORM", "egl")
os.environ.setdefault("GST_GL_WINDOW", "surfaceless")

__all__ = [
    "SOURCES",
    "EncodedFrame",
    "PipelineError",
    "PipelineStats",
    "VideoPipeline",
    "bare_encoder_description",
    "source_description",
]

# Sources by name, as gst-launch fragments producing raw video (the element must be named "src").
# The test pattern must move over the whole frame, or encoders see a static picture and spend
# nothing, which flatters every number. Measured at 1080p I420 on this 2-core machine:
# smpte + horizontal-speed 2.3 ms/frame, ball 8.2 ms, gradient with scroll 9 ms, zone-plate with
# kt 12.5 ms: the scrolling colour bars are the only moving pattern cheap enough for 1080p60
# next to an encoder. is-live makes it produce at the clock's pace, as a compositor does.
SOURCES: dict[str, str] = {
    "test-pattern": "videotestsrc name=src is-live=true pattern=smpte horizontal-speed=4",
}

# A slow encoder must drop frames, not build latency: two raw frames at most wait for it.
_LEAKY_QUEUE = "queue name=q max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream"
# sync=false: frames go out as soon as they are encoded (the source already paces them);
# max-buffers=4 drop=false: on_frame is non-blocking, so the queue is only a cushion for GIL stalls.
_APPSINK = "appsink name=sink emit-signals=true sync=false max-buffers=4 drop=false"

# Capture stamps waiting for their encoded frame; beyond this the encoder lost frames (the leaky
# queue dropped them) and the oldest stamps are stale.
_MAX_PENDING_STAMPS = 64
# Encode latencies kept for percentiles: about 3 minutes at 60 fps.
_LATENCY_WINDOW = 10_000
STOP_TIMEOUT_S = 3.0

_BITRATE_RE = re.compile(r"([\w-]+)=\{(kbps|bps)\}")

TEST_PATTERN = "test-pattern"
# The flash: a white band over the middle half of the picture's height (full width, so that it
# is one contiguous run of rows in every plane: one copy per plane).
_FLASH_TOP, _FLASH_BOTTOM = 0.25, 0.75


@dataclass(frozen=True)
class _FlashPlane:
    index: int
    first_row: int  # the band's rows in this plane (subsampled planes have fewer)
    end_row: int
    row: bytes  # one white row of this plane, as long as the plane's default stride
    band: bytes  # the band's rows at that stride, copied in one go


class PipelineError(RuntimeError):
    """The pipeline cannot be built or started."""


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes  # one access unit: Annex-B for H.264/HEVC, an OBU temporal unit for AV1
    pts_ns: int  # running time: ns since the pipeline started playing, the same for every encoder
    is_keyframe: bool
    capture_ns: int  # time.monotonic_ns() when the raw frame left the source
    frame_index: int  # 1-based, one per frame out of the encoder


@dataclass(frozen=True)
class PipelineStats:
    frames: int
    keyframes: int
    frames_without_capture_time: int
    latency_mean_ms: float  # capture -> appsink; 0.0 while no frame has come out
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float


def source_description(source: str, width: int, height: int, fps: int) -> str:
    """The source fragment, ending in caps that fix the size and rate."""
    try:
        element = SOURCES[source]
    except KeyError:
        raise ValueError(f"unknown video source {source!r} (known: {', '.join(SOURCES)})") from None
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"bad video mode {width}x{height}@{fps}")
    return f"{element} ! video/x-raw,width={width},height={height},framerate={fps}/1"


def bare_encoder_description(width: int, height: int, fps: int, spec: EncoderSpec, kbps: int,
                             source: str = "test-pattern") -> str:
    """The same source and encoder into a fakesink, with no Python on the path: the baseline that
    the benchmark compares VideoPipeline's CPU against."""
    return f"{source_description(source, width, height, fps)} ! {spec.fragment(kbps)} ! fakesink sync=false"


def _percentile(ordered: list[int], q: float) -> int:
    # Nearest-rank on a sorted list: no interpolation needed for latency reporting.
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _flash_planes(caps: Gst.Caps) -> list[_FlashPlane]:
    """Where the flash goes in a frame of these caps, and a white row of each plane.

    The white rows come from videotestsrc itself (pattern=white, four rows of the same format,
    width and colorimetry), which knows every raw format's layout and range; this runs once per
    caps, on the first frame.
    """
    info = GstVideo.VideoInfo.new_from_caps(caps)
    text = re.sub(r"height=\(int\)\d+", "height=(int)4", caps.to_string())
    white = Gst.parse_launch(f"videotestsrc pattern=white num-buffers=1 ! {text} ! appsink name=sink sync=false")
    try:
        white.set_state(Gst.State.PLAYING)
        sample = white.get_by_name("sink").try_pull_sample(5 * Gst.SECOND)
        if sample is None:
            raise RuntimeError(f"no white frame for {text}")
        template = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
        buffer = sample.get_buffer()
        pixels = buffer.extract_dup(0, buffer.get_size())
    finally:
        white.set_state(Gst.State.NULL)
    finfo = info.finfo
    # Multiples of 4 rows keep the band on whole rows of every subsampled plane.
    top = int(info.height * _FLASH_TOP) // 4 * 4
    bottom = int(info.height * _FLASH_BOTTOM) // 4 * 4
    planes = []
    for index in range(finfo.n_planes):
        component = next(c for c in range(finfo.n_components) if finfo.plane[c] == index)
        sub = finfo.h_sub[component]
        stride, offset = template.stride[index], template.offset[index]
        row = pixels[offset:offset + stride]
        planes.append(_FlashPlane(index, top >> sub, bottom >> sub, row, row * ((bottom - top) >> sub)))
    return planes


class VideoPipeline(ReportsErrorOnce):
    """source ! leaky queue ! encoder ! appsink; see the module docstring.

    `source` names an entry of SOURCES. Alternatively `source_element` is a gst-launch fragment of
    one source element named "src" that fixes its own caps (moonhowlsrc negotiates memory and
    format with what follows, so no raw-caps filter may come between), and `chain` replaces the
    spec's own fragment with a chains.chain_for() fragment for that memory.

    `base_time_ns` (time.monotonic_ns() of running time 0, e.g. the session's start instant; may
    lie in the past) puts the pipeline on the system clock with that base time, so its running
    time is the audio pipeline's given the same value. `flash` (default: on for the test pattern)
    paints white the frames that the test tone's beep falls on; see the module docstring.
    """

    def __init__(self, width: int, height: int, fps: int, spec: EncoderSpec, bitrate_kbps: int,
                 on_frame: Callable[[EncodedFrame], None], on_error: Callable[[str], None],
                 source: str = TEST_PATTERN, *, source_element: str | None = None,
                 chain: str | None = None, base_time_ns: int | None = None, flash: bool | None = None) -> None:
        init()
        if flash is None:
            flash = source == TEST_PATTERN and source_element is None
        elif flash and (source != TEST_PATTERN or source_element is not None):
            raise ValueError("only the test pattern can flash")
        self.width, self.height, self.fps = width, height, fps
        self.spec = spec
        self.bitrate_kbps = bitrate_kbps
        self._on_frame = on_frame
        self._on_error = on_error
        self._error_label = "video pipeline"
        head = source_element if source_element is not None else source_description(source, width, height, fps)
        body = chain if chain is not None else spec.fragment(bitrate_kbps)
        self.description = f"{head} ! {_LEAKY_QUEUE} ! {body} ! {_APPSINK}"
        try:
            pipeline = Gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise PipelineError(f"the {spec.codec}/{spec.name} pipeline does not build: {exc.message}") from exc
        self._pipeline: Gst.Pipeline = pipeline
        src = pipeline.get_by_name("src")
        sink = pipeline.get_by_name("sink")
        if src is None or sink is None:
            raise PipelineError("the pipeline lacks an element named 'src' or 'sink'")
        self._sink: GstApp.AppSink = sink
        self.source: Gst.Element = src
        self._encoder: Gst.Element | None = pipeline.get_by_name("enc")
        self._base_time_ns = base_time_ns
        self._flash = flash
        self._flash_caps: Gst.Caps | None = None  # what _flash_planes were made for
        self._flash_planes: list[_FlashPlane] = []
        self._flash_errors = 0
        self._frame_ns = 1_000_000_000 // fps  # for a frame without a duration (videotestsrc sets one)
        if flash or base_time_ns is not None:
            # CLOCK_MONOTONIC, like the audio pipeline (media/audio.py): running time + base time is
            # time.monotonic_ns() in both. (The default clock would be the same system clock here,
            # but only as long as no element in the pipeline offered its own.)
            pipeline.use_clock(Gst.SystemClock.obtain())

        self._lock = threading.Lock()  # guards the stamps, counters and state flags below
        # Running time -> monotonic ns, in insertion (time) order. Keyed by running time, not PTS:
        # x264enc and x265enc shift PTS by 1000 hours (gst_video_encoder_set_min_pts, room for
        # negative DTS) and move the segment to match, so only running time survives the encoder.
        self._capture_stamps: dict[int, int] = {}
        self._frame_index = 0
        self._last_pts = 0
        self._keyframes = 0
        self._no_stamp = 0
        self._callback_errors = 0
        self._latencies: deque[int] = deque(maxlen=_LATENCY_WINDOW)
        self._started = False
        self._stopped = False
        self._stop_done = threading.Event()
        self._error_reported = False
        self._keyframe_requests = 0
        # Marks the streaming thread while it runs our appsink callback, so that stop() called
        # from inside on_frame does not wait for the very thread it is running on.
        self._in_callback = threading.local()

        src_pad = src.get_static_pad("src")
        self._probe_id = src_pad.add_probe(Gst.PadProbeType.BUFFER, self._on_source_buffer)
        self._src_pad = src_pad
        self._sample_handler = sink.connect("new-sample", self._on_new_sample)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                raise PipelineError("a stopped VideoPipeline cannot be restarted; build a new one")
            if self._started:
                return
            self._started = True
        if self._base_time_ns is not None:
            # Without a start time the pipeline keeps the base time we set instead of taking the
            # clock's time at PLAYING.
            self._pipeline.set_start_time(Gst.CLOCK_TIME_NONE)
            self._pipeline.set_base_time(self._base_time_ns)
        get_loop_thread().add_bus_watch(self._pipeline.get_bus(), self._on_bus_message)
        result = self._pipeline.set_state(Gst.State.PLAYING)
        if result == Gst.StateChangeReturn.FAILURE:
            # The exception is the report; on_error may have run as well if the loop thread saw
            # the bus's ERROR before stop() removed the watch.
            self.stop()
            raise PipelineError(f"the {self.spec.codec}/{self.spec.name} pipeline failed to start")
        log.info("video pipeline %dx%d@%d %s/%s %d kbps started", self.width, self.height, self.fps,
                 self.spec.codec, self.spec.name, self.bitrate_kbps)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """To NULL; idempotent and callable from any thread, including from inside on_frame.

        Returns True when the pipeline has reached NULL within timeout (a later call waits for
        the first one's state change). Some encoder libraries hang in
        their teardown (svtav1enc was seen stuck), so the state change runs on a helper thread and
        a hang costs a leaked daemon thread and a log line, never the caller.
        """
        in_callback = getattr(self._in_callback, "active", False)
        with self._lock:
            already = self._stopped
            self._stopped = True
        if already:  # wait (bounded) for the first call's helper, like the first caller does
            return self._stop_done.is_set() if in_callback else self._stop_done.wait(timeout)
        get_loop_thread().remove_bus_watch(self._pipeline.get_bus())
        done = self._stop_done

        def to_null() -> None:
            try:
                self._pipeline.set_state(Gst.State.NULL)
                # The signal handler and the probe hold self, and self holds the pipeline: break
                # the cycle so a stopped session's pipeline is freed without waiting for the GC.
                self._sink.disconnect(self._sample_handler)
                self._src_pad.remove_probe(self._probe_id)
            except Exception:
                log.exception("setting the video pipeline to NULL failed")
            finally:
                done.set()

        helper = threading.Thread(target=to_null, name="moonhowl-pipeline-stop", daemon=True)
        helper.start()
        if in_callback:
            # Waiting here would deadlock: NULL waits for this very streaming thread to return.
            log.debug("stop() from the streaming thread: the pipeline goes to NULL once it returns")
            return False
        if not done.wait(timeout):
            log.error("the %s/%s pipeline did not reach NULL within %.1f s; abandoning it",
                      self.spec.codec, self.spec.name, timeout)
            return False
        return True

    @staticmethod
    def _flash_due(running_ns: int, duration_ns: int) -> bool:
        # A frame stands for [pts, pts + duration): it flashes when its middle falls in the beep,
        # so the flash starts on the frame nearest the beep's start, at most half a frame early or
        # late. The frames cannot be put on the whole-second grid itself: basesrc stamps a live
        # source's first frame with the running time at which it happens to come out (whatever
        # timestamp-offset says), and every later one 1/fps after it.
        return beep_active(running_ns + duration_ns // 2)

    @property
    def base_time_ns(self) -> int:
        """time.monotonic_ns() of running time 0 (valid once started)."""
        return int(self._pipeline.get_base_time())

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    # --- control ---------------------------------------------------------------------------------

    def request_keyframe(self) -> bool:
        """Asks the encoder to make its next frame an IDR/key frame, with parameter sets.

        The upstream force-key-unit event leaves from the appsink's sink pad, so the parser sees it
        too (it then makes sure SPS/PPS/VPS go with the keyframe) before the encoder acts on it.
        """
        with self._lock:
            if not self.running:
                return False
            self._keyframe_requests += 1
            count = self._keyframe_requests
        event = GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, True, count)
        sent = bool(self._sink.get_static_pad("sink").push_event(event))
        if not sent:
            log.warning("no element upstream handled the keyframe request")
        return sent

    def set_bitrate(self, kbps: int) -> bool:
        """Changes the encoder's bitrate while playing, where the element allows it."""
        match = _BITRATE_RE.search(self.spec.encoder)
        if match is None or self._encoder is None:
            log.warning("%s/%s: no bitrate property to change", self.spec.codec, self.spec.name)
            return False
        name, unit = match.groups()
        pspec = self._encoder.find_property(name)
        if pspec is None or not pspec.flags & Gst.PARAM_MUTABLE_PLAYING:
            log.warning("%s/%s: %s cannot change while playing", self.spec.codec, self.spec.name, name)
            return False
        self._encoder.set_property(name, kbps * 1000 if unit == "bps" else kbps)
        self.bitrate_kbps = kbps
        log.info("%s/%s bitrate now %d kbps", self.spec.codec, self.spec.name, kbps)
        return True

    def inject_error(self, element: str = "enc", text: str = "injected fault") -> bool:
        """Test hook: `element` posts an ERROR on the bus, as a failing encoder or converter would.

        It travels the real path (bus -> GLib loop thread -> on_error), so what reacts to it is
        exactly what reacts to a real failure. False when there is no such element or no bus.
        """
        target = self._pipeline.get_by_name(element)
        if target is None:
            log.warning("inject_error: no element named %r", element)
            return False
        error = GLib.Error.new_literal(Gst.StreamError.quark(), text, int(Gst.StreamError.FAILED))
        return bool(target.post_message(Gst.Message.new_error(target, error, "moonhowl fault injection")))

    @property
    def stats(self) -> PipelineStats:
        with self._lock:
            latencies = sorted(self._latencies)
            frames, keyframes, no_stamp = self._frame_index, self._keyframes, self._no_stamp
        if not latencies:
            return PipelineStats(frames, keyframes, no_stamp, 0.0, 0.0, 0.0, 0.0, 0.0)
        ms = 1e-6
        return PipelineStats(frames, keyframes, no_stamp,
                             statistics.fmean(latencies) * ms,
                             _percentile(latencies, 0.50) * ms,
                             _percentile(latencies, 0.95) * ms,
                             _percentile(latencies, 0.99) * ms,
                             latencies[-1] * ms)

    # --- callbacks from C ------------------------------------------------------------------------

    def _on_source_buffer(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """Source streaming thread: remembers when each raw frame (by PTS) left the source."""
        try:
            now = time.monotonic_ns()
            buffer = info.get_buffer()
            running = self._running_time(_pad.get_sticky_event(Gst.EventType.SEGMENT, 0), buffer)
            if running is not None:
                with self._lock:
                    stamps = self._capture_stamps
                    stamps[running] = now
                    while len(stamps) > _MAX_PENDING_STAMPS:
                        del stamps[next(iter(stamps))]
                if self._flash and buffer is not None:
                    self._flash_frame(_pad, buffer, running)
        except Exception:
            log.exception("capture-time probe failed")
        return Gst.PadProbeReturn.OK

    def _flash_frame(self, pad: Gst.Pad, buffer: Gst.Buffer, running: int) -> None:
        """Source streaming thread: the white band, drawn into a flash frame on its way out."""
        try:
            caps = pad.get_current_caps()
            if caps is None:
                return
            if self._flash_caps is None or not caps.is_equal(self._flash_caps):
                # On the first frame of new caps, so that the first flash is not the one delayed;
                # the caps are kept even if this fails, so a failure costs once, not every frame.
                self._flash_caps, self._flash_planes = caps, []
                self._flash_planes = _flash_planes(caps)
            duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else self._frame_ns
            if not self._flash_planes or not self._flash_due(running, duration):
                return
            meta = GstVideo.buffer_get_video_meta(buffer)
            if meta is not None:
                offsets, strides = meta.offset, meta.stride
            else:
                info = GstVideo.VideoInfo.new_from_caps(caps)
                offsets, strides = info.offset, info.stride
            if buffer.n_memory() != 1:
                raise RuntimeError(f"a frame in {buffer.n_memory()} memories")  # videotestsrc makes one
            # The memory, not the buffer: the buffer is not writable here (the pad and Python hold
            # references), but its one memory belongs to this frame alone, which nothing
            # downstream has seen yet, so writing it is safe.
            memory = buffer.peek_memory(0)
            ok, mapped = memory.map(Gst.MapFlags.READ | Gst.MapFlags.WRITE)
            if not ok:
                raise RuntimeError("the frame's memory cannot be mapped for writing")
            try:
                data = mapped.data
                for plane in self._flash_planes:
                    offset, stride = offsets[plane.index], strides[plane.index]
                    start, end = offset + plane.first_row * stride, offset + plane.end_row * stride
                    if end > len(data):
                        raise RuntimeError(f"plane {plane.index} ends past the frame")
                    if stride == len(plane.row):
                        data[start:end] = plane.band
                    else:  # padded rows (a video meta's own strides): row by row
                        width = min(stride, len(plane.row))
                        for row in range(start, end, stride):
                            data[row:row + width] = plane.row[:width]
            finally:
                memory.unmap(mapped)
        except Exception:
            # A flash lost is a test signal lost, not a reason to stop the picture.
            self._flash_errors += 1
            if self._flash_errors <= 3:
                log.exception("drawing the test pattern's flash failed")

    @staticmethod
    def _running_time(segment: Gst.Event | Gst.Segment | None, buffer: Gst.Buffer | None) -> int | None:
        if buffer is None or buffer.pts == Gst.CLOCK_TIME_NONE or segment is None:
            return None
        if isinstance(segment, Gst.Event):
            segment = segment.parse_segment()
        running = segment.to_running_time(Gst.Format.TIME, buffer.pts)
        return None if running == Gst.CLOCK_TIME_NONE else int(running)

    def _take_capture_time(self, pts: int) -> int | None:
        """The stamp for pts (a running time); older stamps go too (the leaky queue dropped
        their frames)."""
        stamps = self._capture_stamps
        found = stamps.pop(pts, None)
        while stamps:
            oldest = next(iter(stamps))
            if oldest > pts:
                break
            del stamps[oldest]
        return found

    def _on_new_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        """Encoder streaming thread: one encoded access unit is ready."""
        self._in_callback.active = True
        try:
            sample = sink.pull_sample()
            if sample is None:  # flushing or EOS
                return Gst.FlowReturn.FLUSHING
            buffer = sample.get_buffer()
            out_ns = time.monotonic_ns()
            data = buffer.extract_dup(0, buffer.get_size())
            is_keyframe = not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)
            running = self._running_time(sample.get_segment(), buffer)
            with self._lock:
                if running is None and self._capture_stamps:
                    # The encoder's timestamp does not map into its segment. No B-frames: frames
                    # leave in the order they came, so the oldest waiting stamp is this frame's.
                    running = next(iter(self._capture_stamps))
                if running is None:
                    # A frame with no source frame behind it (seen rarely from x265enc under load
                    # after a keyframe request): keep timestamps increasing, one frame on.
                    running = self._last_pts + 1_000_000_000 // self.fps
                pts = self._last_pts = running
                capture_ns = self._take_capture_time(pts)
                if capture_ns is None:
                    # An encoder that rewrites timestamps: report zero encode latency rather
                    # than none, and count it so the stats show it.
                    self._no_stamp += 1
                    capture_ns = out_ns
                else:
                    self._latencies.append(out_ns - capture_ns)
                self._frame_index += 1
                index = self._frame_index
                self._keyframes += int(is_keyframe)
                stopped = self._stopped
            if stopped:
                return Gst.FlowReturn.FLUSHING
            frame = EncodedFrame(data, pts, is_keyframe, capture_ns, index)
            try:
                self._on_frame(frame)
            except Exception:
                # The consumer's bug must not stop the stream: log the first few, then count.
                self._callback_errors += 1
                if self._callback_errors <= 3:
                    log.exception("on_frame failed for frame %d", index)
            return Gst.FlowReturn.OK
        except Exception:
            log.exception("appsink new-sample handler failed")
            return Gst.FlowReturn.ERROR
        finally:
            self._in_callback.active = False
