"""Moonlight input packets, the VK -> evdev keymap, and the per-session InputRouter.

Packets are built here the way moonlight-common-c ``InputStream.c`` fills its ``#pragma pack(1)``
structs from ``Input.h`` (header BE32 size + LE32 magic, BE16 mouse/scroll fields, LE elsewhere,
netfloat = LE float32), independently of the dataclasses' ``__bytes__``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from moonhowl.input import FakeBackend, FakeGamepad, GamepadState, InputRouter, NullBackend, select_backend
from moonhowl.input.devices import GamepadUnavailable, UinputBackend
from moonhowl.protocol import control, keymap
from moonhowl.protocol import input as wire
from moonhowl.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit


# --- packets as InputStream.c builds them -------------------------------------------------------------
def nv(magic: int, body: bytes) -> bytes:
    """holder->packet.header.size = BE32(sizeof(packet) - sizeof(uint32_t)); magic = LE32(...)."""
    return struct.pack(">I", 4 + len(body)) + struct.pack("<I", magic) + body


def li_mouse_move(dx: int, dy: int) -> bytes:
    return nv(0x07, struct.pack(">hh", dx, dy))  # MOUSE_MOVE_REL_MAGIC_GEN5, BE16 deltas


def li_mouse_position(x: int, y: int, ref_w: int, ref_h: int) -> bytes:
    # The input thread writes width - 1 and height - 1 (GFE rounding workaround).
    return nv(0x05, struct.pack(">hhhhh", x, y, 0, ref_w - 1, ref_h - 1))


def li_mouse_button(action: int, button: int) -> bytes:
    return nv(action + 1, struct.pack("B", button))  # BUTTON_ACTION_PRESS 7 / RELEASE 8, +1 on gen 5+


def li_scroll(amount: int) -> bytes:
    return nv(0x0A, struct.pack(">hhh", amount, amount, 0))  # scrollAmt1 = scrollAmt2, zero3


def li_hscroll(amount: int) -> bytes:
    return nv(0x55000001, struct.pack(">h", amount))


def li_keyboard(key_code: int, action: int, modifiers: int, flags: int = 0) -> bytes:
    # char flags; short keyCode (LE16); char modifiers; short zero2
    return nv(action, struct.pack("<BhBh", flags, key_code, modifiers, 0))


def qt_key(vk: int) -> int:
    """moonlight-qt: LiSendKeyboardEvent(0x8000 | keyCode, ...) passed as a C short."""
    return struct.unpack("<h", struct.pack("<H", 0x8000 | vk))[0]


def li_text(utf8: bytes) -> bytes:
    return nv(0x17, utf8)


def li_touch(kind: int, pid: int, x: float, y: float, p: float = 0.0, major: float = 0.0, minor: float = 0.0,
             rotation: int = 0xFFFF) -> bytes:  # fmt: skip
    return nv(0x55000002, struct.pack("<BBHI", kind, 0, rotation, pid) + struct.pack("<5f", x, y, p, major, minor))


def li_pen(kind: int, tool: int, buttons: int, x: float, y: float, p: float, rotation: int, tilt: int) -> bytes:
    return nv(0x55000003, struct.pack("<BBBB3fHBB2f", kind, tool, buttons, 0, x, y, p, rotation, tilt, 0, 0.0, 0.0))


def li_arrival(number: int, kind: int, caps: int, buttons: int) -> bytes:
    return nv(0x55000004, struct.pack("<BBHI", number, kind, caps, buttons))


def li_controller_touch(number: int, kind: int, pid: int, x: float, y: float, p: float) -> bytes:
    return nv(0x55000005, struct.pack("<BBBBIfff", number, kind, 0, 0, pid, x, y, p))


def li_motion(number: int, kind: int, x: float, y: float, z: float) -> bytes:
    return nv(0x55000006, struct.pack("<BBBBfff", number, kind, 0, 0, x, y, z))


def li_battery(number: int, state: int, pct: int) -> bytes:
    return nv(0x55000007, struct.pack("<BBBB", number, state, pct, 0))


def li_multi_controller(number: int, mask: int, flags: int, lt: int = 0, rt: int = 0, lx: int = 0, ly: int = 0,
                        rx: int = 0, ry: int = 0) -> bytes:  # fmt: skip
    lo = struct.unpack("<h", struct.pack("<H", flags & 0xFFFF))[0]  # LE16((short)buttonFlags)
    hi = struct.unpack("<h", struct.pack("<H", flags >> 16 & 0xFFFF))[0]  # LE16((short)(buttonFlags >> 16))
    body = struct.pack("<hhhhhBBhhhhhhh", 0x1A, number, mask, 0x14, lo, lt, rt, lx, ly, rx, ry, 0x9C, hi, 0x55)
    return nv(0x0C, body)


def li_haptics() -> bytes:
    return nv(0x0D, struct.pack("<H", 1))


def f32(v: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


# --- parsing -----------------------------------------------------------------------------------------
def test_packet_sizes_match_the_c_structs() -> None:
    # sizeof(NV_KEYBOARD_PACKET) 14, NV_MULTI_CONTROLLER_PACKET 34, SS_TOUCH_PACKET 36, SS_PEN_PACKET 36,
    # NV_ABS_MOUSE_MOVE_PACKET 18, SS_CONTROLLER_MOTION_PACKET 24
    assert len(li_keyboard(0x41, 3, 0)) == 14
    assert len(li_multi_controller(0, 1, 0)) == 34
    assert len(li_touch(1, 0, 0.5, 0.5)) == 36
    assert len(li_pen(1, 1, 0, 0.5, 0.5, 0.5, 0, 0)) == 36
    assert len(li_mouse_position(1, 1, 10, 10)) == 18
    assert len(li_motion(0, 1, 0.0, 0.0, 0.0)) == 24


def test_relative_mouse_move_is_big_endian_signed() -> None:
    assert wire.parse_input(li_mouse_move(-5, 300)) == wire.MouseMoveRelative(-5, 300)
    assert wire.parse_input(li_mouse_move(-32768, 32767)) == wire.MouseMoveRelative(-32768, 32767)


def test_absolute_position_keeps_the_reduced_reference_size() -> None:
    assert wire.parse_input(li_mouse_position(100, 50, 1280, 720)) == wire.MousePosition(100, 50, 1279, 719)


def test_mouse_buttons_press_and_release() -> None:
    assert wire.parse_input(li_mouse_button(0x07, 1)) == wire.MouseButton(1, True)
    assert wire.parse_input(li_mouse_button(0x08, 5)) == wire.MouseButton(5, False)


def test_vertical_and_horizontal_high_res_scroll() -> None:
    assert wire.parse_input(li_scroll(-60)) == wire.Scroll(-60)
    assert wire.parse_input(li_hscroll(240)) == wire.HScroll(240)


def test_keyboard_keeps_the_flag_bits_and_exposes_the_vk() -> None:
    event = wire.parse_input(li_keyboard(qt_key(0x41), 0x03, keymap.MODIFIER_SHIFT | keymap.MODIFIER_CTRL, 1))
    assert event == wire.KeyEvent(0x8041, True, 0x03, 1)
    assert isinstance(event, wire.KeyEvent) and event.vk == 0x41
    assert wire.parse_input(li_keyboard(0x0D, 0x04, 0)) == wire.KeyEvent(0x0D, False)


def test_utf8_text() -> None:
    assert wire.parse_input(li_text("é".encode())) == wire.Utf8Text("é")
    assert wire.parse_input(li_text("🐺".encode())) == wire.Utf8Text("🐺")
    assert wire.parse_input(li_text(b"hello")) == wire.Utf8Text("hello")  # older clients: whole strings


def test_touch_and_pen() -> None:
    touch = wire.parse_input(li_touch(wire.TOUCH_DOWN, 0xDEADBEEF, 0.25, 0.75, 0.5, 0.1, 0.05, 90))
    assert touch == wire.Touch(wire.TOUCH_DOWN, 0xDEADBEEF, 0.25, 0.75, 0.5, f32(0.1), f32(0.05), 90)
    pen = wire.parse_input(li_pen(wire.TOUCH_MOVE, wire.TOOL_ERASER, 3, 0.5, 0.125, 0.9, 180, 45))
    assert pen == wire.Pen(wire.TOUCH_MOVE, wire.TOOL_ERASER, 3, 0.5, 0.125, f32(0.9), 180, 45)


def test_controller_packets() -> None:
    arrival = wire.parse_input(li_arrival(3, wire.CONTROLLER_PS, 0xFF, 0x3FFFFF))
    assert arrival == wire.ControllerArrival(3, wire.CONTROLLER_PS, 0xFF, 0x3FFFFF)
    assert arrival.channel == control.CHANNEL_GAMEPAD_BASE + 3
    touch = wire.parse_input(li_controller_touch(1, 1, 7, 0.5, 0.25, 1.0))
    assert touch == wire.ControllerTouch(1, 1, 7, 0.5, 0.25, 1.0)
    motion = wire.parse_input(li_motion(2, wire.MOTION_GYRO, 1.5, -250.0, 0.0))
    assert motion == wire.ControllerMotion(2, wire.MOTION_GYRO, 1.5, -250.0, 0.0)
    assert motion.channel == control.CHANNEL_SENSOR_BASE + 2
    assert wire.parse_input(li_battery(0, 3, 80)) == wire.ControllerBattery(0, 3, 80)
    assert wire.parse_input(li_haptics()) == wire.EnableHaptics(True)


def test_multi_controller_joins_button_flags_and_flags2() -> None:
    # Y (0x8000) is negative as a C short; PADDLE1 and MISC travel in buttonFlags2.
    flags = wire.Y_FLAG | wire.A_FLAG | wire.PADDLE1_FLAG | wire.MISC_FLAG
    event = wire.parse_input(li_multi_controller(1, 0b11, flags, 255, 7, -32768, 32767, 100, -100))
    assert event == wire.MultiController(1, 0b11, flags, 255, 7, -32768, 32767, 100, -100)
    assert isinstance(event, wire.MultiController) and event.active


ROUND_TRIP: list[Any] = [
    wire.EnableHaptics(), wire.MouseMoveRelative(-1, 2), wire.MousePosition(5, 6, 1919, 1079),
    wire.MouseButton(wire.BUTTON_X1, True), wire.Scroll(120), wire.HScroll(-30), wire.KeyEvent(0x80A0, False, 1, 1),
    wire.Utf8Text("ü"), wire.Touch(wire.TOUCH_MOVE, 1, 0.5, 0.5, 0.25, 0.125, 0.0625, 359),
    wire.Pen(wire.TOUCH_HOVER, wire.TOOL_PEN, 1, 0.75, 0.25, 0.5, 0, 90, 0.5, 0.25),
    wire.ControllerArrival(15, wire.CONTROLLER_XBOX, wire.CAP_RUMBLE, 0xFFFF),
    wire.ControllerTouch(0, wire.TOUCH_UP, 2, 0.0, 1.0, 0.0),
    wire.ControllerMotion(4, wire.MOTION_ACCEL, 0.0, 9.75, -0.5),
    wire.ControllerBattery(1, wire.BATTERY_FULL, 100), wire.MultiController(0, 1, 0x3FFFFF, 1, 2, 3, 4, 5, 6),
]  # fmt: skip


@pytest.mark.parametrize("event", ROUND_TRIP, ids=lambda e: type(e).__name__)
def test_round_trip(event: Any) -> None:
    data = bytes(event)
    assert wire.parse_input(data) == event
    assert type(event).parse(data) == event


def test_bytes_match_the_c_layout() -> None:
    assert bytes(wire.KeyEvent(0x8041, True, 1)) == li_keyboard(qt_key(0x41), 0x03, 1)
    assert bytes(wire.MousePosition(100, 50, 1279, 719)) == li_mouse_position(100, 50, 1280, 720)
    flags = wire.B_FLAG | wire.TOUCHPAD_FLAG
    assert bytes(wire.MultiController(2, 0b101, flags, 9, 8, -1, 2, -3, 4)) == li_multi_controller(
        2, 0b101, flags, 9, 8, -1, 2, -3, 4
    )
    assert bytes(wire.Scroll(-120)) == li_scroll(-120)
    assert bytes(wire.MouseButton(3, False)) == li_mouse_button(0x08, 3)


MALFORMED = [
    ("empty", b"", wire.InputTruncatedError),
    ("short header", b"\x00\x00\x00\x04\x07\x00", wire.InputTruncatedError),
    ("size says more than sent", li_mouse_move(1, 1)[:-1], wire.InputTruncatedError),
    ("size too small for the magic", struct.pack(">I", 3) + b"\x07\x00\x00\x00", wire.InputLengthError),
    ("trailing bytes", li_mouse_move(1, 1) + b"\x00", wire.InputLengthError),
    ("body short for its type", nv(0x03, b"\x00\x41\x00"), wire.InputTruncatedError),
    ("oversized", li_text(b"a" * 1100), wire.InputOversizedError),
    ("unknown magic", nv(0x55000099, b"\x00" * 8), wire.UnknownInputError),
    ("legacy gen3 controller magic", nv(0x0B, b"\x00" * 4), wire.UnknownInputError),
    ("invalid utf-8", li_text(b"\xc3"), wire.InputValueError),
    ("NaN touch", li_touch(wire.TOUCH_DOWN, 1, math.nan, 0.5), wire.InputValueError),
    ("infinite pressure", li_touch(wire.TOUCH_MOVE, 1, 0.5, 0.5, math.inf), wire.InputValueError),
    ("touch far off screen", li_touch(wire.TOUCH_MOVE, 1, 5.0, 0.5), wire.InputValueError),
    ("unknown touch type", li_touch(8, 1, 0.5, 0.5), wire.InputValueError),
    ("touch rotation", li_touch(wire.TOUCH_DOWN, 1, 0.5, 0.5, rotation=720), wire.InputValueError),
    ("pen tilt", li_pen(wire.TOUCH_DOWN, 1, 0, 0.5, 0.5, 0.5, 0, 120), wire.InputValueError),
    ("pen tool", li_pen(wire.TOUCH_DOWN, 7, 0, 0.5, 0.5, 0.5, 0, 0), wire.InputValueError),
    ("mouse far off screen", li_mouse_position(30000, 10, 1280, 720), wire.InputValueError),
    ("zero reference size", li_mouse_position(0, 0, 1, 720), wire.InputValueError),
    ("mouse button 6", li_mouse_button(0x07, 6), wire.InputValueError),
    ("mouse button 0", li_mouse_button(0x07, 0), wire.InputValueError),
    ("controller 16", li_multi_controller(16, 1, 0), wire.InputValueError),
    ("negative controller", li_multi_controller(-1, 1, 0), wire.InputValueError),
    ("arrival controller 200", li_arrival(200, 1, 0, 0), wire.InputValueError),
    ("motion NaN", li_motion(0, wire.MOTION_ACCEL, 0.0, math.nan, 0.0), wire.InputValueError),
    ("motion inf", li_motion(0, wire.MOTION_GYRO, math.inf, 0.0, 0.0), wire.InputValueError),
    ("motion type 3", li_motion(0, 3, 0.0, 0.0, 0.0), wire.InputValueError),
    ("battery state", li_battery(0, 9, 50), wire.InputValueError),
    ("battery percent", li_battery(0, 2, 101), wire.InputValueError),
    ("controller touch NaN", li_controller_touch(0, 1, 0, math.nan, 0.0, 0.0), wire.InputValueError),
]  # fmt: skip


@pytest.mark.parametrize(("data", "error"), [(d, e) for _, d, e in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_packets_raise_specific_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        wire.parse_input(data)
    assert isinstance(info.value, wire.InputError) and isinstance(info.value, ProtocolError)
    assert info.value.message


def test_values_clients_do_send_still_parse() -> None:
    # LiSendMouseMoveAsMousePositionEvent clamps to referenceWidth but sends width - 1.
    assert wire.parse_input(li_mouse_position(1280, 720, 1280, 720)) == wire.MousePosition(1280, 720, 1279, 719)
    # A touch dragged off the letterboxed video area, and a cancel whose other fields are garbage.
    assert isinstance(wire.parse_input(li_touch(wire.TOUCH_MOVE, 1, -0.2, 1.3)), wire.Touch)
    assert isinstance(wire.parse_input(li_touch(wire.TOUCH_CANCEL_ALL, 0, math.nan, math.inf)), wire.Touch)
    # Forks append fields to a struct: hosts read what they know.
    assert wire.parse_input(nv(0x07, struct.pack(">hh", 1, 2) + b"\x00\x00")) == wire.MouseMoveRelative(1, 2)


def test_parse_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(wire.UnknownInputError):
        wire.KeyEvent.parse(li_mouse_move(1, 1))


# --- host -> client feedback ----------------------------------------------------------------------------
def test_feedback_layouts_match_sunshine() -> None:
    # control_set_motion_event_t: LE16 id, LE16 reportrate, u8 type (ControlStream.c reads the same order)
    msg = wire.SetMotionEvent(controller=2, motion_type=wire.MOTION_GYRO, report_rate_hz=250)
    assert bytes(msg) == struct.pack("<HHB", 2, 250, 2) and msg.TYPE == 0x5501
    assert wire.SetMotionEvent.parse(bytes(msg)) == msg
    trig = wire.SetAdaptiveTriggers(1, wire.DS_EFFECT_LEFT_TRIGGER, 0x21, 0x26, bytes(range(10)), bytes(range(10, 20)))
    assert bytes(trig) == struct.pack("<HBBB", 1, 8, 0x21, 0x26) + bytes(range(20)) and trig.TYPE == 0x5503
    assert wire.SetAdaptiveTriggers.parse(bytes(trig)) == trig
    # Rumble, trigger rumble and LED come from control.py (control_rumble_t: LE32 0, LE16 id, low, high)
    assert wire.Rumble is control.Rumble
    assert bytes(wire.Rumble(1, 0x1234, 0xABCD)) == struct.pack("<IHHH", 0, 1, 0x1234, 0xABCD)
    assert bytes(wire.RumbleTriggers(0, 5, 6)) == struct.pack("<HHH", 0, 5, 6)
    with pytest.raises(control.ControlLengthError):
        wire.SetMotionEvent.parse(b"\x00\x00\x00")
    with pytest.raises(control.ControlLengthError):
        wire.SetAdaptiveTriggers.parse(bytes(24))


# --- keymap --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("vk", "code"), [
    (0x41, 30), (0x5A, 44), (0x30, 11), (0x31, 2), (0x0D, 28), (0x1B, 1), (0x08, 14), (0x20, 57),
    (0xA0, 42), (0xA1, 54), (0xA2, 29), (0xA3, 97), (0xA4, 56), (0xA5, 100), (0x5B, 125), (0x10, 42),
    (0xBA, 39), (0xDE, 40), (0xC0, 41), (0xE2, 86), (0x60, 82), (0x61, 79), (0x67, 71), (0x69, 73),
    (0x6E, 83), (0x6F, 98), (0x70, 59), (0x7A, 87), (0x7B, 88), (0x7C, 183), (0x85, 192), (0x87, 194),
    (0x25, 105), (0x26, 103), (0x2E, 111), (0xAD, 113), (0xB3, 164), (0x2C, 99),
])  # fmt: skip
def test_vk_to_evdev_spot_checks(vk: int, code: int) -> None:
    assert keymap.evdev_from_vk(vk) == code
    assert keymap.evdev_from_vk(0x8000 | vk) == code  # moonlight-qt's flag bit is ignored


def test_every_key_moonlight_qt_sends_is_mapped() -> None:
    # app/streaming/input/keyboard.cpp: digits, letters, F1-F24, keypad, and its explicit switch.
    sent = [*range(0x30, 0x3A), *range(0x41, 0x5B), *range(0x70, 0x88), *range(0x60, 0x70)]
    sent += [0x08, 0x09, 0x0C, 0x0D, 0x13, 0x14, 0x1B, *range(0x20, 0x2A), 0x2B, 0x2C, 0x2D, 0x2E, 0x2F,
             0x90, 0x91, *range(0xA0, 0xAD), 0x5B, 0x5C, 0x5D, *range(0xBA, 0xC1), *range(0xDB, 0xDF), 0xE2,
             0x1C, 0x1D]  # fmt: skip
    missing = [hex(vk) for vk in sent if keymap.evdev_from_vk(vk) is None]
    assert not missing


def test_unknown_vk_has_no_key() -> None:
    assert keymap.evdev_from_vk(0x07) is None
    assert keymap.evdev_from_vk(0xFF) is None


HEADER = Path("/usr/include/linux/input-event-codes.h")


@pytest.mark.skipif(not HEADER.exists(), reason="no kernel headers")
def test_evdev_codes_match_the_kernel_header() -> None:
    defines = dict(re.findall(r"#define\s+(KEY_\w+)\s+(0x[0-9a-fA-F]+|\d+)", HEADER.read_text()))
    for code, name in keymap.EVDEV_NAMES.items():
        assert int(defines[name], 0) == code, name


def test_xkb_keycode_and_modifier_masks() -> None:
    assert keymap.xkb_keycode(30) == 38  # KEY_A -> <AC01> = 38
    assert keymap.xkb_mods_mask(keymap.MODIFIER_SHIFT) == 0x01
    assert keymap.xkb_mods_mask(keymap.MODIFIER_CTRL | keymap.MODIFIER_ALT) == 0x04 | 0x08
    assert keymap.xkb_mods_mask(keymap.MODIFIER_META) == 0x40  # Mod4
    assert keymap.modifiers_held({42, 97, 30}) == keymap.MODIFIER_SHIFT | keymap.MODIFIER_CTRL


# --- router -------------------------------------------------------------------------------------------
class RecordingSeat:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("pointer_", "key", "text", "touch_")):
            return lambda *args: self.calls.append((name, *args))
        raise AttributeError(name)

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


def router(size: tuple[int, int] = (1920, 1080), **kw: Any) -> tuple[InputRouter, RecordingSeat, FakeBackend]:
    seat, backend = RecordingSeat(), FakeBackend(**kw)
    return InputRouter(seat, backend, size), seat, backend


def test_absolute_position_scales_to_the_output() -> None:
    r, seat, _ = router((1920, 1080))
    r.feed(li_mouse_position(0, 0, 1280, 720))
    r.feed(li_mouse_position(1279, 719, 1280, 720))
    r.feed(li_mouse_position(1280, 720, 1280, 720))  # the +1 overshoot lands on the edge
    assert seat.take() == [("pointer_motion", 0.0, 0.0), ("pointer_motion", 1919.0, 1079.0),
                           ("pointer_motion", 1919.0, 1079.0)]  # fmt: skip
    r.feed(li_mouse_position(640, 360, 1280, 720))
    [(_, x, y)] = seat.take()
    assert x == pytest.approx(640 * 1919 / 1279) and y == pytest.approx(360 * 1079 / 719)


def test_absolute_position_is_pixel_exact_at_the_same_size() -> None:
    r, seat, _ = router((1280, 720))
    r.feed(li_mouse_position(100, 717, 1280, 720))
    assert seat.take() == [("pointer_motion", 100.0, 717.0)]


def test_absurd_coordinates_are_dropped_and_counted() -> None:
    r, seat, _ = router()
    assert r.feed(li_mouse_position(30000, 5, 1280, 720)) is None
    assert r.feed(li_touch(wire.TOUCH_DOWN, 1, math.nan, 0.5)) is None
    assert seat.take() == []
    assert r.stats.dropped == 2 and r.stats.errors["InputValueError"] == 2 and r.stats.delivered == 0


def test_relative_motion_buttons_and_scroll() -> None:
    r, seat, _ = router()
    r.feed(li_mouse_move(3, -4))
    r.feed(li_mouse_button(0x07, 3))
    r.feed(li_mouse_button(0x07, 3))  # a repeated press changes nothing
    r.feed(li_mouse_button(0x08, 3))
    r.feed(li_mouse_button(0x07, 4))
    r.feed(li_scroll(120))  # wheel away from the user = Wayland negative
    r.feed(li_hscroll(-30))
    assert seat.take() == [
        ("pointer_relative", 3.0, -4.0), ("pointer_button", 0x111, True), ("pointer_button", 0x111, False),
        ("pointer_button", 0x113, True), ("pointer_axis", -120, 0), ("pointer_axis", 0, -30),
    ]  # fmt: skip
    assert r.stats.ignored["button already in that state"] == 1


def test_keys_press_release_and_duplicates() -> None:
    r, seat, _ = router()
    r.feed(li_keyboard(qt_key(0x41), 0x03, 0))
    r.feed(li_keyboard(qt_key(0x41), 0x03, 0))
    r.feed(li_keyboard(qt_key(0x41), 0x04, 0))
    r.feed(li_keyboard(qt_key(0x41), 0x04, 0))
    r.feed(li_keyboard(0x07, 0x03, 0))  # no such key
    assert seat.take() == [("key", 30, True), ("key", 30, False)]
    assert r.stats.ignored["unmapped key"] == 1 and r.stats.ignored["key already in that state"] == 2


def test_modifier_bits_without_a_modifier_key_are_synthesised() -> None:
    r, seat, _ = router()
    r.feed(li_keyboard(0x41, 0x03, keymap.MODIFIER_SHIFT | keymap.MODIFIER_META))  # META is never synthesised
    assert seat.take() == [("key", 42, True), ("key", 30, True), ("key", 42, False)]
    r.feed(li_keyboard(0x41, 0x04, keymap.MODIFIER_SHIFT))
    r.feed(li_keyboard(0xA1, 0x03, keymap.MODIFIER_SHIFT))  # a real right shift
    r.feed(li_keyboard(0x42, 0x03, keymap.MODIFIER_SHIFT))
    assert seat.take() == [("key", 30, False), ("key", 54, True), ("key", 48, True)]


def test_close_releases_everything_once() -> None:
    r, seat, backend = router()
    for vk in (0xA2, 0xA0, 0x43):
        r.feed(li_keyboard(qt_key(vk), 0x03, 0))
    r.feed(li_mouse_button(0x07, 1))
    r.feed(li_touch(wire.TOUCH_DOWN, 99, 0.5, 0.5))
    r.feed(li_arrival(0, wire.CONTROLLER_XBOX, 0, 0))
    assert r.pressed_keys == (29, 42, 46)
    seat.take()
    r.close()
    assert seat.take() == [("key", 46, False), ("key", 42, False), ("key", 29, False), ("pointer_button", 0x110, False),
                           ("touch_up", 0), ("touch_frame",)]  # fmt: skip
    pad = backend.created[0]
    assert pad.removed and pad.states[-1] == GamepadState() and backend.closed
    r.close()
    assert r.feed(li_keyboard(0x41, 0x03, 0)) is None
    assert seat.take() == [] and r.stats.ignored["session closed"] == 1


def test_bad_input_leaves_state_untouched() -> None:
    r, seat, _ = router()
    r.feed(li_keyboard(0x41, 0x03, 0))
    for junk in (b"\xff" * 3, li_keyboard(0x41, 0x04, 0)[:-2], nv(0x77, b""), li_text(b"\xff\xfe")):
        assert r.feed(junk) is None
    assert r.pressed_keys == (30,)
    r.feed(li_keyboard(0x41, 0x04, 0))
    assert seat.take() == [("key", 30, True), ("key", 30, False)]
    assert r.stats.errors.total() == 4 and r.stats.packets == 6


def test_text_is_forwarded() -> None:
    r, seat, _ = router()
    r.feed(li_text("ß".encode()))
    assert seat.take() == [("text", "ß")]


def test_touch_contacts_map_to_small_ids_with_frames() -> None:
    r, seat, _ = router((1001, 501))
    r.feed(li_touch(wire.TOUCH_DOWN, 0xFFFFFFF0, 0.5, 0.5))
    r.feed(li_touch(wire.TOUCH_DOWN, 7, 0.0, 1.0))
    r.feed(li_touch(wire.TOUCH_MOVE, 0xFFFFFFF0, 1.2, -0.1))  # clamped to the output
    r.feed(li_touch(wire.TOUCH_UP, 0xFFFFFFF0, 1.0, 0.0))
    r.feed(li_touch(wire.TOUCH_DOWN, 8, 0.125, 0.125))  # reuses the freed id 0
    r.feed(li_touch(wire.TOUCH_MOVE, 1234, 0.5, 0.5))  # never went down
    r.feed(li_touch(wire.TOUCH_HOVER, 5, 0.5, 0.5))
    r.feed(li_touch(wire.TOUCH_CANCEL_ALL, 0, 0.0, 0.0))
    assert seat.take() == [
        ("touch_down", 0, 500.0, 250.0), ("touch_frame",), ("touch_down", 1, 0.0, 500.0), ("touch_frame",),
        ("touch_motion", 0, 1000.0, 0.0), ("touch_frame",), ("touch_up", 0), ("touch_frame",),
        ("touch_down", 0, 125.0, 62.5), ("touch_frame",), ("touch_up", 1), ("touch_up", 0), ("touch_frame",),
    ]  # fmt: skip
    assert r.stats.ignored["touch event without an active contact"] == 1 and r.stats.ignored["touch hover"] == 1


def test_pen_drives_the_pointer() -> None:
    r, seat, _ = router((101, 101))
    r.feed(li_pen(wire.TOUCH_HOVER, 1, 0, 0.5, 0.5, 0.5, 0, 0))
    r.feed(li_pen(wire.TOUCH_DOWN, 1, 0, 0.25, 0.5, 0.5, 0, 0))
    r.feed(li_pen(wire.TOUCH_BUTTON_ONLY, 1, wire.PEN_BUTTON_PRIMARY, 0.0, 0.0, 0.0, 0, 0))
    r.feed(li_pen(wire.TOUCH_UP, 1, 0, 0.25, 0.5, 0.0, 0, 0))
    assert seat.take() == [
        ("pointer_motion", 50.0, 50.0), ("pointer_motion", 25.0, 50.0), ("pointer_button", 0x110, True),
        ("pointer_button", 0x111, True), ("pointer_button", 0x110, False), ("pointer_button", 0x111, False),
    ]  # fmt: skip


def test_gamepads_arrive_update_report_and_leave() -> None:
    sent: list[Any] = []
    seat, backend = RecordingSeat(), FakeBackend()
    r = InputRouter(seat, backend, (1280, 720), send_feedback=sent.append)
    r.feed(li_arrival(1, wire.CONTROLLER_PS, wire.CAP_RUMBLE | wire.CAP_GYRO, 0x3FFFFF))
    r.feed(li_multi_controller(1, 0b10, 0, 0, 0, 0, 0, 0, 0))  # the empty event that follows every arrival
    r.feed(li_multi_controller(1, 0b10, wire.A_FLAG | wire.PADDLE2_FLAG, 200, 0, -5, 5, 0, 32767))
    r.feed(li_motion(1, wire.MOTION_ACCEL, 0.0, 9.75, 0.0))
    r.feed(li_battery(1, 2, 40))
    r.feed(li_controller_touch(1, wire.TOUCH_DOWN, 0, 0.5, 0.5, 1.0))
    pad = backend.created[0]
    assert isinstance(pad, FakeGamepad) and (pad.number, pad.kind, pad.capabilities) == (1, 2, 0x22)
    assert pad.states == [GamepadState(), GamepadState(wire.A_FLAG | wire.PADDLE2_FLAG, 200, 0, -5, 5, 0, 32767)]
    assert pad.motions == [(1, 0.0, 9.75, 0.0)] and pad.batteries == [(2, 40)]
    assert pad.touches == [(1, 0, 0.5, 0.5, 1.0)]
    pad.rumble(0x4000, 0xFFFF)  # the app asked for force feedback
    assert sent == [control.Rumble(1, 0x4000, 0xFFFF)]
    assert bytes(sent[0]) == struct.pack("<IHHH", 0, 1, 0x4000, 0xFFFF)
    r.feed(li_arrival(1, wire.CONTROLLER_PS, 0, 0))  # already there
    r.feed(li_multi_controller(1, 0b00, 0))  # removal: its bit cleared
    assert pad.removed and r.gamepads == {} and len(backend.created) == 1
    r.feed(li_motion(1, wire.MOTION_GYRO, 0.0, 0.0, 0.0))
    assert r.stats.ignored == {"controller already present": 1, "controller not present": 1}
    assert seat.take() == []


def test_a_state_packet_announces_a_pad_for_legacy_clients() -> None:
    r, _, backend = router()
    r.feed(li_multi_controller(0, 0b1, wire.B_FLAG))
    assert [(p.number, p.kind) for p in backend.created] == [(0, wire.CONTROLLER_UNKNOWN)]
    assert backend.created[0].states == [GamepadState(buttons=wire.B_FLAG)]


def test_gamepad_creation_failure_is_counted() -> None:
    r, _, _ = router(fail=True)
    r.feed(li_arrival(0, 1, 0, 0))
    r.feed(li_multi_controller(0, 1, wire.A_FLAG))
    assert r.gamepads == {} and r.stats.ignored["gamepad creation failed"] == 2


def test_a_failing_seat_does_not_raise_out_of_feed(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenSeat(RecordingSeat):
        def key(self, code: int, pressed: bool) -> None:
            raise RuntimeError("seat bug")

    r = InputRouter(BrokenSeat(), FakeBackend(), (640, 480))
    with caplog.at_level(logging.ERROR):
        assert isinstance(r.feed(li_keyboard(0x41, 0x03, 0)), wire.KeyEvent)
    assert r.stats.errors["delivery"] == 1 and "delivering KeyEvent failed" in caplog.text


def test_sessions_do_not_share_state() -> None:
    a, seat_a, _ = router()
    b, seat_b, _ = router()
    a.feed(li_keyboard(0x41, 0x03, 0))
    for _ in range(50):
        b.feed(b"\x00" * 9)
    a.close()
    assert b.pressed_keys == () and seat_b.take() == [] and b.stats.dropped == 50
    assert seat_a.take() == [("key", 30, True), ("key", 30, False)] and a.stats.dropped == 0


# --- device backends ----------------------------------------------------------------------------------
def test_null_backend_logs_once_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    backend = NullBackend("/dev/uinput missing")
    r = InputRouter(RecordingSeat(), backend, (640, 480))
    with caplog.at_level(logging.WARNING):
        r.feed(li_arrival(0, 1, 0, 0))
        r.feed(li_arrival(1, 1, 0, 0))
        r.feed(li_multi_controller(0, 0b11, wire.A_FLAG))
    assert caplog.text.count("gamepads unavailable: /dev/uinput missing") == 1
    assert backend.events == 3


def test_select_backend_explains_a_missing_device(tmp_path: Path) -> None:
    backend = select_backend(devnode=str(tmp_path / "uinput"))
    assert isinstance(backend, NullBackend) and backend.reason.endswith("uinput missing")


def test_uinput_backend_without_python_evdev_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "evdev", None)
    with pytest.raises(GamepadUnavailable, match="python-evdev is not installed"):
        UinputBackend()


class FakeUInput:
    """Just enough of python-evdev's UInput to drive UinputGamepad."""

    def __init__(self, caps: dict[int, Any], **kw: Any) -> None:
        self.caps, self.kw = caps, kw
        self.fd = 7
        self.written: list[tuple[int, int, int]] = []
        self.pending: list[Any] = []
        self.uploads: dict[int, Any] = {}
        self.closed = False

    def write(self, etype: int, code: int, value: int) -> None:
        self.written.append((etype, code, value))

    def syn(self) -> None:
        self.written.append((0, 0, 0))

    def read(self) -> list[Any]:
        events, self.pending = self.pending, []
        return events

    def begin_upload(self, request: int) -> Any:
        return self.uploads[request]

    def end_upload(self, upload: Any) -> None:
        assert upload.retval == 0

    def close(self) -> None:
        self.closed = True


def fake_evdev() -> Any:
    codes = dict(EV_SYN=0, EV_KEY=1, EV_ABS=3, EV_FF=0x15, EV_UINPUT=0x0101, UI_FF_UPLOAD=1, UI_FF_ERASE=2,
                 BTN_SOUTH=0x130, BTN_EAST=0x131, BTN_NORTH=0x133, BTN_WEST=0x134, BTN_TL=0x136, BTN_TR=0x137,
                 BTN_SELECT=0x13A, BTN_START=0x13B, BTN_MODE=0x13C, BTN_THUMBL=0x13D, BTN_THUMBR=0x13E,
                 ABS_X=0, ABS_Y=1, ABS_Z=2, ABS_RX=3, ABS_RY=4, ABS_RZ=5, ABS_HAT0X=0x10, ABS_HAT0Y=0x11,
                 FF_RUMBLE=0x50, FF_PERIODIC=0x51, FF_SINE=0x5A, FF_GAIN=0x60)  # fmt: skip
    codes.update({f"BTN_TRIGGER_HAPPY{i}": 0x2BF + i for i in range(1, 7)})
    devices: list[FakeUInput] = []

    def make(caps: dict[int, Any], **kw: Any) -> FakeUInput:
        devices.append(FakeUInput(caps, **kw))
        return devices[-1]

    absinfo = namedtuple("AbsInfo", "value min max fuzz flat resolution")
    return SimpleNamespace(ecodes=SimpleNamespace(**codes), AbsInfo=absinfo, UInput=make, UInputError=OSError,
                           devices=devices)  # fmt: skip


def test_uinput_gamepad_writes_xpad_events_and_turns_force_feedback_into_rumble() -> None:
    evdev = fake_evdev()
    sent: list[Any] = []
    backend = UinputBackend(evdev=evdev, loop=None)
    pad = backend.create(2, wire.CONTROLLER_XBOX, wire.CAP_RUMBLE, 0xFFFF, sent.append)
    ui = evdev.devices[0]
    assert ui.kw["vendor"] == 0x045E and ui.kw["product"] == 0x028E
    pad.update(GamepadState(wire.A_FLAG | wire.UP_FLAG, 255, 0, 100, 200, -32768, -32768))
    e = evdev.ecodes
    assert (e.EV_KEY, e.BTN_SOUTH, 1) in ui.written and (e.EV_ABS, e.ABS_Z, 255) in ui.written
    assert (e.EV_ABS, e.ABS_Y, -200) in ui.written and (e.EV_ABS, e.ABS_RY, 32767) in ui.written
    assert (e.EV_ABS, e.ABS_HAT0Y, -1) in ui.written and ui.written[-1] == (0, 0, 0)
    # An app uploads an FF_RUMBLE effect, plays it, then stops it.
    rumble = SimpleNamespace(strong_magnitude=0x8000, weak_magnitude=0x1000)
    effect = SimpleNamespace(type=e.FF_RUMBLE, id=0, u=SimpleNamespace(ff_rumble_effect=rumble),
                             ff_replay=SimpleNamespace(length=0))  # fmt: skip
    ui.uploads[5] = SimpleNamespace(effect=effect, retval=-1)
    Event = namedtuple("Event", "type code value")
    ui.pending = [Event(e.EV_UINPUT, e.UI_FF_UPLOAD, 5), Event(e.EV_FF, 0, 1), Event(e.EV_FF, 0, 0)]
    pad._on_readable()  # type: ignore[attr-defined]
    assert sent == [control.Rumble(2, 0x8000, 0x1000), control.Rumble(2, 0, 0)]
    pad.remove()
    assert ui.closed
