"""Windows virtual-key codes (what Moonlight clients send) -> Linux evdev key codes.

Moonlight clients send Win32 ``VK_*`` codes "interpreted as keys on a US English layout"
(moonlight-common-c ``Limelight.h``, ``LiSendKeyboardEvent``): moonlight-qt derives them from SDL
*scancodes* (``app/streaming/input/keyboard.cpp``), so the code names a key position, not the
character the client's layout prints on it. The host types that position on its own keymap.
moonlight-qt ORs 0x8000 into the code and moonlight-android ``0x80 << 8``; Sunshine reads
``keyCode & 0x00FF`` (``src/input.cpp``), and so does :func:`evdev_from_vk`.

Where the evdev code comes from: the table Sunshine's Linux backend uses
(``src/platform/linux/input.cpp`` ``init_keycodes``, ``input/inputtino_keyboard.cpp``), completed
for the keys moonlight-qt also sends (Execute, Apps, browser keys, Lang1/Lang2, keypad comma) and
corrected where Sunshine's is wrong (it maps VK_F22 to KEY_F12). Values are those of
``linux/input-event-codes.h``; the unit tests check every one against that header when present.

``wl_keyboard.key`` carries the evdev code; xkbcommon's keycode for the same key is ``evdev + 8``
(the X11 legacy offset that xkeyboard-config's ``evdev`` keycodes bake in: ``<AE01> = 10`` is
KEY_1 = 2 plus 8). Feed :func:`xkb_keycode` to ``xkb_state_update_key`` and the plain evdev code to
``wl_keyboard.key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

XKB_KEYCODE_OFFSET: Final = 8

# Modifier bits of NV_KEYBOARD_PACKET.modifiers (moonlight-common-c Limelight.h).
MODIFIER_SHIFT: Final = 0x01
MODIFIER_CTRL: Final = 0x02
MODIFIER_ALT: Final = 0x04
MODIFIER_META: Final = 0x08

# NV_KEYBOARD_PACKET.flags (Sunshine extension, Limelight.h): the code was not normalised to a US
# layout position. Our map is position based either way, so it only matters for logging.
SS_KBE_FLAG_NON_NORMALIZED: Final = 0x01

# (VK code, VK name, evdev code, evdev name)
_TABLE: Final[tuple[tuple[int, str, int, str], ...]] = (
    (0x08, "VK_BACK", 14, "KEY_BACKSPACE"),
    (0x09, "VK_TAB", 15, "KEY_TAB"),
    (0x0C, "VK_CLEAR", 0x163, "KEY_CLEAR"),
    (0x0D, "VK_RETURN", 28, "KEY_ENTER"),  # keypad Enter too: moonlight-qt sends 0x0D for both
    # The side-less modifiers: GFE-era clients and Sunshine's own fixups still produce them.
    (0x10, "VK_SHIFT", 42, "KEY_LEFTSHIFT"),
    (0x11, "VK_CONTROL", 29, "KEY_LEFTCTRL"),
    (0x12, "VK_MENU", 56, "KEY_LEFTALT"),
    (0x13, "VK_PAUSE", 119, "KEY_PAUSE"),
    (0x14, "VK_CAPITAL", 58, "KEY_CAPSLOCK"),
    # 0x15 is VK_KANA and VK_HANGUL; the key that sends it on Korean keyboards is Han/Yeong (USB
    # Lang1), which Linux calls KEY_HANGEUL. Japanese keyboards send the VK_DBE_* codes below.
    (0x15, "VK_HANGUL", 122, "KEY_HANGEUL"),
    (0x19, "VK_HANJA", 123, "KEY_HANJA"),  # also VK_KANJI
    (0x1B, "VK_ESCAPE", 1, "KEY_ESC"),
    # moonlight-qt sends SDL Lang1 -> VK_CONVERT and Lang2 -> VK_NONCONVERT.
    (0x1C, "VK_CONVERT", 92, "KEY_HENKAN"),
    (0x1D, "VK_NONCONVERT", 94, "KEY_MUHENKAN"),
    (0x20, "VK_SPACE", 57, "KEY_SPACE"),
    (0x21, "VK_PRIOR", 104, "KEY_PAGEUP"),
    (0x22, "VK_NEXT", 109, "KEY_PAGEDOWN"),
    (0x23, "VK_END", 107, "KEY_END"),
    (0x24, "VK_HOME", 102, "KEY_HOME"),
    (0x25, "VK_LEFT", 105, "KEY_LEFT"),
    (0x26, "VK_UP", 103, "KEY_UP"),
    (0x27, "VK_RIGHT", 106, "KEY_RIGHT"),
    (0x28, "VK_DOWN", 108, "KEY_DOWN"),
    (0x29, "VK_SELECT", 0x161, "KEY_SELECT"),
    (0x2A, "VK_PRINT", 210, "KEY_PRINT"),
    (0x2B, "VK_EXECUTE", 134, "KEY_OPEN"),  # USB "Execute" (0x74); Linux hid-input calls it KEY_OPEN
    (0x2C, "VK_SNAPSHOT", 99, "KEY_SYSRQ"),  # Print Screen
    (0x2D, "VK_INSERT", 110, "KEY_INSERT"),
    (0x2E, "VK_DELETE", 111, "KEY_DELETE"),
    (0x2F, "VK_HELP", 138, "KEY_HELP"),
    (0x30, "VK_0", 11, "KEY_0"),
    (0x31, "VK_1", 2, "KEY_1"),
    (0x32, "VK_2", 3, "KEY_2"),
    (0x33, "VK_3", 4, "KEY_3"),
    (0x34, "VK_4", 5, "KEY_4"),
    (0x35, "VK_5", 6, "KEY_5"),
    (0x36, "VK_6", 7, "KEY_6"),
    (0x37, "VK_7", 8, "KEY_7"),
    (0x38, "VK_8", 9, "KEY_8"),
    (0x39, "VK_9", 10, "KEY_9"),
    (0x41, "VK_A", 30, "KEY_A"),
    (0x42, "VK_B", 48, "KEY_B"),
    (0x43, "VK_C", 46, "KEY_C"),
    (0x44, "VK_D", 32, "KEY_D"),
    (0x45, "VK_E", 18, "KEY_E"),
    (0x46, "VK_F", 33, "KEY_F"),
    (0x47, "VK_G", 34, "KEY_G"),
    (0x48, "VK_H", 35, "KEY_H"),
    (0x49, "VK_I", 23, "KEY_I"),
    (0x4A, "VK_J", 36, "KEY_J"),
    (0x4B, "VK_K", 37, "KEY_K"),
    (0x4C, "VK_L", 38, "KEY_L"),
    (0x4D, "VK_M", 50, "KEY_M"),
    (0x4E, "VK_N", 49, "KEY_N"),
    (0x4F, "VK_O", 24, "KEY_O"),
    (0x50, "VK_P", 25, "KEY_P"),
    (0x51, "VK_Q", 16, "KEY_Q"),
    (0x52, "VK_R", 19, "KEY_R"),
    (0x53, "VK_S", 31, "KEY_S"),
    (0x54, "VK_T", 20, "KEY_T"),
    (0x55, "VK_U", 22, "KEY_U"),
    (0x56, "VK_V", 47, "KEY_V"),
    (0x57, "VK_W", 17, "KEY_W"),
    (0x58, "VK_X", 45, "KEY_X"),
    (0x59, "VK_Y", 21, "KEY_Y"),
    (0x5A, "VK_Z", 44, "KEY_Z"),
    (0x5B, "VK_LWIN", 125, "KEY_LEFTMETA"),
    (0x5C, "VK_RWIN", 126, "KEY_RIGHTMETA"),
    (0x5D, "VK_APPS", 127, "KEY_COMPOSE"),  # the context-menu key; xkb names it <COMP> -> Menu
    (0x5F, "VK_SLEEP", 142, "KEY_SLEEP"),
    (0x60, "VK_NUMPAD0", 82, "KEY_KP0"),
    (0x61, "VK_NUMPAD1", 79, "KEY_KP1"),
    (0x62, "VK_NUMPAD2", 80, "KEY_KP2"),
    (0x63, "VK_NUMPAD3", 81, "KEY_KP3"),
    (0x64, "VK_NUMPAD4", 75, "KEY_KP4"),
    (0x65, "VK_NUMPAD5", 76, "KEY_KP5"),
    (0x66, "VK_NUMPAD6", 77, "KEY_KP6"),
    (0x67, "VK_NUMPAD7", 71, "KEY_KP7"),
    (0x68, "VK_NUMPAD8", 72, "KEY_KP8"),
    (0x69, "VK_NUMPAD9", 73, "KEY_KP9"),
    (0x6A, "VK_MULTIPLY", 55, "KEY_KPASTERISK"),
    (0x6B, "VK_ADD", 78, "KEY_KPPLUS"),
    (0x6C, "VK_SEPARATOR", 121, "KEY_KPCOMMA"),  # moonlight-qt: SDL_SCANCODE_KP_COMMA
    (0x6D, "VK_SUBTRACT", 74, "KEY_KPMINUS"),
    (0x6E, "VK_DECIMAL", 83, "KEY_KPDOT"),
    (0x6F, "VK_DIVIDE", 98, "KEY_KPSLASH"),
    (0x70, "VK_F1", 59, "KEY_F1"),
    (0x71, "VK_F2", 60, "KEY_F2"),
    (0x72, "VK_F3", 61, "KEY_F3"),
    (0x73, "VK_F4", 62, "KEY_F4"),
    (0x74, "VK_F5", 63, "KEY_F5"),
    (0x75, "VK_F6", 64, "KEY_F6"),
    (0x76, "VK_F7", 65, "KEY_F7"),
    (0x77, "VK_F8", 66, "KEY_F8"),
    (0x78, "VK_F9", 67, "KEY_F9"),
    (0x79, "VK_F10", 68, "KEY_F10"),
    (0x7A, "VK_F11", 87, "KEY_F11"),
    (0x7B, "VK_F12", 88, "KEY_F12"),
    (0x7C, "VK_F13", 183, "KEY_F13"),
    (0x7D, "VK_F14", 184, "KEY_F14"),
    (0x7E, "VK_F15", 185, "KEY_F15"),
    (0x7F, "VK_F16", 186, "KEY_F16"),
    (0x80, "VK_F17", 187, "KEY_F17"),
    (0x81, "VK_F18", 188, "KEY_F18"),
    (0x82, "VK_F19", 189, "KEY_F19"),
    (0x83, "VK_F20", 190, "KEY_F20"),
    (0x84, "VK_F21", 191, "KEY_F21"),
    (0x85, "VK_F22", 192, "KEY_F22"),
    (0x86, "VK_F23", 193, "KEY_F23"),
    (0x87, "VK_F24", 194, "KEY_F24"),
    (0x90, "VK_NUMLOCK", 69, "KEY_NUMLOCK"),
    (0x91, "VK_SCROLL", 70, "KEY_SCROLLLOCK"),
    (0x92, "VK_OEM_NEC_EQUAL", 117, "KEY_KPEQUAL"),
    (0xA0, "VK_LSHIFT", 42, "KEY_LEFTSHIFT"),
    (0xA1, "VK_RSHIFT", 54, "KEY_RIGHTSHIFT"),
    (0xA2, "VK_LCONTROL", 29, "KEY_LEFTCTRL"),
    (0xA3, "VK_RCONTROL", 97, "KEY_RIGHTCTRL"),
    (0xA4, "VK_LMENU", 56, "KEY_LEFTALT"),
    (0xA5, "VK_RMENU", 100, "KEY_RIGHTALT"),  # AltGr on international layouts
    (0xA6, "VK_BROWSER_BACK", 158, "KEY_BACK"),
    (0xA7, "VK_BROWSER_FORWARD", 159, "KEY_FORWARD"),
    (0xA8, "VK_BROWSER_REFRESH", 173, "KEY_REFRESH"),
    (0xA9, "VK_BROWSER_STOP", 128, "KEY_STOP"),
    (0xAA, "VK_BROWSER_SEARCH", 217, "KEY_SEARCH"),
    (0xAB, "VK_BROWSER_FAVORITES", 156, "KEY_BOOKMARKS"),
    (0xAC, "VK_BROWSER_HOME", 172, "KEY_HOMEPAGE"),
    (0xAD, "VK_VOLUME_MUTE", 113, "KEY_MUTE"),
    (0xAE, "VK_VOLUME_DOWN", 114, "KEY_VOLUMEDOWN"),
    (0xAF, "VK_VOLUME_UP", 115, "KEY_VOLUMEUP"),
    (0xB0, "VK_MEDIA_NEXT_TRACK", 163, "KEY_NEXTSONG"),
    (0xB1, "VK_MEDIA_PREV_TRACK", 165, "KEY_PREVIOUSSONG"),
    (0xB2, "VK_MEDIA_STOP", 166, "KEY_STOPCD"),
    (0xB3, "VK_MEDIA_PLAY_PAUSE", 164, "KEY_PLAYPAUSE"),
    (0xB4, "VK_LAUNCH_MAIL", 155, "KEY_MAIL"),
    (0xB5, "VK_LAUNCH_MEDIA_SELECT", 226, "KEY_MEDIA"),
    (0xB6, "VK_LAUNCH_APP1", 157, "KEY_COMPUTER"),  # "My Computer" on Windows keyboards
    (0xB7, "VK_LAUNCH_APP2", 140, "KEY_CALC"),
    # US-layout punctuation (the OEM keys named by the character they print on a US keyboard).
    (0xBA, "VK_OEM_1", 39, "KEY_SEMICOLON"),
    (0xBB, "VK_OEM_PLUS", 13, "KEY_EQUAL"),
    (0xBC, "VK_OEM_COMMA", 51, "KEY_COMMA"),
    (0xBD, "VK_OEM_MINUS", 12, "KEY_MINUS"),
    (0xBE, "VK_OEM_PERIOD", 52, "KEY_DOT"),
    (0xBF, "VK_OEM_2", 53, "KEY_SLASH"),
    (0xC0, "VK_OEM_3", 41, "KEY_GRAVE"),
    (0xC1, "VK_ABNT_C1", 89, "KEY_RO"),  # Brazilian /? key = USB International1, like Japanese Ro
    (0xC2, "VK_ABNT_C2", 121, "KEY_KPCOMMA"),  # Brazilian keypad '.'
    (0xDB, "VK_OEM_4", 26, "KEY_LEFTBRACE"),
    (0xDC, "VK_OEM_5", 43, "KEY_BACKSLASH"),  # moonlight-qt also sends it for the Yen key
    (0xDD, "VK_OEM_6", 27, "KEY_RIGHTBRACE"),
    (0xDE, "VK_OEM_7", 40, "KEY_APOSTROPHE"),
    (0xE2, "VK_OEM_102", 86, "KEY_102ND"),  # ISO <> key; moonlight-qt: NONUSBACKSLASH, INTERNATIONAL1
    # Japanese IME keys (ime.h VK_DBE_*).
    (0xF1, "VK_DBE_KATAKANA", 90, "KEY_KATAKANA"),
    (0xF2, "VK_DBE_HIRAGANA", 93, "KEY_KATAKANAHIRAGANA"),
    (0xF3, "VK_DBE_SBCSCHAR", 85, "KEY_ZENKAKUHANKAKU"),
    (0xF4, "VK_DBE_DBCSCHAR", 85, "KEY_ZENKAKUHANKAKU"),
    (0xFA, "VK_PLAY", 207, "KEY_PLAY"),
)

VK_NAMES: Final[Mapping[int, str]] = MappingProxyType({vk: name for vk, name, _, _ in _TABLE})
VK_TO_EVDEV: Final[Mapping[int, int]] = MappingProxyType({vk: code for vk, _, code, _ in _TABLE})
EVDEV_NAMES: Final[Mapping[int, str]] = MappingProxyType({code: name for _, _, code, name in _TABLE})

KEY_LEFTSHIFT: Final = 42
KEY_RIGHTSHIFT: Final = 54
KEY_LEFTCTRL: Final = 29
KEY_RIGHTCTRL: Final = 97
KEY_LEFTALT: Final = 56
KEY_RIGHTALT: Final = 100
KEY_LEFTMETA: Final = 125
KEY_RIGHTMETA: Final = 126

# Which Moonlight modifier bit each modifier key holds down.
MODIFIER_OF_KEY: Final[Mapping[int, int]] = MappingProxyType({
    KEY_LEFTSHIFT: MODIFIER_SHIFT, KEY_RIGHTSHIFT: MODIFIER_SHIFT,
    KEY_LEFTCTRL: MODIFIER_CTRL, KEY_RIGHTCTRL: MODIFIER_CTRL,
    KEY_LEFTALT: MODIFIER_ALT, KEY_RIGHTALT: MODIFIER_ALT,
    KEY_LEFTMETA: MODIFIER_META, KEY_RIGHTMETA: MODIFIER_META,
})  # fmt: skip
# The key pressed to synthesise a modifier the packet claims but no key holds (Sunshine input.cpp
# send_key_and_modifiers presses the side-less VK, which is the left key).
KEY_FOR_MODIFIER: Final[Mapping[int, int]] = MappingProxyType({
    MODIFIER_SHIFT: KEY_LEFTSHIFT, MODIFIER_CTRL: KEY_LEFTCTRL,
    MODIFIER_ALT: KEY_LEFTALT, MODIFIER_META: KEY_LEFTMETA,
})  # fmt: skip

# xkb modifier names for each Moonlight bit, and their masks in a keymap compiled from the default
# xkeyboard-config "evdev" rules, where the eight real modifiers take indices 0-7 in the order
# Shift, Lock, Control, Mod1 (Alt), Mod2 (NumLock), Mod3, Mod4 (Super), Mod5. A seat that has the
# compiled keymap should look the indices up by name (xkb_keymap_mod_get_index) instead.
XKB_MODIFIER_NAMES: Final[Mapping[int, str]] = MappingProxyType({
    MODIFIER_SHIFT: "Shift", MODIFIER_CTRL: "Control", MODIFIER_ALT: "Mod1", MODIFIER_META: "Mod4",
})  # fmt: skip
_XKB_REAL_MOD_INDEX: Final[Mapping[str, int]] = MappingProxyType(
    {"Shift": 0, "Lock": 1, "Control": 2, "Mod1": 3, "Mod2": 4, "Mod3": 5, "Mod4": 6, "Mod5": 7}
)


def evdev_from_vk(key_code: int) -> int | None:
    """The evdev code for a packet's key code (0x8000 / 0x80xx flag bits ignored), or None."""
    return VK_TO_EVDEV.get(key_code & 0xFF)


def xkb_keycode(evdev_code: int) -> int:
    """xkbcommon's keycode for an evdev code (the +8 X11 offset)."""
    return evdev_code + XKB_KEYCODE_OFFSET


def xkb_mods_mask(modifiers: int) -> int:
    """Moonlight's modifier byte as an xkb depressed-modifiers mask (default evdev keymap indices)."""
    mask = 0
    for bit, name in XKB_MODIFIER_NAMES.items():
        if modifiers & bit:
            mask |= 1 << _XKB_REAL_MOD_INDEX[name]
    return mask


def modifiers_held(pressed: frozenset[int] | set[int]) -> int:
    """The Moonlight modifier bits that a set of pressed evdev keys holds down."""
    bits = 0
    for code in pressed:
        bits |= MODIFIER_OF_KEY.get(code, 0)
    return bits
