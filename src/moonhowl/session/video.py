"""A session's video: the source, the encoder chain for its memory, and the runtime fallback.

    desktop:       moonhowlsrc (a DesktopProducer) ! leaky queue ! chains.chain_for(kind, spec) ! appsink
    test pattern:  videotestsrc ! leaky queue ! spec's own fragment ! appsink

Paths. A desktop tries its paths best first. The memory kinds come from chains.kinds_for() (the
chains that can run here, GL-converting chains after system memory when GL is a CPU
implementation such as llvmpipe, where they cost more than the copies they save), or from the
configuration (`stream.video_paths`) or the caller, for tests. Each kind becomes exact source
paths: one per distinct DMA_DRM modifier the renderer can draw into (non-linear first, the
renderer's preferred fourcc for each), and "system:BGRx" (the renderer reads back BGRx, so the
system path never negotiates RGBx). media.source.FallbackController keeps the order and what has
failed. One pipeline gets, as moonhowlsrc's allowed-paths, the run of consecutive remaining
paths of one kind, and moonhowlsrc negotiates the best of them that the chain accepts.

Fallback. Whatever fails while a pipeline runs (allocation, dma-buf import, rendering, a converter
or the encoder) ends up as an ERROR on its bus; VideoPipeline hands it to us on the GLib thread,
and the session's own supervisor thread does the rest, so neither the GLib thread (shared by all
sessions) nor the asyncio loop ever waits for a pipeline to stop: stop the failed pipeline
(bounded), mark its negotiated path failed (the whole kind when it failed before negotiating),
build the next one. The new encoder starts with an IDR, frames keep their running numbering in
Session._on_frame, and timestamps are shifted to continue where the old pipeline stopped, so the
client sees one stream. When no path is left, on_failed(reason) is called once.

Threads: on_frame runs on the encoder's streaming thread, on_failed on the supervisor thread;
start(), stop(), request_keyframe(), stats() and inject_fault() may be called from any thread.
stop() is idempotent and bounded; prefer calling it off the asyncio loop, whose snapshots a
DesktopProducer's in-flight frame may be waiting for (the wait is bounded either way).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moonhowl.media import chains
from moonhowl.media.caps import DRM_FORMAT_MOD_LINEAR, Choice, egl_formats, prefer
from moonhowl.media.encoders import EncoderSpec
from moonhowl.media.glib import Gst, init
from moonhowl.media.pipeline import STOP_TIMEOUT_S, EncodedFrame, PipelineError, VideoPipeline
from moonhowl.media.source import FallbackController, register
from moonhowl.render.allocators import AllocationError, Allocator, OutputBuffer, default_allocator

if TYPE_CHECKING:
    from moonhowl.session.desktop import Desktop

log = logging.getLogger(__name__)

__all__ = ["FAULTS", "DesktopProducer", "Fallback", "InjectedFault", "SessionVideo", "expand_paths"]

TEST_PATTERN = "test-pattern"
# The one system-memory path: the renderer's readback is BGRx (render/renderer.py).
SYSTEM_PATH = "system:BGRx"
# Where inject_fault() can make the current path fail, as a test would want to: the producer's
# next frame ("render"), the next swapchain allocation ("allocate"), the encoder element posting
# an error on the bus ("encoder").
FAULTS = ("render", "allocate", "encoder")


class InjectedFault(RuntimeError):
    """A failure made on purpose by inject_fault()."""


@dataclass
class Fallback:
    path: str  # the path that failed
    reason: str
    next: str | None  # the path tried next (None: none left)
    failed_ns: int  # time.monotonic_ns() of the failure
    switch_ms: float | None = None  # failure -> the first encoded frame of the next path

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Faults:
    """Armed failures: each `check(where)` consumes one (or none, when persistent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, int | None] = {}  # where -> remaining count, None = every time

    def arm(self, where: str, persistent: bool) -> None:
        with self._lock:
            count = self._armed.get(where, 0)
            self._armed[where] = None if persistent or count is None else count + 1

    def check(self, where: str) -> None:
        with self._lock:
            if where not in self._armed:
                return
            count = self._armed[where]
            if count is not None:
                if count <= 1:
                    del self._armed[where]
                else:
                    self._armed[where] = count - 1
        raise InjectedFault(f"injected {where} fault")


class _CheckedAllocator(Allocator):
    """The session's allocator with the "allocate" fault point in front of it."""

    def __init__(self, inner: Allocator, faults: _Faults) -> None:
        self.inner = inner
        self.name = inner.name
        self._faults = faults

    def allocate(self, width: int, height: int, fourcc: int, modifier: int = DRM_FORMAT_MOD_LINEAR) -> OutputBuffer:
        try:
            self._faults.check("allocate")
        except InjectedFault as exc:
            raise AllocationError(str(exc)) from exc
        return self.inner.allocate(width, height, fourcc, modifier)

    def close(self) -> None:
        self.inner.close()


class DesktopProducer:
    """media.source.FrameProducer over a Desktop: each frame is drawn on the desktop's render thread.

    One per pipeline: close() before its pipeline stops turns the frame it may still be asked for
    into a no-op, so a pipeline being torn down never waits for (or takes) a desktop frame.
    """

    def __init__(self, desktop: Desktop, formats: Sequence[tuple[str, int]], allocator: Allocator | None,
                 faults: _Faults) -> None:
        self._desktop = desktop
        self._formats = list(formats)
        # moonhowlsrc allocates its swapchain from this one (source.FrameProducer's `allocator`),
        # so a session keeps one GBM device (or memfd allocator) across pipeline rebuilds.
        self.allocator = allocator
        self._faults = faults
        self._closed = False
        self._frame_size = desktop.width * desktop.height * 4

    def formats(self) -> list[tuple[str, int]]:
        return list(self._formats)

    def on_negotiated(self, choice: Choice) -> None:
        log.debug("%s: moonhowlsrc negotiated %s", self._desktop.name, choice.path)

    def render_into(self, buffer: Any) -> None:
        if self._closed:
            return  # the pipeline is going to NULL: this frame is never seen
        self._faults.check("render")
        self._desktop.render_frame(buffer)

    def render_bytes(self) -> bytes:
        if self._closed:
            return bytes(self._frame_size)
        self._faults.check("render")
        data = self._desktop.render_frame(None)
        if data is None:  # only a target-less render_frame returns bytes; keep mypy and us honest
            raise RuntimeError("the desktop returned no frame")
        return data

    def close(self) -> None:
        self._closed = True


def _kind(path: str) -> str:
    return path.split(":", 1)[0]


def expand_paths(entries: Sequence[str], formats: Sequence[tuple[str, int]]) -> list[str]:
    """Kinds ("dmabuf", "system") become exact source paths; exact paths pass through.

    "dmabuf" gives one path per distinct modifier in `formats` (EGL's render formats, preferred
    fourcc first), non-linear modifiers first as caps.choose() ranks them; a failure is nearly
    always about a modifier or the whole kind (FallbackController.from_choices says why).
    """
    paths: list[str] = []
    for entry in entries:
        if entry == "dmabuf":
            by_modifier: dict[int, str] = {}
            for fourcc, modifier in formats:
                by_modifier.setdefault(modifier, fourcc)
            ordered = sorted(by_modifier.items(), key=lambda item: item[0] == DRM_FORMAT_MOD_LINEAR)
            paths += [Choice("dmabuf", "DMA_DRM", fourcc, modifier).path for modifier, fourcc in ordered]
        elif entry == "system":
            paths.append(SYSTEM_PATH)
        else:
            paths.append(entry)
    return list(dict.fromkeys(paths))


def _has_element(name: str) -> bool:
    return Gst.ElementFactory.find(name) is not None


class SessionVideo:
    def __init__(self, width: int, height: int, fps: int, spec: EncoderSpec, bitrate_kbps: int,
                 on_frame: Callable[[EncodedFrame], None], on_failed: Callable[[str], None],
                 desktop: Desktop | None, name: str, paths: Sequence[str] | None = None,
                 base_time_ns: int | None = None) -> None:
        init()
        self.width, self.height, self.fps = width, height, fps
        self.spec = spec
        self.bitrate_kbps = bitrate_kbps
        self.name = name
        self._base_time_ns = base_time_ns  # the test pattern's, shared with the session's audio
        self._on_frame = on_frame
        self._on_failed = on_failed
        self._desktop = desktop
        self._faults = _Faults()
        self._lock = threading.Lock()  # guards everything below that two threads touch
        self._pipeline: VideoPipeline | None = None
        self._producer: DesktopProducer | None = None
        self._attempt = ""  # the entry the current (or last) pipeline was built for
        self._generation = 0  # bumped for every pipeline; stale callbacks carry an older one
        self._first_frame_seen = True
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._frames = 0
        self._fallbacks: list[Fallback] = []
        self._pending_switch: Fallback | None = None
        self._failed_reason: str | None = None
        self._started = False
        self._stopping = False
        self._events: queue.Queue[tuple[int, str, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last_pipeline: VideoPipeline | None = None  # the one stop() stopped
        self._allocator: Allocator | None = None
        self._allocator_tried = False
        self._formats: list[tuple[str, int]] = []
        if desktop is None:
            self._controller = FallbackController([TEST_PATTERN])
        else:
            register()
            self._formats = prefer(egl_formats(desktop.egl_dmabuf_formats))
            if paths:
                entries = list(paths)
            else:
                produced = ("dmabuf", "system") if self._formats else ("system",)
                entries = chains.kinds_for(spec, _has_element, produced, software_gl=desktop.software_rendering)
            self._controller = FallbackController(expand_paths(entries, self._formats))
        log.info("%s: video paths in order: %s", name, ", ".join(self._controller.paths) or "none")

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Builds the first path's pipeline on the supervisor thread; returns at once."""
        with self._lock:
            if self._started or self._stopping:
                return
            self._started = True
        self._thread = threading.Thread(target=self._supervise, name=f"{self.name}-video", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """The pipeline to NULL and the supervisor gone; idempotent, any thread, bounded by about
        twice `timeout`. True when everything stopped in time."""
        with self._lock:
            first = not self._stopping
            self._stopping = True
            self._generation += 1  # whatever the old pipeline still reports is stale now
            pipeline, producer = self._pipeline, self._producer
            self._pipeline, self._producer = None, None
            if first:
                self._last_pipeline = pipeline
            else:  # a later call waits (bounded) for the first one's state change, like VideoPipeline's
                pipeline = self._last_pipeline
        if first:
            self._events.put(None)
        if producer is not None:
            producer.close()
        ok = pipeline.stop(timeout) if pipeline is not None else True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            ok = ok and not thread.is_alive()
        if first and ok and self._allocator is not None:
            # Only once nothing can allocate from it any more (the supervisor is gone).
            self._allocator.close()
        return ok

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    # --- what a session asks ---------------------------------------------------------------------

    def request_keyframe(self) -> bool:
        with self._lock:
            pipeline = self._pipeline
        return pipeline.request_keyframe() if pipeline is not None else False

    @property
    def path(self) -> str:
        """The path frames take now: "dmabuf:XR24:0x0", "system:BGRx", "test-pattern"; before
        negotiation, the entry being tried; "" before the first pipeline."""
        with self._lock:
            pipeline, attempt = self._pipeline, self._attempt
        if pipeline is None or attempt == TEST_PATTERN:
            return attempt
        negotiated = str(pipeline.source.get_property("path") or "")
        return negotiated or attempt

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(f.path, f.reason) for f in self._fallbacks]

    def stats(self) -> dict[str, Any]:
        path = self.path
        with self._lock:
            pipeline = self._pipeline
            fallbacks = [f.as_dict() for f in self._fallbacks]
            frames, failed = self._frames, self._failed_reason
            order, remaining = list(self._controller.paths), self._controller.remaining()
        encoder = pipeline.stats if pipeline is not None else None
        source: dict[str, Any] | None = None
        if pipeline is not None and hasattr(pipeline.source, "stats"):
            source = dataclasses.asdict(pipeline.source.stats())
        kind = _kind(path)
        copies = chains.copies(kind, self.spec) if kind in chains.MEMORY_KINDS and chains.find_chain(
            kind, self.spec) is not None else None
        return {
            "path": path, "copies": copies, "paths": order, "remaining": remaining, "fallbacks": fallbacks,
            "frames": frames, "failed": failed,
            # The current pipeline's own part of the latency: raw frame out of the source -> appsink.
            "encoder_latency_ms_p50": encoder.latency_p50_ms if encoder else None,
            "encoder_latency_ms_p99": encoder.latency_p99_ms if encoder else None,
            "source": source,
        }

    def inject_fault(self, where: str, persistent: bool = False) -> bool:
        """Test hook: make the current path fail at `where` (one of FAULTS); `persistent` keeps
        failing every later frame or allocation too, on every path. False if nothing was armed."""
        if where == "encoder":
            with self._lock:
                pipeline = self._pipeline
            return pipeline is not None and pipeline.inject_error("enc", "injected encoder fault")
        if where not in FAULTS:
            raise ValueError(f"unknown fault point {where!r} (known: {', '.join(FAULTS)})")
        self._faults.arm(where, persistent)
        return True

    # --- the supervisor thread -------------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            self._launch_from(self._controller.first(), "no video path can run here", None)
            while (event := self._events.get()) is not None:
                generation, reason, failed_ns = event
                with self._lock:
                    current = generation == self._generation and not self._stopping
                if current:
                    self._on_path_failed(reason, failed_ns)
        except Exception:
            log.exception("%s: the video supervisor failed", self.name)
            self._report_failed("the video supervisor failed (see the log)")

    def _on_path_failed(self, reason: str, failed_ns: int) -> None:
        # The negotiated path, or the entry tried when it failed before negotiating (an exact path
        # fails just itself; a kind entry, from the configuration, fails the whole kind).
        failed = self.path
        with self._lock:
            pipeline, producer = self._pipeline, self._producer
            self._pipeline, self._producer = None, None
            self._generation += 1
        if producer is not None:
            producer.close()
        if pipeline is not None:
            pipeline.stop()
        self._fall_back(failed, reason, failed_ns)

    def _fall_back(self, failed: str, reason: str, failed_ns: int) -> None:
        with self._lock:
            next_path = self._controller.next_after(failed)
            record = Fallback(failed, reason, next_path, failed_ns)
            self._fallbacks.append(record)
            tried = ", ".join(dict.fromkeys(f.path for f in self._fallbacks))
        if next_path is None:
            self._report_failed(f"every video path failed ({tried}); the last error: {reason}")
            return
        log.warning("%s: video path %s failed (%s); switching to %s", self.name, failed, reason, next_path)
        self._launch_from(next_path, reason, record)

    def _launch_from(self, path: str | None, reason: str, record: Fallback | None) -> None:
        if path is None:
            self._report_failed(reason)
            return
        try:
            self._launch(path, record)
        except Exception as exc:
            if self._stopping:
                return
            log.debug("%s: building the %s pipeline failed", self.name, path, exc_info=True)
            self._fall_back(path, f"the {path} pipeline cannot start: {exc}", time.monotonic_ns())

    def _launch(self, entry: str, record: Fallback | None) -> None:
        with self._lock:
            if self._stopping:
                return
            self._generation += 1
            generation = self._generation
            self._attempt = entry

        def on_frame(frame: EncodedFrame) -> None:
            self._deliver(generation, frame)

        def on_error(text: str) -> None:
            # GLib thread: stamp the time and hand over; the supervisor rebuilds.
            self._events.put((generation, text, time.monotonic_ns()))

        producer: DesktopProducer | None = None
        if entry == TEST_PATTERN:
            pipeline = VideoPipeline(self.width, self.height, self.fps, self.spec, self.bitrate_kbps,
                                     on_frame, on_error, base_time_ns=self._base_time_ns)
        else:
            assert self._desktop is not None
            kind = _kind(entry)
            chain = chains.chain_for(kind, self.spec, self.bitrate_kbps)
            if chain is None:
                raise PipelineError(f"no {kind} chain leads to {self.spec.codec}/{self.spec.name}")
            allowed = self._run_of(entry)
            producer = DesktopProducer(self._desktop, self._formats, self._session_allocator(kind), self._faults)
            pipeline = VideoPipeline(self.width, self.height, self.fps, self.spec, self.bitrate_kbps, on_frame,
                                     on_error, source_element=(f"moonhowlsrc name=src width={self.width} "
                                                               f"height={self.height} fps={self.fps}"),
                                     chain=chain)
            pipeline.source.producer = producer
            pipeline.source.set_property("allowed-paths", ",".join(allowed))
        with self._lock:
            if self._stopping or generation != self._generation:
                stale = True
            else:
                stale = False
                self._pipeline, self._producer = pipeline, producer
                self._first_frame_seen = False
                self._pending_switch = record
        if stale:
            pipeline.stop()
            return
        try:
            pipeline.start()
        except Exception:
            with self._lock:
                if self._pipeline is pipeline:
                    self._pipeline, self._producer = None, None
                    self._generation += 1  # its on_error may have fired: ignore it
            if producer is not None:
                producer.close()
            pipeline.stop()
            raise
        log.info("%s: video on %s (%s/%s)", self.name, entry, self.spec.codec, self.spec.name)

    def _run_of(self, entry: str) -> list[str]:
        """`entry` and the remaining paths of its kind right after it: moonhowlsrc picks among them."""
        with self._lock:
            remaining = self._controller.remaining()
        start = remaining.index(entry) if entry in remaining else 0
        run: list[str] = []
        for path in remaining[start:]:
            if _kind(path) != _kind(entry):
                break
            run.append(path)
        return run or [entry]

    def _session_allocator(self, kind: str) -> Allocator | None:
        """One allocator per session, made on first use (GBM opens the render node)."""
        if kind != "dmabuf":
            return None
        if not self._allocator_tried:
            self._allocator_tried = True
            try:
                self._allocator = _CheckedAllocator(default_allocator(("gbm", "memfd")), self._faults)
            except AllocationError as exc:
                log.warning("%s: no dma-buf allocator (%s)", self.name, exc)
        if self._allocator is None:
            raise PipelineError("no dma-buf allocator works here")
        return self._allocator

    def _report_failed(self, reason: str) -> None:
        with self._lock:
            if self._failed_reason is not None or self._stopping:
                return
            self._failed_reason = reason
        log.error("%s: no video: %s", self.name, reason)
        try:
            self._on_failed(reason)
        except Exception:
            log.exception("%s: on_failed failed", self.name)

    # --- frames (streaming threads) --------------------------------------------------------------

    def _deliver(self, generation: int, frame: EncodedFrame) -> None:
        switched: Fallback | None = None
        with self._lock:
            if generation != self._generation or self._stopping:
                return  # the last frames of a pipeline being replaced
            if not self._first_frame_seen:
                self._first_frame_seen = True
                # Timestamps go on from where the previous pipeline stopped (running time restarts
                # at 0 with every pipeline); clients pace and order frames by them.
                if self._last_pts is not None:
                    self._pts_offset = self._last_pts + 1_000_000_000 // self.fps - frame.pts_ns
                switched, self._pending_switch = self._pending_switch, None
                if switched is not None:
                    switched.switch_ms = (time.monotonic_ns() - switched.failed_ns) / 1e6
            pts = frame.pts_ns + self._pts_offset
            self._last_pts = pts
            self._frames += 1
        if switched is not None:
            log.info("%s: video now on %s, %.0f ms after %s failed", self.name, self.path, switched.switch_ms,
                     switched.path)
        self._on_frame(dataclasses.replace(frame, pts_ns=pts) if pts != frame.pts_ns else frame)
