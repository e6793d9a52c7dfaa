"""Zero-copy vs copy paths: compositor frame -> encoder, at 1080p, 1440p and 4K.

Run inside the runtime: ./moonhowl exec python bench/zero_copy.py [--seconds 4] [--modes 1080p,1440p,4k]
                        [--encoder x264] [--producer renderer|synthetic] [--fps 60]

Section 1, the pipeline (needs GStreamer): for each mode and every memory path that can run here
(media.chains.kinds_for: "system" = render_bytes -> videoconvert -> encoder; "dmabuf" = the
renderer draws into a memfd (GBM where /dev/dri exists) dma-buf -> glupload -> glcolorconvert ->
gldownload -> encoder here, vapostproc/cudaupload chains where VA/NVENC exist):

    moonhowlsrc fps=F allowed-paths=<kind> ! queue (2, leaky) ! <chains.chain_for(kind, spec)> ! fakesink

  fps        encoded frames per second reached (the source asks for --fps)
  CPU%       this process's CPU time over wall time (100% = one core), everything included:
             rendering, conversion, encoding
  ms/frame   CPU ms per encoded frame (fair when a row cannot keep up)
  in p50/p95 latency from the start of rendering a frame (its PTS, a running time) to its arrival
             at the encoder's sink pad: render + copies/conversions + queueing
  out p50    ... to the encoded access unit leaving the encoder
  copies     CPU copies of frame data between compositor and encoder input (chains.copy_steps)
  others%    the rest of the machine's CPU load meanwhile: a high value spoils the row

The frames come from the session's real renderer (render.renderer.GlRenderer, --producer renderer):
one fullscreen XRGB8888 shm client whose content scrolls every frame, so every frame uploads the
client's buffer and composes it, then either renders into the dma-buf (zero-copy path) or reads
the frame back (copy path). --producer synthetic writes the same scrolling picture with memcpy
instead (no EGL needed).

Section 2, the renderer alone (needs EGL only, runs where GStreamer is missing, e.g. the GPU
machine): per mode, ms per frame for render + readback (what the copy path costs the compositor)
against render into a dma-buf (the zero-copy path), when an allocator here gives dma-bufs the
driver can render into.

Rows that cannot run here are printed with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GST_GL_PLATFORM", "egl")  # headless GStreamer GL (FACTS section 2)
os.environ.setdefault("GST_GL_WINDOW", "surfaceless")

MODES = {"1080p": (1920, 1080, 20_000), "1440p": (2560, 1440, 30_000), "4k": (3840, 2160, 50_000)}
WARMUP_S = 1.5
WL_SHM_XRGB8888 = 1

log = logging.getLogger("zero_copy")


# --- the picture: a scrolling client -------------------------------------------------------------


def client_image(width: int, height: int) -> bytearray:
    """A 2x-tall BGRx image: colour bars whose hue drifts per row, so a scroll changes every block.

    Built row by row from a few prepared rows: fast enough in pure Python even at 4K.
    """
    stride = width * 4
    bars = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (230, 230, 230), (30, 160, 200), (200, 40, 200)]
    rows = []
    for shade in range(32):
        row = bytearray(stride)
        for x in range(width):
            b, g, r = bars[(x * len(bars)) // width]
            delta = (shade * 7 + (x // 16) % 8 * 3) % 48
            row[x * 4:x * 4 + 4] = bytes((min(255, b + delta), min(255, g + delta), min(255, r + delta), 255))
        rows.append(bytes(row))
    image = bytearray(stride * height * 2)
    for y in range(height * 2):
        image[y * stride:(y + 1) * stride] = rows[(y // 3) % len(rows)]
    return image


class Scroller:
    """The client's content for frame n: a window into the tall image, 8 rows further each frame."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.image = memoryview(client_image(width, height))
        self.frame = 0

    def next_offset(self) -> int:
        self.frame += 1
        return (self.frame * 8 % self.height) * self.width * 4


class SyntheticProducer:
    """FrameProducer without EGL: the scrolled picture copied into the buffer (one frame write,
    as a GPU render writes every pixel once) or into fresh bytes (as a readback does)."""

    name = "synthetic"

    def __init__(self, width: int, height: int) -> None:
        self.scroller = Scroller(width, height)
        self.size = width * height * 4

    def formats(self) -> list[tuple[str, int]]:
        return [("XR24", 0)]

    def render_into(self, buffer: Any) -> None:
        offset = self.scroller.next_offset()
        stride = buffer.strides[0]
        src, dst, row = self.scroller.image, buffer.memory, self.scroller.width * 4
        if stride == row:
            dst[:self.size] = src[offset:offset + self.size]
        else:
            for y in range(self.scroller.height):
                dst[y * stride:y * stride + row] = src[offset + y * row:offset + (y + 1) * row]

    def render_bytes(self) -> bytearray:
        offset = self.scroller.next_offset()
        return bytearray(self.scroller.image[offset:offset + self.size])

    def close(self) -> None:
        pass


class RendererProducer:
    """FrameProducer on the real GlRenderer: a fullscreen shm client that scrolls every frame.

    The renderer's EGL context belongs to the first thread that renders, so it is created on the
    source's streaming thread at the first frame.
    """

    name = "renderer"

    def __init__(self, width: int, height: int) -> None:
        from moonhowl.render.gl import shared_egl
        from moonhowl.wayland.scene import Drawable, Scene, ShmContent

        self._Drawable, self._Scene, self._ShmContent = Drawable, Scene, ShmContent
        self.width, self.height = width, height
        self.scroller = Scroller(width, height)
        self.renderer: Any = None
        # Fails here, before the pipeline, when there is no EGL. The display is the process's
        # shared one (EGL displays are per-process singletons): never terminate it here.
        self._formats = _renderable(shared_egl())

    def formats(self) -> list[tuple[str, int]]:
        return self._formats

    def _scene(self) -> Any:
        offset = self.scroller.next_offset()
        content = self._ShmContent(self.scroller.image, offset, self.width, self.height, self.width * 4,
                                   WL_SHM_XRGB8888)
        drawable = self._Drawable(content, 0, 0, self.width, self.height, None, ("client", self.scroller.frame), True)
        return self._Scene(self.width, self.height, (drawable,), True, serial=self.scroller.frame)

    def _ensure(self) -> Any:
        if self.renderer is None:
            from moonhowl.render.renderer import GlRenderer

            self.renderer = GlRenderer(self.width, self.height)
        return self.renderer

    def render_into(self, buffer: Any) -> None:
        self._ensure().render_to(self._scene(), buffer)

    def render_bytes(self) -> bytes:
        return self._ensure().render(self._scene())

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def _renderable(egl: Any) -> list[tuple[str, int]]:
    from moonhowl.render.egl import EglError

    try:
        info = egl.info()
    except EglError:
        return [("XR24", 0)]
    try:
        from moonhowl.media.caps import egl_formats, prefer
    except (ImportError, ValueError):  # no GStreamer here: the same filter, inline
        pairs = [(name.strip(), mod) for name, mods in info.dmabuf_formats.items() for mod, ext in mods
                 if name.strip() in ("XR24", "AR24", "XB24", "AB24") and not ext and mod != 0x00FFFFFFFFFFFFFF]
        pairs.sort(key=lambda pair: pair[0] != "XR24")
        return pairs or [("XR24", 0)]
    # XR24 first: the renderer's fast path for an opaque fullscreen client (see caps.prefer).
    return prefer(egl_formats(info.dmabuf_formats)) or [("XR24", 0)]


# --- measurement ---------------------------------------------------------------------------------


def machine_busy_s() -> float:
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    mode: str
    path: str
    fps: float = 0.0
    cpu_pct: float = 0.0
    in_p50: float | None = None
    in_p95: float | None = None
    out_p50: float | None = None
    copies: int | None = None
    others_pct: float = 0.0
    note: str = ""

    def line(self) -> str:
        def ms(v: float | None) -> str:
            return f"{v:7.1f}" if v is not None else f"{'-':>7}"

        if self.note and not self.fps:
            return f"{self.mode:6} {self.path:24} skipped: {self.note}"
        per_frame = 10 * self.cpu_pct / self.fps if self.fps else float("nan")
        copies = str(self.copies) if self.copies is not None else "-"
        return (f"{self.mode:6} {self.path:24} {self.fps:6.1f} {self.cpu_pct:6.0f} {per_frame:8.1f} "
                f"{ms(self.in_p50)} {ms(self.in_p95)} {ms(self.out_p50)} {copies:>6} "
                f"{self.others_pct:7.0f}  {self.note}")


HEADER = (f"{'mode':6} {'path':24} {'fps':>6} {'CPU%':>6} {'ms/frame':>8} {'in p50':>7} {'in p95':>7} "
          f"{'out p50':>7} {'copies':>6} {'others%':>7}  note")


@dataclass
class Probes:
    """Latency from a frame's PTS (running time when rendering began) to two points downstream."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    encoder_in: list[int] = field(default_factory=list)
    encoder_out: list[int] = field(default_factory=list)
    frames_out: int = 0
    recording: bool = False


def _probe(element: Any, pad_name: str, store: Callable[[int], None]) -> None:
    from moonhowl.media.glib import Gst

    pad = element.get_static_pad(pad_name)

    def on_buffer(pad_: Any, info: Any) -> Any:
        try:
            buffer = info.get_buffer()
            clock = element.get_clock()
            event = pad_.get_sticky_event(Gst.EventType.SEGMENT, 0)
            if buffer is None or clock is None or event is None or buffer.pts == Gst.CLOCK_TIME_NONE:
                return Gst.PadProbeReturn.OK
            running = event.parse_segment().to_running_time(Gst.Format.TIME, buffer.pts)
            now = clock.get_time() - element.get_base_time()
            store(now - running)
        except Exception:  # a probe must never raise into the streaming thread
            log.exception("latency probe failed")
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER, on_buffer)


def run_pipeline_row(mode: str, kind: str, spec: Any, make_producer: Callable[[int, int], Any],
                     seconds: float, fps: int) -> Row:
    from moonhowl.media import chains
    from moonhowl.media.glib import Gst

    width, height, kbps = MODES[mode]
    row = Row(mode, kind, copies=chains.copies(kind, spec))
    fragment = chains.chain_for(kind, spec, kbps)
    if fragment is None:
        row.note = f"no {kind} chain for {spec.codec}/{spec.name}"
        return row
    allowed = "system:BGRx" if kind == "system" else kind  # the renderer reads back BGRx
    description = (f"moonhowlsrc name=src width={width} height={height} fps={fps} allowed-paths={allowed} ! "
                   "queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream ! "
                   f"{fragment} ! fakesink name=sink sync=false")
    try:
        producer = make_producer(width, height)
    except Exception as exc:
        row.note = f"producer unavailable: {exc}"
        return row
    pipeline = Gst.parse_launch(description)
    src, encoder = pipeline.get_by_name("src"), pipeline.get_by_name("enc")
    src.producer = producer
    probes = Probes()

    def store_in(ns: int) -> None:
        with probes.lock:
            if probes.recording:
                probes.encoder_in.append(ns)

    def store_out(ns: int) -> None:
        with probes.lock:
            probes.frames_out += 1
            if probes.recording:
                probes.encoder_out.append(ns)

    _probe(encoder, "sink", store_in)
    _probe(encoder, "src", store_out)
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    try:
        error = bus.timed_pop_filtered(int(WARMUP_S * Gst.SECOND), Gst.MessageType.ERROR)
        if error is None:
            with probes.lock:
                probes.recording = True
                f0 = probes.frames_out
            c0, m0, w0 = time.process_time(), machine_busy_s(), time.monotonic()
            error = bus.timed_pop_filtered(int(seconds * Gst.SECOND), Gst.MessageType.ERROR)
            with probes.lock:
                probes.recording = False
                f1 = probes.frames_out
            c1, m1, w1 = time.process_time(), machine_busy_s(), time.monotonic()
    finally:
        pipeline.set_state(Gst.State.NULL)
        producer.close()
    row.path = src.get_property("path") or kind
    if error is not None:
        err, _debug = error.parse_error()
        row.note = f"error from {error.src.get_name() if error.src else '?'}: {err.message}"
        return row
    wall = w1 - w0
    row.fps = (f1 - f0) / wall
    row.cpu_pct = 100.0 * (c1 - c0) / wall
    row.others_pct = max(0.0, 100.0 * (m1 - m0) / wall - row.cpu_pct)
    ms = 1e-6
    if probes.encoder_in:
        ordered = sorted(probes.encoder_in)
        row.in_p50 = statistics.median(ordered) * ms
        row.in_p95 = ordered[int(0.95 * (len(ordered) - 1))] * ms
    if probes.encoder_out:
        row.out_p50 = statistics.median(probes.encoder_out) * ms
    stats = src.stats()
    row.note = f"render {stats.render_ms_mean:.1f} ms, {stats.skipped_slots} slots skipped"
    return row


def pipeline_section(args: argparse.Namespace) -> None:
    print(f"\n## Pipeline: moonhowlsrc -> chain -> {args.encoder}, source at {args.fps} fps, "
          f"producer {args.producer}, {args.seconds:g} s per row")
    try:
        from moonhowl.media import chains
        from moonhowl.media.encoders import ENCODERS
        from moonhowl.media.glib import Gst, init
        from moonhowl.media.source import register
    except (ImportError, ValueError) as exc:
        print(f"skipped: GStreamer/PyGObject unavailable here ({exc})")
        return
    init()
    register()
    spec = next((s for s in ENCODERS if s.name == args.encoder and s.codec == args.codec), None)
    if spec is None:
        print(f"skipped: no encoder row {args.codec}/{args.encoder}")
        return

    def has(name: str) -> bool:
        return Gst.ElementFactory.find(name) is not None

    make: Callable[[int, int], Any] = RendererProducer if args.producer == "renderer" else SyntheticProducer
    print(HEADER)
    for mode in args.modes.split(","):
        for kind in chains.MEMORY_KINDS:
            missing = chains.missing_elements(kind, spec, has)
            if missing is None:
                continue  # no such chain for this encoder: nothing to report
            if kind not in ("dmabuf", "system"):
                print(Row(mode, kind, note="moonhowlsrc does not produce this memory (see media/source.py)").line())
                continue
            if missing:
                print(Row(mode, kind, copies=chains.copies(kind, spec),
                          note=f"missing element(s): {', '.join(missing)}").line())
                continue
            print(run_pipeline_row(mode, kind, spec, make, args.seconds, args.fps).line(), flush=True)
    print("\ncopies per path (chains.COPY_REASONS):")
    for kind in ("dmabuf", "system"):
        steps = chains.copy_steps(kind, spec) if chains.find_chain(kind, spec) else []
        print(f"  {kind}: {len(steps)}" + "".join(f"\n    - {s}: {chains.COPY_REASONS[s]}" for s in steps))


# --- section 2: the renderer alone -----------------------------------------------------------------


def renderer_section(args: argparse.Namespace) -> None:
    print(f"\n## Renderer alone: ms per frame, median of {args.frames} frames")
    try:
        from moonhowl.render.gl import shared_egl

        egl = shared_egl()
        info = egl.info()
        formats = _renderable(egl)
        print(f"EGL {info.platform} platform, {info.vendor} {info.version}; renderable dma-buf formats "
              "(drm-format notation): " + ", ".join(f if m == 0 else f"{f}:0x{m:016x}" for f, m in formats))
    except Exception as exc:
        print(f"skipped: no EGL here ({exc})")
        return
    print(f"{'mode':6} {'render + readback':>18} {'render into dma-buf':>20}  note")
    for mode in args.modes.split(","):
        print(renderer_row(mode, args.frames), flush=True)


def renderer_row(mode: str, frames: int) -> str:
    width, height, _kbps = MODES[mode]
    try:
        from moonhowl.render.allocators import default_allocator
        from moonhowl.render.gl import fourcc

        producer = RendererProducer(width, height)
    except Exception as exc:  # no EGL, no GL: the row says so
        return f"{mode:6} skipped: no EGL renderer here ({exc})"
    into: float | None = None
    try:
        readback = _median_ms(producer.render_bytes, frames)
        try:
            allocator = default_allocator(("gbm", "memfd"))
            fourcc_name, modifier = producer.formats()[0]
            buffer = allocator.allocate(width, height, fourcc(fourcc_name), modifier)
        except Exception as exc:
            return f"{mode:6} {readback:18.2f} {'-':>20}  no dma-buf target: {exc}"
        try:
            into = _median_ms(lambda: producer.render_into(buffer), frames)
        except Exception as exc:
            return f"{mode:6} {readback:18.2f} {'-':>20}  rendering into {fourcc_name}:0x{modifier:x} failed: {exc}"
        finally:
            buffer.release()
        failures = getattr(producer.renderer, "target_failures", {})
        note = (f"the driver cannot render into it, so this is a readback too: {failures}" if failures
                else f"{type(allocator).__name__} {fourcc_name}:0x{modifier:x}")
        return f"{mode:6} {readback:18.2f} {into:20.2f}  {note}"
    finally:
        producer.close()


def _median_ms(fn: Callable[[], Any], frames: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per pipeline row")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--fps", type=int, default=60)
    parser.add_argument("--codec", default="h264")
    parser.add_argument("--encoder", default="x264", help="an EncoderSpec name (media/encoders.py)")
    parser.add_argument("--producer", choices=("renderer", "synthetic"), default="renderer")
    parser.add_argument("--frames", type=int, default=30, help="frames per renderer-alone row")
    parser.add_argument("--sections", default="pipeline,renderer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for mode in args.modes.split(","):
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    print(f"# {platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if "pipeline" in args.sections:
        pipeline_section(args)
    if "renderer" in args.sections:
        renderer_section(args)


if __name__ == "__main__":
    main()
