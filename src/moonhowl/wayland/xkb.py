"""The keyboard's xkb keymap and modifier state, through libxkbcommon (ctypes).

wl_keyboard.keymap hands clients an XKB_V1 text keymap in an fd; libxkbcommon compiles one from
RMLVO names (xkb-data) exactly as a desktop compositor does, and its xkb_state tells which
modifiers a key press changes, for wl_keyboard.modifiers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

XKB_KEYMAP_FORMAT_TEXT_V1 = 1
XKB_KEY_UP, XKB_KEY_DOWN = 0, 1
XKB_STATE_MODS_DEPRESSED = 1 << 0
XKB_STATE_MODS_LATCHED = 1 << 1
XKB_STATE_MODS_LOCKED = 1 << 2
XKB_STATE_LAYOUT_EFFECTIVE = 1 << 7
# evdev keycodes (wl_keyboard.key) are xkb keycodes minus 8 (the X11 legacy offset).
EVDEV_OFFSET = 8


class XkbError(RuntimeError):
    """libxkbcommon is missing or could not compile the keymap."""


class _RuleNames(ctypes.Structure):
    _fields_ = [("rules", ctypes.c_char_p), ("model", ctypes.c_char_p), ("layout", ctypes.c_char_p),
                ("variant", ctypes.c_char_p), ("options", ctypes.c_char_p)]


@dataclass(frozen=True)
class Modifiers:
    depressed: int = 0
    latched: int = 0
    locked: int = 0
    group: int = 0


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("xkbcommon") or "libxkbcommon.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise XkbError(f"cannot load libxkbcommon ({exc})") from None
    vp = ctypes.c_void_p
    lib.xkb_context_new.restype = vp
    lib.xkb_context_new.argtypes = [ctypes.c_int]
    lib.xkb_context_unref.argtypes = [vp]
    lib.xkb_keymap_new_from_names.restype = vp
    lib.xkb_keymap_new_from_names.argtypes = [vp, ctypes.POINTER(_RuleNames), ctypes.c_int]
    lib.xkb_keymap_get_as_string.restype = vp  # char* we must free()
    lib.xkb_keymap_get_as_string.argtypes = [vp, ctypes.c_int]
    lib.xkb_keymap_unref.argtypes = [vp]
    lib.xkb_state_new.restype = vp
    lib.xkb_state_new.argtypes = [vp]
    lib.xkb_state_unref.argtypes = [vp]
    lib.xkb_state_update_key.restype = ctypes.c_int
    lib.xkb_state_update_key.argtypes = [vp, ctypes.c_uint32, ctypes.c_int]
    lib.xkb_state_serialize_mods.restype = ctypes.c_uint32
    lib.xkb_state_serialize_mods.argtypes = [vp, ctypes.c_int]
    lib.xkb_state_serialize_layout.restype = ctypes.c_uint32
    lib.xkb_state_serialize_layout.argtypes = [vp, ctypes.c_int]
    return lib


class Keymap:
    """A compiled keymap, its text in a sealed memfd, and one xkb_state for the seat."""

    def __init__(self, layout: str = "us", variant: str = "", options: str = "", model: str = "pc105") -> None:
        self._lib = lib = _lib()
        self._ctx = lib.xkb_context_new(0)
        if not self._ctx:
            raise XkbError("xkb_context_new failed")
        names = _RuleNames(b"evdev", model.encode(), layout.encode(), variant.encode() or None,
                           options.encode() or None)
        self._keymap = lib.xkb_keymap_new_from_names(self._ctx, ctypes.byref(names), 0)
        if not self._keymap:
            lib.xkb_context_unref(self._ctx)
            raise XkbError(f"cannot compile the xkb keymap for layout {layout!r} (is xkb-data installed?)")
        raw = lib.xkb_keymap_get_as_string(self._keymap, XKB_KEYMAP_FORMAT_TEXT_V1)
        if not raw:
            raise XkbError("xkb_keymap_get_as_string failed")
        try:
            self.text = ctypes.string_at(raw)
        finally:
            ctypes.CDLL(None).free(ctypes.c_void_p(raw))
        self._state = lib.xkb_state_new(self._keymap)
        self.fd, self.size = self._memfd(self.text + b"\0")

    @staticmethod
    def _memfd(data: bytes) -> tuple[int, int]:
        """A read-only sealed memfd: since wl_keyboard v7 clients must map it MAP_PRIVATE, and
        the seals make one fd safe to share with every client."""
        fd = os.memfd_create("moonhowl-keymap", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        return fd, len(data)

    def update_key(self, keycode: int, pressed: bool) -> bool:
        """Feeds an evdev key into the state; True if the modifiers or group changed."""
        changed = self._lib.xkb_state_update_key(self._state, keycode + EVDEV_OFFSET,
                                                 XKB_KEY_DOWN if pressed else XKB_KEY_UP)
        return bool(changed)

    def modifiers(self) -> Modifiers:
        lib, st = self._lib, self._state
        return Modifiers(lib.xkb_state_serialize_mods(st, XKB_STATE_MODS_DEPRESSED),
                         lib.xkb_state_serialize_mods(st, XKB_STATE_MODS_LATCHED),
                         lib.xkb_state_serialize_mods(st, XKB_STATE_MODS_LOCKED),
                         lib.xkb_state_serialize_layout(st, XKB_STATE_LAYOUT_EFFECTIVE))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._lib.xkb_state_unref(self._state)
            self._lib.xkb_keymap_unref(self._keymap)
            self._lib.xkb_context_unref(self._ctx)
