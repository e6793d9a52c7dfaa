"""Small protocols: viewporter, presentation-time, xdg-decoration, single-pixel buffers,
fractional scale and xdg-activation. Each is a few requests on top of a surface's state."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from moonhowl.wayland.buffer import Buffer
from moonhowl.wayland.compositor import Surface
from moonhowl.wayland.output import Output
from moonhowl.wayland.scene import Rect, SolidContent
from moonhowl.wayland.server import Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.display import Compositor
    from moonhowl.wayland.xdg_shell import XdgToplevel

CLOCK_MONOTONIC = 1  # <time.h>; what every timestamp in this compositor uses


# --- viewporter (stable/viewporter) ----------------------------------------------------------
class Viewporter(Resource):
    interface = "wp_viewporter"

    def on_get_viewport(self, new: NewId, surface: Surface) -> None:
        if surface.viewport is not None:
            raise self.error("viewport_exists", f"{surface} already has a viewport")
        surface.viewport = Viewport(self.client, new, surface)


class Viewport(Resource):
    interface = "wp_viewport"

    def __init__(self, client: Client, new: NewId, surface: Surface) -> None:
        super().__init__(client, new)
        self.surface: Surface | None = surface
        surface.add_destroy_listener(self._surface_gone)

    def _surface_gone(self, _: Resource) -> None:
        self.surface = None

    def _target(self) -> Surface:
        if self.surface is None:
            raise self.error("no_surface", "the wl_surface of this viewport was destroyed")
        return self.surface

    def on_set_source(self, x: float, y: float, width: float, height: float) -> None:
        surface = self._target()
        if x == y == width == height == -1.0:
            surface.pending.viewport_src = None
            return
        if x < 0 or y < 0 or width <= 0 or height <= 0:
            raise self.error("bad_value", f"source {x},{y} {width}x{height}")
        surface.pending.viewport_src = Rect(x, y, width, height)

    def on_set_destination(self, width: int, height: int) -> None:
        surface = self._target()
        if width == height == -1:
            surface.pending.viewport_dst = None
            return
        if width <= 0 or height <= 0:
            raise self.error("bad_value", f"destination {width}x{height}")
        surface.pending.viewport_dst = (width, height)

    def on_destroyed(self) -> None:
        # viewporter.xml: destroying the viewport removes its state with the next commit.
        if self.surface is not None:
            self.surface.remove_destroy_listener(self._surface_gone)
            self.surface.pending.viewport_src = None
            self.surface.pending.viewport_dst = None
            self.surface.viewport = None


# --- presentation-time (stable/presentation-time) --------------------------------------------
class Presentation(Resource):
    interface = "wp_presentation"

    def __init__(self, client: Client, new: NewId) -> None:
        super().__init__(client, new)
        self.send("clock_id", CLOCK_MONOTONIC)

    def on_feedback(self, surface: Surface, new: NewId) -> None:
        surface.pending.feedbacks.append(PresentationFeedback(self.client, new, surface))


class PresentationFeedback(Resource):
    interface = "wp_presentation_feedback"

    def __init__(self, client: Client, new: NewId, surface: Surface) -> None:
        super().__init__(client, new)
        self.surface = surface

    def presented(self, time_ns: int, refresh_ns: int, msc: int, flags: int,
                  outputs_of: Callable[[Client], list[Output]]) -> None:
        if self.destroyed:
            return
        for output in outputs_of(self.client):
            self.send("sync_output", output)
        sec, nsec = divmod(time_ns, 1_000_000_000)
        self.send("presented", sec >> 32, sec & 0xFFFFFFFF, nsec, refresh_ns, msc >> 32, msc & 0xFFFFFFFF, flags)
        self.destroy()  # "presented" and "discarded" are destructor events

    def discard(self) -> None:
        if not self.destroyed:
            self.send("discarded")
            self.destroy()


# --- xdg-decoration (unstable/xdg-decoration) ------------------------------------------------
SERVER_SIDE = 2


class DecorationManager(Resource):
    """Always server-side decorations, and the server draws none.

    In a one-app fullscreen desktop there is no window chrome to show. Answering server_side
    makes clients that honour it (foot, Qt, SDL, kitty...) drop their own title bars and borders
    even if they ever leave the fullscreen state; client_side would invite them to draw them.
    """

    interface = "zxdg_decoration_manager_v1"

    def on_get_toplevel_decoration(self, new: NewId, toplevel: XdgToplevel) -> None:
        if toplevel.decoration is not None:
            raise toplevel.error("already_constructed", "toplevel already has a decoration object",
                                 enum_of="zxdg_toplevel_decoration_v1")
        toplevel.decoration = ToplevelDecoration(self.client, new, toplevel)


class ToplevelDecoration(Resource):
    interface = "zxdg_toplevel_decoration_v1"

    def __init__(self, client: Client, new: NewId, toplevel: XdgToplevel) -> None:
        super().__init__(client, new)
        self.toplevel = toplevel
        self.send("configure", SERVER_SIDE)

    def _reconfigure(self) -> None:
        # xdg-decoration: a decoration configure is followed by an xdg_surface.configure.
        self.send("configure", SERVER_SIDE)
        self.toplevel.xdg.schedule_configure()

    def on_set_mode(self, mode: int) -> None:
        self._reconfigure()

    def on_unset_mode(self) -> None:
        self._reconfigure()

    def on_destroyed(self) -> None:
        if self.toplevel.decoration is self:
            self.toplevel.decoration = None


# --- single-pixel-buffer (staging) -----------------------------------------------------------
class SinglePixelBuffer(Buffer):
    def __init__(self, client: Client, new: NewId, color: SolidContent) -> None:
        super().__init__(client, new, 1, 1)
        self.color = color

    def content(self) -> SolidContent:
        return self.color


class SinglePixelBufferManager(Resource):
    interface = "wp_single_pixel_buffer_manager_v1"

    def on_create_u32_rgba_buffer(self, new: NewId, r: int, g: int, b: int, a: int) -> None:
        scale = 0xFFFFFFFF
        SinglePixelBuffer(self.client, new, SolidContent(r / scale, g / scale, b / scale, a / scale))


# --- fractional-scale (staging) --------------------------------------------------------------
class FractionalScaleManager(Resource):
    interface = "wp_fractional_scale_manager_v1"

    def on_get_fractional_scale(self, new: NewId, surface: Surface) -> None:
        if "fractional_scale" in surface.extensions:
            raise self.error("fractional_scale_exists", f"{surface} already has a fractional scale object")
        surface.extensions["fractional_scale"] = FractionalScale(self.client, new, surface)


class FractionalScale(Resource):
    interface = "wp_fractional_scale_v1"

    def __init__(self, client: Client, new: NewId, surface: Surface) -> None:
        super().__init__(client, new)
        self.surface = surface
        self.send("preferred_scale", 120)  # 120ths: exactly 1.0, the only scale we render at

    def on_destroyed(self) -> None:
        if self.surface.extensions.get("fractional_scale") is self:
            del self.surface.extensions["fractional_scale"]


# --- xdg-activation (staging) ----------------------------------------------------------------
class ActivationManager(Resource):
    """Tokens are handed out freely; activate() raises the toplevel (one app, one desktop:
    there is no other user's window to protect from focus stealing)."""

    interface = "xdg_activation_v1"

    def __init__(self, client: Client, new: NewId, desktop: Compositor) -> None:
        super().__init__(client, new)
        self.desktop = desktop

    def on_get_activation_token(self, new: NewId) -> None:
        ActivationToken(self.client, new)

    def on_activate(self, token: str, surface: Surface) -> None:
        from moonhowl.wayland.xdg_shell import XdgSurface, XdgToplevel

        role = surface.role
        if isinstance(role, XdgSurface) and isinstance(role.role_object, XdgToplevel) and role.is_mapped:
            self.desktop.toplevel_mapped(role.role_object)


class ActivationToken(Resource):
    interface = "xdg_activation_token_v1"

    def __init__(self, client: Client, new: NewId) -> None:
        super().__init__(client, new)
        self.used = False

    def on_set_serial(self, serial: int, seat: Resource) -> None:
        pass  # tokens are not tied to input events here (see ActivationManager)

    def on_set_app_id(self, app_id: str) -> None:
        pass

    def on_set_surface(self, surface: Surface) -> None:
        pass

    def on_commit(self) -> None:
        if self.used:
            raise self.error("already_used", "token committed twice")
        self.used = True
        self.send("done", f"moonhowl-{time.monotonic_ns()}-{secrets.token_hex(8)}")
