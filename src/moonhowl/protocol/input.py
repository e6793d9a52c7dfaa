"""Moonlight input packets (control message 0x0206) and the host's gamepad feedback messages (sans-IO).

Every input packet is one control payload, laid out as moonlight-common-c ``Input.h`` declares it
(``#pragma pack(1)``) and ``InputStream.c`` fills it::

    BE32 size (bytes after this field) | LE32 magic | body

Inside the bodies the byte order is the C struct's: mouse motion, position and scroll fields are
big-endian (``BE16()`` in InputStream.c, ``util::endian::big`` in Sunshine ``src/input.cpp``);
everything else is little-endian, and a "netfloat" is a little-endian IEEE-754 float32.
The magics are those a client uses against a generation 7 host (``AppVersionQuad[0] >= 5``:
the ``*_GEN5`` values) plus Sunshine's ``SS_*`` extensions, which clients send because our
``appversion`` has a negative fourth field.

``parse_input`` raises a specific :class:`InputError` for every malformed packet and never returns
half-parsed data. Values a real client cannot produce (non-finite floats, coordinates far outside
the video area, controller numbers past 16, unknown event types) raise :class:`InputValueError`;
small overshoots that clients do send (touches dragged past the edge of the video, the +1 of
``LiSendMouseMoveAsMousePositionEvent``) parse, and the router clamps them.

Host -> client feedback (``Rumble``, ``RumbleTriggers``, ``SetRgbLed`` live in :mod:`control`):
``SetMotionEvent`` 0x5501 and ``SetAdaptiveTriggers`` 0x5503, as Sunshine ``src/stream.cpp``
writes them and moonlight-common-c ``ControlStream.c`` reads them (little-endian).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self, TypeAlias, cast

from moonhowl.protocol import control
from moonhowl.protocol.control import Rumble, RumbleTriggers, SetRgbLed
from moonhowl.protocol.errors import ProtocolError

__all__ = [
    "ControllerArrival", "ControllerBattery", "ControllerMotion", "ControllerTouch", "EnableHaptics",
    "FeedbackMessage", "HScroll", "InputError", "InputEvent", "InputLengthError", "InputOversizedError",
    "InputTruncatedError", "InputValueError", "KeyEvent", "MouseButton", "MouseMoveRelative",
    "MousePosition", "MultiController", "Pen", "Rumble", "RumbleTriggers", "Scroll", "SetAdaptiveTriggers",
    "SetMotionEvent", "SetRgbLed", "Touch", "UnknownInputError", "Utf8Text", "parse_input",
]  # fmt: skip

# The largest packet we accept. Clients send at most a 128-byte NV_INPUT packet
# (MAX_INPUT_PACKET_SIZE in InputStream.c) and split UTF-8 text into one code point per packet.
MAX_INPUT_PACKET: Final = 1024
HEADER_SIZE: Final = 8
MAX_GAMEPADS: Final = 16  # bits in activeGamepadMask; Sunshine's limit too

# Magics (Input.h)
KEY_DOWN_MAGIC: Final = 0x03
KEY_UP_MAGIC: Final = 0x04
MOUSE_MOVE_ABS_MAGIC: Final = 0x05
MOUSE_MOVE_REL_MAGIC: Final = 0x07  # MOUSE_MOVE_REL_MAGIC_GEN5
MOUSE_BUTTON_DOWN_MAGIC: Final = 0x08  # BUTTON_ACTION_PRESS (7) + 1 on gen 5+
MOUSE_BUTTON_UP_MAGIC: Final = 0x09
SCROLL_MAGIC: Final = 0x0A  # SCROLL_MAGIC_GEN5
MULTI_CONTROLLER_MAGIC: Final = 0x0C  # MULTI_CONTROLLER_MAGIC_GEN5
ENABLE_HAPTICS_MAGIC: Final = 0x0D  # sent once at stream start by clients for hosts >= 7.1
UTF8_TEXT_MAGIC: Final = 0x17
SS_HSCROLL_MAGIC: Final = 0x55000001
SS_TOUCH_MAGIC: Final = 0x55000002
SS_PEN_MAGIC: Final = 0x55000003
SS_CONTROLLER_ARRIVAL_MAGIC: Final = 0x55000004
SS_CONTROLLER_TOUCH_MAGIC: Final = 0x55000005
SS_CONTROLLER_MOTION_MAGIC: Final = 0x55000006
SS_CONTROLLER_BATTERY_MAGIC: Final = 0x55000007

# Mouse buttons (Limelight.h BUTTON_*)
BUTTON_LEFT: Final = 1
BUTTON_MIDDLE: Final = 2
BUTTON_RIGHT: Final = 3
BUTTON_X1: Final = 4
BUTTON_X2: Final = 5
WHEEL_DELTA: Final = 120  # LI_WHEEL_DELTA: one detent; high-resolution amounts are in 120ths

# Touch and pen event types (Limelight.h LI_TOUCH_EVENT_*)
TOUCH_HOVER: Final = 0x00
TOUCH_DOWN: Final = 0x01
TOUCH_UP: Final = 0x02
TOUCH_MOVE: Final = 0x03
TOUCH_CANCEL: Final = 0x04
TOUCH_BUTTON_ONLY: Final = 0x05
TOUCH_HOVER_LEAVE: Final = 0x06
TOUCH_CANCEL_ALL: Final = 0x07
ROTATION_UNKNOWN: Final = 0xFFFF
TILT_UNKNOWN: Final = 0xFF
TOOL_UNKNOWN: Final = 0x00
TOOL_PEN: Final = 0x01
TOOL_ERASER: Final = 0x02
PEN_BUTTON_PRIMARY: Final = 0x01
PEN_BUTTON_SECONDARY: Final = 0x02
PEN_BUTTON_TERTIARY: Final = 0x04

# Gamepads (Limelight.h): button flags; bits 16+ travel in buttonFlags2 (Sunshine only)
UP_FLAG: Final = 0x0001
DOWN_FLAG: Final = 0x0002
LEFT_FLAG: Final = 0x0004
RIGHT_FLAG: Final = 0x0008
PLAY_FLAG: Final = 0x0010
BACK_FLAG: Final = 0x0020
LS_CLK_FLAG: Final = 0x0040
RS_CLK_FLAG: Final = 0x0080
LB_FLAG: Final = 0x0100
RB_FLAG: Final = 0x0200
SPECIAL_FLAG: Final = 0x0400
A_FLAG: Final = 0x1000
B_FLAG: Final = 0x2000
X_FLAG: Final = 0x4000
Y_FLAG: Final = 0x8000
PADDLE1_FLAG: Final = 0x010000
PADDLE2_FLAG: Final = 0x020000
PADDLE3_FLAG: Final = 0x040000
PADDLE4_FLAG: Final = 0x080000
TOUCHPAD_FLAG: Final = 0x100000
MISC_FLAG: Final = 0x200000
CONTROLLER_UNKNOWN: Final = 0x00
CONTROLLER_XBOX: Final = 0x01
CONTROLLER_PS: Final = 0x02
CONTROLLER_NINTENDO: Final = 0x03
CAP_ANALOG_TRIGGERS: Final = 0x01
CAP_RUMBLE: Final = 0x02
CAP_TRIGGER_RUMBLE: Final = 0x04
CAP_TOUCHPAD: Final = 0x08
CAP_ACCEL: Final = 0x10
CAP_GYRO: Final = 0x20
CAP_BATTERY_STATE: Final = 0x40
CAP_RGB_LED: Final = 0x80
MOTION_ACCEL: Final = 0x01  # m/s^2, gravity included
MOTION_GYRO: Final = 0x02  # deg/s
BATTERY_UNKNOWN: Final = 0x00
BATTERY_FULL: Final = 0x05
BATTERY_PERCENTAGE_UNKNOWN: Final = 0xFF
# Constants the client writes into NV_MULTI_CONTROLLER_PACKET (MC_HEADER_B etc.); hosts ignore them.
_MC_HEADER_B: Final = 0x001A
_MC_MID_B: Final = 0x0014
_MC_TAIL_A: Final = 0x009C
_MC_TAIL_B: Final = 0x0055

# Normalised coordinates must lie within one video size of the 0..1 range; sensor readings within
# this magnitude (gyro peaks at a few thousand deg/s, accelerometers at ~160 m/s^2).
_NORMALISED_MIN, _NORMALISED_MAX = -1.0, 2.0
_MAX_MOTION: Final = 1e5

_BE32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


class InputError(ProtocolError):
    """An input packet that cannot be accepted."""


class InputTruncatedError(InputError):
    """Shorter than the 8-byte header, than its size field says, or than its type's body."""


class InputOversizedError(InputError):
    """Longer than MAX_INPUT_PACKET bytes."""


class InputLengthError(InputError):
    """The size field disagrees with the payload: too small for the magic, or bytes trail it."""


class UnknownInputError(InputError):
    """A magic no client sends to a generation 7 host (or not the type asked for)."""


class InputValueError(InputError):
    """A field holds a value no client produces: NaN, far-off coordinates, unknown event type..."""


def _split(payload: bytes) -> tuple[int, bytes]:
    if len(payload) > MAX_INPUT_PACKET:
        raise InputOversizedError(f"input packet of {len(payload)} bytes exceeds {MAX_INPUT_PACKET}")
    if len(payload) < HEADER_SIZE:
        raise InputTruncatedError(f"input packet of {len(payload)} bytes is shorter than its 8-byte header")
    size = _BE32.unpack_from(payload)[0]
    if size < 4:
        raise InputLengthError(f"input size field {size} cannot even hold the magic")
    if size > len(payload) - 4:
        raise InputTruncatedError(f"input size field says {size} bytes follow, {len(payload) - 4} do")
    if size < len(payload) - 4:
        raise InputLengthError(f"{len(payload) - 4 - size} bytes trail the {size} the input size field covers")
    return _LE32.unpack_from(payload, 4)[0], payload[HEADER_SIZE:]


def _finite(name: str, *values: float, low: float = _NORMALISED_MIN, high: float = _NORMALISED_MAX) -> None:
    for v in values:
        if not math.isfinite(v) or not low <= v <= high:
            raise InputValueError(f"{name} {v!r} outside [{low:g}, {high:g}]")


def _controller(number: int) -> None:
    if not 0 <= number < MAX_GAMEPADS:
        raise InputValueError(f"controller number {number} outside 0..{MAX_GAMEPADS - 1}")


def _touch_type(event_type: int) -> None:
    if event_type > TOUCH_CANCEL_ALL:
        raise InputValueError(f"unknown touch event type {event_type}")


class _Packet:
    """Shared framing; subclasses are frozen dataclasses with ``_BODY`` and the four hooks."""

    __slots__ = ()
    MAGICS: ClassVar[tuple[int, ...]]
    _BODY: ClassVar[struct.Struct]
    CHANNEL: ClassVar[int] = control.CHANNEL_GENERIC  # the ENet channel InputStream.c uses

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        """Parse one whole input packet (header included) of this type."""
        magic, body = _split(payload)
        if magic not in cls.MAGICS:
            raise UnknownInputError(f"magic {magic:#x} is not a {cls.__name__} packet")
        return cls._from_body(magic, body)

    @classmethod
    def _from_body(cls, magic: int, body: bytes) -> Self:
        if len(body) < cls._BODY.size:
            raise InputTruncatedError(f"{cls.__name__} body is {len(body)} bytes, needs {cls._BODY.size}")
        # Longer bodies parse: forks append fields (Sunshine did so with buttonFlags2) and hosts
        # read what they know.
        event = cls._decode(magic, body)
        event._check()
        return event

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        raise NotImplementedError

    def _magic(self) -> int:
        return self.MAGICS[0]

    def _body(self) -> bytes:
        raise NotImplementedError

    def _check(self) -> None:
        """Raise InputValueError for values no client produces."""

    @property
    def channel(self) -> int:
        # Controller packets travel on their pad's own channel (InputStream.c CTRL_CHANNEL_*_BASE + n).
        return self.CHANNEL + int(getattr(self, "controller", 0))

    def __bytes__(self) -> bytes:
        body = self._body()
        return _BE32.pack(4 + len(body)) + _LE32.pack(self._magic()) + body


@dataclass(frozen=True, slots=True)
class EnableHaptics(_Packet):
    """NV_HAPTICS_PACKET: the client asks for rumble events (GFE sends none without it)."""

    MAGICS: ClassVar[tuple[int, ...]] = (ENABLE_HAPTICS_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<H")
    enable: bool = True

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(bool(cls._BODY.unpack_from(body)[0]))

    def _body(self) -> bytes:
        return self._BODY.pack(int(self.enable))


@dataclass(frozen=True, slots=True)
class MouseMoveRelative(_Packet):
    """NV_REL_MOUSE_MOVE_PACKET: BE16 signed deltas (the client splits larger motions)."""

    MAGICS: ClassVar[tuple[int, ...]] = (MOUSE_MOVE_REL_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct(">hh")
    CHANNEL: ClassVar[int] = control.CHANNEL_MOUSE
    dx: int
    dy: int

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(*cls._BODY.unpack_from(body))

    def _body(self) -> bytes:
        return self._BODY.pack(self.dx, self.dy)


@dataclass(frozen=True, slots=True)
class MousePosition(_Packet):
    """NV_ABS_MOUSE_MOVE_PACKET: BE16 x, y, unused, reference width, height.

    The client sends its reference size minus one (InputStream.c works around a GFE rounding bug),
    so ``x == ref_width`` is the far edge. ``LiSendMouseMoveAsMousePositionEvent`` clamps to the
    unreduced size, so ``x`` may be ``ref_width + 1``.
    """

    MAGICS: ClassVar[tuple[int, ...]] = (MOUSE_MOVE_ABS_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct(">hhhhh")
    CHANNEL: ClassVar[int] = control.CHANNEL_MOUSE
    x: int
    y: int
    ref_width: int
    ref_height: int

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        x, y, _, w, h = cls._BODY.unpack_from(body)
        return cls(x, y, w, h)

    def _body(self) -> bytes:
        return self._BODY.pack(self.x, self.y, 0, self.ref_width, self.ref_height)

    def _check(self) -> None:
        if self.ref_width < 1 or self.ref_height < 1:  # Sunshine: "Moonlight passed invalid dimensions"
            raise InputValueError(f"mouse reference size {self.ref_width}x{self.ref_height}")
        if not -self.ref_width <= self.x <= 2 * self.ref_width or not -self.ref_height <= self.y <= 2 * self.ref_height:
            raise InputValueError(f"mouse position ({self.x}, {self.y}) far outside {self.ref_width}x{self.ref_height}")


@dataclass(frozen=True, slots=True)
class MouseButton(_Packet):
    """NV_MOUSE_BUTTON_PACKET: the magic is the action (press 0x08, release 0x09), then u8 button."""

    MAGICS: ClassVar[tuple[int, ...]] = (MOUSE_BUTTON_DOWN_MAGIC, MOUSE_BUTTON_UP_MAGIC)
    _BODY: ClassVar[struct.Struct] = struct.Struct("B")
    CHANNEL: ClassVar[int] = control.CHANNEL_MOUSE
    button: int
    pressed: bool

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(body[0], magic == MOUSE_BUTTON_DOWN_MAGIC)

    def _magic(self) -> int:
        return MOUSE_BUTTON_DOWN_MAGIC if self.pressed else MOUSE_BUTTON_UP_MAGIC

    def _body(self) -> bytes:
        return self._BODY.pack(self.button)

    def _check(self) -> None:
        if not BUTTON_LEFT <= self.button <= BUTTON_X2:
            raise InputValueError(f"mouse button {self.button} outside 1..5")


@dataclass(frozen=True, slots=True)
class Scroll(_Packet):
    """NV_SCROLL_PACKET: BE16 amount (120ths of a detent, positive = away from the user), repeated,
    then 2 zero bytes. Hosts read the first copy (Sunshine input.cpp)."""

    MAGICS: ClassVar[tuple[int, ...]] = (SCROLL_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct(">hhh")
    CHANNEL: ClassVar[int] = control.CHANNEL_MOUSE
    amount: int

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(cls._BODY.unpack_from(body)[0])

    def _body(self) -> bytes:
        return self._BODY.pack(self.amount, self.amount, 0)


@dataclass(frozen=True, slots=True)
class HScroll(_Packet):
    """SS_HSCROLL_PACKET: BE16 amount in 120ths, positive = right."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_HSCROLL_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct(">h")
    CHANNEL: ClassVar[int] = control.CHANNEL_MOUSE
    amount: int

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(cls._BODY.unpack_from(body)[0])

    def _body(self) -> bytes:
        return self._BODY.pack(self.amount)


@dataclass(frozen=True, slots=True)
class KeyEvent(_Packet):
    """NV_KEYBOARD_PACKET: magic 3 down / 4 up; u8 flags, LE16 key code, u8 modifiers, 2 zero bytes.

    ``key_code`` is kept as sent: moonlight-qt ORs in 0x8000, moonlight-android 0x80xx; the VK is
    the low byte (Sunshine input.cpp ``keyCode & 0x00FF``).
    """

    MAGICS: ClassVar[tuple[int, ...]] = (KEY_DOWN_MAGIC, KEY_UP_MAGIC)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BHBH")
    CHANNEL: ClassVar[int] = control.CHANNEL_KEYBOARD
    key_code: int
    pressed: bool
    modifiers: int = 0
    flags: int = 0

    @property
    def vk(self) -> int:
        return self.key_code & 0xFF

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        flags, key_code, modifiers, _ = cls._BODY.unpack_from(body)
        return cls(key_code, magic == KEY_DOWN_MAGIC, modifiers, flags)

    def _magic(self) -> int:
        return KEY_DOWN_MAGIC if self.pressed else KEY_UP_MAGIC

    def _body(self) -> bytes:
        return self._BODY.pack(self.flags, self.key_code, self.modifiers, 0)


@dataclass(frozen=True, slots=True)
class Utf8Text(_Packet):
    """NV_UNICODE_PACKET: the UTF-8 bytes (size - 4 of them). Clients send one code point each."""

    MAGICS: ClassVar[tuple[int, ...]] = (UTF8_TEXT_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("")
    CHANNEL: ClassVar[int] = control.CHANNEL_UTF8
    text: str

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        try:
            return cls(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputValueError(f"text is not UTF-8: {exc.reason} at byte {exc.start}") from None

    def _body(self) -> bytes:
        return self.text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Touch(_Packet):
    """SS_TOUCH_PACKET: u8 type, u8 0, LE16 rotation, LE32 pointer id, then netfloats x, y,
    pressure (distance for hover), contact area major and minor, all normalised to the video area.

    For TOUCH_CANCEL only ``pointer_id`` counts and for TOUCH_CANCEL_ALL nothing (Limelight.h), so
    their other fields are not checked.
    """

    MAGICS: ClassVar[tuple[int, ...]] = (SS_TOUCH_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBHIfffff")
    CHANNEL: ClassVar[int] = control.CHANNEL_TOUCH
    event_type: int
    pointer_id: int
    x: float
    y: float
    pressure: float = 0.0
    contact_major: float = 0.0
    contact_minor: float = 0.0
    rotation: int = ROTATION_UNKNOWN

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        kind, _, rotation, pointer, x, y, pressure, major, minor = cls._BODY.unpack_from(body)
        return cls(kind, pointer, x, y, pressure, major, minor, rotation)

    def _body(self) -> bytes:
        return self._BODY.pack(self.event_type, 0, self.rotation, self.pointer_id, self.x, self.y,
                               self.pressure, self.contact_major, self.contact_minor)  # fmt: skip

    def _check(self) -> None:
        _touch_type(self.event_type)
        if self.event_type in (TOUCH_CANCEL, TOUCH_CANCEL_ALL):
            return
        _finite("touch coordinate", self.x, self.y)
        _finite("touch pressure/contact area", self.pressure, self.contact_major, self.contact_minor, low=0.0)
        if self.rotation > 360 and self.rotation != ROTATION_UNKNOWN:
            raise InputValueError(f"touch rotation {self.rotation} degrees")


@dataclass(frozen=True, slots=True)
class Pen(_Packet):
    """SS_PEN_PACKET: u8 type, u8 tool, u8 buttons, u8 0, netfloats x, y, pressure/distance,
    LE16 rotation, u8 tilt (0-90 degrees), u8 0, netfloats contact area major, minor."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_PEN_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBBBfffHBBff")
    CHANNEL: ClassVar[int] = control.CHANNEL_PEN
    event_type: int
    tool: int
    buttons: int
    x: float
    y: float
    pressure: float = 0.0
    rotation: int = ROTATION_UNKNOWN
    tilt: int = TILT_UNKNOWN
    contact_major: float = 0.0
    contact_minor: float = 0.0

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        kind, tool, buttons, _, x, y, pressure, rotation, tilt, _, major, minor = cls._BODY.unpack_from(body)
        return cls(kind, tool, buttons, x, y, pressure, rotation, tilt, major, minor)

    def _body(self) -> bytes:
        return self._BODY.pack(self.event_type, self.tool, self.buttons, 0, self.x, self.y, self.pressure,
                               self.rotation, self.tilt, 0, self.contact_major, self.contact_minor)  # fmt: skip

    def _check(self) -> None:
        _touch_type(self.event_type)
        if self.tool > TOOL_ERASER:
            raise InputValueError(f"unknown pen tool {self.tool}")
        if self.buttons & ~(PEN_BUTTON_PRIMARY | PEN_BUTTON_SECONDARY | PEN_BUTTON_TERTIARY):
            raise InputValueError(f"unknown pen buttons {self.buttons:#x}")
        if self.event_type in (TOUCH_CANCEL, TOUCH_CANCEL_ALL, TOUCH_BUTTON_ONLY):
            return  # Limelight.h: position, pressure, rotation, area and tilt are ignored for these
        _finite("pen coordinate", self.x, self.y)
        _finite("pen pressure/contact area", self.pressure, self.contact_major, self.contact_minor, low=0.0)
        if self.rotation > 360 and self.rotation != ROTATION_UNKNOWN:
            raise InputValueError(f"pen rotation {self.rotation} degrees")
        if self.tilt > 90 and self.tilt != TILT_UNKNOWN:
            raise InputValueError(f"pen tilt {self.tilt} degrees")


@dataclass(frozen=True, slots=True)
class ControllerArrival(_Packet):
    """SS_CONTROLLER_ARRIVAL_PACKET: u8 number, u8 type, LE16 capabilities, LE32 supported buttons.
    The client follows it with an empty MultiController event for hosts that ignore arrivals."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_CONTROLLER_ARRIVAL_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBHI")
    CHANNEL: ClassVar[int] = control.CHANNEL_GAMEPAD_BASE  # + controller number
    controller: int
    kind: int = CONTROLLER_UNKNOWN
    capabilities: int = 0
    supported_buttons: int = 0

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        return cls(*cls._BODY.unpack_from(body))

    def _body(self) -> bytes:
        return self._BODY.pack(self.controller, self.kind, self.capabilities, self.supported_buttons)

    def _check(self) -> None:
        _controller(self.controller)


@dataclass(frozen=True, slots=True)
class ControllerTouch(_Packet):
    """SS_CONTROLLER_TOUCH_PACKET: u8 number, u8 type, 2 zero bytes, LE32 pointer id, netfloats x, y,
    pressure (the controller's touchpad, normalised)."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_CONTROLLER_TOUCH_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBHIfff")
    CHANNEL: ClassVar[int] = control.CHANNEL_GAMEPAD_BASE  # + controller number
    controller: int
    event_type: int
    pointer_id: int
    x: float
    y: float
    pressure: float = 0.0

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        number, kind, _, pointer, x, y, pressure = cls._BODY.unpack_from(body)
        return cls(number, kind, pointer, x, y, pressure)

    def _body(self) -> bytes:
        return self._BODY.pack(self.controller, self.event_type, 0, self.pointer_id, self.x, self.y, self.pressure)

    def _check(self) -> None:
        _controller(self.controller)
        _touch_type(self.event_type)
        if self.event_type not in (TOUCH_CANCEL, TOUCH_CANCEL_ALL):
            _finite("controller touch coordinate", self.x, self.y)
            _finite("controller touch pressure", self.pressure, low=0.0)


@dataclass(frozen=True, slots=True)
class ControllerMotion(_Packet):
    """SS_CONTROLLER_MOTION_PACKET: u8 number, u8 type (1 accel m/s^2, 2 gyro deg/s), 2 zero bytes,
    netfloats x, y, z (SDL axis convention). Gyro (0, 0, 0) means "sensor stopped"."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_CONTROLLER_MOTION_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBHfff")
    CHANNEL: ClassVar[int] = control.CHANNEL_SENSOR_BASE  # + controller number
    controller: int
    motion_type: int
    x: float
    y: float
    z: float

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        number, kind, _, x, y, z = cls._BODY.unpack_from(body)
        return cls(number, kind, x, y, z)

    def _body(self) -> bytes:
        return self._BODY.pack(self.controller, self.motion_type, 0, self.x, self.y, self.z)

    def _check(self) -> None:
        _controller(self.controller)
        if self.motion_type not in (MOTION_ACCEL, MOTION_GYRO):
            raise InputValueError(f"unknown motion sensor type {self.motion_type}")
        _finite("motion reading", self.x, self.y, self.z, low=-_MAX_MOTION, high=_MAX_MOTION)


@dataclass(frozen=True, slots=True)
class ControllerBattery(_Packet):
    """SS_CONTROLLER_BATTERY_PACKET: u8 number, u8 state (LI_BATTERY_STATE_*), u8 percent, u8 0."""

    MAGICS: ClassVar[tuple[int, ...]] = (SS_CONTROLLER_BATTERY_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<BBBB")
    CHANNEL: ClassVar[int] = control.CHANNEL_GAMEPAD_BASE  # + controller number
    controller: int
    state: int
    percentage: int = BATTERY_PERCENTAGE_UNKNOWN

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        number, state, percentage, _ = cls._BODY.unpack_from(body)
        return cls(number, state, percentage)

    def _body(self) -> bytes:
        return self._BODY.pack(self.controller, self.state, self.percentage, 0)

    def _check(self) -> None:
        _controller(self.controller)
        if self.state > BATTERY_FULL:
            raise InputValueError(f"unknown battery state {self.state}")
        if self.percentage > 100 and self.percentage != BATTERY_PERCENTAGE_UNKNOWN:
            raise InputValueError(f"battery at {self.percentage}%")


@dataclass(frozen=True, slots=True)
class MultiController(_Packet):
    """NV_MULTI_CONTROLLER_PACKET, little-endian: headerB 0x1A, controller number, active mask,
    midB 0x14, button flags, u8 left/right trigger, four signed stick axes, tailA 0x9C,
    buttonFlags2 (Sunshine: flags >> 16), tailB 0x55. ``buttons`` joins the two flag words.

    A cleared bit for ``controller`` in ``active_mask`` announces that pad's removal.
    """

    MAGICS: ClassVar[tuple[int, ...]] = (MULTI_CONTROLLER_MAGIC,)
    _BODY: ClassVar[struct.Struct] = struct.Struct("<HhHHHBBhhhhHHH")
    CHANNEL: ClassVar[int] = control.CHANNEL_GAMEPAD_BASE  # + controller number
    controller: int
    active_mask: int
    buttons: int = 0
    left_trigger: int = 0
    right_trigger: int = 0
    left_x: int = 0
    left_y: int = 0
    right_x: int = 0
    right_y: int = 0

    @property
    def active(self) -> bool:
        return bool(self.active_mask & (1 << self.controller))

    @classmethod
    def _decode(cls, magic: int, body: bytes) -> Self:
        _, number, mask, _, flags, lt, rt, lx, ly, rx, ry, _, flags2, _ = cls._BODY.unpack_from(body)
        return cls(number, mask, flags | flags2 << 16, lt, rt, lx, ly, rx, ry)

    def _body(self) -> bytes:
        return self._BODY.pack(
            _MC_HEADER_B, self.controller, self.active_mask, _MC_MID_B, self.buttons & 0xFFFF,
            self.left_trigger, self.right_trigger, self.left_x, self.left_y, self.right_x, self.right_y,
            _MC_TAIL_A, self.buttons >> 16 & 0xFFFF, _MC_TAIL_B,
        )  # fmt: skip

    def _check(self) -> None:
        _controller(self.controller)


InputEvent: TypeAlias = (
    EnableHaptics | MouseMoveRelative | MousePosition | MouseButton | Scroll | HScroll | KeyEvent | Utf8Text
    | Touch | Pen | ControllerArrival | ControllerTouch | ControllerMotion | ControllerBattery | MultiController
)  # fmt: skip

_BY_MAGIC: Final[dict[int, type[_Packet]]] = {
    magic: cls
    for cls in (EnableHaptics, MouseMoveRelative, MousePosition, MouseButton, Scroll, HScroll, KeyEvent, Utf8Text,
                Touch, Pen, ControllerArrival, ControllerTouch, ControllerMotion, ControllerBattery, MultiController)
    for magic in cls.MAGICS
}  # fmt: skip


def parse_input(payload: bytes) -> InputEvent:
    """Parse the payload of one 0x0206 control message; raises an InputError subclass if malformed."""
    magic, body = _split(payload)
    cls = _BY_MAGIC.get(magic)
    if cls is None:
        raise UnknownInputError(f"unknown input magic {magic:#010x}")
    return cast(InputEvent, cls._from_body(magic, body))


# --- host -> client feedback ------------------------------------------------------------------------


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise control.ControlLengthError(f"{what} payload is {len(payload)} bytes, needs {size}")


@dataclass(frozen=True, slots=True)
class SetMotionEvent:
    """Host -> client 0x5501: ``LE16 controller | LE16 report rate Hz (0 = stop) | u8 motion type``.
    The client enables that sensor only after this (Limelight.h ConnListenerSetMotionEventState)."""

    TYPE: ClassVar[int] = control.SET_MOTION_EVENT
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHB")
    controller: int
    motion_type: int
    report_rate_hz: int

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, cls._STRUCT.size, "set motion event")
        controller, rate, kind = cls._STRUCT.unpack_from(payload)
        return cls(controller, kind, rate)

    def __bytes__(self) -> bytes:
        return self._STRUCT.pack(self.controller, self.report_rate_hz, self.motion_type)


DS_EFFECT_PAYLOAD_SIZE: Final = 10
DS_EFFECT_RIGHT_TRIGGER: Final = 0x04
DS_EFFECT_LEFT_TRIGGER: Final = 0x08


@dataclass(frozen=True, slots=True)
class SetAdaptiveTriggers:
    """Host -> client 0x5503: ``LE16 controller | u8 event flags (DS_EFFECT_*_TRIGGER) | u8 left
    type | u8 right type | 10 bytes left effect | 10 bytes right effect`` (DualSense triggers)."""

    TYPE: ClassVar[int] = control.SET_ADAPTIVE_TRIGGERS
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<HBBB10s10s")
    controller: int
    event_flags: int
    type_left: int
    type_right: int
    left: bytes = bytes(DS_EFFECT_PAYLOAD_SIZE)
    right: bytes = bytes(DS_EFFECT_PAYLOAD_SIZE)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        _need(payload, cls._STRUCT.size, "set adaptive triggers")
        return cls(*cls._STRUCT.unpack_from(payload))

    def __bytes__(self) -> bytes:
        if len(self.left) != DS_EFFECT_PAYLOAD_SIZE or len(self.right) != DS_EFFECT_PAYLOAD_SIZE:
            raise ValueError(f"adaptive trigger effects are {DS_EFFECT_PAYLOAD_SIZE} bytes each")
        return self._STRUCT.pack(self.controller, self.event_flags, self.type_left, self.type_right,
                                 self.left, self.right)  # fmt: skip


FeedbackMessage: TypeAlias = Rumble | RumbleTriggers | SetRgbLed | SetMotionEvent | SetAdaptiveTriggers
