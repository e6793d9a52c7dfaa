"""xdg_wm_base: toplevels (always fullscreen at the output size) and popups.

Every toplevel is configured fullscreen + activated at exactly the output size: the session is
one app filling one virtual monitor. A client that draws a smaller buffer is centred with black
around it, as xdg-shell.xml describes for fullscreen surfaces. Configure acks are tracked (a
buffer before the first ack is the protocol's unconfigured_buffer error) but never waited for:
whatever the client last committed is shown.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from moonhowl.wayland.compositor import UNSET, Role, Surface, SurfaceState
from moonhowl.wayland.positioner import Box, PositionerRules, place
from moonhowl.wayland.server import Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.display import Compositor

log = logging.getLogger(__name__)

# xdg_toplevel.state (xdg-shell.xml)
STATE_FULLSCREEN = 2
STATE_ACTIVATED = 4


class XdgWmBase(Resource):
    interface = "xdg_wm_base"

    def __init__(self, client: Client, new: NewId, desktop: Compositor) -> None:
        super().__init__(client, new)
        self.desktop = desktop
        self.surfaces: list[XdgSurface] = []
        self.ping_serial = 0
        self.last_pong = 0

    def ping(self) -> int:
        self.ping_serial = self.desktop.next_serial()
        self.send("ping", self.ping_serial)
        return self.ping_serial

    def on_pong(self, serial: int) -> None:
        self.last_pong = serial

    def on_destroy(self) -> None:
        if self.surfaces:
            raise self.error("defunct_surfaces", f"destroyed with {len(self.surfaces)} xdg_surfaces alive")

    def on_create_positioner(self, new: NewId) -> None:
        Positioner(self.client, new)

    def on_get_xdg_surface(self, new: NewId, surface: Surface) -> None:
        if surface.role is not None or surface.role_name not in ("", "xdg_toplevel", "xdg_popup"):
            raise self.error("role", f"{surface} already has a role")
        xdg = XdgSurface(self.client, new, self, surface)
        if surface.buffer is not None or (surface.pending.buffer not in (None, UNSET)):
            raise xdg.error("unconfigured_buffer", f"{surface} already has a buffer")
        surface.role = xdg
        self.surfaces.append(xdg)


class Positioner(Resource):
    interface = "xdg_positioner"

    def __init__(self, client: Client, new: NewId) -> None:
        super().__init__(client, new)
        self.rules = PositionerRules()

    def _set(self, **changes: object) -> None:
        self.rules = PositionerRules(**{**self.rules.__dict__, **changes})

    def on_set_size(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise self.error("invalid_input", f"size {width}x{height}")
        self._set(width=width, height=height)

    def on_set_anchor_rect(self, x: int, y: int, width: int, height: int) -> None:
        if width < 0 or height < 0:
            raise self.error("invalid_input", f"anchor rect size {width}x{height}")
        self._set(anchor_rect=Box(x, y, width, height))

    def on_set_anchor(self, anchor: int) -> None:
        if not 0 <= anchor <= 8:
            raise self.error("invalid_input", f"anchor {anchor}")
        self._set(anchor=anchor)

    def on_set_gravity(self, gravity: int) -> None:
        if not 0 <= gravity <= 8:
            raise self.error("invalid_input", f"gravity {gravity}")
        self._set(gravity=gravity)

    def on_set_constraint_adjustment(self, adjustment: int) -> None:
        self._set(constraint_adjustment=adjustment)

    def on_set_offset(self, x: int, y: int) -> None:
        self._set(offset_x=x, offset_y=y)

    def on_set_reactive(self) -> None:
        self._set(reactive=True)

    def on_set_parent_size(self, width: int, height: int) -> None:
        pass  # only meaningful for reactive repositioning while the parent resizes; ours never do

    def on_set_parent_configure(self, serial: int) -> None:
        pass


class XdgSurface(Resource, Role):
    interface = "xdg_surface"
    name = "xdg_surface"

    def __init__(self, client: Client, new: NewId, wm_base: XdgWmBase, surface: Surface) -> None:
        Resource.__init__(self, client, new)
        self.wm_base = wm_base
        self.desktop = wm_base.desktop
        self.surface = surface
        self.role_object: XdgToplevel | XdgPopup | None = None
        self.configured = False          # acked at least one configure
        self.initial_commit = False      # the initial (buffer-less) commit happened
        self.sent_serials: list[int] = []
        self.geometry: Box | None = None
        self.pending_geometry: Box | None = None
        self.popups: list[XdgPopup] = []
        self.is_mapped = False
        self._configure_scheduled = False
        surface.add_destroy_listener(self._surface_destroyed)

    def _surface_destroyed(self, _: Resource) -> None:
        # Clients must destroy the xdg_surface first (xdg-shell.xml), but a dying client tears
        # objects down in any order: the window just disappears.
        if self.is_mapped:
            self._unmap()
    # --- requests ---------------------------------------------------------------------------
    def on_get_toplevel(self, new: NewId) -> None:
        self._check_constructable()
        self.surface.role_name = "xdg_toplevel"
        self.role_object = XdgToplevel(self.client, new, self)

    def on_get_popup(self, new: NewId, parent: XdgSurface | None, positioner: Positioner) -> None:
        self._check_constructable()
        if not positioner.rules.complete:
            raise self.wm_base.error("invalid_positioner", "positioner without size or anchor rect")
        if parent is None:
            # Only other protocols (layer-shell) can give a parent later; none is offered here.
            raise self.wm_base.error("invalid_popup_parent", "popup without a parent")
        self.surface.role_name = "xdg_popup"
        popup = XdgPopup(self.client, new, self, parent, positioner.rules)
        self.role_object = popup
        parent.popups.append(popup)

    def _check_constructable(self) -> None:
        if self.role_object is not None:
            raise self.error("already_constructed", f"{self} already has a role object")
        wanted = self.surface.role_name
        if wanted not in ("", "xdg_toplevel", "xdg_popup"):
            raise self.wm_base.error("role", f"{self.surface} has the role {wanted}")

    def on_set_window_geometry(self, x: int, y: int, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise self.error("invalid_size", f"window geometry {width}x{height}")
        self.pending_geometry = Box(x, y, width, height)

    def on_ack_configure(self, serial: int) -> None:
        if serial not in self.sent_serials:
            raise self.error("invalid_serial", f"ack_configure({serial}) of a serial never sent")
        del self.sent_serials[:self.sent_serials.index(serial) + 1]
        self.configured = True

    # --- configure --------------------------------------------------------------------------
    def schedule_configure(self) -> None:
        """Sends a configure sequence on the next loop iteration (coalescing several requests)."""
        if self.initial_commit and not self._configure_scheduled and not self.destroyed:
            self._configure_scheduled = True
            self.desktop.loop.call_soon(self._send_configure_if_alive)

    def _send_configure_if_alive(self) -> None:
        self._configure_scheduled = False
        if not self.destroyed and self.role_object is not None and not self.role_object.destroyed:
            self.send_configure()

    def send_configure(self) -> None:
        assert self.role_object is not None
        self.role_object.send_role_configure()
        serial = self.desktop.next_serial()
        self.sent_serials.append(serial)
        self.send("configure", serial)

    # --- Role hooks -------------------------------------------------------------------------
    def pre_commit(self, surface: Surface, state: SurfaceState) -> None:
        if self.role_object is None:
            raise self.error("not_constructed", f"{surface} committed before get_toplevel/get_popup")
        if state.buffer not in (UNSET, None) and not self.configured:
            raise self.error("unconfigured_buffer", f"{surface} attached a buffer before acking a configure")

    def post_commit(self, surface: Surface) -> None:
        if self.pending_geometry is not None:
            self.geometry, self.pending_geometry = self.pending_geometry, None
        if self.role_object is None:
            return
        if not self.initial_commit:
            self.initial_commit = True
            self.send_configure()
            return
        if surface.buffer is not None and not self.is_mapped:
            self.is_mapped = True
            self.role_object.mapped_changed(True)
        elif surface.buffer is None and self.is_mapped:
            self._unmap()

    def _unmap(self) -> None:
        """Null buffer: unmapped; the client must redo the initial commit (xdg-shell.xml)."""
        self.is_mapped = False
        self.initial_commit = False
        self.configured = False
        self.sent_serials.clear()
        for popup in self.popups[:]:
            popup.dismiss()
        if self.role_object is not None:
            self.role_object.mapped_changed(False)

    @property
    def mapped(self) -> bool:
        return self.is_mapped

    def window_geometry(self) -> Box:
        """The window geometry; by default the surface's own extent (xdg-shell.xml)."""
        if self.geometry is not None:
            return self.geometry
        size = self.surface.size() or (0, 0)
        return Box(0, 0, size[0], size[1])

    def on_destroy(self) -> None:
        if self.role_object is not None and not self.role_object.destroyed:
            raise self.error("defunct_role_object", f"{self} destroyed before its role object")

    def on_destroyed(self) -> None:
        self.surface.remove_destroy_listener(self._surface_destroyed)
        if self.is_mapped:
            self._unmap()
        self.surface.clear_role_object(self)
        if self in self.wm_base.surfaces:
            self.wm_base.surfaces.remove(self)


class XdgToplevel(Resource):
    interface = "xdg_toplevel"

    def __init__(self, client: Client, new: NewId, xdg: XdgSurface) -> None:
        super().__init__(client, new)
        self.xdg = xdg
        self.desktop = xdg.desktop
        self.title = ""
        self.app_id = ""
        self.parent: XdgToplevel | None = None
        self.decoration: Resource | None = None  # zxdg_toplevel_decoration_v1 (extras.py)
        self._capabilities_sent = False

    @property
    def surface(self) -> Surface:
        return self.xdg.surface

    def send_role_configure(self) -> None:
        width, height = self.desktop.width, self.desktop.height
        if self.version >= 4:
            self.send("configure_bounds", width, height)
        if self.version >= 5 and not self._capabilities_sent:
            # Before the first configure (xdg-shell.xml): no window menu, maximize, minimize or
            # fullscreen toggle to offer, so clients hide those buttons.
            self._capabilities_sent = True
            self.send("wm_capabilities", b"")
        states = [STATE_FULLSCREEN]
        if self.desktop.is_activated(self):
            states.append(STATE_ACTIVATED)
        self.send("configure", width, height, struct.pack(f"={len(states)}I", *states))

    def mapped_changed(self, mapped: bool) -> None:
        if mapped:
            self.desktop.toplevel_mapped(self)
        else:
            self.desktop.toplevel_unmapped(self)

    def close(self) -> None:
        """Asks the client to close the window (the session ending, say)."""
        self.send("close")

    # --- requests: recorded, or answered with the one state we support ----------------------
    def on_set_title(self, title: str) -> None:
        self.title = title

    def on_set_app_id(self, app_id: str) -> None:
        self.app_id = app_id

    def on_set_parent(self, parent: XdgToplevel | None) -> None:
        self.parent = parent

    def on_set_fullscreen(self, output: Resource | None) -> None:
        self.xdg.schedule_configure()

    def on_unset_fullscreen(self) -> None:
        self.xdg.schedule_configure()

    def on_set_maximized(self) -> None:
        self.xdg.schedule_configure()

    def on_unset_maximized(self) -> None:
        self.xdg.schedule_configure()

    def on_set_max_size(self, width: int, height: int) -> None:
        if width < 0 or height < 0:
            raise self.error("invalid_size", f"max size {width}x{height}")

    def on_set_min_size(self, width: int, height: int) -> None:
        if width < 0 or height < 0:
            raise self.error("invalid_size", f"min size {width}x{height}")

    def on_destroyed(self) -> None:
        if self.xdg.is_mapped:
            self.xdg._unmap()
        self.xdg.role_object = None
        self.xdg.initial_commit = False
        self.desktop.toplevel_unmapped(self)


class XdgPopup(Resource):
    interface = "xdg_popup"

    def __init__(self, client: Client, new: NewId, xdg: XdgSurface, parent: XdgSurface,
                 rules: PositionerRules) -> None:
        super().__init__(client, new)
        self.xdg = xdg
        self.desktop = xdg.desktop
        self.parent = parent
        self.rules = rules
        self.box = Box(0, 0, rules.width, rules.height)
        self.grabbed = False
        self._reposition_token: int | None = None
        self.dismissed = False

    @property
    def surface(self) -> Surface:
        return self.xdg.surface

    def send_role_configure(self) -> None:
        origin = self.desktop.geometry_origin(self.parent)
        self.box = place(self.rules, origin, Box(0, 0, self.desktop.width, self.desktop.height))
        if self._reposition_token is not None and self.version >= 3:
            self.send("repositioned", self._reposition_token)
            self._reposition_token = None
        self.send("configure", self.box.x, self.box.y, self.box.width, self.box.height)

    def mapped_changed(self, mapped: bool) -> None:
        self.desktop.popup_changed(self, mapped)

    def dismiss(self) -> None:
        """popup_done: the compositor closed the popup (parent unmapped, click outside...)."""
        if self.dismissed or self.destroyed:
            return
        self.dismissed = True
        for child in self.xdg.popups[:]:
            child.dismiss()
        self.send("popup_done")
        self.desktop.popup_changed(self, False)

    def on_grab(self, seat: Resource, serial: int) -> None:
        if self.xdg.initial_commit:
            raise self.error("invalid_grab", "grab after the popup was mapped")
        self.grabbed = True

    def on_reposition(self, positioner: Positioner, token: int) -> None:
        if not positioner.rules.complete:
            raise self.xdg.wm_base.error("invalid_positioner", "positioner without size or anchor rect")
        self.rules = positioner.rules
        self._reposition_token = token
        self.xdg.schedule_configure()

    def on_destroyed(self) -> None:
        for child in self.xdg.popups[:]:
            child.dismiss()
        if self in self.parent.popups:
            self.parent.popups.remove(self)
        self.xdg.role_object = None
        self.desktop.popup_changed(self, False)
