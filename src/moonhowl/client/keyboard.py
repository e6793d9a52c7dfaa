"""Typing text as a Moonlight client does: Windows virtual-key events on a US layout.

moonlight-qt sends the shift key as its own key event and sets the modifier byte on the keys
typed while it is held (keyboard.cpp); this does the same, so the host sees what a person
typing on a US keyboard would produce.
"""

from __future__ import annotations

from moonhowl.protocol.input import KeyEvent
from moonhowl.protocol.keymap import MODIFIER_SHIFT

VK_LSHIFT = 0xA0
VK_RETURN = 0x0D
VK_SPACE = 0x20
VK_TAB = 0x09

# US layout: character -> (virtual key, needs shift), for the characters that are not letters.
_PUNCTUATION = {
    ";": (0xBA, False), ":": (0xBA, True), "=": (0xBB, False), "+": (0xBB, True),
    ",": (0xBC, False), "<": (0xBC, True), "-": (0xBD, False), "_": (0xBD, True),
    ".": (0xBE, False), ">": (0xBE, True), "/": (0xBF, False), "?": (0xBF, True),
    "`": (0xC0, False), "~": (0xC0, True), "[": (0xDB, False), "{": (0xDB, True),
    "\\": (0xDC, False), "|": (0xDC, True), "]": (0xDD, False), "}": (0xDD, True),
    "'": (0xDE, False), '"': (0xDE, True), " ": (VK_SPACE, False), "\n": (VK_RETURN, False),
    "\t": (VK_TAB, False),
}
_SHIFTED_DIGITS = ")!@#$%^&*("


def key_for(char: str) -> tuple[int, bool]:
    """(virtual key, shift held) for one character; ValueError when a US keyboard has no key for it."""
    if "a" <= char <= "z":
        return ord(char.upper()), False
    if "A" <= char <= "Z":
        return ord(char), True
    if "0" <= char <= "9":
        return ord(char), False
    if char in _SHIFTED_DIGITS:
        return ord("0") + _SHIFTED_DIGITS.index(char), True
    if char in _PUNCTUATION:
        return _PUNCTUATION[char]
    raise ValueError(f"no US-layout key types {char!r}")


def type_events(text: str) -> list[KeyEvent]:
    """The key events that type `text`: shift pressed around the characters that need it."""
    events: list[KeyEvent] = []
    for char in text:
        vk, shift = key_for(char)
        modifiers = MODIFIER_SHIFT if shift else 0
        if shift:
            events.append(KeyEvent(VK_LSHIFT, True, MODIFIER_SHIFT))
        events += [KeyEvent(vk, True, modifiers), KeyEvent(vk, False, modifiers)]
        if shift:
            events.append(KeyEvent(VK_LSHIFT, False, 0))
    return events
