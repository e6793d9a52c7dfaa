"""Virtual gamepads behind one interface: uinput (python-evdev) where it works, a null backend where
it does not, and a recording fake for tests.

One backend per session. ``GamepadBackend.create`` returns a :class:`Gamepad` for a controller
number the client announced; the gamepad calls ``feedback`` with host -> client messages (rumble
from the app's force-feedback requests) on the asyncio loop.

Controller state arrives as moonlight-common-c ``NV_MULTI_CONTROLLER_PACKET`` fields (XInput
conventions: sticks -32768..32767 with +y up, triggers 0..255). The uinput pad presents itself
like an Xbox 360 controller (USB 045e:028e), the layout SDL, Steam and the kernel's xpad driver
agree on, as Sunshine's Linux backend does (``src/platform/linux/input.cpp``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Protocol

from moonhowl.protocol import input as wire
from moonhowl.protocol.control import Rumble
from moonhowl.protocol.input import FeedbackMessage

log = logging.getLogger(__name__)

UINPUT_PATH = "/dev/uinput"
FeedbackSink = Callable[[FeedbackMessage], None]
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True, slots=True)
class GamepadState:
    """One controller's full state (``buttons`` holds buttonFlags | buttonFlags2 << 16)."""

    buttons: int = 0
    left_trigger: int = 0
    right_trigger: int = 0
    left_x: int = 0
    left_y: int = 0
    right_x: int = 0
    right_y: int = 0

    @classmethod
    def from_packet(cls, p: wire.MultiController) -> GamepadState:
        return cls(p.buttons, p.left_trigger, p.right_trigger, p.left_x, p.left_y, p.right_x, p.right_y)


class Gamepad(Protocol):
    number: int

    def update(self, state: GamepadState) -> None: ...
    def motion(self, motion_type: int, x: float, y: float, z: float) -> None: ...
    def battery(self, state: int, percentage: int) -> None: ...
    def touchpad(self, event_type: int, pointer_id: int, x: float, y: float, pressure: float) -> None: ...
    def remove(self) -> None: ...


class GamepadBackend(Protocol):
    name: str

    def create(self, number: int, kind: int, capabilities: int, supported_buttons: int,
               feedback: FeedbackSink) -> Gamepad: ...  # fmt: skip
    def close(self) -> None: ...


class GamepadUnavailable(RuntimeError):
    """The uinput backend cannot run here; the message says why and how to fix it."""


def uinput_problem(devnode: str = UINPUT_PATH) -> str | None:
    """Why uinput gamepads cannot work on this machine, or None if they can."""
    if not os.path.exists(devnode):
        return f"{devnode} missing"
    if not os.access(devnode, os.R_OK | os.W_OK):
        return f"{devnode} not writable by this user (add it to the 'input' group or a udev rule)"
    try:
        importlib.import_module("evdev")
    except ImportError:
        return "python-evdev is not installed (pip install 'moonhowl[gamepad]')"
    return None


def select_backend(session_log: Logger = log, devnode: str = UINPUT_PATH) -> GamepadBackend:
    """A uinput backend where possible, else a null backend that says why once per session."""
    problem = uinput_problem(devnode)
    if problem is None:
        try:
            return UinputBackend(devnode=devnode, log=session_log)
        except GamepadUnavailable as exc:
            problem = str(exc)
    return NullBackend(problem, session_log)


# --- null -------------------------------------------------------------------------------------------


class NullGamepad:
    def __init__(self, backend: NullBackend, number: int) -> None:
        self._backend = backend
        self.number = number

    def update(self, state: GamepadState) -> None:
        self._backend.events += 1

    def motion(self, motion_type: int, x: float, y: float, z: float) -> None:
        self._backend.events += 1

    def battery(self, state: int, percentage: int) -> None:
        self._backend.events += 1

    def touchpad(self, event_type: int, pointer_id: int, x: float, y: float, pressure: float) -> None:
        self._backend.events += 1

    def remove(self) -> None:
        self._backend.events += 1


class NullBackend:
    """No virtual devices: counts gamepad events and logs one line the first time a pad arrives."""

    name = "null"

    def __init__(self, reason: str, session_log: Logger = log) -> None:
        self.reason = reason
        self.events = 0
        self._log = session_log
        self._warned = False

    def create(self, number: int, kind: int, capabilities: int, supported_buttons: int,
               feedback: FeedbackSink) -> Gamepad:  # fmt: skip
        if not self._warned:
            self._warned = True
            self._log.warning("gamepads unavailable: %s", self.reason)
        self.events += 1
        return NullGamepad(self, number)

    def close(self) -> None:
        pass


# --- fake (tests) -----------------------------------------------------------------------------------


@dataclass
class FakeGamepad:
    number: int
    kind: int
    capabilities: int
    supported_buttons: int
    feedback: FeedbackSink
    states: list[GamepadState] = field(default_factory=list)
    motions: list[tuple[int, float, float, float]] = field(default_factory=list)
    batteries: list[tuple[int, int]] = field(default_factory=list)
    touches: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    removed: bool = False

    def update(self, state: GamepadState) -> None:
        self.states.append(state)

    def motion(self, motion_type: int, x: float, y: float, z: float) -> None:
        self.motions.append((motion_type, x, y, z))

    def battery(self, state: int, percentage: int) -> None:
        self.batteries.append((state, percentage))

    def touchpad(self, event_type: int, pointer_id: int, x: float, y: float, pressure: float) -> None:
        self.touches.append((event_type, pointer_id, x, y, pressure))

    def remove(self) -> None:
        self.removed = True

    def rumble(self, low: int, high: int) -> None:
        """What an app's force-feedback request does on a real device."""
        self.feedback(Rumble(self.number, low, high))


class FakeBackend:
    """Records every pad it creates; ``fail`` makes create() raise like a uinput error would."""

    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.created: list[FakeGamepad] = []
        self.closed = False
        self.fail = fail

    def create(self, number: int, kind: int, capabilities: int, supported_buttons: int,
               feedback: FeedbackSink) -> Gamepad:  # fmt: skip
        if self.fail:
            raise OSError("fake uinput failure")
        pad = FakeGamepad(number, kind, capabilities, supported_buttons, feedback)
        self.created.append(pad)
        return pad

    def close(self) -> None:
        self.closed = True


# --- uinput -----------------------------------------------------------------------------------------

# Moonlight button flag -> evdev key, as xpad reports an Xbox 360 pad (xpad names Y "BTN_WEST",
# X "BTN_NORTH"). The Sunshine-only extra buttons go to the trigger-happy range.
_BUTTON_CODES: tuple[tuple[int, str], ...] = (
    (wire.A_FLAG, "BTN_SOUTH"), (wire.B_FLAG, "BTN_EAST"), (wire.X_FLAG, "BTN_NORTH"), (wire.Y_FLAG, "BTN_WEST"),
    (wire.LB_FLAG, "BTN_TL"), (wire.RB_FLAG, "BTN_TR"), (wire.BACK_FLAG, "BTN_SELECT"),
    (wire.PLAY_FLAG, "BTN_START"), (wire.SPECIAL_FLAG, "BTN_MODE"), (wire.LS_CLK_FLAG, "BTN_THUMBL"),
    (wire.RS_CLK_FLAG, "BTN_THUMBR"), (wire.PADDLE1_FLAG, "BTN_TRIGGER_HAPPY1"),
    (wire.PADDLE2_FLAG, "BTN_TRIGGER_HAPPY2"), (wire.PADDLE3_FLAG, "BTN_TRIGGER_HAPPY3"),
    (wire.PADDLE4_FLAG, "BTN_TRIGGER_HAPPY4"), (wire.TOUCHPAD_FLAG, "BTN_TRIGGER_HAPPY5"),
    (wire.MISC_FLAG, "BTN_TRIGGER_HAPPY6"),
)  # fmt: skip
_XBOX360 = {"vendor": 0x045E, "product": 0x028E, "version": 0x0110, "bustype": 0x03}  # BUS_USB


def _flip(v: int) -> int:
    """XInput +y is up, evdev +y is down; -(-32768) does not fit, so clamp."""
    return min(32767, -v)


class UinputGamepad:
    """One uinput device; force-feedback uploads from apps become Rumble messages to the client."""

    def __init__(self, evdev: ModuleType, number: int, feedback: FeedbackSink, devnode: str,
                 loop: asyncio.AbstractEventLoop | None) -> None:  # fmt: skip
        e = evdev.ecodes
        self._e = e
        self.number = number
        self._feedback = feedback
        self._state = GamepadState()
        self._effects: dict[int, tuple[int, int, int]] = {}  # id -> (strong, weak, length ms)
        self._stop: asyncio.TimerHandle | None = None
        self._buttons = [(flag, getattr(e, name)) for flag, name in _BUTTON_CODES]
        stick = evdev.AbsInfo(value=0, min=-32768, max=32767, fuzz=16, flat=128, resolution=0)
        trigger = evdev.AbsInfo(value=0, min=0, max=255, fuzz=0, flat=0, resolution=0)
        hat = evdev.AbsInfo(value=0, min=-1, max=1, fuzz=0, flat=0, resolution=0)
        caps = {
            e.EV_KEY: [code for _, code in self._buttons],
            e.EV_ABS: [(e.ABS_X, stick), (e.ABS_Y, stick), (e.ABS_RX, stick), (e.ABS_RY, stick),
                       (e.ABS_Z, trigger), (e.ABS_RZ, trigger), (e.ABS_HAT0X, hat), (e.ABS_HAT0Y, hat)],
            e.EV_FF: [e.FF_RUMBLE, e.FF_PERIODIC, e.FF_SINE, e.FF_GAIN],
        }  # fmt: skip
        try:
            self._ui = evdev.UInput(caps, name=f"Moonhowl X-Box 360 pad {number}", devnode=devnode,
                                    max_effects=16, **_XBOX360)  # fmt: skip
        except (OSError, evdev.UInputError) as exc:
            raise GamepadUnavailable(f"cannot create uinput gamepad {number}: {exc}") from exc
        self._loop = loop
        if loop is not None:
            loop.add_reader(self._ui.fd, self._on_readable)

    def update(self, state: GamepadState) -> None:
        e, ui, old = self._e, self._ui, self._state
        for flag, code in self._buttons:
            if (state.buttons ^ old.buttons) & flag:
                ui.write(e.EV_KEY, code, int(bool(state.buttons & flag)))
        b = state.buttons
        axes = ((e.ABS_X, state.left_x), (e.ABS_Y, _flip(state.left_y)), (e.ABS_RX, state.right_x),
                (e.ABS_RY, _flip(state.right_y)), (e.ABS_Z, state.left_trigger), (e.ABS_RZ, state.right_trigger),
                (e.ABS_HAT0X, bool(b & wire.RIGHT_FLAG) - bool(b & wire.LEFT_FLAG)),
                (e.ABS_HAT0Y, bool(b & wire.DOWN_FLAG) - bool(b & wire.UP_FLAG)))  # fmt: skip
        for code, value in axes:
            ui.write(e.EV_ABS, code, int(value))  # unchanged values are filtered by the kernel
        ui.syn()
        self._state = state

    def motion(self, motion_type: int, x: float, y: float, z: float) -> None:
        pass  # an Xbox 360 pad has no sensors; a DualSense-like device is future work

    def battery(self, state: int, percentage: int) -> None:
        pass

    def touchpad(self, event_type: int, pointer_id: int, x: float, y: float, pressure: float) -> None:
        pass

    def remove(self) -> None:
        if self._stop is not None:
            self._stop.cancel()
        if self._loop is not None and self._ui.fd >= 0:
            self._loop.remove_reader(self._ui.fd)
        self._ui.close()

    def _on_readable(self) -> None:
        # Runs on the asyncio loop; an exception here would be logged by asyncio and the reader kept,
        # so catch and log it ourselves (DESIGN: callbacks crossing a boundary return safely).
        try:
            for event in self._ui.read():
                self._on_event(event.type, event.code, event.value)
        except BlockingIOError:
            pass
        except Exception:
            log.exception("gamepad %d: force-feedback handling failed", self.number)

    def _on_event(self, etype: int, code: int, value: int) -> None:
        e, ui = self._e, self._ui
        if etype == e.EV_UINPUT and code == e.UI_FF_UPLOAD:
            upload = ui.begin_upload(value)
            effect = upload.effect
            if effect.type == e.FF_RUMBLE:
                r = effect.u.ff_rumble_effect
                self._effects[effect.id] = (r.strong_magnitude, r.weak_magnitude, effect.ff_replay.length)
            elif effect.type == e.FF_PERIODIC:  # SDL's fallback for pads without FF_RUMBLE
                p = effect.u.ff_periodic_effect
                level = min(0xFFFF, abs(p.magnitude) * 2)
                self._effects[effect.id] = (level, level, effect.ff_replay.length)
            upload.retval = 0
            ui.end_upload(upload)
        elif etype == e.EV_UINPUT and code == e.UI_FF_ERASE:
            erase = ui.begin_erase(value)
            self._effects.pop(erase.effect_id, None)
            erase.retval = 0
            ui.end_erase(erase)
        elif etype == e.EV_FF and code in self._effects:
            strong, weak, length_ms = self._effects[code] if value else (0, 0, 0)
            self._rumble(strong, weak, length_ms)

    def _rumble(self, low: int, high: int, length_ms: int) -> None:
        # The client keeps rumbling until told otherwise (Limelight.h ConnListenerRumble), so an
        # effect with a duration needs an explicit stop.
        if self._stop is not None:
            self._stop.cancel()
            self._stop = None
        self._feedback(Rumble(self.number, low, high))
        if (low or high) and length_ms and self._loop is not None:
            self._stop = self._loop.call_later(length_ms / 1000, self._rumble, 0, 0, 0)


class UinputBackend:
    """Creates Xbox 360-style uinput pads. Needs python-evdev and a writable /dev/uinput."""

    name = "uinput"

    def __init__(self, devnode: str = UINPUT_PATH, log: Logger = log, evdev: ModuleType | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:  # fmt: skip
        if evdev is None:
            try:
                evdev = importlib.import_module("evdev")
            except ImportError:
                raise GamepadUnavailable("python-evdev is not installed (pip install 'moonhowl[gamepad]')") from None
        self._evdev = evdev
        self._devnode = devnode
        self._log = log
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None  # no force feedback without a loop to read the device on
        self._loop = loop
        self._pads: list[UinputGamepad] = []

    def create(self, number: int, kind: int, capabilities: int, supported_buttons: int,
               feedback: FeedbackSink) -> Gamepad:  # fmt: skip
        pad = UinputGamepad(self._evdev, number, feedback, self._devnode, self._loop)
        self._pads.append(pad)
        self._log.info("gamepad %d: uinput device created (client type %d, capabilities %#x)", number, kind,
                       capabilities)  # fmt: skip
        return pad

    def close(self) -> None:
        self._pads.clear()  # the router removes each pad; nothing else is held
