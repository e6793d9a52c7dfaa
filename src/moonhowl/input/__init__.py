"""A session's input: parsed Moonlight input packets -> the compositor's seat and virtual gamepads.

The session owns one :class:`InputRouter`. For every 0x0206 control message it calls
:meth:`InputRouter.feed`; bad packets are counted, logged (the first and every 100th) and dropped
without touching any state, so one client's garbage never reaches another session. At the end of
the session :meth:`InputRouter.close` releases every key, button and touch still down and removes
the session's gamepads, so nothing stays stuck in the apps.

Keyboard handling follows Sunshine ``src/input.cpp``: the VK is the low byte of the key code,
repeated downs and unmatched ups are ignored, and a key pressed with a modifier bit that no held
key explains (touch keyboards send "A + shift" without a shift key event) gets that modifier
pressed around it. Absolute positions are scaled from the client's reference size (sent minus one,
see :class:`~moonhowl.protocol.input.MousePosition`) to the output, so a client at the output's
own size lands on exact pixels.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from moonhowl.input.devices import (
    FakeBackend,
    FakeGamepad,
    Gamepad,
    GamepadBackend,
    GamepadState,
    GamepadUnavailable,
    NullBackend,
    UinputBackend,
    select_backend,
)
from moonhowl.protocol import input as wire
from moonhowl.protocol import keymap
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.input import FeedbackMessage, InputEvent

__all__ = [
    "FakeBackend", "FakeGamepad", "Gamepad", "GamepadBackend", "GamepadState", "GamepadUnavailable",
    "InputRouter", "InputStats", "NullBackend", "Seat", "UinputBackend", "select_backend",
]  # fmt: skip

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

# linux/input-event-codes.h
BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA = 0x110, 0x111, 0x112, 0x113, 0x114
MOUSE_BUTTONS = {wire.BUTTON_LEFT: BTN_LEFT, wire.BUTTON_MIDDLE: BTN_MIDDLE, wire.BUTTON_RIGHT: BTN_RIGHT,
                 wire.BUTTON_X1: BTN_SIDE, wire.BUTTON_X2: BTN_EXTRA}  # fmt: skip
# Pen barrel buttons as pointer buttons (the seat has no tablet protocol yet).
PEN_BUTTONS = {wire.PEN_BUTTON_PRIMARY: BTN_RIGHT, wire.PEN_BUTTON_SECONDARY: BTN_MIDDLE}
# Sunshine synthesises shift, ctrl and alt only (input.cpp send_key_and_modifiers).
_SYNTHETIC_MODIFIERS = (keymap.MODIFIER_SHIFT, keymap.MODIFIER_CTRL, keymap.MODIFIER_ALT)
_LOG_EVERY = 100


class Seat(Protocol):
    """What the router needs from the compositor's seat. Coordinates are output pixels (floats);
    axis values are Wayland's value120 convention: positive = down / right, 120 = one detent."""

    def pointer_motion(self, x: float, y: float) -> None: ...
    def pointer_relative(self, dx: float, dy: float) -> None: ...
    def pointer_button(self, button: int, pressed: bool) -> None: ...
    def pointer_axis(self, vertical_120: int, horizontal_120: int) -> None: ...
    def key(self, code: int, pressed: bool) -> None: ...
    def text(self, utf8: str) -> None: ...
    def touch_down(self, touch_id: int, x: float, y: float) -> None: ...
    def touch_motion(self, touch_id: int, x: float, y: float) -> None: ...
    def touch_up(self, touch_id: int) -> None: ...
    def touch_frame(self) -> None: ...


@dataclass
class InputStats:
    packets: int = 0  # 0x0206 payloads fed
    delivered: int = 0  # events that reached the seat or a gamepad
    dropped: int = 0  # malformed packets plus well-formed ones with nowhere to go
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # by exception class
    ignored: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    gamepad_events: int = 0
    feedback_sent: int = 0


def _clamp(v: float, low: float, high: float) -> float:
    return low if v < low else high if v > high else v


class InputRouter:
    def __init__(self, seat: Seat, gamepads: GamepadBackend, output_size: tuple[int, int],
                 send_feedback: Callable[[FeedbackMessage], None] | None = None,
                 session_log: Logger = log) -> None:  # fmt: skip
        self.seat = seat
        self.backend = gamepads
        self.send_feedback = send_feedback
        self.stats = InputStats()
        self.haptics_enabled = False
        self._log = session_log
        self._width, self._height = 1, 1
        self.set_output_size(*output_size)
        self._keys: dict[int, None] = {}  # pressed evdev keys, in press order
        self._buttons: dict[int, None] = {}  # pressed pointer buttons
        self._touches: dict[int, int] = {}  # client pointer id -> seat touch id
        self._pen_down = False
        self._pen_buttons = 0
        self._pads: dict[int, Gamepad] = {}
        self._closed = False

    def set_output_size(self, width: int, height: int) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"output size {width}x{height}")
        self._width, self._height = width, height

    @property
    def pressed_keys(self) -> tuple[int, ...]:
        return tuple(self._keys)

    @property
    def gamepads(self) -> dict[int, Gamepad]:
        return dict(self._pads)

    # --- entry points -------------------------------------------------------------------------------
    def feed(self, payload: bytes) -> InputEvent | None:
        """Parse and deliver one 0x0206 payload. Never raises; returns the event if it was valid."""
        self.stats.packets += 1
        if self._closed:
            self._ignore("session closed")
            return None
        try:
            event = wire.parse_input(payload)
        except ProtocolError as exc:
            self.stats.dropped += 1
            self.stats.errors[type(exc).__name__] += 1
            n = self.stats.errors.total()
            if n == 1 or n % _LOG_EVERY == 0:
                self._log.warning("bad input packet dropped (%s); %d so far", exc.message, n)
            return None
        try:
            self.handle(event)
        except Exception:  # a seat or device bug must not take the control stream down with it
            self.stats.errors["delivery"] += 1
            self._log.exception("delivering %s failed", type(event).__name__)
        return event

    def handle(self, event: InputEvent) -> None:
        """Deliver one parsed event."""
        match event:
            case wire.MouseMoveRelative():
                if event.dx or event.dy:
                    self._deliver(self.seat.pointer_relative, float(event.dx), float(event.dy))
            case wire.MousePosition():
                x = _clamp(event.x, 0, event.ref_width) * (self._width - 1) / event.ref_width
                y = _clamp(event.y, 0, event.ref_height) * (self._height - 1) / event.ref_height
                self._deliver(self.seat.pointer_motion, x, y)
            case wire.MouseButton():
                self._button(MOUSE_BUTTONS[event.button], event.pressed)
            case wire.Scroll():
                if event.amount:  # Windows wheel +120 = away from the user = Wayland -120
                    self._deliver(self.seat.pointer_axis, -event.amount, 0)
            case wire.HScroll():
                if event.amount:
                    self._deliver(self.seat.pointer_axis, 0, event.amount)
            case wire.KeyEvent():
                self._key_event(event)
            case wire.Utf8Text():
                if event.text:
                    self._deliver(self.seat.text, event.text)
            case wire.Touch():
                self._touch(event)
            case wire.Pen():
                self._pen(event)
            case wire.EnableHaptics():
                self.haptics_enabled = event.enable
            case wire.ControllerArrival():
                self._arrival(event)
            case wire.MultiController():
                self._controller_state(event)
            case wire.ControllerTouch() | wire.ControllerMotion() | wire.ControllerBattery():
                self._controller_extra(event)

    def close(self) -> None:
        """Release everything still held and remove the gamepads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for code in reversed(tuple(self._keys)):
            self.seat.key(code, False)
        self._keys.clear()
        for button in tuple(self._buttons):
            self.seat.pointer_button(button, False)
        self._buttons.clear()
        if self._touches:
            for touch_id in self._touches.values():
                self.seat.touch_up(touch_id)
            self._touches.clear()
            self.seat.touch_frame()
        for pad in self._pads.values():
            self._remove_pad(pad)
        self._pads.clear()
        self.backend.close()

    # --- helpers -----------------------------------------------------------------------------------
    def _deliver(self, method: Callable[..., None], *args: object) -> None:
        method(*args)
        self.stats.delivered += 1

    def _ignore(self, reason: str) -> None:
        self.stats.dropped += 1
        self.stats.ignored[reason] += 1

    def _button(self, code: int, pressed: bool) -> None:
        if pressed == (code in self._buttons):
            self._ignore("button already in that state")  # Sunshine input.cpp does the same
            return
        if pressed:
            self._buttons[code] = None
        else:
            del self._buttons[code]
        self._deliver(self.seat.pointer_button, code, pressed)

    def _key_event(self, event: wire.KeyEvent) -> None:
        code = keymap.evdev_from_vk(event.key_code)
        if code is None:
            self._ignore("unmapped key")
            self._log.debug("no evdev key for VK %#04x", event.vk)
            return
        if event.pressed == (code in self._keys):
            self._ignore("key already in that state")
            return
        if not event.pressed:
            del self._keys[code]
            self._deliver(self.seat.key, code, False)
            return
        synthetic: list[int] = []
        if code not in keymap.MODIFIER_OF_KEY:
            held = keymap.modifiers_held(set(self._keys))
            synthetic = [keymap.KEY_FOR_MODIFIER[bit] for bit in _SYNTHETIC_MODIFIERS
                         if event.modifiers & bit and not held & bit]  # fmt: skip
        for mod in synthetic:
            self.seat.key(mod, True)
        self._keys[code] = None
        self._deliver(self.seat.key, code, True)
        for mod in reversed(synthetic):
            self.seat.key(mod, False)

    def _to_output(self, x: float, y: float) -> tuple[float, float]:
        return _clamp(x, 0.0, 1.0) * (self._width - 1), _clamp(y, 0.0, 1.0) * (self._height - 1)

    def _touch(self, event: wire.Touch) -> None:
        # wl_touch has no per-point cancel and no hover: a cancelled point is lifted, hovers are
        # ignored. Seat touch ids are the lowest free small integers, not the client's 32-bit ids.
        kind, pid = event.event_type, event.pointer_id
        if kind == wire.TOUCH_DOWN:
            if pid in self._touches:
                self.seat.touch_up(self._touches.pop(pid))  # a lost up: start the contact afresh
            touch_id = min(set(range(len(self._touches) + 1)) - set(self._touches.values()))
            self._touches[pid] = touch_id
            self._deliver(self.seat.touch_down, touch_id, *self._to_output(event.x, event.y))
        elif kind == wire.TOUCH_MOVE and pid in self._touches:
            self._deliver(self.seat.touch_motion, self._touches[pid], *self._to_output(event.x, event.y))
        elif kind in (wire.TOUCH_UP, wire.TOUCH_CANCEL) and pid in self._touches:
            self._deliver(self.seat.touch_up, self._touches.pop(pid))
        elif kind == wire.TOUCH_CANCEL_ALL and self._touches:
            for touch_id in self._touches.values():
                self.seat.touch_up(touch_id)
            self._touches.clear()
            self.stats.delivered += 1
        else:
            self._ignore("touch event without an active contact" if kind in
                         (wire.TOUCH_MOVE, wire.TOUCH_UP, wire.TOUCH_CANCEL, wire.TOUCH_CANCEL_ALL)
                         else "touch hover")  # fmt: skip
            return
        self.seat.touch_frame()

    def _pen(self, event: wire.Pen) -> None:
        # Until the seat speaks tablet-v2 the pen drives the pointer: contact is the left button,
        # barrel buttons are right and middle.
        kind = event.event_type
        if kind in (wire.TOUCH_DOWN, wire.TOUCH_MOVE, wire.TOUCH_HOVER):
            self._deliver(self.seat.pointer_motion, *self._to_output(event.x, event.y))
        touching = kind in (wire.TOUCH_DOWN, wire.TOUCH_MOVE)
        contact = self._pen_down if kind == wire.TOUCH_BUTTON_ONLY else touching
        if contact != self._pen_down:
            self._pen_down = contact
            self._button(BTN_LEFT, contact)
        buttons = 0 if kind in (wire.TOUCH_CANCEL, wire.TOUCH_CANCEL_ALL) else event.buttons
        for bit, code in PEN_BUTTONS.items():
            if (buttons ^ self._pen_buttons) & bit:
                self._button(code, bool(buttons & bit))
        self._pen_buttons = buttons

    # --- gamepads ----------------------------------------------------------------------------------
    def _feedback(self, message: FeedbackMessage) -> None:
        if self._closed or self.send_feedback is None:
            return
        self.stats.feedback_sent += 1
        self.send_feedback(message)

    def _create_pad(self, number: int, kind: int, capabilities: int, supported_buttons: int) -> Gamepad | None:
        try:
            pad = self.backend.create(number, kind, capabilities, supported_buttons, self._feedback)
        except (OSError, GamepadUnavailable) as exc:
            self._ignore("gamepad creation failed")
            self._log.warning("gamepad %d could not be created: %s", number, exc)
            return None
        self._pads[number] = pad
        self.stats.gamepad_events += 1
        self.stats.delivered += 1
        return pad

    def _remove_pad(self, pad: Gamepad) -> None:
        try:
            pad.update(GamepadState())  # neutral first, like Sunshine's free_gamepad
            pad.remove()
        except Exception:
            self._log.exception("removing gamepad %d failed", pad.number)

    def _arrival(self, event: wire.ControllerArrival) -> None:
        if event.controller in self._pads:
            self._ignore("controller already present")  # Sunshine: "ControllerNumber already allocated"
            return
        self._create_pad(event.controller, event.kind, event.capabilities, event.supported_buttons)

    def _controller_state(self, event: wire.MultiController) -> None:
        pad = self._pads.get(event.controller)
        if not event.active:
            if pad is None:
                self._ignore("controller not present")
                return
            del self._pads[event.controller]
            self._remove_pad(pad)
            self.stats.gamepad_events += 1
            self.stats.delivered += 1
            return
        if pad is None:  # legacy arrival: a state packet with the pad's bit set (no SS_CONTROLLER_ARRIVAL)
            pad = self._create_pad(event.controller, wire.CONTROLLER_UNKNOWN, 0, 0)
            if pad is None:
                return
        pad.update(GamepadState.from_packet(event))
        self.stats.gamepad_events += 1
        self.stats.delivered += 1

    def _controller_extra(self, event: wire.ControllerTouch | wire.ControllerMotion | wire.ControllerBattery) -> None:
        pad = self._pads.get(event.controller)
        if pad is None:
            self._ignore("controller not present")  # Sunshine: "ControllerNumber [n] not allocated"
            return
        match event:
            case wire.ControllerTouch():
                pad.touchpad(event.event_type, event.pointer_id, event.x, event.y, event.pressure)
            case wire.ControllerMotion():
                pad.motion(event.motion_type, event.x, event.y, event.z)
            case wire.ControllerBattery():
                pad.battery(event.state, event.percentage)
        self.stats.gamepad_events += 1
        self.stats.delivered += 1
