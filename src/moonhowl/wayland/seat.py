"""wl_seat with pointer, keyboard and touch: focus tracking and input delivery.

`Seat` is the session's handle: pointer_motion / pointer_button / pointer_axis / key / touch_*
take positions in output pixels and send the events to the client whose surface is under the
pointer (pointer, touch) or has keyboard focus (the topmost toplevel), with fresh serials and a
wl_pointer.frame after each logical pointer event (wayland.xml wl_pointer.frame, since 5).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from moonhowl.wayland.compositor import Role, Surface, SurfaceState
from moonhowl.wayland.server import Client, NewId, Resource
from moonhowl.wayland.xkb import Keymap, Modifiers, XkbError

if TYPE_CHECKING:
    from moonhowl.wayland.display import Compositor

log = logging.getLogger(__name__)

CAP_POINTER, CAP_KEYBOARD, CAP_TOUCH = 1, 2, 4
KEYMAP_FORMAT_XKB_V1 = 1
# wl_keyboard.repeat_info: 25 keys/s after 600 ms, the usual desktop defaults (GNOME, weston).
REPEAT_RATE, REPEAT_DELAY = 25, 600
AXIS_SOURCE_WHEEL = 0


def now_ms() -> int:
    return (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF


class CursorRole(Role):
    name = "cursor"

    def __init__(self, seat: Seat) -> None:
        self.seat = seat

    def pre_commit(self, surface: Surface, state: SurfaceState) -> None:
        # wayland.xml wl_pointer.set_cursor: attach's x/y (and wl_surface.offset) move the hotspot.
        dx = state.dx + state.offset[0]
        dy = state.dy + state.offset[1]
        cursor = self.seat.cursor
        if (dx or dy) and cursor is not None and cursor[0] is surface:
            self.seat.cursor = (surface, cursor[1] - dx, cursor[2] - dy)

    def post_commit(self, surface: Surface) -> None:
        cursor = self.seat.cursor
        if cursor is not None and cursor[0] is surface:
            self.seat.desktop.mark_damaged(layout=False)


class Seat:
    """The one seat of a session, and its input state."""

    def __init__(self, desktop: Compositor, name: str = "seat0") -> None:
        self.desktop = desktop
        self.name = name
        self.keymap: Keymap | None = None
        try:
            self.keymap = Keymap()
        except XkbError as exc:
            log.warning("no keyboard: %s", exc)
        self.capabilities = CAP_POINTER | CAP_TOUCH | (CAP_KEYBOARD if self.keymap else 0)
        self.pointers: list[Pointer] = []
        self.keyboards: list[Keyboard] = []
        self.touches: list[Touch] = []
        self.pointer_x = desktop.width / 2
        self.pointer_y = desktop.height / 2
        self.pointer_focus: Surface | None = None
        self.keyboard_focus: Surface | None = None
        self.pressed_keys: set[int] = set()
        self.pressed_buttons: set[int] = set()
        self.touch_points: dict[int, tuple[Surface, float, float]] = {}
        self._touch_clients: set[Client] = set()
        self.cursor: tuple[Surface, int, int] | None = None  # surface, hotspot x, y
        # Pointer extensions (pointer_ext.py) hook in here.
        self.relative_pointers: list[Any] = []
        self.constraints: dict[Surface, Any] = {}
        self.focus_listeners: list[Callable[[Surface | None], None]] = []

    # --- resources of one client ----------------------------------------------------------
    def _of(self, items: list[Any], client: Client) -> list[Any]:
        return [r for r in items if r.client is client and not r.destroyed]

    def _pointer_frame(self, pointers: list[Pointer]) -> None:
        for p in pointers:
            if p.version >= 5:
                p.send("frame")

    # --- pointer ----------------------------------------------------------------------------
    def _set_pointer_focus(self, target: tuple[Surface, float, float] | None) -> list[Pointer]:
        """Sends leave/enter if the surface under the pointer changed; returns the pointers that
        got events (they need a frame)."""
        surface = target[0] if target else None
        touched: list[Pointer] = []
        if surface is self.pointer_focus:
            return touched
        old = self.pointer_focus
        if old is not None and not old.destroyed:
            serial = self.desktop.next_serial()
            for p in self._of(self.pointers, old.client):
                p.send("leave", serial, old)
                touched.append(p)
            self._constraint_focus(old, False)
        self.pointer_focus = surface
        if self.cursor is not None and (surface is None or self.cursor[0].client is not surface.client):
            self.cursor = None
            self.desktop.mark_damaged(layout=False)
        if target is not None:
            surface, sx, sy = target
            serial = self.desktop.next_serial()
            for p in self._of(self.pointers, surface.client):
                p.enter_serial = serial
                p.send("enter", serial, surface, sx, sy)
                touched.append(p)
            self._constraint_focus(surface, True)
        return touched

    def _constraint_focus(self, surface: Surface, focused: bool) -> None:
        constraint = self.constraints.get(surface)
        if constraint is not None:
            constraint.set_active(focused)

    def pointer_motion(self, x: float, y: float) -> None:
        """Absolute motion to (x, y) in output pixels (ignored while the pointer is locked)."""
        constraint = self.constraints.get(self.pointer_focus) if self.pointer_focus else None
        if constraint is not None and constraint.active:
            x, y = constraint.constrain(self.pointer_x, self.pointer_y, x, y)
        self._move_to(x, y)

    def pointer_motion_relative(self, dx: float, dy: float) -> None:
        """Relative motion: zwp_relative_pointer events, then the cursor moves unless locked."""
        focus = self.pointer_focus
        if focus is not None:
            utime = time.monotonic_ns() // 1000
            for rp in self.relative_pointers:
                if rp.client is focus.client and not rp.destroyed:
                    rp.send("relative_motion", utime >> 32, utime & 0xFFFFFFFF, dx, dy, dx, dy)
        self.pointer_motion(self.pointer_x + dx, self.pointer_y + dy)

    def _move_to(self, x: float, y: float) -> None:
        x = min(max(x, 0.0), self.desktop.width - 1.0)
        y = min(max(y, 0.0), self.desktop.height - 1.0)
        self.pointer_x, self.pointer_y = x, y
        target = self.desktop.surface_at(x, y)
        touched = self._set_pointer_focus(target)
        if target is not None:
            surface, sx, sy = target
            t = now_ms()
            for p in self._of(self.pointers, surface.client):
                p.send("motion", t, sx, sy)
                if p not in touched:
                    touched.append(p)
        self._pointer_frame(touched)
        if self.cursor is not None:
            self.desktop.mark_damaged(layout=False)

    def refresh_pointer_focus(self) -> None:
        """The scene changed under a still pointer: re-evaluate what it is over."""
        target = self.desktop.surface_at(self.pointer_x, self.pointer_y)
        current = self.pointer_focus
        if (target[0] if target else None) is not current:
            self._pointer_frame(self._set_pointer_focus(target))

    def pointer_button(self, button: int, pressed: bool) -> None:
        """A button (evdev code: BTN_LEFT 0x110...) pressed or released."""
        if pressed:
            self.pressed_buttons.add(button)
        else:
            self.pressed_buttons.discard(button)
        focus = self.pointer_focus
        if focus is None:
            return
        serial = self.desktop.next_serial()
        pointers = self._of(self.pointers, focus.client)
        t = now_ms()
        for p in pointers:
            p.send("button", serial, t, button, 1 if pressed else 0)
        self._pointer_frame(pointers)
        if pressed:
            self.desktop.pointer_pressed(focus)

    def pointer_axis(self, axis: int, value: float, value120: int | None = None,
                     source: int = AXIS_SOURCE_WHEEL) -> None:
        """Scroll: axis 0 vertical, 1 horizontal; value in surface pixels; value120 for wheels
        (120 per detent, wl_pointer.axis_value120 since 8; axis_discrete for 5..7)."""
        focus = self.pointer_focus
        if focus is None:
            return
        pointers = self._of(self.pointers, focus.client)
        t = now_ms()
        for p in pointers:
            if p.version >= 5:
                p.send("axis_source", source)
            if value120 is not None:
                if p.version >= 8:
                    p.send("axis_value120", axis, value120)
                elif p.version >= 5:
                    p.send("axis_discrete", axis, int(value120 / 120))
            if value == 0 and p.version >= 5:
                p.send("axis_stop", t, axis)
            else:
                p.send("axis", t, axis, value)
        self._pointer_frame(pointers)

    # --- keyboard ---------------------------------------------------------------------------
    def set_keyboard_focus(self, surface: Surface | None) -> None:
        old = self.keyboard_focus
        if surface is old:
            return
        if old is not None and not old.destroyed:
            serial = self.desktop.next_serial()
            for k in self._of(self.keyboards, old.client):
                k.send("leave", serial, old)
        self.keyboard_focus = surface
        if surface is not None:
            for k in self._of(self.keyboards, surface.client):
                self._keyboard_enter(k, surface)
        for listener in self.focus_listeners:
            listener(surface)

    def _keyboard_enter(self, keyboard: Keyboard, surface: Surface) -> None:
        keys = struct.pack(f"={len(self.pressed_keys)}I", *sorted(self.pressed_keys))
        keyboard.send("enter", self.desktop.next_serial(), surface, keys)
        self._send_modifiers(keyboard)

    def _send_modifiers(self, keyboard: Keyboard) -> None:
        mods = self.keymap.modifiers() if self.keymap else Modifiers()
        keyboard.send("modifiers", self.desktop.next_serial(), mods.depressed, mods.latched, mods.locked, mods.group)

    def key(self, keycode: int, pressed: bool) -> None:
        """An evdev key code (KEY_A = 30...) pressed or released."""
        if pressed:
            self.pressed_keys.add(keycode)
        else:
            self.pressed_keys.discard(keycode)
        mods_changed = self.keymap.update_key(keycode, pressed) if self.keymap else False
        focus = self.keyboard_focus
        if focus is None or focus.destroyed:
            return
        serial = self.desktop.next_serial()
        t = now_ms()
        for k in self._of(self.keyboards, focus.client):
            k.send("key", serial, t, keycode, 1 if pressed else 0)
            if mods_changed:
                self._send_modifiers(k)

    # --- touch ------------------------------------------------------------------------------
    def touch_down(self, touch_id: int, x: float, y: float) -> None:
        target = self.desktop.surface_at(x, y)
        if target is None:
            return
        surface, sx, sy = target
        self.touch_points[touch_id] = (surface, x - sx, y - sy)
        serial = self.desktop.next_serial()
        t = now_ms()
        for tr in self._of(self.touches, surface.client):
            tr.send("down", serial, t, surface, touch_id, sx, sy)
        self._touch_clients.add(surface.client)
        self.desktop.pointer_pressed(surface)

    def touch_motion(self, touch_id: int, x: float, y: float) -> None:
        point = self.touch_points.get(touch_id)
        if point is None:
            return
        surface, ox, oy = point  # the point stays with the surface it went down on
        t = now_ms()
        for tr in self._of(self.touches, surface.client):
            tr.send("motion", t, touch_id, x - ox, y - oy)
        self._touch_clients.add(surface.client)

    def touch_up(self, touch_id: int) -> None:
        point = self.touch_points.pop(touch_id, None)
        if point is None:
            return
        surface = point[0]
        serial = self.desktop.next_serial()
        t = now_ms()
        for tr in self._of(self.touches, surface.client):
            tr.send("up", serial, t, touch_id)
        self._touch_clients.add(surface.client)

    def touch_frame(self) -> None:
        """Ends a group of touch events (wl_touch.frame) for every client that got some."""
        for client in self._touch_clients:
            for tr in self._of(self.touches, client):
                tr.send("frame")
        self._touch_clients.clear()

    def touch_cancel(self) -> None:
        clients = {surface.client for surface, _, _ in self.touch_points.values()}
        for client in clients:
            for tr in self._of(self.touches, client):
                tr.send("cancel")
        self.touch_points.clear()

    # --- teardown ---------------------------------------------------------------------------
    def surface_gone(self, surface: Surface) -> None:
        if self.pointer_focus is surface:
            self.pointer_focus = None
        if self.keyboard_focus is surface:
            self.keyboard_focus = None
        if self.cursor is not None and self.cursor[0] is surface:
            self.cursor = None
        for touch_id, point in list(self.touch_points.items()):
            if point[0] is surface:
                del self.touch_points[touch_id]
        constraint = self.constraints.pop(surface, None)
        if constraint is not None:
            constraint.surface_gone()

    def close(self) -> None:
        if self.keymap is not None:
            self.keymap.close()


class WlSeat(Resource):
    interface = "wl_seat"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new)
        self.seat = seat
        self.send("capabilities", seat.capabilities)
        if self.version >= 2:
            self.send("name", seat.name)

    def on_get_pointer(self, new: NewId) -> None:
        self.seat.pointers.append(Pointer(self.client, new, self.seat))

    def on_get_keyboard(self, new: NewId) -> None:
        keyboard = Keyboard(self.client, new, self.seat)
        self.seat.keyboards.append(keyboard)
        focus = self.seat.keyboard_focus
        if focus is not None and focus.client is self.client:
            self.seat._keyboard_enter(keyboard, focus)

    def on_get_touch(self, new: NewId) -> None:
        self.seat.touches.append(Touch(self.client, new, self.seat))


class _Device(Resource):
    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new)
        self.seat = seat

    def _list(self) -> list[Any]:
        return []

    def on_destroyed(self) -> None:
        items = self._list()
        if self in items:
            items.remove(self)


class Pointer(_Device):
    interface = "wl_pointer"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new, seat)
        self.enter_serial = 0
        focus = seat.pointer_focus
        if focus is not None and focus.client is client:
            target = seat.desktop.surface_at(seat.pointer_x, seat.pointer_y)
            if target is not None and target[0] is focus:
                self.enter_serial = seat.desktop.next_serial()
                self.send("enter", self.enter_serial, focus, target[1], target[2])
                if self.version >= 5:
                    self.send("frame")

    def _list(self) -> list[Any]:
        return self.seat.pointers

    def on_set_cursor(self, serial: int, surface: Surface | None, hotspot_x: int, hotspot_y: int) -> None:
        seat = self.seat
        focus = seat.pointer_focus
        if focus is None or focus.client is not self.client:
            return  # wayland.xml: only the client with pointer focus may set the cursor
        if surface is not None:
            if not isinstance(surface.role, CursorRole):
                surface.set_role("cursor", CursorRole(seat), self, "role")
            seat.cursor = (surface, hotspot_x, hotspot_y)
        else:
            seat.cursor = None
        seat.desktop.mark_damaged(layout=False)


class Keyboard(_Device):
    interface = "wl_keyboard"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new, seat)
        if seat.keymap is not None:
            self.send("keymap", KEYMAP_FORMAT_XKB_V1, seat.keymap.fd, seat.keymap.size)
        if self.version >= 4:
            self.send("repeat_info", REPEAT_RATE, REPEAT_DELAY)

    def _list(self) -> list[Any]:
        return self.seat.keyboards


class Touch(_Device):
    interface = "wl_touch"

    def _list(self) -> list[Any]:
        return self.seat.touches
