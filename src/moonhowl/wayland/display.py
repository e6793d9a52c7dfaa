"""`Compositor`: one headless Wayland desktop, the object a streaming session owns.

    comp = Compositor(runtime_dir, 1920, 1080, 60, dmabuf_formats=egl_formats)
    name = await comp.start()                 # WAYLAND_DISPLAY for the session's apps
    every 1/fps:
        if comp.needs_frame:
            scene = comp.snapshot()           # on the asyncio loop
            if scene.damaged: render(scene)   # any thread; the buffers stay valid
            comp.frame_presented(scene, t)    # on the loop: callbacks, feedback, releases
    await comp.stop()

Pacing: wl_surface.frame callbacks and presentation feedback are answered only from
frame_presented(), i.e. at most once per session frame, so clients are throttled to the session's
fps and an idle desktop (no damage, no callbacks: needs_frame False) costs nothing. Every scene
must come back through frame_presented() or discard(); the oldest are discarded automatically
if MAX_OUTSTANDING_SCENES pile up (a session that forgets must not leak client buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moonhowl.wayland import protocols
from moonhowl.wayland.buffer import Buffer
from moonhowl.wayland.compositor import Subcompositor, Surface, WlCompositor
from moonhowl.wayland.data_device import DataDeviceManager, Selection
from moonhowl.wayland.dmabuf import DmabufManager
from moonhowl.wayland.extras import (
    ActivationManager,
    DecorationManager,
    FractionalScaleManager,
    Presentation,
    PresentationFeedback,
    SinglePixelBufferManager,
    Viewporter,
)
from moonhowl.wayland.output import Output, OutputMode, XdgOutputManager
from moonhowl.wayland.pointer_ext import PointerConstraints, RelativePointerManager
from moonhowl.wayland.scene import Drawable, Rect, Scene
from moonhowl.wayland.seat import Seat, WlSeat
from moonhowl.wayland.server import Callback, Client, NewId, Server
from moonhowl.wayland.shm import Shm
from moonhowl.wayland.xdg_shell import XdgPopup, XdgSurface, XdgToplevel, XdgWmBase

log = logging.getLogger(__name__)

MAX_OUTSTANDING_SCENES = 4
# wp_presentation_feedback.kind: presentation happens on the session's frame clock.
PRESENTATION_VSYNC = 0x1


@dataclass
class _FrameRecord:
    buffers: list[Buffer] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    feedbacks: list[PresentationFeedback] = field(default_factory=list)


class Compositor:
    """A headless Wayland desktop of one fixed mode (see the module docstring)."""

    def __init__(self, runtime_dir: Path, width: int, height: int, fps: int,
                 dmabuf_formats: Sequence[tuple[int, int]] = (), main_device: int | None = None) -> None:
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(f"bad mode {width}x{height}@{fps}")
        self.width, self.height, self.fps = width, height, fps
        self.mode = OutputMode(width, height, fps * 1000)
        self.server = Server(Path(runtime_dir))
        self.dmabuf_formats = list(dmabuf_formats)
        self.main_device = main_device
        self.seat = Seat(self)
        self.selection = Selection(self.seat)
        self.toplevels: list[XdgToplevel] = []  # bottom to top
        self.outputs: list[Output] = []
        self._damaged = True
        self._frame_requested = False
        self._layout_cache: list[tuple[Surface, int, int]] | None = None
        self._records: dict[int, _FrameRecord] = {}
        self._carry = _FrameRecord()
        self._scene_serial = 0
        self._msc = 0
        self._updated: asyncio.Event | None = None
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.loop

    @property
    def socket_path(self) -> Path:
        return self.server.socket_path

    @property
    def clients(self) -> list[Client]:
        return self.server.clients

    async def start(self) -> str:
        """Listens on a new wayland-moonhowl-N socket in runtime_dir; returns its name."""
        self._updated = asyncio.Event()
        name = await self.server.start()
        for interface, version, bind in self._globals():
            if not protocols.has_interface(interface):
                continue
            version = min(version, protocols.interface(interface).version)
            self.server.add_global(interface, version, bind)
        self._started = True
        return name

    def _globals(self) -> Iterator[tuple[str, int, Callable[[Client, NewId], Any]]]:
        yield "wl_compositor", 6, lambda c, n: WlCompositor(c, n, self)
        yield "wl_subcompositor", 1, Subcompositor
        yield "wl_shm", 2, Shm
        yield "wl_output", 4, self._bind_output
        yield "xdg_wm_base", 6, lambda c, n: XdgWmBase(c, n, self)
        yield "wl_seat", 9, lambda c, n: WlSeat(c, n, self.seat)
        yield "wl_data_device_manager", 3, lambda c, n: DataDeviceManager(c, n, self.selection)
        if self.dmabuf_formats:
            yield "zwp_linux_dmabuf_v1", 4, lambda c, n: DmabufManager(c, n, self)
        yield "wp_viewporter", 1, Viewporter
        yield "wp_presentation", 2, Presentation
        yield "zxdg_decoration_manager_v1", 1, DecorationManager
        yield "zxdg_output_manager_v1", 3, XdgOutputManager
        yield "zwp_relative_pointer_manager_v1", 1, lambda c, n: RelativePointerManager(c, n, self.seat)
        yield "zwp_pointer_constraints_v1", 1, lambda c, n: PointerConstraints(c, n, self.seat)
        yield "wp_single_pixel_buffer_manager_v1", 1, SinglePixelBufferManager
        yield "wp_fractional_scale_manager_v1", 1, FractionalScaleManager
        yield "xdg_activation_v1", 1, lambda c, n: ActivationManager(c, n, self)

    def _bind_output(self, client: Client, new: NewId) -> Output:
        output = Output(client, new, self.mode)
        self.outputs.append(output)
        output.add_destroy_listener(lambda r: self.outputs.remove(output))
        return output

    async def stop(self) -> None:
        for record in [*self._records.values(), self._carry]:
            self._release(record)
        self._records.clear()
        await self.server.stop()
        self.seat.close()

    # --- what the protocol modules call -----------------------------------------------------
    def next_serial(self) -> int:
        return self.server.next_serial()

    def mark_damaged(self, layout: bool = True) -> None:
        """Something visible changed; layout=False when only the cursor moved or changed."""
        self._damaged = True
        if layout:
            self._layout_cache = None
        if self._updated is not None:
            self._updated.set()

    def surface_committed(self, surface: Surface, visible_change: bool) -> None:
        if visible_change:
            self.mark_damaged()
            if surface.buffer is not None:
                surface.enter_outputs()
            self.seat.refresh_pointer_focus()  # a surface may have grown under the pointer
        if surface.frame_callbacks or surface.feedbacks:
            self._frame_requested = True
            if self._updated is not None:
                self._updated.set()

    def surface_destroyed(self, surface: Surface) -> None:
        self.seat.surface_gone(surface)
        self.mark_damaged()

    def output_resources(self, client: Client) -> list[Output]:
        return [o for o in self.outputs if o.client is client and not o.destroyed]

    def discard_feedbacks(self, feedbacks: list[Any]) -> None:
        for feedback in feedbacks:
            feedback.discard()

    def is_activated(self, toplevel: XdgToplevel) -> bool:
        # The toplevel on top (or about to map on top) is the active window.
        return not self.toplevels or self.toplevels[-1] is toplevel or toplevel not in self.toplevels

    def toplevel_mapped(self, toplevel: XdgToplevel) -> None:
        previous_top = self.toplevels[-1] if self.toplevels else None
        if toplevel in self.toplevels:
            self.toplevels.remove(toplevel)
        self.toplevels.append(toplevel)
        if previous_top is not None and previous_top is not toplevel:
            previous_top.xdg.schedule_configure()  # no longer activated
        self._stack_changed()

    def toplevel_unmapped(self, toplevel: XdgToplevel) -> None:
        if toplevel not in self.toplevels:
            return
        was_top = self.toplevels[-1] is toplevel
        self.toplevels.remove(toplevel)
        if was_top and self.toplevels:
            self.toplevels[-1].xdg.schedule_configure()  # now activated
        self._stack_changed()

    def popup_changed(self, popup: XdgPopup, mapped: bool) -> None:
        self._stack_changed()

    def _stack_changed(self) -> None:
        self.mark_damaged()
        self.seat.set_keyboard_focus(self._keyboard_target())
        self.seat.refresh_pointer_focus()

    def _keyboard_target(self) -> Surface | None:
        alive = [t for t in self.toplevels if not t.surface.destroyed]
        if not alive:
            return None
        top = alive[-1]
        grabbing = [p for p in self._popups(top.xdg) if p.grabbed]
        return grabbing[-1].surface if grabbing else top.surface

    def pointer_pressed(self, surface: Surface) -> None:
        """A click or touch outside the grabbing popups' client dismisses them (xdg_popup.grab)."""
        for toplevel in self.toplevels:
            for popup in self._popups(toplevel.xdg):
                if popup.grabbed and popup.client is not surface.client:
                    popup.dismiss()

    # --- layout -----------------------------------------------------------------------------
    def _popups(self, xdg: XdgSurface) -> Iterator[XdgPopup]:
        for popup in xdg.popups:
            if popup.xdg.is_mapped and not popup.dismissed and not popup.destroyed:
                yield popup
                yield from self._popups(popup.xdg)

    def geometry_origin(self, xdg: XdgSurface) -> tuple[int, int]:
        """Where an xdg_surface's window geometry starts, in output coordinates."""
        role = xdg.role_object
        if isinstance(role, XdgPopup):
            px, py = self.geometry_origin(role.parent)
            return px + role.box.x, py + role.box.y
        g = xdg.window_geometry()
        # Fullscreen surfaces smaller than the output are centred (xdg_toplevel.set_fullscreen).
        return max(0, (self.width - g.width) // 2), max(0, (self.height - g.height) // 2)

    def _surface_position(self, xdg: XdgSurface) -> tuple[int, int]:
        ox, oy = self.geometry_origin(xdg)
        g = xdg.window_geometry()
        return ox - g.x, oy - g.y

    def layout(self) -> list[tuple[Surface, int, int]]:
        """(surface, x, y) bottom to top of everything visible."""
        if self._layout_cache is not None:
            return self._layout_cache
        per_toplevel: list[list[tuple[Surface, int, int]]] = []
        for toplevel in self.toplevels:
            if not toplevel.xdg.is_mapped:
                continue
            x, y = self._surface_position(toplevel.xdg)
            items = list(toplevel.surface.tree(x, y))
            for popup in self._popups(toplevel.xdg):
                px, py = self._surface_position(popup.xdg)
                items.extend(popup.surface.tree(px, py))
            per_toplevel.append(items)
        # Toplevels below an opaque one covering the output are hidden: not drawn, and their
        # frame callbacks wait (occluded clients stop rendering, as on any desktop).
        start = 0
        for i in range(len(per_toplevel) - 1, -1, -1):
            if self._covers_output(per_toplevel[i]):
                start = i
                break
        self._layout_cache = [item for items in per_toplevel[start:] for item in items]
        return self._layout_cache

    def _covers_output(self, items: list[tuple[Surface, int, int]]) -> bool:
        for surface, x, y in items:
            size = surface.size()
            if size is None or surface.buffer is None:
                continue
            if x <= 0 and y <= 0 and x + size[0] >= self.width and y + size[1] >= self.height:
                opaque_region = surface.opaque is not None and surface.opaque.covers(*size)
                if not surface.buffer.has_alpha or opaque_region:
                    return True
        return False

    def surface_at(self, x: float, y: float) -> tuple[Surface, float, float] | None:
        """The topmost surface accepting input at (x, y), with surface-local coordinates."""
        for surface, sx, sy in reversed(self.layout()):
            if surface.accepts_input_at(x - sx, y - sy):
                return surface, x - sx, y - sy
        return None

    # --- frames -----------------------------------------------------------------------------
    @property
    def damaged(self) -> bool:
        return self._damaged

    @property
    def needs_frame(self) -> bool:
        """Something changed, or a client waits for a frame callback."""
        return self._damaged or self._frame_requested or bool(self._carry.callbacks)

    async def wait_for_update(self, timeout: float | None = None) -> bool:
        """Sleeps until needs_frame may have become true (or timeout); True if woken by a change."""
        assert self._updated is not None, "start() first"
        if self.needs_frame:
            return True
        self._updated.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._updated.wait(), timeout)
            return True
        return False

    def _drawable(self, surface: Surface, x: int, y: int, record: _FrameRecord) -> Drawable | None:
        buffer = surface.buffer
        size = surface.size()
        if buffer is None or size is None or size[0] <= 0 or size[1] <= 0:
            return None
        content = buffer.content()
        if content is None:
            return None
        src = None
        if surface.viewport_src is not None:
            s, v = surface.scale, surface.viewport_src
            src = Rect(v.x * s, v.y * s, v.width * s, v.height * s)
        opaque = not content.has_alpha or (surface.opaque is not None and surface.opaque.covers(*size))
        buffer.hold()
        record.buffers.append(buffer)
        return Drawable(content, x, y, size[0], size[1], src, buffer.key, opaque)

    def _collect(self, surface: Surface, record: _FrameRecord) -> None:
        record.callbacks.extend(surface.frame_callbacks)
        surface.frame_callbacks = []
        record.feedbacks.extend(surface.feedbacks)
        surface.feedbacks = []

    def snapshot(self) -> Scene:
        """What to draw now (bottom to top), holding its buffers until frame_presented/discard."""
        record = _FrameRecord()
        drawables = []
        for surface, x, y in self.layout():
            drawable = self._drawable(surface, x, y, record)
            if drawable is not None:
                drawables.append(drawable)
            self._collect(surface, record)
        cursor = None
        seat = self.seat
        if seat.cursor is not None and seat.pointer_focus is not None:
            surface, hx, hy = seat.cursor
            cursor = self._drawable(surface, int(seat.pointer_x) - hx, int(seat.pointer_y) - hy, record)
            self._collect(surface, record)
        record.callbacks += self._carry.callbacks
        record.feedbacks += self._carry.feedbacks
        self._carry = _FrameRecord()
        damaged, self._damaged, self._frame_requested = self._damaged, False, False
        self._scene_serial += 1
        self._records[self._scene_serial] = record
        while len(self._records) > MAX_OUTSTANDING_SCENES:
            oldest = next(iter(self._records))
            log.warning("scene %d was never presented nor discarded; discarding it", oldest)
            self._discard_record(self._records.pop(oldest))
        return Scene(self.width, self.height, tuple(drawables), damaged, cursor, self._scene_serial)

    def frame_presented(self, scene: Scene, time_ns: int) -> None:
        """The session showed `scene` at time_ns (CLOCK_MONOTONIC): answer frame callbacks, send
        presentation feedback, release buffers no longer shown. Call on the asyncio loop."""
        record = self._records.pop(scene.serial, None)
        if record is None:
            return
        self._msc += 1
        time_ms = (time_ns // 1_000_000) & 0xFFFFFFFF
        for callback in record.callbacks:
            if not callback.destroyed:
                callback.done(time_ms)
        refresh_ns = 1_000_000_000 // self.fps
        for feedback in record.feedbacks:
            feedback.presented(time_ns, refresh_ns, self._msc, PRESENTATION_VSYNC, self.output_resources)
        self._release(record)

    def close_windows(self) -> None:
        """Asks every toplevel to close (xdg_toplevel.close), e.g. when the session ends."""
        for toplevel in self.toplevels[:]:
            toplevel.close()

    def discard(self, scene: Scene) -> None:
        """The session dropped `scene` without showing it; its callbacks wait for the next one."""
        record = self._records.pop(scene.serial, None)
        if record is not None:
            self._discard_record(record)

    def _discard_record(self, record: _FrameRecord) -> None:
        self._carry.callbacks += record.callbacks
        self._carry.feedbacks += record.feedbacks
        self._release(record)

    def _release(self, record: _FrameRecord) -> None:
        for buffer in record.buffers:
            buffer.unhold()
        record.buffers.clear()
