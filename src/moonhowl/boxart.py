"""Box art for /appasset: a PNG per app, drawn with cairo (clients show it in their app grid)."""

from __future__ import annotations

import functools
import hashlib
import io

# Moonlight lays box art out at the aspect of GeForce Experience's posters (628 x 888).
WIDTH, HEIGHT = 628, 888


@functools.lru_cache(maxsize=64)
def render(title: str) -> bytes:
    import cairo  # from python3-gi-cairo in the runtime; imported here so tests of other parts need none

    hue = hashlib.sha256(title.encode()).digest()
    surface = cairo.ImageSurface(cairo.FORMAT_RGB24, WIDTH, HEIGHT)
    ctx = cairo.Context(surface)
    gradient = cairo.LinearGradient(0, 0, 0, HEIGHT)
    gradient.add_color_stop_rgb(0, hue[0] / 400, hue[1] / 400, hue[2] / 300 + 0.15)
    gradient.add_color_stop_rgb(1, 0.02, 0.02, 0.05)
    ctx.set_source(gradient)
    ctx.paint()
    ctx.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_BOLD)
    size = 72.0
    ctx.set_font_size(size)
    while ctx.text_extents(title).width > WIDTH * 0.85 and size > 12:
        size -= 4
        ctx.set_font_size(size)
    extents = ctx.text_extents(title)
    ctx.move_to((WIDTH - extents.width) / 2 - extents.x_bearing, HEIGHT * 0.55)
    ctx.set_source_rgb(0.95, 0.95, 1.0)
    ctx.show_text(title)
    out = io.BytesIO()
    surface.write_to_png(out)
    return out.getvalue()
