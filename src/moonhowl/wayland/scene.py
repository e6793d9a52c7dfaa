"""What a renderer draws: an immutable, bottom-to-top list of rectangles with their content.

A Scene is taken on the asyncio loop (Compositor.snapshot) and may be rendered on another
thread. The buffers it references stay valid (not released to their clients, fds not closed)
until the session hands the scene back with Compositor.frame_presented() or discard().
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

# wl_shm formats (wayland.xml wl_shm.format): 0 and 1 are the two every compositor supports;
# the others are DRM fourccs. Both are little-endian packed: bytes B, G, R, A/X in memory.
WL_SHM_FORMAT_ARGB8888 = 0
WL_SHM_FORMAT_XRGB8888 = 1


def fourcc(code: str) -> int:
    """DRM fourcc from its 4 characters ("XR24" -> DRM_FORMAT_XRGB8888)."""
    a, b, c, d = (ord(ch) for ch in code.ljust(4))
    return a | (b << 8) | (c << 16) | (d << 24)


DRM_FORMAT_ARGB8888 = fourcc("AR24")
DRM_FORMAT_XRGB8888 = fourcc("XR24")
DRM_FORMAT_MOD_LINEAR = 0
DRM_FORMAT_MOD_INVALID = 0x00FFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class ShmContent:
    """Pixels in client shared memory; `data` starts at the pool's first byte."""

    data: memoryview
    offset: int
    width: int
    height: int
    stride: int
    format: int  # wl_shm format: WL_SHM_FORMAT_ARGB8888 / XRGB8888

    @property
    def has_alpha(self) -> bool:
        return self.format == WL_SHM_FORMAT_ARGB8888


@dataclass(frozen=True, slots=True)
class DmabufContent:
    """A linux-dmabuf buffer: one fd, offset and stride per plane (the fds belong to the buffer)."""

    fds: tuple[int, ...]
    offsets: tuple[int, ...]
    strides: tuple[int, ...]
    width: int
    height: int
    fourcc: int
    modifier: int

    @property
    def has_alpha(self) -> bool:
        return self.fourcc == DRM_FORMAT_ARGB8888


@dataclass(frozen=True, slots=True)
class SolidContent:
    """A single-pixel buffer (wp_single_pixel_buffer_v1): premultiplied RGBA in 0..1."""

    r: float
    g: float
    b: float
    a: float

    @property
    def has_alpha(self) -> bool:
        return self.a < 1.0


Content = ShmContent | DmabufContent | SolidContent


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Drawable:
    """One surface's buffer placed on the output.

    x, y, width, height: the destination rectangle in output pixels (may extend past the output).
    src: the part of the buffer shown, in buffer pixels (wp_viewport source), None for all of it.
    buffer_key: changes whenever the pixels may have changed (a new buffer or a commit with
    damage), so a renderer can cache an uploaded texture under it.
    opaque: every pixel of the destination is fully opaque (format without alpha, a solid alpha
    of 1, or an opaque region covering the surface).
    """

    content: Content
    x: int
    y: int
    width: int
    height: int
    src: Rect | None
    buffer_key: Hashable
    opaque: bool


@dataclass(frozen=True, slots=True)
class Scene:
    width: int
    height: int
    drawables: tuple[Drawable, ...]
    damaged: bool
    cursor: Drawable | None = None
    # Identifies this snapshot to frame_presented(); the surfaces' damage is not itemised,
    # `damaged` says whether anything changed since the previous snapshot.
    serial: int = 0
