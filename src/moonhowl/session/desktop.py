"""A session's virtual desktop: its compositor, its apps, and the render thread that draws frames.

Threads: the compositor lives on the asyncio loop; rendering happens on the desktop's own render
thread, which owns the EGL context. Frames are pulled, not pushed: the video source (moonhowlsrc,
paced to the session's fps on a GStreamer streaming thread) calls `render_frame(target)`, which
hands the job to the render thread and waits for it. The render thread asks the loop for an
immutable snapshot of the scene (call_soon_threadsafe + a future), draws it into the target (a
swapchain dma-buf) or reads it back as BGRx bytes, and gives the scene back to the loop
(frame_presented, or discard when drawing failed) without waiting. So the picture is as fresh as
the frame slot, frame callbacks follow the stream's pace, and the loop never blocks on rendering.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moonhowl.config import AppConfig
from moonhowl.session.apps import AppProcess

if TYPE_CHECKING:
    from moonhowl.render.allocators import OutputBuffer
    from moonhowl.wayland.display import Compositor
    from moonhowl.wayland.scene import Scene

log = logging.getLogger(__name__)

# render_frame() gives up after this long: a frame slower than that is a failed frame (the source
# then reports its path as failed and the session falls back), never a stalled encoder thread.
RENDER_TIMEOUT_S = 2.0
# How long the render thread waits for the loop's snapshot; the loop answers in well under a
# millisecond unless it is blocked, and a blocked loop is a bug worth a failed frame and a log line.
SNAPSHOT_TIMEOUT_S = 1.0
# GStreamer GL settings moonhowl uses for itself (media/pipeline.py); the desktop's apps run on
# its Wayland display and must pick their own.
_HOST_ONLY_ENV = ("DISPLAY", "WAYLAND_SOCKET", "GST_GL_PLATFORM", "GST_GL_WINDOW")


class DesktopClosed(RuntimeError):
    """The desktop is not (or no longer) rendering."""


@dataclass
class _Job:
    target: OutputBuffer | None
    future: concurrent.futures.Future[bytes | None]


def dmabuf_formats() -> list[tuple[int, int]]:
    """(fourcc, modifier) pairs EGL can import, offered to clients through linux-dmabuf."""
    try:
        from moonhowl.render.gl import shared_egl

        # The process's shared display, never a private Egl() closed afterwards: EGL hands out
        # one display per platform and device, so eglTerminate here would tear down every
        # session's renderer (seen: the second session in a process fell back to the CPU
        # renderer with "EGL_KHR_surfaceless_context is missing").
        info = shared_egl().info()
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
                 on_app_exit: Callable[[str], None], extra_env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.app = app
        self.width, self.height, self.fps = width, height, fps
        self.on_app_exit = on_app_exit
        self.extra_env = dict(extra_env or {})  # e.g. PULSE_SERVER / PULSE_SINK of the session's sink
        self.compositor: Compositor | None = None
        self.runtime_dir: Path | None = None
        self.apps: list[AppProcess] = []
        # Known once start() returns (the renderer is made on the render thread).
        self.renderer_name = ""
        # The GL implementation runs on the CPU (llvmpipe): GL conversion chains cost CPU there.
        self.software_rendering = False
        # EGL's dma-buf table (fourcc -> [(modifier, external_only)]) for the render target formats;
        # empty when the renderer cannot draw into dma-bufs (the CPU renderer).
        self.egl_dmabuf_formats: dict[str, list[tuple[int, bool]]] = {}
        self.frames_rendered = 0
        self.frames_unchanged = 0  # rendered again although nothing changed (the stream repeats)
        self.render_failures = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._jobs_lock = threading.Lock()  # makes "closed" and "queued" one step for render_frame
        self._closed = True  # until the render thread runs
        self._thread: threading.Thread | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False

    async def start(self) -> None:
        """Compositor, render thread and apps; frames are drawn on demand by render_frame()."""
        from moonhowl.wayland.display import Compositor

        base = os.environ.get("XDG_RUNTIME_DIR") or None
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=f"moonhowl-{self.name}-", dir=base))
        self.runtime_dir.chmod(0o700)
        formats = await asyncio.to_thread(dmabuf_formats)
        self.compositor = Compositor(self.runtime_dir, self.width, self.height, self.fps, formats)
        socket_name = await self.compositor.start()
        # The renderer (and its EGL context) is made on the thread that will use it; waiting for
        # it here means a session whose rendering cannot work fails at launch, not mid-stream.
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._render_loop, args=(ready,), name=f"{self.name}-render",
                                        daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)
        with self._jobs_lock:
            self._closed = self._stopping
        # The apps belong to this desktop only: no X server, no host Wayland socket, none of the
        # host's own GL settings leaking in (an app's configured env may still set them).
        base_env = {k: v for k, v in os.environ.items() if k not in _HOST_ONLY_ENV}
        env = {**base_env, **self.extra_env, **self.app.env, "WAYLAND_DISPLAY": socket_name,
               "XDG_RUNTIME_DIR": str(self.runtime_dir), "XDG_SESSION_TYPE": "wayland"}
        if self.app.command:
            process = AppProcess(f"{self.name} app", self.app.command, env)
            await process.start()
            self.apps.append(process)
            self._watchers.append(asyncio.ensure_future(self._watch(process)))
        log.info("%s: desktop %dx%d@%d on %s, %s renderer", self.name, self.width, self.height, self.fps,
                 self.runtime_dir / socket_name, self.renderer_name)

    async def _watch(self, process: AppProcess) -> None:
        code = await process.wait()
        if not self._stopping:
            log.info("%s: the app exited (%s)", self.name, code)
            if self.app.exit_ends_session:
                self.on_app_exit(f"the app exited ({code})")

    # --- frames (any thread but the loop's and the render thread's) ----------------------------

    def render_frame(self, target: OutputBuffer | None = None, timeout: float = RENDER_TIMEOUT_S) -> bytes | None:
        """Draws the desktop as it is now and waits for it.

        target None: returns the frame as BGRx bytes (width*4 a row). An OutputBuffer: draws into
        it and returns None once the pixels are in its memory (EGL fence). Raises what rendering
        raised, DesktopClosed, TimeoutError, or CancelledError when the desktop stops meanwhile.
        Never call it on the loop's thread (the snapshot comes from there) or the render thread.
        """
        if threading.get_ident() == self._loop_thread or threading.current_thread() is self._thread:
            # Either would wait for itself until the timeout: fail at once, loudly.
            raise RuntimeError("render_frame() called on the loop's or the render thread")
        future: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        with self._jobs_lock:
            if self._closed:
                raise DesktopClosed(f"{self.name}: the desktop is not rendering")
            self._jobs.put(_Job(target, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # a job not started yet is skipped; a running one finishes unseen
            raise TimeoutError(f"{self.name}: no frame within {timeout:g} s") from None

    def _render_loop(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            renderer = self._make_renderer()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                self._render_job(renderer, job)
        finally:
            close = getattr(renderer, "close", None)
            if close is not None:
                try:
                    close()  # on this thread: the context is current here
                except Exception:
                    log.exception("%s: closing the renderer failed", self.name)

    def _render_job(self, renderer: Any, job: _Job) -> None:
        future = job.future
        if not future.set_running_or_notify_cancel():
            return  # its caller gave up (timeout, stop) before the job started
        try:
            scene = self._snapshot()
        except BaseException as exc:
            self.render_failures += 1
            future.set_exception(exc)
            return
        try:
            if job.target is None:
                data: bytes | None = renderer.render(scene)
            else:
                render_to = getattr(renderer, "render_to", None)
                if render_to is None:
                    raise DesktopClosed(f"the {self.renderer_name} renderer cannot draw into buffers")
                render_to(scene, job.target)
                data = None
        except BaseException as exc:
            # Not shown: its frame callbacks wait for the next scene rather than being answered.
            self.render_failures += 1
            self._give_back(scene, presented=False)
            future.set_exception(exc)
            return
        if scene.damaged:
            self.frames_rendered += 1
        else:
            self.frames_unchanged += 1
        self._give_back(scene, presented=True)
        future.set_result(data)

    def _snapshot(self) -> Scene:
        """Render thread: the compositor's current scene, taken on the loop."""
        compositor = self.compositor
        if compositor is None:
            raise DesktopClosed(f"{self.name}: no compositor")
        future: concurrent.futures.Future[Scene] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(compositor.snapshot())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(take)
        except RuntimeError as exc:  # the loop is closed: the host is going away
            raise DesktopClosed(f"{self.name}: the event loop is closed") from exc
        try:
            return future.result(SNAPSHOT_TIMEOUT_S)
        except TimeoutError:
            if future.cancel():
                raise TimeoutError(f"{self.name}: the event loop did not answer within "
                                   f"{SNAPSHOT_TIMEOUT_S:g} s") from None
            return future.result()  # it started just now; take() itself is quick

    def _give_back(self, scene: Scene, presented: bool) -> None:
        compositor = self.compositor
        if compositor is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the compositor is gone with it
            if presented:
                self._loop.call_soon_threadsafe(compositor.frame_presented, scene, time.monotonic_ns())
            else:
                self._loop.call_soon_threadsafe(compositor.discard, scene)

    def _make_renderer(self) -> Any:
        """GLES through EGL where it works (llvmpipe or a GPU), else the CPU renderer."""
        try:
            from moonhowl.render.gl import shared_egl
            from moonhowl.render.renderer import GlRenderer
            from moonhowl.wayland.scene import Scene

            renderer: Any = GlRenderer(self.width, self.height)
            # One empty frame now: GL setup problems show at launch rather than mid-stream, and
            # the renderer learns from GL_RENDERER (at its first frame) whether GL runs on the CPU.
            renderer.render(Scene(self.width, self.height, (), True))
            self.renderer_name = "gles"
            self.software_rendering = bool(getattr(renderer, "_software", False))
            try:
                self.egl_dmabuf_formats = shared_egl().info().dmabuf_formats
            except Exception as exc:
                log.info("%s: no dma-buf render targets (%s)", self.name, exc)
        except Exception as exc:
            from moonhowl.render.cpu import CpuRenderer

            log.warning("%s: GLES rendering unavailable (%s); rendering on the CPU", self.name, exc)
            renderer = CpuRenderer(self.width, self.height)
            self.renderer_name = "cpu"
            self.software_rendering = True
        return renderer

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        with self._jobs_lock:
            self._closed = True
            pending: list[_Job] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    job = self._jobs.get_nowait()
                    if job is not None:
                        pending.append(job)
            self._jobs.put(None)
        for job in pending:
            job.future.cancel()  # wakes whoever waits in render_frame
        for process in self.apps:
            await process.stop()
        for watcher in self._watchers:
            watcher.cancel()
        if self._thread is not None:
            # The job in progress (if any) still gets its snapshot: the loop is free while we wait.
            await asyncio.to_thread(self._thread.join, 5)
        if self.compositor is not None:
            await self.compositor.stop()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("%s: desktop closed (%d frames rendered, %d unchanged, %d failed)", self.name,
                 self.frames_rendered, self.frames_unchanged, self.render_failures)
