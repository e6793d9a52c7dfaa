"""Real Wayland clients against moonhowl's compositor, checked in the rendered pixels.

Each test starts a Compositor at 640x480@30 in a private XDG_RUNTIME_DIR, runs a session-like
frame loop (snapshot -> CpuRenderer -> frame_presented) and a client: weston-simple-shm,
weston-simple-egl (Mesa llvmpipe), foot, a GTK 4 app and a Qt 6 app (tests/apps/), or a raw
Python client speaking the wire protocol to misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from moonhowl.render.cpu import CpuRenderer
from moonhowl.wayland import wire
from moonhowl.wayland.client import WireClient
from moonhowl.wayland.display import Compositor
from moonhowl.wayland.scene import Scene

pytestmark = pytest.mark.integration

WIDTH, HEIGHT, FPS = 640, 480, 30
APPS = Path(__file__).resolve().parents[1] / "apps"
BLACK = (0, 0, 0)


# --- the desktop under test ------------------------------------------------------------------
class Desktop:
    """A compositor with a session-like frame loop rendering every damaged scene on the CPU."""

    def __init__(self, comp: Compositor, runtime: Path, name: str, logs: Path) -> None:
        self.comp, self.runtime, self.name, self.logs = comp, runtime, name, logs
        self.renderer = CpuRenderer(WIDTH, HEIGHT)
        self.frame = bytes(WIDTH * HEIGHT * 4)
        self.scene: Scene | None = None
        self.rendered = 0
        self.procs: list[asyncio.subprocess.Process] = []
        self._task = asyncio.get_running_loop().create_task(self._frames())

    async def _frames(self) -> None:
        while True:
            await asyncio.sleep(1 / FPS)
            if not self.comp.needs_frame:
                continue
            scene = self.comp.snapshot()
            if scene.damaged:
                self.frame = self.renderer.render(scene)
                self.scene = scene
                self.rendered += 1
            self.comp.frame_presented(scene, time.monotonic_ns())

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_SOCKET")}
        env.update(XDG_RUNTIME_DIR=str(self.runtime), WAYLAND_DISPLAY=self.name, GDK_BACKEND="wayland",
                   QT_QPA_PLATFORM="wayland", EGL_PLATFORM="wayland", LIBGL_ALWAYS_SOFTWARE="1", NO_AT_BRIDGE="1")
        env.update(extra)
        return env

    async def spawn(self, *cmd: str, **env: str) -> asyncio.subprocess.Process:
        log = open(self.logs / f"{Path(cmd[0]).name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = await asyncio.create_subprocess_exec(*cmd, env=self.env(**env), stdout=log, stderr=log,
                                                    start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * WIDTH + x) * 4
        b, g, r = self.frame[i:i + 3]
        return r, g, b

    def fraction(self, rgb: tuple[int, int, int], frame: bytes | None = None) -> float:
        """Share of sampled pixels with exactly this colour."""
        frame = self.frame if frame is None else frame
        want = bytes((rgb[2], rgb[1], rgb[0]))
        samples = range(0, len(frame), 4 * 37)
        return sum(frame[i:i + 3] == want for i in samples) / len(samples)

    def colours(self) -> int:
        return len({self.frame[i:i + 3] for i in range(0, len(self.frame), 4 * 37)})

    async def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*.log"))
                pytest.fail(f"timed out waiting for {what}; clients: {len(self.comp.clients)}; logs:\n{logs}")
            await asyncio.sleep(0.05)

    async def keeps_rendering(self, frames: int = 5, timeout: float = 5.0) -> None:
        start, keys = self.rendered, set()

        def advanced() -> bool:
            if self.scene is not None:
                keys.add(tuple(d.buffer_key for d in self.scene.drawables))
            return self.rendered >= start + frames and len(keys) >= 2

        await self.wait_for(f"{frames} more rendered frames with new content", advanced, timeout)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except TimeoutError:
                    os.killpg(proc.pid, 9)
                    await proc.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.comp.stop()


@pytest.fixture
async def desktop(tmp_path: Path) -> AsyncIterator[Desktop]:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    comp = Compositor(runtime, WIDTH, HEIGHT, FPS)
    name = await comp.start()
    d = Desktop(comp, runtime, name, tmp_path)
    yield d
    await d.close()
    assert not (runtime / name).exists(), "the socket is removed on stop"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


# --- real clients ----------------------------------------------------------------------------
async def test_weston_simple_shm_renders(desktop: Desktop) -> None:
    await desktop.spawn(need("weston-simple-shm"))
    await desktop.wait_for("simple-shm's pattern", lambda: desktop.fraction(BLACK) < 0.2 and desktop.colours() > 20)
    scene = desktop.scene
    assert scene is not None and len(scene.drawables) == 1
    d = scene.drawables[0]
    # it honours the fullscreen configure: exactly the output size
    assert (d.x, d.y, d.width, d.height) == (0, 0, WIDTH, HEIGHT)
    await desktop.keeps_rendering()


async def test_weston_simple_egl_renders_through_llvmpipe(desktop: Desktop) -> None:
    await desktop.spawn(need("weston-simple-egl"))
    await desktop.wait_for("the triangle", lambda: desktop.pixel(WIDTH // 2, HEIGHT // 2 + 40) != BLACK)
    assert desktop.pixel(5, 5) == BLACK and desktop.pixel(WIDTH - 5, HEIGHT - 5) == BLACK
    await desktop.keeps_rendering()


async def test_foot_terminal(desktop: Desktop) -> None:
    await desktop.spawn(need("foot"), "-c", "/dev/null", "-o", "colors.background=203040",
                        "sh", "-c", "echo moonhowl; sleep 60")
    await desktop.wait_for("foot's background", lambda: desktop.fraction((0x20, 0x30, 0x40)) > 0.9)
    # the text is drawn in the top left corner
    top_left = [desktop.pixel(x, y) for y in range(2, 14) for x in range(2, 60)]
    assert any(p != (0x20, 0x30, 0x40) for p in top_left)


def _gtk4_available() -> bool:
    return any(Path(d, "Gtk-4.0.typelib").exists() for d in ("/usr/lib/x86_64-linux-gnu/girepository-1.0",
                                                              "/usr/lib/girepository-1.0"))


async def test_gtk4_app(desktop: Desktop) -> None:
    if not _gtk4_available():
        pytest.skip("GTK 4 introspection data (gir1.2-gtk-4.0) is not installed")
    await desktop.spawn(sys.executable, str(APPS / "gtk4_color.py"), "#20a060")
    await desktop.wait_for("the GTK window colour", lambda: desktop.fraction((0x20, 0xA0, 0x60)) > 0.9, 20)


def _qt_wayland_plugin() -> bool:
    dirs = [p for p in os.environ.get("QT_PLUGIN_PATH", "").split(":") if p]
    dirs += ["/usr/lib/x86_64-linux-gnu/qt6/plugins", "/usr/lib/qt6/plugins"]
    names = ("libqwayland-generic.so", "libqwayland.so")
    return any(Path(d, "platforms", n).exists() for d in dirs for n in names)


async def test_qt6_app(desktop: Desktop) -> None:
    try:
        import PyQt6.QtWidgets  # noqa: F401
    except ImportError:
        pytest.skip("PyQt6 is not installed")
    if not _qt_wayland_plugin():
        pytest.skip("Qt 6's wayland platform plugin is missing (Debian package qt6-wayland)")
    await desktop.spawn(sys.executable, str(APPS / "qt6_color.py"), "#c04080")
    await desktop.wait_for("the Qt window colour", lambda: desktop.fraction((0xC0, 0x40, 0x80)) > 0.9, 20)


# --- a raw client that can misbehave ---------------------------------------------------------
@pytest.fixture
def raw_clients(desktop: Desktop) -> Iterator[Callable[[], WireClient]]:
    clients: list[WireClient] = []

    def make() -> WireClient:
        client = WireClient(desktop.comp.socket_path)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


RawClients = Callable[[], WireClient]


async def test_garbage_disconnects_only_the_sender(desktop: Desktop, raw_clients: RawClients) -> None:
    await desktop.spawn(need("weston-simple-shm"))
    await desktop.wait_for("simple-shm", lambda: desktop.colours() > 20)
    bad = raw_clients()
    bad.raw(struct.pack("=II", 1, (4 << 16) | 0) + os.urandom(64))  # size 4: below the header size
    error = await bad.wait(lambda e: e.name == "error")
    assert error.args[1] == 1  # wl_display.error.invalid_method
    await bad.closed()
    await desktop.keeps_rendering()
    assert len(desktop.comp.clients) == 1


@pytest.mark.parametrize("case", ["unknown_object", "bad_opcode", "truncated_args", "buffer_before_ack",
                                  "bad_stride", "bind_too_new", "xdg_surface_on_subsurface", "missing_fd",
                                  "too_many_pools"])
async def test_illegal_requests_get_the_protocol_error(desktop: Desktop, raw_clients: RawClients, case: str) -> None:
    client = raw_clients()
    await client.setup()
    if case == "unknown_object":
        client.raw(struct.pack("=III", 77, (12 << 16) | 0, 0))
        expect = (1, 0)  # wl_display.error.invalid_object
    elif case == "bad_opcode":
        client.raw(struct.pack("=II", 1, (8 << 16) | 9))
        expect = (1, 1)  # invalid_method
    elif case == "truncated_args":  # wl_display.sync without its new_id
        client.raw(struct.pack("=II", 1, (8 << 16) | 0))
        expect = (1, 1)
    elif case == "missing_fd":  # wl_shm.create_pool without the fd in SCM_RIGHTS
        shm = client.singleton("wl_shm")
        client.send(shm, "create_pool", client.new("wl_shm_pool"), 0, 4096)
        expect = (shm, 1)
    elif case == "buffer_before_ack":
        surface, xdg, _, _ = await client.toplevel()
        client.send(surface, "attach", client.shm_buffer(8, 8, (1, 2, 3)), 0, 0)
        client.send(surface, "commit")
        expect = (xdg, 3)  # xdg_surface.error.unconfigured_buffer
    elif case == "bad_stride":
        fd = os.memfd_create("x")
        os.ftruncate(fd, 4096)
        pool = client.new("wl_shm_pool")
        client.send(client.singleton("wl_shm"), "create_pool", pool, fd, 4096, fds=(fd,))
        os.close(fd)
        client.send(pool, "create_buffer", client.new("wl_buffer"), 0, 32, 32, 16, 1)
        expect = (pool, 1)  # wl_shm.error.invalid_stride
    elif case == "too_many_pools":  # each pool keeps an fd open in the compositor: bounded
        for i in range(1, 301):
            fd = os.memfd_create("x")
            os.ftruncate(fd, 4096)
            client.send(client.singleton("wl_shm"), "create_pool", client.new("wl_shm_pool"), fd, 4096, fds=(fd,))
            os.close(fd)
            if i % 50 == 0 and i < 300:
                await client.roundtrip()  # fds in flight are limited by the kernel
        expect = (1, 2)  # wl_display.error.no_memory
    elif case == "bind_too_new":
        name, version = client.globals["wl_seat"]
        client.send(client.registry, "bind", name, "wl_seat", version + 1, client.new("wl_seat"))
        expect = (client.registry, 0)
    else:  # an xdg_surface for a surface that already is a sub-surface
        parent, child = client.surface(), client.surface()
        client.send(client.singleton("wl_subcompositor"), "get_subsurface", client.new("wl_subsurface"), child,
                    parent)
        wm = client.singleton("xdg_wm_base")
        client.send(wm, "get_xdg_surface", client.new("xdg_surface"), child)
        expect = (wm, 0)  # xdg_wm_base.error.role
    error = await client.wait(lambda e: e.name == "error")
    assert (error.args[0], error.args[1]) == expect, error.args[2]
    await client.closed()
    assert not desktop.comp.clients


async def test_unacked_configure_and_unread_events_do_not_stall_output(desktop: Desktop,
                                                                      raw_clients: RawClients) -> None:
    lazy = raw_clients()  # a toplevel that never acks: never mapped, harmless
    await lazy.setup()
    await lazy.toplevel()
    stuck = raw_clients()  # maps, then never reads again: no acks, releases or frame callbacks seen
    await stuck.setup()
    await stuck.map_toplevel((200, 20, 20))
    await desktop.wait_for("the stuck client's colour", lambda: desktop.fraction((200, 20, 20)) == 1.0)
    await desktop.spawn(need("weston-simple-shm"))  # maps on top: the stuck one gets a configure
    await desktop.wait_for("simple-shm on top", lambda: desktop.colours() > 20)
    await desktop.keeps_rendering(frames=10)
    assert len(desktop.comp.clients) == 3


async def test_flooding_client_does_not_starve_others(desktop: Desktop, raw_clients: RawClients) -> None:
    await desktop.spawn(need("weston-simple-shm"))
    await desktop.wait_for("simple-shm", lambda: desktop.colours() > 20)
    flood = raw_clients()
    flood.sock.setblocking(True)
    syncs = b"".join(wire.encode(1, 0, "n", [i])[0] for i in range(2, 2 + 4096))
    stop = time.monotonic() + 2.5

    def flood_until_stopped() -> None:
        with contextlib.suppress(OSError):
            while time.monotonic() < stop:
                flood.sock.sendall(syncs)  # and never reads a single event

    sender = asyncio.get_running_loop().run_in_executor(None, flood_until_stopped)
    await asyncio.sleep(0.3)
    start = desktop.rendered
    await asyncio.sleep(1.0)
    assert desktop.rendered - start >= 15, "simple-shm starved by the flood"
    await sender
