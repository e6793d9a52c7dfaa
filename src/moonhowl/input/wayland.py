"""The compositor's seat as the InputRouter's Seat, and a seat for sessions without a desktop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moonhowl.wayland.seat import Seat as WaylandSeat

log = logging.getLogger(__name__)

# Pixels scrolled per wheel detent (120 units): what libinput and wlroots report for a wheel
# click, so toolkits that ignore value120 still scroll a sensible distance.
PIXELS_PER_DETENT = 15.0
AXIS_VERTICAL, AXIS_HORIZONTAL = 0, 1


class CompositorSeat:
    """Delivers routed input to the session's Wayland seat (asyncio loop thread only)."""

    def __init__(self, seat: WaylandSeat) -> None:
        self.seat = seat
        self.text_dropped = 0

    def pointer_motion(self, x: float, y: float) -> None:
        self.seat.pointer_motion(x, y)

    def pointer_relative(self, dx: float, dy: float) -> None:
        self.seat.pointer_motion_relative(dx, dy)

    def pointer_button(self, button: int, pressed: bool) -> None:
        self.seat.pointer_button(button, pressed)

    def pointer_axis(self, vertical_120: int, horizontal_120: int) -> None:
        for axis, amount in ((AXIS_VERTICAL, vertical_120), (AXIS_HORIZONTAL, horizontal_120)):
            if amount:
                self.seat.pointer_axis(axis, amount / 120 * PIXELS_PER_DETENT, amount)

    def key(self, code: int, pressed: bool) -> None:
        self.seat.key(code, pressed)

    def text(self, utf8: str) -> None:
        # No text-input protocol yet: UTF-8 text (IME, emoji) cannot reach apps; keys do.
        self.text_dropped += 1
        if self.text_dropped == 1:
            log.info("UTF-8 text input is not supported yet; %r dropped", utf8[:20])

    def touch_down(self, touch_id: int, x: float, y: float) -> None:
        self.seat.touch_down(touch_id, x, y)

    def touch_motion(self, touch_id: int, x: float, y: float) -> None:
        self.seat.touch_motion(touch_id, x, y)

    def touch_up(self, touch_id: int) -> None:
        self.seat.touch_up(touch_id)

    def touch_frame(self) -> None:
        self.seat.touch_frame()


class NoSeat:
    """Sessions without a desktop (the test pattern): input is parsed and counted, then dropped."""

    def __init__(self) -> None:
        self.events = 0

    def _count(self, *_args: object) -> None:
        self.events += 1

    pointer_motion = pointer_relative = pointer_button = pointer_axis = key = text = _count
    touch_down = touch_motion = touch_up = touch_frame = _count
