"""moonhowlsrc: caps negotiation, the zero-copy DMA_DRM path end to end, buffer reuse, pacing, fallback.

Downstream is faked with capsfilters/appsinks that advertise chosen caps; the frames come from a
synthetic FrameProducer that writes a known picture (four vertical bars: red, green, blue, white)
into memfd-backed dma-bufs through their mmap, or returns it as bytes for the system path. The
end-to-end tests decode the stream with the client's VideoDecoder and check the bars' colours.
GStreamer GL runs headless on Mesa (llvmpipe) through EGL's surfaceless platform (FACTS §2).
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

os.environ.setdefault("GST_GL_PLATFORM", "egl")
os.environ.setdefault("GST_GL_WINDOW", "surfaceless")

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    gi.require_version("GstVideo", "1.0")
    gi.require_version("GstBase", "1.0")
    gi.require_version("GstAllocators", "1.0")
except (ImportError, ValueError) as exc:
    pytest.skip(f"GStreamer's Python bindings (gi) are not importable here ({exc}); "
                "run inside the runtime: ./moonhowl exec python -m pytest", allow_module_level=True)

from gi.repository import GstAllocators

from moonhowl.media import caps as mcaps
from moonhowl.media import chains
from moonhowl.media.caps import Choice, NoCommonFormat
from moonhowl.media.encoders import ENCODERS, EncoderSpec
from moonhowl.media.glib import Gst, GstApp, init
from moonhowl.media.source import FallbackController, register
from moonhowl.render.allocators import Allocator, MemfdAllocator, OutputBuffer

pytestmark = pytest.mark.integration

W, H, FPS = 320, 240, 30
# What EGL on llvmpipe reports for the renderable formats (FACTS §2: LINEAR only), in its order.
LLVMPIPE_FORMATS = [("AR24", 0), ("AB24", 0), ("XR24", 0), ("XB24", 0)]
NVIDIA_TILED = 0x0300000000606010  # an NVIDIA block-linear modifier (FACTS §3)
BARS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))  # RGB, left to right

init()
register()


def has(*elements: str) -> bool:
    return all(Gst.ElementFactory.find(name) is not None for name in elements)


def x264_spec() -> EncoderSpec:
    return next(s for s in ENCODERS if s.codec == "h264" and s.name == "x264")


def bar_rgb(x: int) -> tuple[int, int, int]:
    return BARS[min(3, x * 4 // W)]


def picture(width: int, height: int, stride: int, bgr_order: bool) -> bytes:
    """The test picture, `stride` bytes a row, 4 bytes a pixel in B,G,R,X (or R,G,B,X) order."""
    row = bytearray(stride)
    for x in range(width):
        r, g, b = bar_rgb(x * W // width)
        row[x * 4:x * 4 + 4] = bytes((b, g, r, 255) if bgr_order else (r, g, b, 255))
    return bytes(row) * height


@dataclass
class Producer:
    """A FrameProducer with a fixed picture; records every buffer it is handed."""

    formats_list: list[tuple[str, int]] = field(default_factory=lambda: list(LLVMPIPE_FORMATS))
    fail_after: int | None = None  # render_into raises from this call on (a zero-copy failure)
    check: Callable[[OutputBuffer], None] | None = None  # called before each render_into
    allocator: Allocator | None = field(default_factory=MemfdAllocator)
    choice: Choice | None = None
    rendered: list[OutputBuffer] = field(default_factory=list)
    byte_frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def formats(self) -> list[tuple[str, int]]:
        return list(self.formats_list)

    def on_negotiated(self, choice: Choice) -> None:
        self.choice = choice

    def _bgr(self) -> bool:
        choice = self.choice
        if choice is None:
            return True
        if choice.kind == "dmabuf":
            return choice.drm_fourcc in ("XR24", "AR24")
        return choice.format == "BGRx"

    def render_into(self, buffer: OutputBuffer) -> None:
        if self.check is not None:
            self.check(buffer)
        with self.lock:
            self.rendered.append(buffer)
            count = len(self.rendered)
        if self.fail_after is not None and count > self.fail_after:
            raise RuntimeError("simulated EGL import failure")
        assert buffer.memory is not None, "memfd buffers have a CPU mapping"
        data = picture(buffer.width, buffer.height, buffer.strides[0], self._bgr())
        buffer.memory[:len(data)] = data  # writes through the mmap into the memfd

    def render_bytes(self) -> bytes:
        with self.lock:
            self.byte_frames += 1
        return picture(W, H, W * 4, self._bgr())


@dataclass
class Run:
    pipeline: Gst.Pipeline
    src: Any
    samples: list[Gst.Sample] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    pts: list[int] = field(default_factory=list)
    durations: set[int] = field(default_factory=set)
    error: tuple[str, str, str] | None = None  # (element, message, debug)

    @property
    def path(self) -> str:
        return str(self.src.get_property("path"))


def start(description: str, producer: Producer, *, keep: bool = True, filter_caps: str | None = None,
          **props: Any) -> Run:
    """moonhowlsrc name=src ... ! description (which ends in an appsink named sink); filter_caps
    go to the element named "filter" (caps strings with quotes do not survive gst-launch syntax)."""
    extra = " ".join(f"{k.replace('_', '-')}={v}" for k, v in props.items())
    pipeline = Gst.parse_launch(f"moonhowlsrc name=src width={W} height={H} fps={FPS} {extra} ! {description}")
    if filter_caps is not None:
        pipeline.get_by_name("filter").set_property("caps", Gst.Caps.from_string(filter_caps))
    src = pipeline.get_by_name("src")
    src.producer = producer
    run = Run(pipeline, src)
    sink = pipeline.get_by_name("sink")
    if sink is not None:
        def on_sample(appsink: GstApp.AppSink) -> Gst.FlowReturn:
            sample = appsink.pull_sample()
            if sample is not None:
                run.arrivals.append(time.monotonic())
                run.pts.append(sample.get_buffer().pts)
                run.durations.add(sample.get_buffer().duration)
                # Keeping a sample keeps its buffer from the swapchain: only short runs keep them.
                if keep:
                    run.samples.append(sample)
            return Gst.FlowReturn.OK

        sink.set_property("emit-signals", True)
        sink.connect("new-sample", on_sample)
    pipeline.set_state(Gst.State.PLAYING)
    return run


def wait(run: Run, timeout: float = 15.0) -> Run:
    """Until EOS or the first error; always leaves the pipeline in NULL."""
    bus = run.pipeline.get_bus()
    message = bus.timed_pop_filtered(int(timeout * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
    if message is not None and message.type == Gst.MessageType.ERROR:
        error, debug = message.parse_error()
        run.error = (message.src.get_name() if message.src else "?", error.message, debug or "")
    run.pipeline.set_state(Gst.State.NULL)
    if message is None:
        raise AssertionError(f"no EOS or error within {timeout} s ({len(run.samples)} samples)")
    return run


def sink_caps(run: Run) -> Gst.Caps:
    assert run.samples, f"no buffer reached the sink (error: {run.error})"
    return run.samples[0].get_caps()


def memory_kind(caps: Gst.Caps) -> str:
    features = caps.get_features(0)
    for feature, kind in (("memory:DMABuf", "dmabuf"), ("memory:GLMemory", "gl")):
        if features.contains(feature):
            return kind
    return "system"


# --- caps.py: pure functions ---------------------------------------------------------------------


def test_source_caps_list_egl_formats_without_external_only_and_invalid_modifiers() -> None:
    egl = {"XR24": [(0x0100000000000002, False), (0, False), (mcaps.DRM_FORMAT_MOD_INVALID, False)],
           "AR24": [(NVIDIA_TILED, True), (0, False)],
           "NV12": [(0, False)]}  # not renderable: left out
    formats = mcaps.egl_formats(egl)
    assert formats == [("XR24", 0x0100000000000002), ("XR24", 0), ("AR24", 0)]
    caps = mcaps.source_caps(formats, 1920, 1080, 60)
    assert caps.get_size() == 3
    with caps.get_structure(0) as s:
        assert list(s.get_value("drm-format")) == ["XR24:0x0100000000000002", "XR24", "AR24"]
        assert (s.get_value("width"), s.get_value("height")) == (1920, 1080)
    assert [memory_kind_at(caps, i) for i in range(3)] == ["dmabuf", "gl", "system"]
    with caps.get_structure(2) as s:
        assert list(s.get_value("format")) == ["BGRx", "RGBx"]


def memory_kind_at(caps: Gst.Caps, index: int) -> str:
    features = caps.get_features(index)
    for feature, kind in (("memory:DMABuf", "dmabuf"), ("memory:GLMemory", "gl")):
        if features.contains(feature):
            return kind
    return "system"


def allowed(downstream: str, formats: list[tuple[str, int]] | None = None) -> Gst.Caps:
    ours = mcaps.source_caps(formats or [("XR24", 0x0100000000000002), ("AR24", NVIDIA_TILED),
                                         ("XR24", 0), ("AR24", 0)], W, H, FPS)
    return ours.intersect(Gst.Caps.from_string(downstream))


@pytest.mark.parametrize(("downstream", "path"), [
    # Everything: the first non-linear modifier EGL listed.
    ("video/x-raw(memory:DMABuf),format=DMA_DRM; video/x-raw(memory:GLMemory); video/x-raw",
     "dmabuf:XR24:0x100000000000002"),
    # A tiled AR24 only: chosen over linear even though it comes later in EGL's list.
    ('video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format={ "AR24:0x0300000000606010", "XR24" }',
     "dmabuf:AR24:0x300000000606010"),
    ("video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format={ AR24, XR24 }", "dmabuf:XR24:0x0"),
    ("video/x-raw(memory:GLMemory),format={ BGRA, RGBA }; video/x-raw,format=BGRx", "gl"),
    ("video/x-raw,format={ I420, RGBx, BGRx }", "system:BGRx"),
    ("video/x-raw,format=RGBx", "system:RGBx"),
])
def test_choose_prefers_tiled_then_linear_then_gl_then_system(downstream: str, path: str) -> None:
    caps = allowed(downstream)
    choice = mcaps.choose(caps, [("XR24", 0x0100000000000002), ("AR24", NVIDIA_TILED), ("XR24", 0), ("AR24", 0)])
    assert choice.path == path
    fixed = mcaps.fixate(caps, choice)
    assert fixed.is_fixed()
    assert mcaps.parse_path(path) == choice


def test_choose_is_deterministic_and_follows_egl_order() -> None:
    down = "video/x-raw(memory:DMABuf),format=DMA_DRM"
    a = mcaps.choose(allowed(down, [("AR24", 0), ("XR24", 0)]), [("AR24", 0), ("XR24", 0)])
    b = mcaps.choose(allowed(down, [("XR24", 0), ("AR24", 0)]), [("XR24", 0), ("AR24", 0)])
    assert (a.path, b.path) == ("dmabuf:AR24:0x0", "dmabuf:XR24:0x0")
    assert all(mcaps.choose(allowed(down, [("AR24", 0), ("XR24", 0)]), [("AR24", 0), ("XR24", 0)]) == a
               for _ in range(5))


def test_choose_with_nothing_in_common_raises() -> None:
    with pytest.raises(NoCommonFormat):
        mcaps.choose(allowed("video/x-raw,format=I420"))


def test_drm_format_strings_match_gstreamer() -> None:
    assert mcaps.drm_format_string("XR24", 0) == "XR24"
    assert mcaps.drm_format_string(0x34325258, 0x0100000000000002) == "XR24:0x0100000000000002"
    assert mcaps.parse_drm_format("AR24:0x0300000000606010") == ("AR24", NVIDIA_TILED)
    assert mcaps.parse_drm_format("nonsense") is None


# --- the element against fake downstream caps --------------------------------------------------


def negotiate(downstream_caps: str, producer: Producer | None = None, frames: int = 3) -> Run:
    run = start("capsfilter name=filter ! appsink name=sink sync=false", producer or Producer(),
                filter_caps=downstream_caps, num_buffers=frames)
    return wait(run)


def test_specific_tiled_modifier_without_overlap_falls_to_the_next_path() -> None:
    # llvmpipe renders LINEAR only: the tiled AR24 downstream wants is not on offer, system is.
    run = negotiate('video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format="AR24:0x0300000000606010"; '
                    "video/x-raw,format=BGRx")
    assert run.error is None
    assert run.path == "system:BGRx"
    assert memory_kind(sink_caps(run)) == "system"


def test_specific_tiled_modifier_is_chosen_when_the_renderer_has_it() -> None:
    # An NVIDIA-like producer lists the tiled modifier: it wins over linear and system memory,
    # and the memfd allocator (linear only) then fails loudly instead of handing out wrong pixels.
    producer = Producer(formats_list=[("AR24", NVIDIA_TILED), ("AR24", 0)])
    run = negotiate('video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format={ "AR24:0x0300000000606010", AR24 }; '
                    "video/x-raw,format=BGRx", producer)
    assert run.path == "dmabuf:AR24:0x300000000606010"
    assert run.error is not None and "cannot allocate dmabuf:AR24:0x300000000606010" in run.error[1]
    assert not producer.rendered


def test_linear_dmabuf_only() -> None:
    producer = Producer()
    run = negotiate("video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=XR24", producer)
    assert run.error is None, run.error
    assert run.path == "dmabuf:XR24:0x0"
    caps = sink_caps(run)
    assert memory_kind(caps) == "dmabuf"
    buffer = run.samples[0].get_buffer()
    memory = buffer.peek_memory(0)
    assert GstAllocators.is_dmabuf_memory(memory)
    fd = GstAllocators.dmabuf_memory_get_fd(memory)
    rendered_inodes = {os.fstat(b.fds[0]).st_ino for b in producer.rendered if not b.released} or None
    # The fd the GstMemory owns is a dup of a swapchain buffer, not the allocator's own fd.
    assert fd not in {b.fds[0] for b in producer.rendered}
    assert rendered_inodes is None or os.fstat(fd).st_ino in rendered_inodes
    from gi.repository import GstVideo

    meta = GstVideo.buffer_get_video_meta(buffer)
    assert meta is not None and meta.stride[0] == producer.rendered[0].strides[0]
    assert (meta.width, meta.height) == (W, H)


def test_gl_only_downstream_is_reached_through_glupload() -> None:
    if not has("glupload"):
        pytest.skip("no GStreamer GL here")
    # Straight into a GL-memory-only consumer: moonhowlsrc does not make GL memory itself ...
    run = negotiate("video/x-raw(memory:GLMemory),format=RGBA")
    assert run.error is not None and "no format in common" in run.error[1]
    # ... glupload wraps its DMA_DRM buffers as GL textures instead (no copy), which is the GL path.
    run = wait(start("glupload ! capsfilter name=filter ! appsink name=sink sync=false", Producer(),
                     filter_caps="video/x-raw(memory:GLMemory)", num_buffers=3))
    assert run.error is None, run.error
    assert run.path.startswith("dmabuf:") and run.path.endswith(":0x0")
    assert memory_kind(sink_caps(run)) == "gl"


def test_system_memory_only() -> None:
    producer = Producer()
    run = negotiate("video/x-raw,format=RGBx", producer)
    assert run.error is None, run.error
    assert run.path == "system:RGBx"
    assert producer.choice is not None and producer.choice.format == "RGBx"
    data = run.samples[0].get_buffer().extract_dup(0, W * 4)
    assert data[:3] == bytes(BARS[0])  # RGBx: red first
    assert producer.byte_frames == 3 and not producer.rendered


def test_no_overlap_is_a_clear_not_negotiated_error() -> None:
    run = negotiate("video/x-raw,format=I420")
    assert run.error is not None
    element, message, debug = run.error
    assert element == "src"
    assert "no format in common with downstream" in message
    assert "DMA_DRM" in debug and "I420" in debug  # both sides are named


def test_allowed_paths_restricts_the_offer() -> None:
    run = wait(start("appsink name=sink sync=false", Producer(), num_buffers=2, allowed_paths="system"))
    assert run.path == "system:BGRx"
    run = wait(start("appsink name=sink sync=false", Producer(), num_buffers=2, allowed_paths="dmabuf:XR24:0x0"))
    assert run.path == "dmabuf:XR24:0x0"


# --- end to end: memfd DMA_DRM -> glupload -> glcolorconvert -> gldownload -> x264 ---------------


def encode(kind: str, producer: Producer, frames: int = 12) -> Run:
    spec = x264_spec()
    fragment = chains.chain_for(kind, spec, kbps=4000)
    assert fragment is not None
    return wait(start(f"{fragment} ! appsink name=sink sync=false", producer, num_buffers=frames))


def decoded_bars(run: Run) -> list[tuple[int, int, int]]:
    from moonhowl.client.decoder import VideoDecoder

    with VideoDecoder("h264", W, H) as decoder:
        for sample in run.samples:
            buffer = sample.get_buffer()
            decoder.decode(buffer.extract_dup(0, buffer.get_size()))
        assert decoder.flush(5.0), "the decoder did not drain"
        assert decoder.errors == 0
        frame = decoder.last_frame()
    assert frame is not None
    width, height, rgb = frame
    assert (width, height) == (W, H)
    y = height // 2
    centres = [int((i + 0.5) * width / 4) for i in range(4)]
    return [tuple(rgb[(y * width + x) * 3:(y * width + x) * 3 + 3]) for x in centres]  # type: ignore[misc]


def assert_bars(colours: list[tuple[int, int, int]]) -> None:
    for got, want in zip(colours, BARS, strict=True):
        assert all(abs(a - b) <= 40 for a, b in zip(got, want, strict=True)), f"{colours} != {BARS}"


@pytest.mark.skipif(not has("glupload", "glcolorconvert", "gldownload", "x264enc", "avdec_h264"),
                    reason="needs GStreamer GL, x264enc and avdec_h264")
def test_dmabuf_glupload_x264_stream_decodes_to_the_rendered_picture() -> None:
    producer = Producer()
    run = encode("dmabuf", producer)
    assert run.error is None, run.error
    assert run.path.startswith("dmabuf:") and run.path.endswith(":0x0")
    assert len(run.samples) == 12
    assert len(producer.rendered) == 12 and producer.byte_frames == 0  # never the readback path
    assert_bars(decoded_bars(run))
    assert chains.copies("dmabuf", x264_spec()) == 1  # gldownload only


@pytest.mark.skipif(not has("x264enc", "avdec_h264"), reason="needs x264enc and avdec_h264")
def test_system_memory_stream_decodes_to_the_same_picture() -> None:
    producer = Producer()
    run = encode("system", producer)
    assert run.error is None, run.error
    assert run.path == "system:BGRx"
    assert_bars(decoded_bars(run))
    assert chains.copies("system", x264_spec()) == 3


# --- buffer reuse ----------------------------------------------------------------------------------


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def test_a_buffer_goes_back_to_the_producer_only_after_downstream_released_it() -> None:
    held: dict[int, int] = {}  # dma-buf inode -> samples downstream still holds on it
    lock = threading.Lock()
    violations: list[int] = []

    def check(buffer: OutputBuffer) -> None:
        with lock:
            if held.get(inode(buffer.fds[0]), 0) > 0:
                violations.append(inode(buffer.fds[0]))

    producer = Producer(check=check)
    pipeline = Gst.parse_launch(f"moonhowlsrc name=src width={W} height={H} fps=100 buffers=3 ! "
                                "appsink name=sink sync=false max-buffers=1 drop=false emit-signals=false")
    src, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
    src.producer = producer
    pipeline.set_state(Gst.State.PLAYING)
    kept: list[Gst.Sample] = []
    try:
        def pull() -> Gst.Sample:
            sample = sink.try_pull_sample(3 * Gst.SECOND)
            assert sample is not None, "no frame came"
            node = inode(GstAllocators.dmabuf_memory_get_fd(sample.get_buffer().peek_memory(0)))
            with lock:
                held[node] = held.get(node, 0) + 1
            return sample

        def drop(sample: Gst.Sample) -> None:
            node = inode(GstAllocators.dmabuf_memory_get_fd(sample.get_buffer().peek_memory(0)))
            with lock:
                held[node] -= 1
            # Our references go before downstream's count drops, as an element releasing it would.

        # Hold every buffer of the swapchain: the source must stop rendering, not reuse one.
        for _ in range(3):
            kept.append(pull())
        time.sleep(0.3)
        rendered_while_all_held = len(producer.rendered)
        time.sleep(0.3)
        assert len(producer.rendered) == rendered_while_all_held, "rendered into a buffer downstream holds"
        assert rendered_while_all_held <= 4  # 3 held + at most one waiting in the appsink queue
        # Release one: exactly that one comes back.
        released = kept.pop(0)
        released_inode = inode(GstAllocators.dmabuf_memory_get_fd(released.get_buffer().peek_memory(0)))
        drop(released)
        del released
        next_sample = pull()
        deadline = time.monotonic() + 2
        while len(producer.rendered) == rendered_while_all_held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inode(producer.rendered[-1].fds[0]) == released_inode
        drop(next_sample)
        del next_sample
        for sample in kept:
            drop(sample)
        kept.clear()
        # Streaming on with a consumer that keeps nothing: buffers cycle, never one in use.
        for _ in range(20):
            drop(pull())
    finally:
        kept.clear()
        pipeline.set_state(Gst.State.NULL)
    assert not violations
    assert src.stats().stalls >= 1


# --- pacing ----------------------------------------------------------------------------------------


def test_frames_are_paced_to_the_session_fps_and_timestamped_with_running_time() -> None:
    frames = 30
    run = wait(start("appsink name=sink sync=false", Producer(), keep=False, num_buffers=frames))
    assert run.error is None, run.error
    pts = run.pts
    assert len(pts) == frames
    assert run.durations == {Gst.SECOND // FPS}
    steps = [b - a for a, b in itertools.pairwise(pts)]
    frame_ns = Gst.SECOND / FPS
    assert abs(statistics.median(steps) - frame_ns) < 0.05 * frame_ns
    assert abs(sum(steps) / len(steps) - frame_ns) < 0.1 * frame_ns  # no drift
    # No burst (a late frame is not caught up with back-to-back frames); slack above for a loaded
    # machine's scheduling delays, which move a capture time but not the slot grid.
    assert all(0.5 * frame_ns < step < 2.5 * frame_ns for step in steps), steps
    wall = run.arrivals[-1] - run.arrivals[0]
    assert abs(wall - (frames - 1) / FPS) < 0.25, wall
    assert pts[0] < 0.2 * Gst.SECOND  # running time, from PLAYING


# --- fallback --------------------------------------------------------------------------------------


def test_fallback_controller_orders_and_skips_failed_paths() -> None:
    caps = allowed("video/x-raw(memory:DMABuf),format=DMA_DRM; video/x-raw(memory:GLMemory); video/x-raw")
    ctrl = FallbackController.from_caps(caps, [("XR24", 0x0100000000000002), ("AR24", NVIDIA_TILED),
                                               ("XR24", 0), ("AR24", 0)])
    # One path per modifier (AR24 linear adds nothing over XR24 linear), then GL, then system.
    assert ctrl.paths == ("dmabuf:XR24:0x100000000000002", "dmabuf:AR24:0x300000000606010",
                          "dmabuf:XR24:0x0", "gl", "system:BGRx")
    assert ctrl.first() == "dmabuf:XR24:0x100000000000002"
    assert ctrl.next_after("dmabuf:XR24:0x100000000000002") == "dmabuf:AR24:0x300000000606010"
    assert ctrl.next_after("dmabuf:AR24:0x300000000606010") == "dmabuf:XR24:0x0"
    assert ctrl.next_after("dmabuf:XR24:0x0") == "gl"
    assert ctrl.next_after("gl") == "system:BGRx"
    assert ctrl.next_after("system:BGRx") is None
    assert ctrl.first() is None and ctrl.remaining() == []
    fresh = FallbackController(["dmabuf:XR24:0x0", "gl", "system:BGRx"])
    assert fresh.next_after("something-else") == "dmabuf:XR24:0x0"  # an unknown failure: from the top
    kinds = FallbackController(["dmabuf", "system"])
    assert kinds.next_after("dmabuf:XR24:0x0") == "system"  # an exact path fails its kind
    assert kinds.remaining() == ["system"]


def test_fallback_controller_from_the_chains_that_run_here() -> None:
    kinds = chains.kinds_for(x264_spec(), lambda name: has(name))
    expected = ["dmabuf", "system"] if has("glupload", "glcolorconvert", "gldownload") else ["system"]
    assert kinds == expected
    assert FallbackController(kinds).first() == expected[0]
    # Without a GPU (llvmpipe), GL conversion runs on the CPU: system memory first, GL as fallback.
    assert chains.kinds_for(x264_spec(), lambda name: has(name), software_gl=True) == expected[::-1]


@pytest.mark.skipif(not has("glupload", "glcolorconvert", "gldownload", "x264enc", "avdec_h264"),
                    reason="needs GStreamer GL, x264enc and avdec_h264")
def test_zero_copy_failure_mid_stream_falls_back_and_frames_keep_coming() -> None:
    """What the session does (issue 5, item 5): on the pipeline's error, rebuild on the next path."""
    from moonhowl.client.decoder import VideoDecoder

    spec = x264_spec()
    ctrl = FallbackController(chains.kinds_for(spec, lambda name: has(name)))
    producer = Producer(fail_after=10)
    received: list[bytes] = []
    timeline: list[tuple[str, float]] = []
    path = ctrl.first()
    with VideoDecoder("h264", W, H) as decoder:
        while path is not None:
            fragment = chains.chain_for(path.split(":")[0], spec, kbps=4000)
            run = start(f"{fragment} ! appsink name=sink sync=false", producer, num_buffers=20, allowed_paths=path)
            wait(run)
            for sample in run.samples:
                buffer = sample.get_buffer()
                received.append(buffer.extract_dup(0, buffer.get_size()))
                decoder.decode(received[-1])
            timeline.append((run.path, run.arrivals[0] if run.arrivals else float("nan")))
            if run.error is None:
                break
            failed_at = time.monotonic()
            assert "simulated EGL import failure" in run.error[1]
            path = ctrl.next_after(path)
        assert decoder.flush(5.0)
        frame = decoder.last_frame()
    assert timeline[0][0].startswith("dmabuf:")
    assert timeline[-1][0] == "system:BGRx"
    assert timeline[-1][1] - failed_at < 1.0  # the first frame of the new path within a second
    assert len(received) >= 10 + 20 - 2  # the zero-copy frames before the failure, then all the rest
    assert frame is not None
    width, height, rgb = frame
    y, x = height // 2, width // 8
    assert all(abs(a - b) <= 40 for a, b in zip(rgb[(y * width + x) * 3:(y * width + x) * 3 + 3], BARS[0], strict=True))
