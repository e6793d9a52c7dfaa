"""xdg_positioner rules and the popup placement math (xdg-shell.xml, xdg_positioner).

Pure functions: the popup box is computed relative to the parent's window geometry from the
anchor rectangle, anchor edge, gravity and offset; then, if it leaves the output, the constraint
adjustments are tried in the order the protocol describes: flip, then slide, then resize, per
axis (like wlroots types/xdg_shell/wlr_xdg_positioner.c).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# xdg_positioner.anchor / .gravity values -> (horizontal, vertical) edge: -1 left/top, +1 right/bottom
EDGES = {
    0: (0, 0),    # none
    1: (0, -1),   # top
    2: (0, 1),    # bottom
    3: (-1, 0),   # left
    4: (1, 0),    # right
    5: (-1, -1),  # top_left
    6: (-1, 1),   # bottom_left
    7: (1, -1),   # top_right
    8: (1, 1),    # bottom_right
}
SLIDE_X, SLIDE_Y, FLIP_X, FLIP_Y, RESIZE_X, RESIZE_Y = 1, 2, 4, 8, 16, 32


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class PositionerRules:
    width: int = 0
    height: int = 0
    anchor_rect: Box | None = None
    anchor: int = 0
    gravity: int = 0
    constraint_adjustment: int = 0
    offset_x: int = 0
    offset_y: int = 0
    reactive: bool = False

    @property
    def complete(self) -> bool:
        """xdg-shell.xml: a positioner without size or anchor rectangle is invalid_positioner."""
        return self.width > 0 and self.height > 0 and self.anchor_rect is not None


def _offset(edge: int, length: int) -> int:
    return 0 if edge < 0 else length if edge > 0 else length // 2


def _extent_before(gravity: int, length: int) -> int:
    """How much of the popup lies before (left of / above) the anchor point."""
    return length if gravity < 0 else 0 if gravity > 0 else length // 2


def unconstrained_box(rules: PositionerRules, flip_x: bool = False, flip_y: bool = False) -> Box:
    """The popup box relative to the parent's window geometry, before any adjustment."""
    ar = rules.anchor_rect or Box(0, 0, 0, 0)
    ax, ay = EDGES[rules.anchor]
    gx, gy = EDGES[rules.gravity]
    if flip_x:
        ax, gx = -ax, -gx
    if flip_y:
        ay, gy = -ay, -gy
    # The anchor point on the anchor rectangle, then the popup extends from it toward gravity.
    x = ar.x + _offset(ax, ar.width) + rules.offset_x
    y = ar.y + _offset(ay, ar.height) + rules.offset_y
    x -= _extent_before(gx, rules.width)
    y -= _extent_before(gy, rules.height)
    return Box(x, y, rules.width, rules.height)


def _out(start: int, length: int, low: int, high: int) -> bool:
    return start < low or start + length > high


def place(rules: PositionerRules, origin: tuple[int, int], bounds: Box) -> Box:
    """The popup box relative to the parent geometry, constrained to `bounds` (output coords).

    origin: where the parent's window geometry starts in output coordinates.
    """
    ox, oy = origin
    adj = rules.constraint_adjustment
    box = unconstrained_box(rules)
    left, right = bounds.x - ox, bounds.x + bounds.width - ox
    top, bottom = bounds.y - oy, bounds.y + bounds.height - oy
    flip_x = flip_y = False
    if _out(box.x, box.width, left, right) and adj & FLIP_X:
        flipped = unconstrained_box(rules, flip_x=True)
        if not _out(flipped.x, flipped.width, left, right):
            flip_x = True
    if _out(box.y, box.height, top, bottom) and adj & FLIP_Y:
        flipped = unconstrained_box(rules, flip_y=True)
        if not _out(flipped.y, flipped.height, top, bottom):
            flip_y = True
    if flip_x or flip_y:
        box = unconstrained_box(rules, flip_x, flip_y)
    x, y, w, h = box.x, box.y, box.width, box.height
    if _out(x, w, left, right) and adj & SLIDE_X:
        if x + w > right:
            x = right - w
        if x < left:  # wider than the bounds: keep the left edge visible
            x = left
    if _out(y, h, top, bottom) and adj & SLIDE_Y:
        if y + h > bottom:
            y = bottom - h
        if y < top:
            y = top
    if _out(x, w, left, right) and adj & RESIZE_X:
        new_left, new_right = max(x, left), min(x + w, right)
        if new_right > new_left:
            x, w = new_left, new_right - new_left
    if _out(y, h, top, bottom) and adj & RESIZE_Y:
        new_top, new_bottom = max(y, top), min(y + h, bottom)
        if new_bottom > new_top:
            y, h = new_top, new_bottom - new_top
    return replace(box, x=x, y=y, width=w, height=h)
