"""GlRenderer and the output allocators against real EGL/GLES (Mesa llvmpipe here, a GPU elsewhere).

Scenes are built from stand-in shm buffers with known colours, so each test states the pixels a
viewer would see: colours, blending, stride padding, crop and scale, stacking order, the cursor,
and that the same frame lands in a memfd dma-buf, a system-memory buffer and render()'s bytes.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from moonhowl.render.allocators import (
    AllocationError,
    AllocatorUnavailable,
    GbmAllocator,
    MemfdAllocator,
    OutputBuffer,
    ShmAllocator,
    default_allocator,
    render_nodes,
)
from moonhowl.render.gl import DRM_FORMAT_MOD_LINEAR, EglError, GlError, fourcc
from moonhowl.wayland import scene as scene_mod
from moonhowl.wayland.scene import DmabufContent, ShmContent, SolidContent

pytestmark = pytest.mark.integration

XR24, AR24, XB24, NV12 = fourcc("XR24"), fourcc("AR24"), fourcc("XB24"), fourcc("NV12")
WL_ARGB, WL_XRGB = 0, 1


def drawable(content: Any, x: int, y: int, width: int, height: int,
             src: tuple[float, float, float, float] | None = None, buffer_key: Any = None,
             opaque: bool = False) -> scene_mod.Drawable:
    """A scene Drawable with defaults for what a test does not care about."""
    return scene_mod.Drawable(content=content, x=x, y=y, width=width, height=height,
                              src=scene_mod.Rect(*src) if src is not None else None,
                              buffer_key=buffer_key if buffer_key is not None else id(content), opaque=opaque)


def scene_of(width: int, height: int, drawables: tuple[Any, ...], cursor: Any = None,
          damaged: bool = True) -> scene_mod.Scene:
    return scene_mod.Scene(width=width, height=height, drawables=drawables, damaged=damaged, cursor=cursor)


@pytest.fixture(scope="module")
def egl_ok() -> None:
    from moonhowl.render.gl import GlContext, shared_egl

    try:
        GlContext(shared_egl()).destroy()
    except (EglError, GlError) as exc:
        pytest.skip(f"no usable headless EGL/GLES here: {exc}")


@pytest.fixture(scope="module")
def memfd_imports(egl_ok: None) -> None:
    """Skip unless EGL imports a memfd as a dma-buf (Mesa does; NVIDIA's driver does not)."""
    from moonhowl.render.gl import GlContext, shared_egl

    ctx = GlContext(shared_egl())
    buffer = MemfdAllocator().allocate(4, 4, XR24)
    try:
        ctx.destroy_image(ctx.import_dmabuf(4, 4, XR24, buffer.fds, buffer.offsets, buffer.strides,
                                            DRM_FORMAT_MOD_LINEAR))
    except GlError as exc:
        pytest.skip(f"this EGL driver does not import memfds as dma-bufs ({exc})")
    finally:
        buffer.release()
        ctx.destroy()


@pytest.fixture
def make_renderer(egl_ok: None) -> Any:
    from moonhowl.render.renderer import GlRenderer

    made: list[GlRenderer] = []

    def make(width: int, height: int) -> GlRenderer:
        renderer = GlRenderer(width, height)
        made.append(renderer)
        return renderer

    yield make
    for renderer in made:
        renderer.close()


def bgra(b: int, g: int, r: int, a: int = 255) -> bytes:
    return bytes((b, g, r, a))


def shm(pixels: list[list[bytes]], fmt: int = WL_ARGB, pad: int = 0, offset: int = 0,
        pad_fill: bytes = b"\x00\xff\x00\xff") -> ShmContent:
    """An shm buffer from rows of 4-byte pixels, `pad` garbage pixels at each row end."""
    height, width = len(pixels), len(pixels[0])
    stride = (width + pad) * 4
    data = bytearray(pad_fill * (offset // 4))
    for row in pixels:
        data += b"".join(row) + pad_fill * pad
    return ShmContent(memoryview(data), offset, width, height, stride, fmt)


def solid_rows(width: int, height: int, pixel: bytes) -> list[list[bytes]]:
    return [[pixel] * width for _ in range(height)]


def pixel(frame: bytes, width: int, x: int, y: int) -> tuple[int, int, int]:
    """(b, g, r) at x, y of a BGRx frame; the X byte is not part of what a viewer sees."""
    i = (y * width + x) * 4
    return frame[i], frame[i + 1], frame[i + 2]


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 1) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def background(width: int, height: int, colour: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> scene_mod.Drawable:
    return drawable(SolidContent(*colour, 1.0), 0, 0, width, height, buffer_key="bg", opaque=True)


# --- render() --------------------------------------------------------------------------------------


def test_frame_is_bgrx_top_row_first(make_renderer: Any) -> None:
    renderer = make_renderer(8, 6)
    # A 4x2 window at (2, 1) of ARGB8888 colour B=0x10 G=0x20 R=0x30 over a red background.
    window = drawable(shm(solid_rows(4, 2, bgra(0x10, 0x20, 0x30))), 2, 1, 4, 2, buffer_key="w")
    frame = renderer.render(scene_of(8, 6, (background(8, 6, (1.0, 0.0, 0.0)), window)))
    assert len(frame) == 8 * 6 * 4
    assert pixel(frame, 8, 0, 0) == (0, 0, 255)
    assert pixel(frame, 8, 2, 1) == (0x10, 0x20, 0x30)  # row 1 from the top, not the bottom
    assert pixel(frame, 8, 5, 2) == (0x10, 0x20, 0x30)
    assert pixel(frame, 8, 6, 2) == (0, 0, 255)
    assert pixel(frame, 8, 2, 3) == (0, 0, 255)
    assert pixel(frame, 8, 2, 4) == (0, 0, 255)


def test_distinct_rows_keep_their_order(make_renderer: Any) -> None:
    renderer = make_renderer(2, 3)
    rows = [[bgra(10 * (y + 1), 0, 0)] * 2 for y in range(3)]
    frame = renderer.render(scene_of(2, 3, (drawable(shm(rows, WL_XRGB), 0, 0, 2, 3, buffer_key="r", opaque=True),)))
    assert [pixel(frame, 2, 0, y)[0] for y in range(3)] == [10, 20, 30]


def test_premultiplied_alpha_blends_over_what_is_below(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    # Premultiplied ARGB: half-transparent blue is B=0x80, A=0x80.
    glass = drawable(shm(solid_rows(2, 2, bgra(0x80, 0, 0, 0x80))), 1, 1, 2, 2, buffer_key="glass")
    frame = renderer.render(scene_of(4, 4, (background(4, 4, (1.0, 1.0, 1.0)), glass)))
    # out = src + dst * (1 - a): 128 + 255 * 127/255 = 255 for blue; 0 + 127 for green and red.
    assert close_to(pixel(frame, 4, 1, 1), (255, 127, 127))
    assert pixel(frame, 4, 0, 0) == (255, 255, 255)


def test_xrgb_alpha_bytes_are_ignored(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    # XRGB8888 with alpha bytes of 0: a compositor that blends would show the background.
    window = drawable(shm(solid_rows(2, 2, bgra(0, 0xC0, 0, 0)), WL_XRGB), 0, 0, 2, 2, buffer_key="x")
    frame = renderer.render(scene_of(4, 4, (background(4, 4), window)))
    assert pixel(frame, 4, 0, 0) == (0, 0xC0, 0)


def test_opaque_flag_ignores_alpha_of_argb(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    window = drawable(shm(solid_rows(2, 2, bgra(0, 0, 0xA0, 0x10))), 0, 0, 2, 2, buffer_key="o", opaque=True)
    frame = renderer.render(scene_of(4, 4, (background(4, 4), window)))
    assert pixel(frame, 4, 1, 1) == (0, 0, 0xA0)


def test_abgr_and_xbgr_buffers(make_renderer: Any) -> None:
    renderer = make_renderer(4, 2)
    # XBGR8888 memory order is R,G,B,X: bytes (0x11, 0x22, 0x33) mean R=0x11, B=0x33.
    window = drawable(shm(solid_rows(4, 2, bytes((0x11, 0x22, 0x33, 0))), XB24), 0, 0, 4, 2, buffer_key="xb")
    frame = renderer.render(scene_of(4, 2, (window,)))
    assert pixel(frame, 4, 0, 0) == (0x33, 0x22, 0x11)


def test_stride_padding_and_offset_do_not_show(make_renderer: Any) -> None:
    renderer = make_renderer(6, 3)
    rows = [[bgra(0x40 + x, 0x50 + y, 0x60) for x in range(3)] for y in range(3)]
    content = shm(rows, WL_XRGB, pad=5, offset=64, pad_fill=bgra(0, 255, 0))
    assert content.stride == 32 and content.offset == 64
    frame = renderer.render(scene_of(6, 3, (background(6, 3), drawable(content, 0, 0, 3, 3, buffer_key="pad"))))
    for y in range(3):
        for x in range(3):
            assert pixel(frame, 6, x, y) == (0x40 + x, 0x50 + y, 0x60)
        assert pixel(frame, 6, 3, y) == (255, 0, 0)


def test_crop_and_scale(make_renderer: Any) -> None:
    renderer = make_renderer(8, 8)
    # An 8x8 buffer of four 4x4 quadrants; the crop (5, 1, 2, 2) lies inside the top-right one
    # (green), scaled 4x onto the whole output: all green, nothing of the other quadrants.
    quadrants = [bgra(255, 0, 0), bgra(0, 255, 0), bgra(0, 0, 255), bgra(255, 255, 255)]
    rows = [[quadrants[(y // 4) * 2 + x // 4] for x in range(8)] for y in range(8)]
    window = drawable(shm(rows, WL_XRGB), 0, 0, 8, 8, src=(5, 1, 2, 2), buffer_key="q")
    frame = renderer.render(scene_of(8, 8, (window,)))
    assert {pixel(frame, 8, x, y) for x in range(8) for y in range(8)} == {(0, 255, 0)}


def test_scaling_up_and_down(make_renderer: Any) -> None:
    renderer = make_renderer(8, 8)
    # A 2x2 checker drawn at 8x8: each texel covers a 4x4 block (corners are exact: clamp to edge).
    checker = [[bgra(255, 0, 0), bgra(0, 0, 255)], [bgra(0, 255, 0), bgra(255, 255, 255)]]
    frame = renderer.render(scene_of(8, 8, (drawable(shm(checker, WL_XRGB), 0, 0, 8, 8, buffer_key="c"),)))
    assert pixel(frame, 8, 0, 0) == (255, 0, 0)
    assert pixel(frame, 8, 7, 0) == (0, 0, 255)
    assert pixel(frame, 8, 0, 7) == (0, 255, 0)
    assert pixel(frame, 8, 7, 7) == (255, 255, 255)
    # A 16x16 uniform buffer drawn at 4x4 (downscale) keeps its colour and its place.
    small = drawable(shm(solid_rows(16, 16, bgra(9, 99, 199)), WL_XRGB), 2, 2, 4, 4, buffer_key="s")
    frame = renderer.render(scene_of(8, 8, (background(8, 8), small)))
    assert pixel(frame, 8, 2, 2) == pixel(frame, 8, 5, 5) == (9, 99, 199)
    assert pixel(frame, 8, 6, 6) == (255, 0, 0)


def test_two_overlapping_surfaces_stack_bottom_to_top(make_renderer: Any) -> None:
    renderer = make_renderer(10, 10)
    below = drawable(shm(solid_rows(6, 6, bgra(0, 0, 200))), 0, 0, 6, 6, buffer_key="below")
    above = drawable(shm(solid_rows(6, 6, bgra(0, 100, 0, 100))), 4, 4, 6, 6, buffer_key="above")  # premultiplied
    frame = renderer.render(scene_of(10, 10, (background(10, 10, (0.0, 0.0, 0.0)), below, above)))
    assert pixel(frame, 10, 1, 1) == (0, 0, 200)                         # only the lower window
    assert close_to(pixel(frame, 10, 5, 5), (0, 100, 200 * 155 // 255))  # upper blended over lower
    assert close_to(pixel(frame, 10, 8, 8), (0, 100, 0))                 # upper over black
    # The other way round the opaque red one hides the green one where they overlap.
    frame = renderer.render(scene_of(10, 10, (background(10, 10, (0.0, 0.0, 0.0)), above, below)))
    assert pixel(frame, 10, 5, 5) == (0, 0, 200)


def test_solid_colours_are_premultiplied(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    half_red = drawable(SolidContent(0.5, 0.0, 0.0, 0.5), 0, 0, 2, 4, buffer_key="half")
    frame = renderer.render(scene_of(4, 4, (background(4, 4, (0.0, 0.0, 1.0)), half_red)))
    assert close_to(pixel(frame, 4, 0, 0), (128, 0, 128))  # blue * 0.5 + red 0.5
    assert pixel(frame, 4, 3, 0) == (255, 0, 0)


def test_cursor_is_drawn_on_top(make_renderer: Any) -> None:
    renderer = make_renderer(8, 8)
    window = drawable(shm(solid_rows(8, 8, bgra(0, 0, 255)), WL_XRGB), 0, 0, 8, 8, buffer_key="full")
    cursor = drawable(shm(solid_rows(2, 2, bgra(255, 255, 255))), 3, 3, 2, 2, buffer_key="cursor")
    frame = renderer.render(scene_of(8, 8, (window,), cursor=cursor))
    assert pixel(frame, 8, 3, 3) == pixel(frame, 8, 4, 4) == (255, 255, 255)
    assert pixel(frame, 8, 5, 5) == (0, 0, 255)


def test_empty_scene_is_black(make_renderer: Any) -> None:
    frame = make_renderer(4, 4).render(scene_of(4, 4, ()))
    assert {pixel(frame, 4, x, y) for x in range(4) for y in range(4)} == {(0, 0, 0)}


def test_scene_smaller_than_output_is_scaled(make_renderer: Any) -> None:
    renderer = make_renderer(8, 8)
    # A 4x4 scene with its left half red: on an 8x8 output the left four columns are red.
    frame = renderer.render(scene_of(4, 4, (background(4, 4), drawable(SolidContent(1, 0, 0, 1), 0, 0, 2, 4))))
    assert pixel(frame, 8, 3, 7) == (0, 0, 255)
    assert pixel(frame, 8, 4, 0) == (255, 0, 0)


# --- bad buffers -------------------------------------------------------------------------------


def test_buffer_larger_than_its_pool_is_left_out(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    content = shm(solid_rows(2, 2, bgra(0, 255, 0)))
    lying = ShmContent(content.data, 0, 2, 40, content.stride, WL_ARGB)  # 40 rows in a 2-row pool
    frame = renderer.render(scene_of(4, 4, (background(4, 4), drawable(lying, 0, 0, 2, 2, buffer_key="lie"))))
    assert pixel(frame, 4, 0, 0) == (255, 0, 0)
    assert renderer.stats.skipped == 1


def test_unsupported_shm_format_is_left_out(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    rgb565 = ShmContent(memoryview(bytearray(32)), 0, 4, 4, 8, fourcc("RG16"))
    frame = renderer.render(scene_of(4, 4, (background(4, 4), drawable(rgb565, 0, 0, 4, 4, buffer_key="565"))))
    assert pixel(frame, 4, 0, 0) == (255, 0, 0)
    assert renderer.stats.skipped == 1


def test_read_only_pool_memory_is_accepted(make_renderer: Any) -> None:
    renderer = make_renderer(2, 2)
    data = memoryview(bytes(bgra(1, 2, 3) * 4))  # a read-only buffer, like a PROT_READ mapping
    frame = renderer.render(scene_of(2, 2, (drawable(ShmContent(data, 0, 2, 2, 8, WL_XRGB), 0, 0, 2, 2, None, "ro"),)))
    assert pixel(frame, 2, 1, 1) == (1, 2, 3)


# --- texture cache -------------------------------------------------------------------------------


def test_unchanged_buffer_is_not_uploaded_again(make_renderer: Any) -> None:
    renderer = make_renderer(16, 16)
    window = drawable(shm(solid_rows(16, 16, bgra(1, 2, 3)), WL_XRGB), 0, 0, 16, 16, buffer_key=("w", 1))
    for _ in range(3):
        renderer.render(scene_of(16, 16, (window,)))
    assert renderer.stats.uploads == 1
    assert renderer.stats.frames == 3
    # A new commit (a new key) with new content is uploaded and shown.
    changed = drawable(shm(solid_rows(16, 16, bgra(7, 8, 9)), WL_XRGB), 0, 0, 16, 16, buffer_key=("w", 2))
    frame = renderer.render(scene_of(16, 16, (changed,)))
    assert renderer.stats.uploads == 2
    assert pixel(frame, 16, 0, 0) == (7, 8, 9)
    # A scene that is not damaged is not drawn again: the previous frame is the answer.
    again = renderer.render(scene_of(16, 16, (changed,), damaged=False))
    assert again == frame
    assert renderer.stats.frames == 4 and renderer.stats.reused == 1 and renderer.stats.uploads == 2


def test_surface_hidden_under_a_fullscreen_opaque_one_is_not_uploaded(make_renderer: Any) -> None:
    renderer = make_renderer(8, 8)
    hidden = drawable(shm(solid_rows(8, 8, bgra(0, 255, 0))), 0, 0, 8, 8, buffer_key="hidden")
    top = drawable(shm(solid_rows(8, 8, bgra(0, 0, 255)), WL_XRGB), 0, 0, 8, 8, buffer_key="top")
    frame = renderer.render(scene_of(8, 8, (hidden, top)))
    assert pixel(frame, 8, 4, 4) == (0, 0, 255)
    assert renderer.stats.uploads == 1


# --- client dma-bufs -------------------------------------------------------------------------------


def test_client_dmabuf_is_imported_once_and_shows_its_memory(make_renderer: Any, memfd_imports: None) -> None:
    renderer = make_renderer(8, 4)
    client = MemfdAllocator().allocate(4, 4, XR24)
    try:
        assert client.memory is not None
        fill(client, bgra(0x21, 0x43, 0x65))
        content = DmabufContent(client.fds, client.offsets, client.strides, 4, 4, XR24, DRM_FORMAT_MOD_LINEAR)
        scene = scene_of(8, 4, (background(8, 4), drawable(content, 4, 0, 4, 4, buffer_key="dmabuf")))
        frame = renderer.render(scene)
        assert pixel(frame, 8, 5, 1) == (0x21, 0x43, 0x65)
        assert pixel(frame, 8, 0, 0) == (255, 0, 0)
        # The client draws its next frame into the same buffer: the import aliases its memory,
        # so the new content shows without importing again.
        fill(client, bgra(0x12, 0x34, 0x56))
        frame = renderer.render(scene)
        assert pixel(frame, 8, 5, 1) == (0x12, 0x34, 0x56)
        assert renderer.stats.imports == 1
    finally:
        client.release()


def test_client_dmabuf_with_unsupported_modifier_is_left_out(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    client = MemfdAllocator().allocate(4, 4, XR24)
    try:
        # Intel X-tiled: EGL here imports LINEAR only, so the import fails and the frame goes on.
        content = DmabufContent(client.fds, client.offsets, client.strides, 4, 4, XR24, 0x0100000000000001)
        frame = renderer.render(scene_of(4, 4, (background(4, 4), drawable(content, 0, 0, 4, 4, buffer_key="tiled"))))
    finally:
        client.release()
    assert pixel(frame, 4, 0, 0) == (255, 0, 0)
    assert renderer.stats.skipped == 1 and renderer.stats.imports == 0


def unsealed_memfd(size: int) -> int:
    fd = os.memfd_create("client")
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize("case", ["pipe", "unsealed memfd", "too small", "closed fd"])
def test_client_dmabuf_that_would_crash_the_importer_is_refused(make_renderer: Any, case: str) -> None:
    # llvmpipe's eglCreateImageKHR accepts any fd and crashes the process when drawing from a
    # bad one, so these must be refused before the import.
    from moonhowl.render.gl import client_dmabuf_problem

    renderer = make_renderer(4, 4)
    opened: list[int] = []
    if case == "pipe":
        opened += os.pipe()
        fd = opened[0]
    elif case == "unsealed memfd":
        fd = unsealed_memfd(64)
        opened.append(fd)
    elif case == "too small":
        small = MemfdAllocator().allocate(4, 1, XR24)  # sealed, but one row where four are claimed
        fd = small.fds[0]
    else:
        fd = unsealed_memfd(64)
        os.close(fd)
    try:
        stride = 256 if case == "too small" else 16
        assert client_dmabuf_problem((fd,), (0,), (stride,), 4, 4) is not None
        content = DmabufContent((fd,), (0,), (stride,), 4, 4, XR24, DRM_FORMAT_MOD_LINEAR)
        frame = renderer.render(scene_of(4, 4, (background(4, 4), drawable(content, 0, 0, 4, 4, buffer_key=case))))
    finally:
        for each in opened:
            os.close(each)
        if case == "too small":
            small.release()
    assert pixel(frame, 4, 0, 0) == (255, 0, 0)
    assert renderer.stats.skipped == 1 and renderer.stats.imports == 0


# --- render_to -------------------------------------------------------------------------------------


def sample_scene(width: int, height: int) -> scene_mod.Scene:
    rows = [[bgra(x * 255 // width, y * 255 // height, 0x80) for x in range(width // 2)] for y in range(height // 2)]
    window = drawable(shm(rows, WL_XRGB), width // 4, height // 4, width // 2, height // 2, buffer_key="win")
    cursor = drawable(shm(solid_rows(3, 3, bgra(0x80, 0x80, 0x80, 0x80))), 1, 1, 3, 3, buffer_key="cur")
    return scene_of(width, height, (background(width, height, (0.2, 0.4, 0.6)), window), cursor=cursor)


def rows_of(buffer: OutputBuffer) -> bytes:
    """The buffer's pixels without row padding, read from its memory (what a consumer maps)."""
    assert buffer.memory is not None
    stride, offset, row = buffer.strides[0], buffer.offsets[0] if buffer.offsets else 0, buffer.width * 4
    return b"".join(bytes(buffer.memory[offset + y * stride: offset + y * stride + row]) for y in range(buffer.height))


def fill(buffer: OutputBuffer, pixel_bytes: bytes) -> None:
    assert buffer.memory is not None
    buffer.memory[:] = pixel_bytes * (buffer.size // 4)


def without_x(frame: bytes) -> bytes:
    return bytes(b for i, b in enumerate(frame) if i % 4 != 3)


def test_render_to_memfd_dmabuf_matches_render(make_renderer: Any) -> None:
    # 100 pixels wide: rows are padded to a 256-byte pitch, so the stride is exercised too.
    renderer = make_renderer(100, 60)
    scene = sample_scene(100, 60)
    expected = renderer.render(scene)
    buffer = MemfdAllocator().allocate(100, 60, XR24)
    try:
        assert buffer.strides[0] == 512
        fill(buffer, bgra(1, 1, 1))
        renderer.render_to(scene, buffer)
        assert without_x(rows_of(buffer)) == without_x(expected)
        # A second frame into the same buffer reuses its framebuffer and shows the new scene.
        renderer.render_to(scene_of(100, 60, (background(100, 60, (0.0, 1.0, 0.0)),)), buffer)
        assert pixel(rows_of(buffer), 100, 50, 30) == (0, 255, 0)
    finally:
        buffer.release()
    # On Mesa (llvmpipe or a GPU) the memfd is rendered into directly, not read back into.
    if "llvmpipe" in renderer.gl.string(0x1F01):
        assert renderer.target_failures == {}


def test_render_to_memfd_in_rgb_order(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    buffer = MemfdAllocator().allocate(4, 4, XB24)
    try:
        renderer.render_to(scene_of(4, 4, (background(4, 4, (1.0, 0.0, 0.0)),)), buffer)
        assert rows_of(buffer)[:3] == bytes((255, 0, 0))  # XBGR8888 memory order is R,G,B,X
    finally:
        buffer.release()


def test_render_to_system_memory_matches_render(make_renderer: Any) -> None:
    renderer = make_renderer(64, 48)
    scene = sample_scene(64, 48)
    buffer = ShmAllocator().allocate(64, 48, XR24)
    renderer.render_to(scene, buffer)
    assert without_x(rows_of(buffer)) == without_x(renderer.render(scene))


def test_render_to_unrenderable_dmabuf_falls_back_to_readback(make_renderer: Any) -> None:
    from moonhowl.render.renderer import RenderError

    renderer = make_renderer(8, 8)
    memfd = MemfdAllocator().allocate(8, 8, XR24)
    x_tiled = 0x0100000000000001  # a modifier EGL here cannot import: the driver cannot render to it
    # Such a buffer with a CPU mapping still receives the frame, by readback.
    buffer = OutputBuffer(8, 8, XR24, x_tiled, memfd.fds, memfd.offsets, memfd.strides, memfd.size,
                          memory=memfd.memory)
    try:
        renderer.render_to(scene_of(8, 8, (background(8, 8),)), buffer)
        assert pixel(rows_of(buffer), 8, 7, 7) == (255, 0, 0)
        assert (XR24, x_tiled) in renderer.target_failures
        # Without a CPU mapping there is nowhere to put the frame: a clear error.
        no_memory = OutputBuffer(8, 8, XR24, x_tiled, memfd.fds, memfd.offsets, memfd.strides, memfd.size)
        with pytest.raises(RenderError, match="no CPU mapping"):
            renderer.render_to(scene_of(8, 8, ()), no_memory)
    finally:
        memfd.release()


def test_render_to_checks_the_buffer(make_renderer: Any) -> None:
    from moonhowl.render.renderer import RenderError

    renderer = make_renderer(8, 8)
    small = ShmAllocator().allocate(4, 4, XR24)
    with pytest.raises(RenderError, match="4x4"):
        renderer.render_to(scene_of(8, 8, ()), small)
    released = MemfdAllocator().allocate(8, 8, XR24)
    released.release()
    with pytest.raises(RenderError, match="released"):
        renderer.render_to(scene_of(8, 8, ()), released)


def test_released_output_buffers_are_forgotten(make_renderer: Any, memfd_imports: None) -> None:
    renderer = make_renderer(8, 8)
    allocator = MemfdAllocator()
    for _ in range(5):
        buffer = allocator.allocate(8, 8, XR24)
        renderer.render_to(scene_of(8, 8, (background(8, 8),)), buffer)
        buffer.release()
    renderer.render_to(scene_of(8, 8, ()), keep := allocator.allocate(8, 8, XR24))
    assert len(renderer._targets) == 1
    keep.release()


# --- threads ---------------------------------------------------------------------------------------


def test_context_belongs_to_the_thread_that_rendered_first(make_renderer: Any) -> None:
    renderer = make_renderer(4, 4)
    renderer.render(scene_of(4, 4, ()))
    errors: list[BaseException] = []

    def other() -> None:
        try:
            renderer.render(scene_of(4, 4, ()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], GlError)


def test_two_renderers_on_two_threads(make_renderer: Any) -> None:
    # Two sessions: each render thread owns its own context on the shared display.
    results: dict[str, bytes] = {}
    renderers = {"red": make_renderer(16, 16), "green": make_renderer(16, 16)}
    colours = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0)}

    def run(name: str) -> None:
        for _ in range(5):
            results[name] = renderers[name].render(scene_of(16, 16, (background(16, 16, colours[name]),)))

    threads = [threading.Thread(target=run, args=(name,)) for name in renderers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pixel(results["red"], 16, 8, 8) == (0, 0, 255)
    assert pixel(results["green"], 16, 8, 8) == (0, 255, 0)


# --- against the CPU renderer ------------------------------------------------------------------------


def opaque_desktop() -> scene_mod.Scene:
    """Opaque surfaces at 1:1 (one cropped, two partly off the output) over a solid background."""
    rows = [[bgra((x * 37) & 0xFF, (y * 53) & 0xFF, (x * y) & 0xFF) for x in range(20)] for y in range(12)]
    window = drawable(shm(rows, WL_XRGB, pad=3), 6, 4, 20, 12, buffer_key="w", opaque=True)
    cropped = drawable(shm(rows, WL_XRGB), 24, 16, 10, 6, src=(5, 2, 10, 6), buffer_key="c", opaque=True)
    off_left = drawable(shm(rows, WL_XRGB), -5, -3, 20, 12, buffer_key="l")
    cursor = drawable(shm(solid_rows(4, 4, bgra(200, 100, 50))), 30, 22, 4, 4, buffer_key="cur", opaque=True)
    return scene_of(32, 24, (background(32, 24), off_left, window, cropped), cursor=cursor)


def test_matches_cpu_renderer_on_opaque_scenes(make_renderer: Any) -> None:
    from moonhowl.render.cpu import CpuRenderer

    # The CPU renderer does not blend, so the scene has nothing translucent: both must agree.
    renderer = make_renderer(32, 24)
    gl_frame = renderer.render(opaque_desktop())
    assert without_x(gl_frame) == without_x(CpuRenderer(32, 24).render(opaque_desktop()))
    if renderer.ctx.version.startswith("3"):
        assert renderer.stats.copies >= 4  # opaque 1:1 surfaces are blitted, not drawn


def test_render_to_memfd_matches_cpu_renderer(make_renderer: Any) -> None:
    from moonhowl.render.cpu import CpuRenderer

    renderer = make_renderer(32, 24)
    buffer = MemfdAllocator().allocate(32, 24, XR24)
    try:
        renderer.render_to(opaque_desktop(), buffer)
        assert without_x(rows_of(buffer)) == without_x(CpuRenderer(32, 24).render(opaque_desktop()))
        if renderer._software:
            assert renderer.stats.copies >= 4  # llvmpipe: opaque 1:1 shm uploaded into the output
    finally:
        buffer.release()


def test_alpha_stays_opaque_in_an_argb_output(make_renderer: Any) -> None:
    # XRGB content carries undefined alpha bytes (0 here); an AR24 output must still say opaque.
    renderer = make_renderer(4, 4)
    window = drawable(shm(solid_rows(4, 4, bgra(10, 20, 30, 0)), WL_XRGB), 0, 0, 4, 4, buffer_key="x")
    for allocator in (MemfdAllocator(), ShmAllocator()):
        buffer = allocator.allocate(4, 4, AR24)
        try:
            renderer.render_to(scene_of(4, 4, (window,)), buffer)
            assert rows_of(buffer)[:8] == bgra(10, 20, 30, 255) * 2
        finally:
            buffer.release()


# --- allocators ---------------------------------------------------------------------------------------


def test_memfd_allocator_layout_and_seals() -> None:
    buffer = MemfdAllocator().allocate(1920, 1080, XR24)
    try:
        assert buffer.fds and buffer.modifier == DRM_FORMAT_MOD_LINEAR
        assert buffer.strides == (7680,) and buffer.offsets == (0,) and buffer.size == 7680 * 1080
        assert os.fstat(buffer.fds[0]).st_size == buffer.size
        with pytest.raises(OSError):  # sealed: importers that mapped it cannot be cut short
            os.ftruncate(buffer.fds[0], 4096)
    finally:
        buffer.release()
    with pytest.raises(OSError):
        os.fstat(buffer.fds[0])  # release closed it
    buffer.release()  # twice is harmless


def test_memfd_allocator_pads_rows_to_256_bytes() -> None:
    buffer = MemfdAllocator().allocate(100, 10, AR24)
    assert buffer.strides == (512,) and buffer.size == 5120
    buffer.release()


def test_allocators_refuse_what_they_cannot_make() -> None:
    with pytest.raises(AllocationError, match="linear only"):
        MemfdAllocator().allocate(64, 64, XR24, modifier=0x0100000000000001)  # an Intel X-tiled modifier
    with pytest.raises(AllocationError, match="unsupported output format"):
        MemfdAllocator().allocate(64, 64, NV12)
    with pytest.raises(AllocationError, match="invalid buffer size"):
        ShmAllocator().allocate(0, 64, XR24)


def test_shm_allocator_is_tightly_packed_memory() -> None:
    buffer = ShmAllocator().allocate(10, 4, XR24)
    assert buffer.fds == () and buffer.strides == (40,) and buffer.memory is not None and len(buffer.memory) == 160


@pytest.mark.skipif(bool(render_nodes()), reason="this machine has a DRM render node")
def test_gbm_without_render_node_is_a_clear_error() -> None:
    with pytest.raises(AllocatorUnavailable, match=r"render node.*/dev/dri/renderD"):
        GbmAllocator()
    # The default choice moves on to the memfd allocator.
    assert isinstance(default_allocator(), MemfdAllocator)


def test_render_to_skips_a_buffer_that_already_shows_an_unchanged_scene(make_renderer: Any) -> None:
    # An idle desktop: nothing damaged, and this swapchain buffer already holds the picture.
    renderer = make_renderer(100, 60)
    first, second = MemfdAllocator().allocate(100, 60, XR24), MemfdAllocator().allocate(100, 60, XR24)
    try:
        fill(first, bgra(1, 1, 1))
        renderer.render_to(sample_scene(100, 60), first)
        reused = renderer.stats.reused
        idle = scene_of(100, 60, sample_scene(100, 60).drawables, damaged=False)
        renderer.render_to(idle, first)
        assert renderer.stats.reused == reused + 1
        # Another buffer of the swapchain has not seen the picture yet: it is drawn.
        fill(second, bgra(1, 1, 1))
        renderer.render_to(idle, second)
        assert renderer.stats.reused == reused + 1
    finally:
        first.release()
        second.release()
