"""moonhowlsrc: the compositor's frames as a live GStreamer source, zero-copy where downstream allows.

    moonhowlsrc name=src width=1920 height=1080 fps=60 ! <chains.chain_for(kind, spec)> ! appsink

A Python GstPushSrc registered at runtime (`register()`), driven by a FrameProducer set on it
(`src.producer = ...`, a plain Python attribute) before it leaves READY.

Negotiation (do_negotiate / do_fixate): the offer is media.caps.source_caps() of what the producer
can render (`producer.formats()`: EGL's renderable formats and modifiers), intersected with the
peer's caps; media.caps.choose() picks DMA_DRM with a non-linear modifier, then linear DMA_DRM,
then system memory. The chosen path is logged once and readable as the `path` property
("dmabuf:XR24:0x0", "system:BGRx"). Nothing in common posts a STREAM/FORMAT error that names both
sides before BaseSrc's generic not-negotiated one.

Allocation (do_decide_allocation), DMA_DRM path: a swapchain of `buffers` OutputBuffers from the
allocator (render/allocators.py: GBM on a render node, memfd-backed linear buffers where there is
none) in the negotiated format and modifier, each wrapped once into a GstBuffer: one
GstDmaBufAllocator memory per distinct dma-buf (the fd dup'd, so the GstMemory owns its own fd and
outlives the OutputBuffer safely) plus a GstVideoMeta with the per-plane offsets and strides. The
buffers live in a Gst.BufferPool subclass whose only Python vfunc is alloc_buffer (called N times
when the pool is activated); acquire and release stay in C. A pooled buffer goes back to the
pool's free queue when its last reference drops (gst_buffer's dispose hands it to the pool), and
acquire blocks until one is there, so the producer is handed an OutputBuffer again only after
downstream released it (tests/integration/test_source.py holds buffers and checks). What did not
work from Python: a release_buffer or free_buffer override. free_buffer chained up to the default
unrefs the buffer once more than PyGObject expects (GStreamer-CRITICAL "refcount > 0" and heap
corruption at teardown, seen here), and release_buffer would put Python and the GIL on every
release from any streaming thread with the same transfer-full trap. A parent-buffer-meta token
would work too, but costs a new GstBuffer per frame and defeats glupload's per-memory EGLImage
cache; the pool keeps each slot's GstMemory, so glupload imports each dma-buf once.

GL memory: producing GLMemory here needs the downstream GL context (a context query), an
EGLImage per slot made in that context's thread and GstGLMemoryEGL wrapped around it, through
gpointer-typed GstGL calls that PyGObject cannot pass. glupload already does exactly that,
zero-copy, from DMA_DRM caps: the GL path is "moonhowlsrc (DMA_DRM) ! glupload ! <GL consumer>",
so this element never offers GLMemory itself (GL_MEMORY = False); chains.py writes the GL chains
that way.

System memory path: `producer.render_bytes()` (the renderer's readback, BGRx/RGBx as negotiated)
copied into a pooled buffer: the one CPU copy the other paths avoid.

Pacing: each create() waits on the pipeline clock for the next frame slot (1/fps apart, running
time), then renders, so a frame is as fresh as it can be when pushed (Wolf's waylanddisplaysrc
paces create() the same way). A slot missed because rendering or the encoder was slow is skipped,
not caught up with a burst. PTS is the running time when rendering began; duration one frame.

Threads: create, negotiate and decide_allocation run on the source's streaming thread, unlock on
the application's; every vfunc catches, logs and returns a safe value (FACTS section 2: a PushSrc's
create must be `do_gst_push_src_create`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gi

gi.require_version("GstBase", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import GObject, GstAllocators, GstBase  # noqa: E402

from moonhowl.media.caps import (  # noqa: E402
    KINDS,
    SYSTEM_FORMATS,
    Choice,
    NoCommonFormat,
    candidates,
    fixate,
    fourcc_str,
    parse_path,
    source_caps,
)
from moonhowl.media.glib import GLib, Gst, GstVideo, init  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "ELEMENT_NAME",
    "GL_MEMORY",
    "FallbackController",
    "FrameProducer",
    "MoonhowlSrc",
    "SourceStats",
    "register",
]

ELEMENT_NAME = "moonhowlsrc"
# See the module docstring: GL memory reaches the encoder through glupload, not from here.
GL_MEMORY = False
DEFAULT_BUFFERS = 4  # one rendering, two in the leaky queue, one in the converter/encoder
MIN_BUFFERS, MAX_BUFFERS = 2, 16
# Acquiring a free buffer slower than this means downstream held every one: counted as a stall.
_STALL_NS = 2_000_000


@runtime_checkable
class FrameProducer(Protocol):
    """What drives the source: the session's compositor + renderer.

    Called on GStreamer's streaming thread; each call blocks until its work is done (a producer
    whose GL context lives on a render thread hands the job over and waits for it).
    Optional: `on_negotiated(choice: Choice) -> None`, called once per negotiation before the
    first frame (render_bytes learns BGRx/RGBx there), and `allocator`, an Allocator the source
    uses for the swapchain instead of render.allocators.default_allocator().
    """

    def formats(self) -> list[tuple[str, int]]:
        """(fourcc, modifier) the renderer can draw into and EGL import, in EGL's order."""
        ...

    def render_into(self, buffer: Any) -> None:
        """Render the current scene into this OutputBuffer; finished (EGL fence) on return."""
        ...

    def render_bytes(self) -> bytes:
        """The current scene read back into system memory, width*4 bytes a row."""
        ...


@dataclass(frozen=True)
class SourceStats:
    path: str
    frames: int
    skipped_slots: int  # frame slots missed because a frame took longer than 1/fps
    stalls: int  # frames that waited for downstream to release a buffer (DMA_DRM path)
    render_ms_mean: float
    buffers: int


def _clock_id_unref_function() -> Any:
    # gst_clock_id_unref takes its GstClockID (a gpointer) as transfer full, which PyGObject
    # cannot marshal (it warns "marshal_from_py_void: runtime check failed" on every call and the
    # entry may leak): the one call that needs it goes through ctypes.
    lib = ctypes.CDLL(ctypes.util.find_library("gstreamer-1.0") or "libgstreamer-1.0.so.0")
    fn = lib.gst_clock_id_unref
    fn.argtypes, fn.restype = [ctypes.c_void_p], None
    return fn


_clock_id_unref = _clock_id_unref_function()


def _fourcc_code(name: str) -> int:
    return int.from_bytes(name.encode("ascii"), "little")


def _video_format(drm_fourcc: str) -> GstVideo.VideoFormat:
    """The GstVideoFormat of a DRM fourcc for the video meta (XR24 -> BGRx)."""
    fmt = GstVideo.video_dma_drm_fourcc_to_format(_fourcc_code(drm_fourcc))
    if fmt == GstVideo.VideoFormat.UNKNOWN:
        # No GStreamer equivalent: the layout is only described by the DMA_DRM caps.
        return GstVideo.VideoFormat.DMA_DRM
    return fmt


def _dmabuf_size(fd: int) -> int:
    # lseek(SEEK_END) is how a dma-buf tells its size (fstat says 0 for some exporters).
    size = os.lseek(fd, 0, os.SEEK_END)
    os.lseek(fd, 0, os.SEEK_SET)
    return size


class _Swapchain(Gst.BufferPool):  # type: ignore[misc]  # gi classes are Any to mypy
    """N OutputBuffers, each wrapped once as a GstBuffer; see the module docstring."""

    def __init__(self, outputs: Sequence[Any], video_format: GstVideo.VideoFormat) -> None:
        super().__init__()
        self.outputs = list(outputs)
        self._format = video_format
        self._dmabuf_allocator = GstAllocators.DmaBufAllocator.new()
        self._lock = threading.Lock()
        # slot -> (the dup'd fd its GstBuffer's first memory owns, that dma-buf's (st_dev, st_ino))
        self._dups: dict[int, tuple[int, tuple[int, int]]] = {}
        self._by_fd: dict[int, int] = {}  # the first memory's (dup'd) fd -> slot
        sizes = {self._wrap_layout(out)[1] for out in self.outputs}
        if len(sizes) != 1:
            raise ValueError(f"swapchain buffers differ in size: {sorted(sizes)}")
        self.buffer_size = sizes.pop()

    @staticmethod
    def _wrap_layout(out: Any) -> tuple[list[tuple[int, int]], int]:
        """[(fd, memory start)] per distinct dma-buf and the total size, for an OutputBuffer."""
        if not out.fds:
            raise ValueError("the allocator returned a buffer without dma-buf fds")
        memories: list[tuple[int, int]] = []
        seen: dict[tuple[int, int], int] = {}
        total = 0
        for fd in out.fds:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)  # planes of one buffer object share the dma-buf inode
            if key in seen:
                continue
            seen[key] = len(memories)
            memories.append((fd, total))
            total += out.size if len(out.fds) == 1 else _dmabuf_size(fd)
        return memories, total

    def _slot_alive(self, slot: int) -> bool:
        """Whether a GstBuffer wrapping this slot still exists (somewhere in the pipeline or free).

        The pool frees a buffer (and so closes the dup'd fd its memory owns) when it comes back
        altered (memory replaced, shared, resized) or on deactivation; alloc_buffer then has to
        re-wrap exactly that slot. Overriding free_buffer to learn which one would be simpler, but
        a Python free_buffer vfunc chained up to the default unrefs the buffer once too often
        (PyGObject already owns a reference to the argument): GStreamer-CRITICALs and heap
        corruption, seen here. So the memory's own fd is the record: still open and still the
        same dma-buf (a reused fd number would name another file) means alive.
        """
        entry = self._dups.get(slot)
        if entry is None:
            return False
        fd, key = entry
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == key

    def do_alloc_buffer(self, _params: Any) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        try:
            with self._lock:
                slot = next((i for i in range(len(self.outputs)) if not self._slot_alive(i)), None)
                if slot is None:
                    log.error("swapchain asked for more than its %d buffers", len(self.outputs))
                    return Gst.FlowReturn.ERROR, None
            out = self.outputs[slot]
            buffer = Gst.Buffer.new()
            starts: dict[tuple[int, int], int] = {}
            first_fd = -1
            memories, _total = self._wrap_layout(out)
            for fd, start in memories:
                dup = os.dup(fd)  # the GstMemory owns (and closes) its own fd
                size = out.size if len(out.fds) == 1 else _dmabuf_size(dup)
                buffer.append_memory(GstAllocators.DmaBufAllocator.alloc(self._dmabuf_allocator, dup, size))
                st = os.fstat(fd)
                starts[(st.st_dev, st.st_ino)] = start
                if first_fd < 0:
                    first_fd = dup
            offsets = [0, 0, 0, 0]
            strides = [0, 0, 0, 0]
            for plane, fd in enumerate(out.fds[:4]):
                st = os.fstat(fd)
                # Video meta offsets count from the start of the whole buffer, across memories.
                offsets[plane] = starts[(st.st_dev, st.st_ino)] + out.offsets[plane]
                strides[plane] = out.strides[plane]
            GstVideo.buffer_add_video_meta_full(buffer, GstVideo.VideoFrameFlags.NONE, self._format,
                                                out.width, out.height, len(out.fds[:4]), offsets, strides)
            with self._lock:
                self._by_fd = {fd: i for fd, i in self._by_fd.items() if i != slot}
                self._by_fd[first_fd] = slot
                st = os.fstat(first_fd)
                self._dups[slot] = (first_fd, (st.st_dev, st.st_ino))
            return Gst.FlowReturn.OK, buffer
        except Exception:
            log.exception("wrapping a swapchain buffer failed")
            return Gst.FlowReturn.ERROR, None

    def output_for(self, buffer: Gst.Buffer) -> Any:
        fd = GstAllocators.dmabuf_memory_get_fd(buffer.peek_memory(0))
        with self._lock:
            return self.outputs[self._by_fd[fd]]

    def release_outputs(self) -> None:
        """Frees the OutputBuffers; GstBuffers still downstream keep their own fds."""
        for out in self.outputs:
            try:
                out.release()
            except Exception:
                log.exception("releasing an output buffer failed")
        self.outputs = []


def _error(domain: Any, code: Any, text: str) -> GLib.Error:
    return GLib.Error.new_literal(domain.quark(), text, int(code))


def _template() -> Gst.Caps:
    return Gst.Caps.from_string(
        "video/x-raw(memory:DMABuf), format=(string)DMA_DRM, width=(int)[1,16384], height=(int)[1,16384], "
        "framerate=(fraction)[1/1,1000/1]; "
        f"video/x-raw, format=(string){{ {', '.join(SYSTEM_FORMATS)} }}, width=(int)[1,16384], "
        "height=(int)[1,16384], framerate=(fraction)[1/1,1000/1]")


class MoonhowlSrc(GstBase.PushSrc):  # type: ignore[misc]
    __gtype_name__ = "MoonhowlSrc"
    __gstmetadata__ = ("moonhowl compositor source", "Source/Video",
                       "A session's desktop frames, as DMA_DRM dma-bufs or system memory", "moonhowl")

    width = GObject.Property(type=int, default=1280, minimum=1, maximum=16384, nick="width")
    height = GObject.Property(type=int, default=720, minimum=1, maximum=16384, nick="height")
    fps = GObject.Property(type=int, default=60, minimum=1, maximum=1000, nick="frames per second")
    buffers = GObject.Property(type=int, default=DEFAULT_BUFFERS, minimum=MIN_BUFFERS, maximum=MAX_BUFFERS,
                               nick="swapchain buffers (DMA_DRM path)")
    allowed_paths = GObject.Property(type=str, default="", nick="allowed paths",
                                     blurb="comma-separated kinds (dmabuf, system) or exact paths "
                                           "(dmabuf:XR24:0x0); empty allows every path")

    def __init__(self) -> None:
        super().__init__()
        self.set_live(True)
        self.set_format(Gst.Format.TIME)
        self.producer: FrameProducer | None = None
        self.allocator: Any = None  # an Allocator; None: the producer's, else default_allocator()
        self._lock = threading.Lock()
        self._choice: Choice | None = None
        self._logged_path: str | None = None
        self._swapchain: _Swapchain | None = None
        self._system_pool: Gst.BufferPool | None = None
        self._flushing = False
        self._clock_id: int | None = None
        self._next_rt: int | None = None
        self._frames = 0
        self._skipped = 0
        self._stalls = 0
        self._render_ns = 0

    # --- properties ------------------------------------------------------------------------------

    @GObject.Property(type=str, nick="path",  # type: ignore[untyped-decorator]
                      blurb="the negotiated path: dmabuf:FOURCC:0xMOD or system:FORMAT")
    def path(self) -> str:
        choice = self._choice
        return choice.path if choice is not None else ""

    @property
    def choice(self) -> Choice | None:
        return self._choice

    @property
    def frame_ns(self) -> int:
        return int(Gst.SECOND // self.fps)

    def stats(self) -> SourceStats:
        with self._lock:
            frames, skipped, stalls, render_ns = self._frames, self._skipped, self._stalls, self._render_ns
        return SourceStats(self.path, frames, skipped, stalls, render_ns / frames / 1e6 if frames else 0.0,
                           len(self._swapchain.outputs) if self._swapchain is not None else 0)

    def offered_caps(self) -> Gst.Caps:
        """What this source can produce for its mode and producer, restricted by allowed-paths."""
        if self.producer is None:
            return _template()
        kinds = [k for k in KINDS if k != "gl" or GL_MEMORY]
        formats = list(self.producer.formats())
        allowed = self._allowed()
        if allowed:
            kinds = [k for k in kinds if any(a == k or a.startswith(k + ":") for a in allowed)]
            exact = []
            for entry in allowed:
                if entry.startswith("dmabuf:"):
                    try:
                        exact.append(parse_path(entry))
                    except ValueError as exc:
                        log.warning("allowed-paths: %s (ignored)", exc)
            if exact and "dmabuf" not in allowed:
                keep = {(c.drm_fourcc, c.modifier) for c in exact}
                formats = [(fourcc_str(f), m) for f, m in formats if (fourcc_str(f), m) in keep]
        systems = list(SYSTEM_FORMATS)
        exact_sys = [a.split(":", 1)[1] for a in allowed if a.startswith("system:")]
        if exact_sys and "system" not in allowed:
            systems = [s for s in systems if s in exact_sys]
        return source_caps(formats, self.width, self.height, self.fps, kinds=kinds, system_formats=systems)

    def _allowed(self) -> list[str]:
        return [p.strip() for p in (self.allowed_paths or "").split(",") if p.strip()]

    # --- negotiation -----------------------------------------------------------------------------

    def do_get_caps(self, filter_caps: Gst.Caps | None) -> Gst.Caps:
        try:
            caps = self.offered_caps()
            if filter_caps is not None:
                caps = filter_caps.intersect_full(caps, Gst.CapsIntersectMode.FIRST)
            return caps
        except Exception:
            log.exception("building the source caps failed")
            return Gst.Caps.new_empty()

    def do_fixate(self, caps: Gst.Caps) -> Gst.Caps:
        try:
            formats = self.producer.formats() if self.producer is not None else None
            return fixate(caps, candidates(caps, formats)[0])
        except Exception:
            log.exception("fixating %s failed; using GStreamer's default fixation", caps.to_string())
            return caps.fixate()

    def do_negotiate(self) -> bool:
        try:
            if self.producer is None:
                self._post(Gst.MessageType.ERROR, _error(Gst.CoreError, Gst.CoreError.NEGOTIATION,
                                                         "moonhowlsrc has no producer set"), "")
                return False
            ours = self.offered_caps()
            pad = self.get_static_pad("src")
            # Unfiltered, so that a failure can say what downstream does accept.
            peer = pad.peer_query_caps(None)
            allowed = ours.intersect(peer)
            ranked = candidates(allowed, self.producer.formats())
            if not ranked:
                text = "no format in common with downstream"
                debug = f"the source offers {ours.to_string()}; downstream accepts {peer.to_string()}"
                log.error("%s: %s", text, debug)
                self._post(Gst.MessageType.ERROR, _error(Gst.StreamError, Gst.StreamError.FORMAT, text), debug)
                return False
            choice = ranked[0]
            caps = fixate(allowed, choice)
            hook = getattr(self.producer, "on_negotiated", None)
            if hook is not None:
                hook(choice)
            if not self.set_caps(caps):
                log.error("downstream refused the caps it allowed: %s", caps.to_string())
                return False
            self._choice = choice
            if choice.path != self._logged_path:
                self._logged_path = choice.path
                others = ", ".join(c.path for c in ranked[1:]) or "none"
                log.info("moonhowlsrc %dx%d@%d: path %s (also possible: %s)", self.width, self.height,
                         self.fps, choice.path, others)
            return True
        except NoCommonFormat as exc:
            self._post(Gst.MessageType.ERROR, _error(Gst.StreamError, Gst.StreamError.FORMAT, str(exc)), "")
            return False
        except Exception:
            log.exception("negotiation failed")
            return False

    def do_decide_allocation(self, query: Gst.Query) -> bool:
        try:
            choice = self._choice
            caps, _need_pool = query.parse_allocation()
            if choice is None or caps is None:
                log.error("allocation before negotiation")
                return False
            if choice.kind == "dmabuf":
                pool: Gst.BufferPool = self._build_swapchain(choice)
                size, count = self._swapchain.buffer_size, len(self._swapchain.outputs)  # type: ignore[union-attr]
                minimum = maximum = count  # exactly the swapchain: no buffer exists outside it
            else:
                info = GstVideo.VideoInfo.new_from_caps(caps)
                pool = Gst.BufferPool.new()
                size, minimum, maximum = info.size, 2, 0
                self._system_pool = pool
            config = pool.get_config()
            Gst.BufferPool.config_set_params(config, caps, size, minimum, maximum)
            if not pool.set_config(config):
                log.error("the %s buffer pool refused its configuration", choice.path)
                return False
            # Our pool replaces whatever downstream proposed: only ours holds the swapchain.
            if query.get_n_allocation_pools() > 0:
                query.set_nth_allocation_pool(0, pool, size, minimum, maximum)
            else:
                query.add_allocation_pool(pool, size, minimum, maximum)
            return True
        except Exception as exc:
            log.exception("allocation for %s failed", self.path or "?")
            self._post(Gst.MessageType.ERROR, _error(Gst.ResourceError, Gst.ResourceError.NO_SPACE_LEFT,
                                                     f"cannot allocate {self.path} buffers: {exc}"), "")
            return False

    def _build_swapchain(self, choice: Choice) -> _Swapchain:
        self._drop_swapchain()
        allocator = self.allocator or getattr(self.producer, "allocator", None)
        if allocator is None:
            from moonhowl.render.allocators import default_allocator

            allocator = self.allocator = default_allocator(("gbm", "memfd"))
        assert choice.drm_fourcc is not None and choice.modifier is not None
        outputs = []
        try:
            for _ in range(self.buffers):
                outputs.append(allocator.allocate(self.width, self.height, _fourcc_code(choice.drm_fourcc),
                                                  choice.modifier))
            self._swapchain = _Swapchain(outputs, _video_format(choice.drm_fourcc))
        except BaseException:
            for out in outputs:
                out.release()
            raise
        log.debug("swapchain: %d x %s via %s", len(outputs), choice.path, type(allocator).__name__)
        return self._swapchain

    def _drop_swapchain(self) -> None:
        chain, self._swapchain = self._swapchain, None
        if chain is not None:
            chain.set_active(False)
            chain.release_outputs()

    # --- streaming -------------------------------------------------------------------------------

    def do_start(self) -> bool:
        try:
            with self._lock:
                self._next_rt = None
                self._frames = self._skipped = self._stalls = self._render_ns = 0
                self._flushing = False
            if self.producer is None:
                self._post(Gst.MessageType.ERROR, _error(Gst.ResourceError, Gst.ResourceError.SETTINGS,
                                                         "moonhowlsrc needs a producer before it starts"), "")
                return False
            return True
        except Exception:
            log.exception("start failed")
            return False

    def do_stop(self) -> bool:
        try:
            self._drop_swapchain()
            if self._system_pool is not None:
                self._system_pool.set_active(False)
                self._system_pool = None
            return True
        except Exception:
            log.exception("stop failed")
            return True  # nothing a caller could do about it; the state change goes on

    def do_unlock(self) -> bool:
        try:
            with self._lock:
                self._flushing = True
                clock_id = self._clock_id
            if clock_id is not None:
                Gst.Clock.id_unschedule(clock_id)
            if self._swapchain is not None:
                self._swapchain.set_flushing(True)  # wakes a create() waiting for a free buffer
            return True
        except Exception:
            log.exception("unlock failed")
            return True

    def do_unlock_stop(self) -> bool:
        try:
            with self._lock:
                self._flushing = False
            if self._swapchain is not None:
                self._swapchain.set_flushing(False)
            return True
        except Exception:
            log.exception("unlock_stop failed")
            return True

    def do_gst_base_src_query(self, query: Gst.Query) -> bool:  # do_query clashes with Element.query
        try:
            if query.type == Gst.QueryType.LATENCY:
                # Live: a frame is rendered after its slot starts and pushed within one frame.
                query.set_latency(True, self.frame_ns, self.frame_ns)
                return True
            return bool(GstBase.BaseSrc.do_query(self, query))
        except Exception:
            log.exception("query %s failed", query.type)
            return False

    def _wait_for_slot(self) -> Gst.FlowReturn:
        """Sleeps on the pipeline clock until the next frame slot (running time)."""
        clock = self.get_clock()
        if clock is None:
            return Gst.FlowReturn.OK  # no clock (not in a pipeline yet): no pacing possible
        base = self.get_base_time()
        now = clock.get_time() - base
        frame = self.frame_ns
        target = now if self._next_rt is None else self._next_rt
        if now >= target + frame:
            missed = (now - target) // frame
            target += missed * frame
            with self._lock:
                self._skipped += missed
        if target > now:
            clock_id = clock.new_single_shot_id(base + target)
            with self._lock:
                if self._flushing:
                    _clock_id_unref(clock_id)
                    return Gst.FlowReturn.FLUSHING
                self._clock_id = clock_id
            try:
                result, _jitter = Gst.Clock.id_wait(clock_id)
            finally:
                with self._lock:
                    self._clock_id = None
                _clock_id_unref(clock_id)
            if result == Gst.ClockReturn.UNSCHEDULED:
                return Gst.FlowReturn.FLUSHING
        self._next_rt = target + frame
        return Gst.FlowReturn.OK

    def _running_time(self) -> int:
        clock = self.get_clock()
        if clock is None:
            return self._frames * self.frame_ns
        return max(0, int(clock.get_time() - self.get_base_time()))

    def do_gst_push_src_create(self, _buffer: Gst.Buffer | None) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        try:
            if self._flushing:
                return Gst.FlowReturn.FLUSHING, None
            result = self._wait_for_slot()
            if result != Gst.FlowReturn.OK:
                return result, None
            choice, producer = self._choice, self.producer
            if choice is None or producer is None:
                return Gst.FlowReturn.NOT_NEGOTIATED, None
            if choice.kind == "dmabuf":
                result, buffer = self._render_dmabuf(producer)
            else:
                result, buffer = self._render_system(producer)
            if result != Gst.FlowReturn.OK or buffer is None:
                return result, None
            with self._lock:
                buffer.offset = self._frames
                self._frames += 1
            return Gst.FlowReturn.OK, buffer
        except Exception as exc:
            log.exception("moonhowlsrc create failed")
            self._post(Gst.MessageType.ERROR, _error(Gst.StreamError, Gst.StreamError.FAILED,
                                                     f"the {self.path or 'source'} path failed: {exc}"), "")
            return Gst.FlowReturn.ERROR, None

    def _render_dmabuf(self, producer: FrameProducer) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        chain = self._swapchain
        if chain is None:
            return Gst.FlowReturn.NOT_NEGOTIATED, None
        t0 = time.monotonic_ns()
        # Blocks while downstream holds every buffer; unlock() (flush, PAUSED) wakes it.
        result, buffer = chain.acquire_buffer(None)
        if result != Gst.FlowReturn.OK:
            return result, None
        if time.monotonic_ns() - t0 > _STALL_NS:
            with self._lock:
                self._stalls += 1
        pts = self._running_time()
        output = chain.output_for(buffer)
        t1 = time.monotonic_ns()
        try:
            producer.render_into(output)
        except Exception as exc:
            raise RuntimeError(f"rendering into the {self.path} buffer failed: {exc}") from exc
        self._stamp(buffer, pts, time.monotonic_ns() - t1)
        return Gst.FlowReturn.OK, buffer

    def _render_system(self, producer: FrameProducer) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        pool = self._system_pool
        if pool is None:
            return Gst.FlowReturn.NOT_NEGOTIATED, None
        result, buffer = pool.acquire_buffer(None)
        if result != Gst.FlowReturn.OK:
            return result, None
        pts = self._running_time()
        t1 = time.monotonic_ns()
        data = producer.render_bytes()
        size = buffer.get_size()
        if len(data) != size:
            raise RuntimeError(f"render_bytes gave {len(data)} bytes, {self.path} at "
                               f"{self.width}x{self.height} needs {size}")
        with buffer.map(Gst.MapFlags.WRITE) as mapped:
            mapped.data[:] = data  # the system path's own copy (chains.COPY_REASONS["wrap"])
        self._stamp(buffer, pts, time.monotonic_ns() - t1)
        return Gst.FlowReturn.OK, buffer

    def _stamp(self, buffer: Gst.Buffer, pts: int, render_ns: int) -> None:
        buffer.pts = pts
        buffer.dts = Gst.CLOCK_TIME_NONE
        buffer.duration = self.frame_ns
        with self._lock:
            self._render_ns += render_ns

    def _post(self, _type: Gst.MessageType, error: GLib.Error, debug: str) -> None:
        try:
            self.post_message(Gst.Message.new_error(self, error, debug))
        except Exception:
            log.exception("posting an error message failed")


def register() -> bool:
    """Registers the "moonhowlsrc" element factory in this process (idempotent)."""
    init()
    if Gst.ElementFactory.find(ELEMENT_NAME) is not None:
        return True
    MoonhowlSrc.add_pad_template(Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS,
                                                     _template()))
    return bool(Gst.Element.register(None, ELEMENT_NAME, Gst.Rank.NONE, MoonhowlSrc))


# --- fallback ----------------------------------------------------------------------------------


class FallbackController:
    """The paths a session tries, best first, and which one comes after a failure.

    Paths are the source's path strings ("dmabuf:XR24:0x300000000606010", "dmabuf:XR24:0x0",
    "system:BGRx") or whole kinds ("dmabuf", "gl", "system"), which is what moonhowlsrc's
    allowed-paths property takes. Pure: the session owns the pipeline rebuild.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = list(dict.fromkeys(p for p in paths if p))
        self._failed: set[str] = set()

    @classmethod
    def from_choices(cls, choices: Iterable[Choice]) -> FallbackController:
        """One path per distinct modifier (the best format for it), then GL, then one system path.

        A failure is nearly always about the modifier (the allocator cannot make that tiling, the
        encoder cannot import it) or the whole memory kind, so trying every format of a failed
        modifier would only delay the working path.
        """
        paths: list[str] = []
        seen: set[tuple[str, int | None]] = set()
        for choice in choices:
            key = (choice.kind, choice.modifier if choice.kind == "dmabuf" else None)
            if key in seen:
                continue
            seen.add(key)
            paths.append(choice.path)
        return cls(paths)

    @classmethod
    def from_caps(cls, allowed: Gst.Caps, formats: Iterable[tuple[str | int, int]] | None = None) -> FallbackController:
        return cls.from_choices(candidates(allowed, list(formats) if formats is not None else None))

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._paths)

    @property
    def failed(self) -> frozenset[str]:
        return frozenset(self._failed)

    def first(self) -> str | None:
        return next((p for p in self._paths if p not in self._failed), None)

    def remaining(self) -> list[str]:
        return [p for p in self._paths if p not in self._failed]

    def next_after(self, failed_path: str) -> str | None:
        """Records the failure; the next path not yet failed after it (None: nothing left).

        A failed exact path ("dmabuf:XR24:0x0") also fails its kind entry ("dmabuf") and the
        other way round, so a list that mixes both never retries the same thing.
        """
        kind = failed_path.split(":", 1)[0]
        self._failed.add(failed_path)
        if failed_path == kind:
            self._failed.update(p for p in self._paths if p.split(":", 1)[0] == kind)
        elif kind in self._paths:
            self._failed.add(kind)
        start = self._paths.index(failed_path) + 1 if failed_path in self._paths else 0
        for path in self._paths[start:] + self._paths[:start]:
            if path not in self._failed:
                log.warning("path %s failed; falling back to %s", failed_path, path)
                return path
        log.error("path %s failed and no other path is left", failed_path)
        return None
