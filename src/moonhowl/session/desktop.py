"""A session's virtual desktop: its compositor, its apps, and the render loop that feeds the encoder.

Threads: the compositor lives on the asyncio loop; rendering happens on the desktop's own render
thread, which owns the EGL context. Every 1/fps the loop takes an immutable snapshot of the
scene and offers it to the render thread (a one-slot queue: if the renderer is still busy the
tick is skipped rather than queued, so latency never builds up). After rendering, the frame goes
to the pipeline and the loop is told, so it can release buffers and answer frame callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moonhowl.config import AppConfig
from moonhowl.session.apps import AppProcess

if TYPE_CHECKING:
    from moonhowl.wayland.display import Compositor
    from moonhowl.wayland.scene import Scene

log = logging.getLogger(__name__)

# When nothing changed, the last frame is sent again this often: clients keep seeing a live
# stream, and x264 turns an unchanged frame into a few bytes.
IDLE_REPEAT_S = 0.1


def dmabuf_formats() -> list[tuple[int, int]]:
    """(fourcc, modifier) pairs EGL can import, offered to clients through linux-dmabuf."""
    try:
        from moonhowl.render.egl import Egl

        egl = Egl()
        try:
            info = egl.info()
        finally:
            egl.close()
    except Exception as exc:  # no EGL at all: shm only
        log.info("no dma-buf import for clients (%s)", exc)
        return []
    pairs = []
    for name, modifiers in info.dmabuf_formats.items():
        code = int.from_bytes(name.ljust(4).encode("ascii"), "little")
        pairs += [(code, modifier) for modifier, external_only in modifiers if not external_only]
    return pairs


class Desktop:
    def __init__(self, name: str, app: AppConfig, width: int, height: int, fps: int,
                 on_app_exit: Callable[[str], None]) -> None:
        self.name = name
        self.app = app
        self.width, self.height, self.fps = width, height, fps
        self.on_app_exit = on_app_exit
        self.compositor: Compositor | None = None
        self.runtime_dir: Path | None = None
        self.apps: list[AppProcess] = []
        self.renderer_name = ""
        self.frames_rendered = 0
        self.frames_repeated = 0
        self._push: Callable[[bytes], bool] | None = None
        self._queue: queue.Queue[Scene | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._watchers: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self._stopping = False

    async def start(self) -> None:
        """Compositor and apps; the picture starts flowing with attach()."""
        from moonhowl.wayland.display import Compositor

        base = os.environ.get("XDG_RUNTIME_DIR") or None
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=f"moonhowl-{self.name}-", dir=base))
        self.runtime_dir.chmod(0o700)
        formats = await asyncio.to_thread(dmabuf_formats)
        self.compositor = Compositor(self.runtime_dir, self.width, self.height, self.fps, formats)
        socket_name = await self.compositor.start()
        env = {**os.environ, **self.app.env, "WAYLAND_DISPLAY": socket_name,
               "XDG_RUNTIME_DIR": str(self.runtime_dir), "XDG_SESSION_TYPE": "wayland"}
        # The apps belong to this desktop only: no X server, no host session bus leaking in.
        for variable in ("DISPLAY", "WAYLAND_SOCKET"):
            env.pop(variable, None)
        if self.app.command:
            process = AppProcess(f"{self.name} app", self.app.command, env)
            await process.start()
            self.apps.append(process)
            self._watchers.append(asyncio.ensure_future(self._watch(process)))
        log.info("%s: desktop %dx%d@%d on %s", self.name, self.width, self.height, self.fps,
                 self.runtime_dir / socket_name)

    async def _watch(self, process: AppProcess) -> None:
        code = await process.wait()
        if not self._stopping:
            log.info("%s: the app exited (%s)", self.name, code)
            if self.app.exit_ends_session:
                self.on_app_exit(f"the app exited ({code})")

    def attach(self, push: Callable[[bytes], bool]) -> None:
        """Starts rendering into `push` (the pipeline's push_frame) at the desktop's fps."""
        self._push = push
        self._thread = threading.Thread(target=self._render_loop, name=f"{self.name}-render", daemon=True)
        self._thread.start()
        self._next_tick = self._loop.time()
        self._on_tick()

    def _on_tick(self) -> None:
        if self._stopping or self.compositor is None:
            return
        # Only this loop thread puts, so a slot free now is still free at put_nowait. A snapshot
        # holds the clients' buffers until presented, so none is taken while the renderer is busy.
        if not self._queue.full():
            self._queue.put_nowait(self.compositor.snapshot())
        # An absolute schedule: a late tick does not push every later one back.
        self._next_tick = max(self._next_tick + 1 / self.fps, self._loop.time())
        self._tick = self._loop.call_at(self._next_tick, self._on_tick)

    def _render_loop(self) -> None:
        renderer = self._make_renderer()
        last: bytes | None = None
        last_push = 0.0
        while (scene := self._queue.get()) is not None:
            try:
                now = time.monotonic()
                if scene.damaged or last is None:
                    last = renderer.render(scene)
                    self.frames_rendered += 1
                elif now - last_push < IDLE_REPEAT_S:
                    self._presented(scene)
                    continue
                else:
                    self.frames_repeated += 1
                assert self._push is not None
                self._push(last)
                last_push = now
                self._presented(scene)
            except Exception:
                log.exception("%s: rendering a frame failed", self.name)

    def _presented(self, scene: Scene) -> None:
        compositor = self.compositor
        if compositor is not None:
            self._loop.call_soon_threadsafe(compositor.frame_presented, scene, time.monotonic_ns())

    def _make_renderer(self) -> Any:
        """GLES through EGL where it works (llvmpipe or a GPU), else the CPU renderer."""
        try:
            from moonhowl.render.renderer import GlRenderer

            renderer: Any = GlRenderer(self.width, self.height)
            self.renderer_name = "gles"
        except Exception as exc:
            from moonhowl.render.cpu import CpuRenderer

            log.warning("%s: GLES rendering unavailable (%s); rendering on the CPU", self.name, exc)
            renderer = CpuRenderer(self.width, self.height)
            self.renderer_name = "cpu"
        return renderer

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._tick is not None:
            self._tick.cancel()
        for process in self.apps:
            await process.stop()
        for watcher in self._watchers:
            watcher.cancel()
        if self._thread is not None:
            # Unblock the render thread: drain the slot and post the stop marker.
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 5)
        if self.compositor is not None:
            await self.compositor.stop()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("%s: desktop closed (%d frames rendered, %d repeated)", self.name, self.frames_rendered,
                 self.frames_repeated)
