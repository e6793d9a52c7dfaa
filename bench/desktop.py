"""The session desktop's compositor cost per frame, its idle cost, and its frame pacing, with real clients.

Run inside the runtime: ./moonhowl exec python bench/desktop.py [--modes 720p,1080p,4k] [--fps 60]
                        [--seconds 4] [--idle-seconds 5] [--idle-clients foot,gtk4] [--no-encoder]

Everything runs through the session's own code: session.desktop.Desktop (the Compositor on this
asyncio loop, the GlRenderer on the desktop's render thread, the app launched as a session app),
with timing hooks wrapped around Compositor.snapshot / frame_presented / surface_committed and the
renderer's render / render_to. Frames are pulled with Desktop.render_frame() from a thread paced
like moonhowlsrc (media/source.py): one pull per 1/fps slot on absolute deadlines, a slot missed
because a frame was slow is skipped, never caught up with a burst.

(a) busy: weston-simple-shm, fullscreen in our compositor (it honours the fullscreen configure),
    redraws on every frame callback, so every frame uploads a new shm buffer. Per frame:
      snapshot   Compositor.snapshot() on the loop (layout, buffer holds, callbacks collected)
      render     GlRenderer.render() (compose + readback to system memory, the copy path) or
                 render_to() a memfd dma-buf (the zero-copy path's output), render thread
      presented  Compositor.frame_presented() on the loop (frame callbacks, releases)
      total      the three summed per frame; pull: render_frame() as the caller sees it (plus the
                 two thread hops and waiting for the loop)
      CPU/frame  this process's CPU time per frame (llvmpipe's threads and the loop's protocol
                 work included); loop%: the loop thread's CPU (snapshot, presented and every
                 client request); host%: the whole process; client%: weston-simple-shm's own
(b) idle: a client that has drawn once and waits (foot running `sleep`, a GTK 4 window of one
    colour). The same columns while the session keeps pulling frames at fps (as moonhowlsrc
    does), and the process CPU% with nobody pulling at all.
(c) pacing: frame times against 1/fps. "pull" rows: the (a) runs' render_frame completions (the
    compositor alone); "session" rows: a real SessionVideo (moonhowlsrc ! x264 ! appsink, the
    session's path order) on weston-simple-shm, times of rendered frames and of encoded frames
    arriving in on_frame. jitter = p99 of |interval - 1/fps|. cb/s: frame callbacks answered per
    second, commits/s: the client's frames per second.

Percentiles are nearest-rank over every frame of the run (a few hundred): p99 is about the third
worst frame, so read it as "the bad frames", not a precise tail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GST_GL_PLATFORM", "egl")  # headless GStreamer GL (FACTS section 2), for (c)
os.environ.setdefault("GST_GL_WINDOW", "surfaceless")

from moonhowl.config import AppConfig
from moonhowl.render.allocators import MemfdAllocator, OutputBuffer
from moonhowl.render.gl import fourcc
from moonhowl.session.desktop import Desktop

MODES = {"720p": (1280, 720, 10_000), "1080p": (1920, 1080, 20_000), "4k": (3840, 2160, 50_000)}
APPS = Path(__file__).resolve().parents[1] / "tests" / "apps"
# Startup (mapping, first buffers, llvmpipe shader compiles) is not what we measure.
WARMUP_S = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("bench.desktop")


# --- statistics ------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values (printed as '-')."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: nothing measured


def p50_99(values: Sequence[float]) -> str:
    return f"{fmt(pct(values, 50))}/{fmt(pct(values, 99))}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


@dataclass
class Pacing:
    intervals_ms: list[float]
    produced: int
    expected: float

    @classmethod
    def of(cls, times: Sequence[float], seconds: float, fps: int) -> Pacing:
        intervals = [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
        return cls(intervals, len(times), seconds * fps)

    def cells(self, fps: int) -> list[str]:
        period = 1e3 / fps
        iv = self.intervals_ms
        mean = statistics.fmean(iv) if iv else float("nan")
        stdev = statistics.pstdev(iv) if len(iv) > 1 else float("nan")
        jitter = pct([abs(i - period) for i in iv], 99)
        return [f"{self.produced}/{self.expected:.0f}", fmt(mean), fmt(stdev), fmt(jitter),
                fmt(max(iv) if iv else float("nan"))]


# --- timing hooks around the session's own objects ----------------------------------------------------


@dataclass
class Record:
    """Per-frame times keyed by scene serial, filled on the loop and the render thread."""

    snapshot_ms: dict[int, float] = field(default_factory=dict)
    render_ms: dict[int, float] = field(default_factory=dict)
    presented_ms: dict[int, float] = field(default_factory=dict)
    damaged: dict[int, bool] = field(default_factory=dict)
    rendered_at: list[float] = field(default_factory=list)  # monotonic time each render finished
    callbacks: int = 0  # wl_surface.frame callbacks answered
    commits: int = 0  # commits that changed something visible: the client's frames
    drawables: int = 0  # in the latest snapshot

    def frames(self) -> list[int]:
        """Serials seen in all three phases: a frame straddling two measuring windows is left out."""
        return [s for s in self.render_ms if s in self.snapshot_ms and s in self.presented_ms]

    def totals(self) -> list[float]:
        return [self.snapshot_ms[s] + self.render_ms[s] + self.presented_ms[s] for s in self.frames()]


class BenchDesktop(Desktop):
    """The session's Desktop with its renderer's render/render_to timed (on the render thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = Record()
        self.gl_renderer = ""

    def _make_renderer(self) -> Any:
        renderer = super()._make_renderer()
        with contextlib.suppress(Exception):  # only the CPU renderer lacks a GL string
            from moonhowl.render import gl as G

            self.gl_renderer = renderer.gl.string(G.GL_RENDERER)
        for name in ("render", "render_to"):
            inner = getattr(renderer, name, None)
            if inner is not None:
                setattr(renderer, name, self._timed(inner))
        return renderer

    def _timed(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def timed(scene: Any, *args: Any) -> Any:
            start = time.perf_counter()
            result = inner(scene, *args)
            end = time.perf_counter()
            record = self.record  # looked up per frame: a measuring window starts with a new one
            record.render_ms[scene.serial] = (end - start) * 1e3
            record.rendered_at.append(time.monotonic())
            return result

        return timed

    def instrument(self) -> None:
        """Wraps the compositor's per-frame entry points (instance attributes shadow the methods,
        and Desktop looks them up on every frame)."""
        comp = self.compositor
        assert comp is not None
        snapshot, presented, committed = comp.snapshot, comp.frame_presented, comp.surface_committed

        def timed_snapshot() -> Any:
            start = time.perf_counter()
            scene = snapshot()
            record = self.record
            record.snapshot_ms[scene.serial] = (time.perf_counter() - start) * 1e3
            record.damaged[scene.serial] = scene.damaged
            record.drawables = len(scene.drawables)
            return scene

        def timed_presented(scene: Any, time_ns: int) -> None:
            # The compositor's private record is the only place that says how many frame callbacks
            # this frame answers; reading it (not changing it) is fine for a benchmark.
            # Counted before presenting: wl_callback.done destroys the callback.
            pending = comp._records.get(scene.serial)
            answered = sum(1 for c in pending.callbacks if not c.destroyed) if pending is not None else 0
            start = time.perf_counter()
            presented(scene, time_ns)
            record = self.record
            record.presented_ms[scene.serial] = (time.perf_counter() - start) * 1e3
            record.callbacks += answered

        def counted_commit(surface: Any, visible_change: bool) -> None:
            if visible_change:
                self.record.commits += 1
            committed(surface, visible_change)

        setattr(comp, "snapshot", timed_snapshot)  # noqa: B010  # setattr: mypy forbids assigning a method
        setattr(comp, "frame_presented", timed_presented)  # noqa: B010
        setattr(comp, "surface_committed", counted_commit)  # noqa: B010

    def app_pid(self) -> int | None:
        process = self.apps[0].process if self.apps else None
        return process.pid if process is not None and process.returncode is None else None


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of a process (and its waited-for children) from /proc, in seconds."""
    if pid is None:
        return float("nan")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)": the comm may hold spaces
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


@dataclass
class Window:
    """CPU meters over one measuring window: process, loop thread (the caller's) and the client."""

    pid: int | None
    wall: float = field(default_factory=time.monotonic)
    process: float = field(default_factory=time.process_time)
    loop: float = field(default_factory=time.thread_time)
    client: float = 0.0

    def __post_init__(self) -> None:
        self.client = proc_cpu_s(self.pid)

    def close(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        return {"wall": wall, "process_s": time.process_time() - self.process,
                "host%": 100 * (time.process_time() - self.process) / wall,
                "loop%": 100 * (time.thread_time() - self.loop) / wall,
                "client%": 100 * (proc_cpu_s(self.pid) - self.client) / wall}


# --- pulling frames the way moonhowlsrc does ------------------------------------------------------------


def pull_frames(desktop: Desktop, fps: int, seconds: float, target: OutputBuffer | None) -> list[tuple[float, float]]:
    """(start, end) of each render_frame() over `seconds`, one per 1/fps slot (moonhowlsrc's pacing)."""
    period = 1.0 / fps
    pulls = []
    now = time.monotonic()
    stop, slot = now + seconds, now
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        if now >= slot + period:  # slow frame: skip the missed slots like moonhowlsrc, no burst
            slot += (now - slot) // period * period
        if slot > now:
            time.sleep(slot - now)
        start = time.monotonic()
        desktop.render_frame(target)
        pulls.append((start, time.monotonic()))
        slot += period
    return pulls


async def open_desktop(name: str, command: Sequence[str], width: int, height: int, fps: int,
                       env: dict[str, str] | None = None) -> BenchDesktop:
    app = AppConfig(1, name, "desktop", tuple(command), env or {}, False)
    desktop = BenchDesktop(name, app, width, height, fps, on_app_exit=lambda reason: log.warning("%s", reason))
    await desktop.start()
    desktop.instrument()
    return desktop


async def wait_mapped(desktop: BenchDesktop, fps: int, timeout: float, settle: float) -> bool:
    """Pull frames until the client shows and then for `settle` s without damage (for idle clients)
    or just `settle` s (busy ones: settle there is the warm-up). False if it never showed."""
    deadline = time.monotonic() + timeout
    while desktop.record.drawables == 0:
        if time.monotonic() > deadline or not desktop.app_pid():
            return False
        await asyncio.to_thread(pull_frames, desktop, fps, 0.2, None)
    await asyncio.to_thread(pull_frames, desktop, fps, settle, None)
    return True


# --- (a) one fullscreen shm client redrawing every frame ----------------------------------------------


@dataclass
class Run:
    mode: str
    output: str
    record: Record
    pulls: list[tuple[float, float]]
    cpu: dict[str, float]

    def cells(self, changed_only: bool) -> dict[str, str]:
        """The table cells by column name; changed_only: the per-phase costs over the frames that
        showed a new client buffer (damaged), the frames a busy client costs."""
        r, frames = self.record, self.record.frames()
        n, wall = max(len(frames), 1), self.cpu["wall"]
        changed = [s for s in frames if r.damaged.get(s)]
        timed = changed if changed_only else frames
        return {
            "mode": self.mode, "output": self.output, "frames": str(len(frames)),
            "damaged": f"{100 * len(changed) / n:.0f}%", "client fps": fmt(r.commits / wall, 1),
            "snapshot": p50_99([r.snapshot_ms[s] for s in timed]), "render": p50_99([r.render_ms[s] for s in timed]),
            "presented": p50_99([r.presented_ms[s] for s in timed]),
            "total": p50_99([r.snapshot_ms[s] + r.render_ms[s] + r.presented_ms[s] for s in timed]),
            "total, all frames": p50_99(r.totals()), "pull": p50_99([(b - a) * 1e3 for a, b in self.pulls]),
            "CPU ms/frame": fmt(1e3 * self.cpu["process_s"] / n), "loop%": fmt(self.cpu["loop%"], 1),
            "host%": fmt(self.cpu["host%"], 1), "client%": fmt(self.cpu["client%"], 1),
            "cb/s": fmt(r.callbacks / wall, 1),
        }


async def measure(desktop: BenchDesktop, mode: str, output: str, fps: int, seconds: float,
                  target: OutputBuffer | None) -> Run:
    record = desktop.record = Record(drawables=desktop.record.drawables)
    window = Window(desktop.app_pid())
    pulls = await asyncio.to_thread(pull_frames, desktop, fps, seconds, target)
    cpu = window.close()
    desktop.record = Record(drawables=record.drawables)  # frames still in flight land there
    return Run(mode, output, record, pulls, cpu)


async def bench_busy(mode: str, fps: int, seconds: float) -> tuple[list[Run], str, str]:
    width, height, _kbps = MODES[mode]
    desktop = await open_desktop("bench-shm", ["weston-simple-shm"], width, height, fps)
    runs = []
    memfd = MemfdAllocator().allocate(width, height, fourcc("XR24"))
    try:
        if not await wait_mapped(desktop, fps, 15, WARMUP_S):
            raise RuntimeError("weston-simple-shm never showed a frame")
        for output, target in (("render()", None), ("render_to(memfd)", memfd)):
            await asyncio.to_thread(pull_frames, desktop, fps, 0.5, target)  # warm this path's GL objects
            runs.append(await measure(desktop, mode, output, fps, seconds, target))
        return runs, desktop.renderer_name, desktop.gl_renderer
    finally:
        await desktop.stop()
        memfd.release()


# --- (b) an idle desktop --------------------------------------------------------------------------------


IDLE_CLIENTS: dict[str, tuple[list[str], dict[str, str], str]] = {
    # foot with its default configuration never blinks its cursor: it draws once, then waits.
    "foot": (["foot", "-c", "/dev/null", "sleep", "3600"], {}, "foot"),
    "gtk4": ([sys.executable, str(APPS / "gtk4_color.py"), "#2080e0"],
             {"GDK_BACKEND": "wayland", "NO_AT_BRIDGE": "1"}, "gtk4"),
}


def idle_available(name: str) -> str | None:
    """Why this idle client cannot run here, or None."""
    if name == "gtk4":
        try:
            import gi

            gi.require_version("Gtk", "4.0")
        except (ImportError, ValueError) as exc:
            return f"GTK 4 introspection is missing ({exc})"
        return None
    binary = IDLE_CLIENTS[name][0][0]
    return None if shutil.which(binary) else f"{binary} is not installed"


async def bench_idle(mode: str, client: str, fps: int, seconds: float) -> tuple[list[Run], dict[str, float]]:
    width, height, _kbps = MODES[mode]
    command, env, _label = IDLE_CLIENTS[client]
    desktop = await open_desktop(f"bench-{client}", command, width, height, fps, env)
    memfd = MemfdAllocator().allocate(width, height, fourcc("XR24"))
    try:
        # GTK animates its first frames and foot may redraw once after its font loads: let it settle.
        if not await wait_mapped(desktop, fps, 30, 2.0):
            raise RuntimeError(f"{client} never showed a frame")
        runs = []
        for output, target in (("render()", None), ("render_to(memfd)", memfd)):
            await asyncio.to_thread(pull_frames, desktop, fps, 0.5, target)
            runs.append(await measure(desktop, mode, output, fps, seconds, target))
        # Nobody pulling: what the compositor itself costs while its clients sleep.
        window = Window(desktop.app_pid())
        await asyncio.sleep(seconds)
        return runs, window.close()
    finally:
        await desktop.stop()
        memfd.release()


# --- (c) pacing through a real SessionVideo -------------------------------------------------------------


@dataclass
class SessionRun:
    mode: str
    path: str
    rendered: Pacing
    encoded: Pacing
    callbacks_per_s: float
    commits_per_s: float
    skipped_slots: int | None
    cpu: dict[str, float]


async def bench_session(mode: str, fps: int, seconds: float) -> SessionRun:
    from moonhowl.media.encoders import ENCODERS
    from moonhowl.media.pipeline import EncodedFrame
    from moonhowl.session.video import SessionVideo

    width, height, kbps = MODES[mode]
    spec = next(s for s in ENCODERS if s.codec == "h264" and s.name == "x264")
    desktop = await open_desktop("bench-session", ["weston-simple-shm"], width, height, fps)
    arrivals: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def on_frame(_frame: EncodedFrame) -> None:  # the encoder's streaming thread
        with lock:
            arrivals.append(time.monotonic())

    video = SessionVideo(width, height, fps, spec, kbps, on_frame, failures.append, desktop, "bench")
    try:
        video.start()
        deadline = time.monotonic() + 20
        while desktop.record.drawables == 0 or len(arrivals) < 5:
            if time.monotonic() > deadline or failures:
                raise RuntimeError(f"no frames from the session ({failures or 'timeout'})")
            await asyncio.sleep(0.05)
        await asyncio.sleep(WARMUP_S)
        before = video.stats().get("source") or {}
        record = desktop.record = Record(drawables=desktop.record.drawables)
        with lock:
            arrivals.clear()
        window = Window(desktop.app_pid())
        await asyncio.sleep(seconds)
        cpu = window.close()
        after = video.stats().get("source") or {}
        desktop.record = Record(drawables=record.drawables)
        with lock:
            encoded = list(arrivals)
        rendered = list(record.rendered_at)
        skipped = (after["skipped_slots"] - before["skipped_slots"]) if "skipped_slots" in after and before else None
        return SessionRun(mode, video.path, Pacing.of(rendered, cpu["wall"], fps), Pacing.of(encoded, cpu["wall"], fps),
                          record.callbacks / cpu["wall"], record.commits / cpu["wall"], skipped, cpu)
    finally:
        await asyncio.to_thread(video.stop)
        await desktop.stop()


def have_x264() -> str | None:
    try:
        from moonhowl.media.glib import Gst, init

        init()
    except Exception as exc:
        return f"GStreamer is unavailable ({exc})"
    return None if Gst.ElementFactory.find("x264enc") else "x264enc is missing"


# --- the machine ---------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    gpu = "no /dev/dri (no GPU)" if not Path("/dev/dri").exists() else "/dev/dri present"
    return (f"{platform.machine()} {model}, {os.cpu_count()} vCPUs{memory}, {gpu}, "
            f"kernel {platform.release()}, Python {platform.python_version()}")


# --- main ----------------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="720p,1080p,4k", help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--fps", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each busy/pacing run")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="measuring time of each idle run")
    parser.add_argument("--idle-clients", default="foot,gtk4", help="comma-separated: " + ", ".join(IDLE_CLIENTS))
    parser.add_argument("--no-encoder", action="store_true", help="skip (c)'s SessionVideo runs")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    fps = args.fps
    if shutil.which("weston-simple-shm") is None:
        sys.exit("weston-simple-shm is not installed (Debian package weston)")

    busy: list[Run] = []
    renderer = gl = ""
    for mode in modes:
        runs, renderer, gl = await bench_busy(mode, fps, args.seconds)
        busy += runs
    print(f"machine: {machine()}")
    print(f"renderer: {renderer} ({gl}); session {fps} fps; frames pulled like moonhowlsrc, one per 1/fps slot")

    busy_columns = ["mode", "output", "frames", "damaged", "client fps", "snapshot", "render", "presented", "total",
                    "total, all frames", "pull", "CPU ms/frame", "loop%", "host%", "client%"]
    print_table(f"(a) weston-simple-shm fullscreen, redrawing on every frame callback ({args.seconds:g} s each): "
                "ms p50/p99 over frames with a new client buffer; 'total, all frames' and 'pull' over every frame",
                busy_columns, [[r.cells(changed_only=True)[c] for c in busy_columns] for r in busy])

    idle_columns = ["mode", "client", "output", "frames", "damaged", "snapshot", "render", "presented", "total",
                    "pull", "CPU ms/frame", "loop%", "host%", "client%", "cb/s"]
    idle_rows, unpulled_rows = [], []
    for client in [c.strip() for c in args.idle_clients.split(",") if c.strip()]:
        reason = idle_available(client)
        if reason is not None:
            print(f"\n(b) {client}: skipped, {reason}")
            continue
        for mode in modes:
            try:
                runs, quiet = await bench_idle(mode, client, fps, args.idle_seconds)
            except RuntimeError as exc:
                print(f"\n(b) {client} at {mode}: {exc}")
                continue
            idle_rows += [[client if c == "client" else r.cells(changed_only=False)[c] for c in idle_columns]
                          for r in runs]
            unpulled_rows.append([mode, client, fmt(quiet["host%"], 2), fmt(quiet["loop%"], 2),
                                  fmt(quiet["client%"], 2)])
    if idle_rows:
        print_table(f"(b) idle desktop, pulled at {fps} fps: ms per frame, p50/p99, CPU% over "
                    f"{args.idle_seconds:g} s", idle_columns, idle_rows)
        print_table(f"(b) idle desktop, nobody pulling frames: CPU% over {args.idle_seconds:g} s",
                    ["mode", "client", "host%", "loop%", "client%"], unpulled_rows)

    pacing_rows = []
    for run in busy:
        starts_ends = run.pulls
        wall = run.cpu["wall"]
        pacing = Pacing.of([end for _start, end in starts_ends], wall, fps)
        pacing_rows.append([run.mode, f"pull {run.output}", *pacing.cells(fps),
                            fmt(run.record.callbacks / wall, 1), fmt(run.record.commits / wall, 1), "-", "-"])
    reason = "--no-encoder" if args.no_encoder else have_x264()
    if reason is None:
        for mode in modes:
            try:
                s = await bench_session(mode, fps, args.seconds)
            except RuntimeError as exc:
                print(f"\n(c) session at {mode}: {exc}")
                continue
            skipped = "-" if s.skipped_slots is None else str(s.skipped_slots)
            for what, pacing in (("rendered", s.rendered), ("encoded", s.encoded)):
                pacing_rows.append([mode, f"session {s.path}, {what}", *pacing.cells(fps),
                                    fmt(s.callbacks_per_s, 1), fmt(s.commits_per_s, 1), skipped,
                                    fmt(s.cpu["host%"], 0)])
    else:
        print(f"\n(c) SessionVideo runs skipped: {reason}")
    print_table(f"(c) frame pacing at {fps} fps (1/fps = {1e3 / fps:.2f} ms), weston-simple-shm: intervals in ms",
                ["mode", "what is timed", "frames/expected", "mean", "stddev", "jitter p99", "max", "cb/s",
                 "commits/s", "skipped slots", "host%"], pacing_rows)


if __name__ == "__main__":
    asyncio.run(main())
