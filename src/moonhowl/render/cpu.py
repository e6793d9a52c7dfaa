"""A CPU renderer into system memory: the fallback path and the tests' oracle.

Output is BGRx (GStreamer format=BGRx), width * height * 4 bytes, black where nothing is drawn.
wl_shm ARGB8888 / XRGB8888 (and DRM AR24 / XR24) are little-endian 32-bit words, i.e. the bytes
B, G, R, A/X in memory: exactly BGRx, so surfaces are copied row by row with memoryview slices,
no per-pixel work. Deliberate simplifications, fine for a fallback:
  * no alpha blending of surfaces: translucent pixels are copied as if opaque (their colour is
    premultiplied by alpha, so a transparent pixel shows black); a solid colour with alpha 0 is
    skipped. Only the cursor, a few hundred pixels, is blended (premultiplied "over");
  * scaling (viewport, buffer scale) is nearest-neighbour, and slow;
  * buffer transforms are ignored; dmabufs are read only when LINEAR, by mmap.
The GLES renderer (render/renderer.py) implements the same render(scene) with blending.
"""

from __future__ import annotations

import logging
import mmap

from moonhowl.wayland.scene import (
    DRM_FORMAT_ARGB8888,
    DRM_FORMAT_MOD_LINEAR,
    DRM_FORMAT_XRGB8888,
    WL_SHM_FORMAT_ARGB8888,
    WL_SHM_FORMAT_XRGB8888,
    DmabufContent,
    Drawable,
    Scene,
    ShmContent,
    SolidContent,
)

log = logging.getLogger(__name__)

BPP = 4


class CpuRenderer:
    def __init__(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"bad size {width}x{height}")
        self.width = width
        self.height = height
        self._warned: set[str] = set()

    def render(self, scene: Scene) -> bytes:
        drawables = scene.drawables
        # Whatever lies under the topmost opaque drawable covering the output is never seen.
        for i in range(len(drawables) - 1, -1, -1):
            d = drawables[i]
            if d.opaque and d.x <= 0 and d.y <= 0 and d.x + d.width >= self.width and d.y + d.height >= self.height:
                drawables = drawables[i:]
                break
        if len(drawables) == 1 and scene.cursor is None:
            whole = self._whole_frame(drawables[0])
            if whole is not None:
                return whole
        out = bytearray(self.width * self.height * BPP)
        for drawable in drawables:
            self._draw(out, drawable)
        if scene.cursor is not None:
            self._draw_cursor(out, scene.cursor)
        return bytes(out)

    def _draw_cursor(self, out: bytearray, d: Drawable) -> None:
        content = d.content
        if not isinstance(content, ShmContent) or not content.has_alpha or d.src is not None \
                or (d.width, d.height) != (content.width, content.height) or d.width * d.height > 128 * 128:
            self._draw(out, d)
            return
        line = self.width * BPP
        data = content.data
        for y in range(max(d.y, 0), min(d.y + d.height, self.height)):
            src_row = content.offset + (y - d.y) * content.stride
            for x in range(max(d.x, 0), min(d.x + d.width, self.width)):
                s = src_row + (x - d.x) * BPP
                a = data[s + 3]
                if a == 0:
                    continue
                o = y * line + x * BPP
                if a == 255:
                    out[o:o + 3] = data[s:s + 3]
                    continue
                keep = 255 - a
                for c in range(3):
                    out[o + c] = min(255, data[s + c] + (out[o + c] * keep + 127) // 255)

    def _whole_frame(self, d: Drawable) -> bytes | None:
        """The common fullscreen case, one copy: a buffer exactly the output, rows contiguous."""
        c = d.content
        if (isinstance(c, ShmContent) and c.format in (WL_SHM_FORMAT_ARGB8888, WL_SHM_FORMAT_XRGB8888)
                and (d.x, d.y, d.width, d.height) == (0, 0, self.width, self.height) and d.src is None
                and (c.width, c.height, c.stride) == (self.width, self.height, self.width * BPP)):
            return bytes(c.data[c.offset:c.offset + self.width * self.height * BPP])
        return None

    def _warn_once(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("cpu renderer: %s", what)

    def _draw(self, out: bytearray, d: Drawable) -> None:
        x0, x1 = max(d.x, 0), min(d.x + d.width, self.width)
        y0, y1 = max(d.y, 0), min(d.y + d.height, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        content = d.content
        if isinstance(content, SolidContent):
            self._fill(out, content, x0, x1, y0, y1)
        elif isinstance(content, ShmContent):
            if content.format not in (WL_SHM_FORMAT_ARGB8888, WL_SHM_FORMAT_XRGB8888):
                self._warn_once(f"wl_shm format {content.format:#x} not drawn")
                return
            self._copy(out, d, content.data, content.offset, content.stride, content.width, content.height,
                       x0, x1, y0, y1)
        elif isinstance(content, DmabufContent):
            self._dmabuf(out, d, content, x0, x1, y0, y1)

    def _fill(self, out: bytearray, c: SolidContent, x0: int, x1: int, y0: int, y1: int) -> None:
        if c.a <= 0.0:
            return
        pixel = bytes((round(c.b * 255), round(c.g * 255), round(c.r * 255), 255))
        row = pixel * (x1 - x0)
        line = self.width * BPP
        for y in range(y0, y1):
            start = y * line + x0 * BPP
            out[start:start + len(row)] = row

    def _copy(self, out: bytearray, d: Drawable, data: memoryview, offset: int, stride: int, bw: int, bh: int,
              x0: int, x1: int, y0: int, y1: int) -> None:
        if d.src is not None:
            sx, sy = int(d.src.x), int(d.src.y)
            sw, sh = max(1, int(d.src.width)), max(1, int(d.src.height))
        else:
            sx, sy, sw, sh = 0, 0, bw, bh
        line = self.width * BPP
        n = (x1 - x0) * BPP
        if sw == d.width and sh == d.height:
            if (x0 == 0 and x1 == self.width and d.x == 0 and sx == 0 and stride == line
                    and d.width == self.width):
                # Rows are contiguous on both sides: one slice for the whole block.
                src = offset + (sy + y0 - d.y) * stride
                out[y0 * line:y1 * line] = data[src:src + (y1 - y0) * line]
                return
            for y in range(y0, y1):
                src = offset + (sy + y - d.y) * stride + (sx + x0 - d.x) * BPP
                dst = y * line + x0 * BPP
                out[dst:dst + n] = data[src:src + n]
            return
        # Nearest-neighbour scaling: map each destination column / row to a source one.
        cols = [min(bw - 1, sx + ((x - d.x) * sw) // d.width) for x in range(x0, x1)]
        cache: dict[int, bytes] = {}
        for y in range(y0, y1):
            src_row = min(bh - 1, sy + ((y - d.y) * sh) // d.height)
            row = cache.get(src_row)
            if row is None:
                base = offset + src_row * stride
                raw = bytes(data[base:base + bw * BPP])
                row = b"".join(raw[c * BPP:c * BPP + BPP] for c in cols)
                cache[src_row] = row
            dst = y * line + x0 * BPP
            out[dst:dst + n] = row

    def _dmabuf(self, out: bytearray, d: Drawable, c: DmabufContent, x0: int, x1: int, y0: int, y1: int) -> None:
        if c.modifier != DRM_FORMAT_MOD_LINEAR or c.fourcc not in (DRM_FORMAT_XRGB8888, DRM_FORMAT_ARGB8888):
            self._warn_once(f"dmabuf {c.fourcc:#x}/{c.modifier:#x} not drawn (LINEAR XR24/AR24 only)")
            return
        length = c.offsets[0] + c.strides[0] * c.height
        try:
            with mmap.mmap(c.fds[0], length, mmap.MAP_SHARED, mmap.PROT_READ) as mapping:
                view = memoryview(mapping)
                try:
                    self._copy(out, d, view, c.offsets[0], c.strides[0], c.width, c.height, x0, x1, y0, y1)
                finally:
                    view.release()
        except (OSError, ValueError) as exc:
            self._warn_once(f"cannot map dmabuf: {exc}")

