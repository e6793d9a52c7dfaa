"""GLES composition of the compositor's Scene into a frame.

`GlRenderer(width, height).render(scene) -> bytes` returns BGRx, top row first;
`render_to(scene, buffer)` draws into an allocator's OutputBuffer (a dma-buf imported as an
EGLImage and bound to a framebuffer, or system memory filled by readback) and returns only once
the GPU has finished (EGL fence), so a buffer is never handed downstream half drawn.

Costs are kept down where a desktop spends them:
* shm textures are cached under the drawable's buffer_key (the compositor changes the key when
  the pixels may have changed) and uploaded only when the key is new;
* what lies under a fullscreen opaque surface is neither uploaded nor drawn;
* an opaque surface shown 1:1 on whole pixels is copied rather than drawn: a blit onto the
  readback framebuffer, or on software renderers an upload straight into a dma-buf output;
* a scene that is not damaged gets the previous frame's bytes back from render().

Conventions that keep every path free of flips and CPU conversions:
* No y flip anywhere. Scene row 0 is drawn to GL row 0, which is the first row in memory both for
  glReadPixels and for a dma-buf bound as the colour attachment; shm uploads and dma-buf textures
  likewise have their first memory row at t = 0.
* Channel order is tracked, not converted. A wl_shm ARGB8888 buffer is B,G,R,A bytes; it is
  uploaded as-is as GL_RGBA (so its "r" holds blue), and the readback target holds B,G,R,A in
  its r,g,b,a slots, so glReadPixels(GL_RGBA) returns BGRx bytes on Mesa's memcpy fast path
  (measured on llvmpipe 1080p: 0.36 ms, against 1.3 ms for a GL_BGRA_EXT read that swizzles
  every pixel). The shader swaps r and b only where a texture's order differs from the target's.
  This makes GL_EXT_texture_format_BGRA8888 unnecessary.
* Premultiplied alpha (Wayland buffers are): glBlendFunc(ONE, ONE_MINUS_SRC_ALPHA).

Threads: the EGL context is created in __init__ (so a missing EGL fails early, where the session
can pick another path) and made current by the first thread that renders; only that thread may
render afterwards.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from moonhowl.render import gl as G
from moonhowl.render.allocators import OutputBuffer
from moonhowl.render.egl import Egl
from moonhowl.render.gl import GlContext, GlError, fourcc, shared_egl

if TYPE_CHECKING:
    from moonhowl.wayland.scene import Drawable, Scene

log = logging.getLogger(__name__)

# wl_shm format codes 0 and 1 are the only ones that differ from the DRM fourcc (wayland.xml).
WL_SHM_ARGB8888 = 0
WL_SHM_XRGB8888 = 1
AR24, XR24, AB24, XB24 = fourcc("AR24"), fourcc("XR24"), fourcc("AB24"), fourcc("XB24")
# shm format -> (memory order is B,G,R,A, alpha ignored). All are 4 bytes per pixel.
SHM_FORMATS: dict[int, tuple[bool, bool]] = {
    WL_SHM_ARGB8888: (True, False), WL_SHM_XRGB8888: (True, True),
    AR24: (True, False), XR24: (True, True), AB24: (False, False), XB24: (False, True),
}
# Output formats a readback can fill: fourcc -> memory order is B,G,R,A.
READBACK_ORDER = {XR24: True, AR24: True, XB24: False, AB24: False}
# X formats and their A twins: the same bytes, with the alpha byte defined.
OPAQUE_ALIAS = {XR24: AR24, XB24: AB24}
# Imported dma-bufs not used for this many frames are dropped. Clients cycle 2-4 buffers, so
# a buffer unused for 16 frames is most likely gone, and the EGLImage pins its memory meanwhile.
DMABUF_IDLE_FRAMES = 16
# Freed shm textures kept for reuse by the next buffer of the same size (saves reallocation when
# a client's buffer key changes every commit).
TEXTURE_POOL_MAX = 4

_VERTEX = """
attribute vec2 a_pos;   // a corner of the unit quad
uniform vec4 u_dst;     // destination x, y, w, h in scene pixels
uniform vec4 u_src;     // source u, v, du, dv in texture coordinates
uniform vec2 u_scene;   // scene width, height
varying vec2 v_tex;
void main() {
    vec2 p = u_dst.xy + a_pos * u_dst.zw;
    gl_Position = vec4(p / u_scene * 2.0 - 1.0, 0.0, 1.0);  // no y flip: see the module docstring
    v_tex = u_src.xy + a_pos * u_src.zw;
}
"""
# highp: mediump (fp16 on real GPUs) cannot address single texels past ~2048 pixels.
_FRAGMENT_PRELUDE = """
#ifdef GL_FRAGMENT_PRECISION_HIGH
precision highp float;
#else
precision mediump float;
#endif
"""
_FRAGMENT_TEXTURE = """
uniform SAMPLER u_tex;
uniform bool u_swap;    // the texture's channel order differs from the target's
uniform bool u_opaque;  // X formats and opaque surfaces: the alpha bytes are undefined
varying vec2 v_tex;
void main() {
    vec4 c = texture2D(u_tex, v_tex);
    if (u_swap) c = c.bgra;
    if (u_opaque) c.a = 1.0;
    gl_FragColor = c;
}
"""
_FRAGMENT_SOLID = """
uniform vec4 u_color;
void main() { gl_FragColor = u_color; }
"""


class RenderError(RuntimeError):
    """A frame could not be rendered (GL failure, unusable target)."""


@dataclass
class RenderStats:
    frames: int = 0          # frames drawn
    reused: int = 0          # render() calls answered with the previous frame (scene not damaged)
    uploads: int = 0         # shm buffers uploaded to textures
    upload_bytes: int = 0
    imports: int = 0         # client dma-bufs imported as EGLImages
    skipped: int = 0         # drawables left out (bad buffer, unsupported format, failed import)
    copies: int = 0          # opaque 1:1 drawables copied (blit or upload into the output), not drawn


@dataclass
class _Texture:
    name: int
    width: int
    height: int
    bgr: bool            # memory order B,G,R,A in the r,g,b,a slots
    opaque: bool         # alpha is undefined (X formats)
    target: int = G.GL_TEXTURE_2D
    filter: int = 0
    image: int = 0       # the EGLImage behind a dma-buf texture
    last_used: int = 0


@dataclass
class _Target:
    """Where a frame is drawn: a framebuffer plus the channel order its memory expects."""

    fbo: int
    width: int
    height: int
    bgr: bool
    texture: int = 0
    image: int = 0
    buffer: OutputBuffer | None = None
    alpha_matters: bool = False  # False where the output format ignores alpha (XR24, BGRx bytes)
    blit: bool = False           # an RGBA8 framebuffer: shm textures can be blitted onto it
    upload_format: int = 0       # GL format for uploading shm pixels straight into it (0: never)
    upload_bgr: bool = False     # the shm channel order that upload format expects


_Rect = tuple[int, int, int, int, int, int]


class _Program:
    def __init__(self, gl: G.Gles, fragment: str) -> None:
        self.name = gl.compile_program(_VERTEX, fragment, ["a_pos"])
        self.uniforms = {u: gl.glGetUniformLocation(self.name, u.encode())
                         for u in ("u_dst", "u_src", "u_scene", "u_tex", "u_swap", "u_opaque", "u_color")}


def _source(d: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The drawable's source rectangle in buffer pixels (a scene Rect, or an (x, y, w, h) tuple)."""
    src = d.src
    if src is None:
        return 0.0, 0.0, float(width), float(height)
    if isinstance(src, tuple):
        return src
    return src.x, src.y, src.width, src.height


def _copy_rect(d: Any, scene: Any, target: _Target, width: int, height: int) -> _Rect | None:
    """(x, y, src_x, src_y, w, h) clipped to the target when d is a 1:1 copy of whole pixels."""
    if (target.width, target.height) != (scene.width, scene.height):
        return None
    sx, sy, sw, sh = _source(d, width, height)
    if (sw, sh) != (d.width, d.height) or sx < 0 or sy < 0 or sx + sw > width or sy + sh > height \
            or not all(float(v).is_integer() for v in (sx, sy, sw, sh, d.x, d.y)):
        return None
    x0, y0 = max(int(d.x), 0), max(int(d.y), 0)
    x1, y1 = min(int(d.x + d.width), target.width), min(int(d.y + d.height), target.height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, int(sx) + x0 - int(d.x), int(sy) + y0 - int(d.y), x1 - x0, y1 - y0


def _shm_format_name(code: int) -> str:
    if code in (WL_SHM_ARGB8888, WL_SHM_XRGB8888):
        return ("ARGB8888", "XRGB8888")[code]
    return code.to_bytes(4, "little").decode(errors="replace")


class GlRenderer:
    """Composes a Scene with GLES into BGRx bytes or into an OutputBuffer."""

    def __init__(self, width: int, height: int, egl: Egl | None = None) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"invalid output size {width}x{height}")
        self.width, self.height = width, height
        self.ctx = GlContext(egl or shared_egl())
        self.gl = self.ctx.gl
        self.stats = RenderStats()
        self._ready = False
        self._frame = 0
        self._textures: dict[Any, _Texture] = {}   # shm: buffer_key -> texture
        self._pool: list[_Texture] = []
        self._dmabufs: dict[tuple[Any, ...], _Texture] = {}
        self._targets: dict[int, _Target] = {}      # id(OutputBuffer) -> framebuffer on its dma-buf
        self._readback: _Target | None = None
        self._last_frame: bytes | None = None
        # Bumped whenever a damaged scene is drawn; each output buffer remembers the version it holds.
        self._content_version = 0
        self._buffer_versions: dict[int, tuple[OutputBuffer, int]] = {}
        self._logged: set[Any] = set()
        # (fourcc, modifier) -> why this driver cannot render into such a dma-buf (learned once).
        self.target_failures: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()

    # --- public ---------------------------------------------------------------------------------

    def render(self, scene: Scene) -> bytes:
        """The scene as BGRx bytes (width * height * 4, top row first)."""
        with self._lock:
            self._begin()
            if not scene.damaged and self._last_frame is not None:
                # Nothing changed since the last frame: the same bytes are the right answer.
                self.stats.reused += 1
                return self._last_frame
            if scene.damaged:
                self._content_version += 1
            target = self._readback_target()
            self._draw(scene, target)
            data, address = G.uninitialized_bytes(self.width * self.height * 4)
            self._read_pixels(target, address, self.width)
            self._last_frame = data
            return data

    def render_to(self, scene: Scene, buffer: OutputBuffer) -> None:
        """Draw the scene into buffer; returns once the pixels are in its memory.

        A dma-buf is imported as an EGLImage and drawn into directly, then an EGL fence is waited
        for. When the driver cannot render into that format/modifier, the frame is drawn
        offscreen and read back into the buffer's CPU mapping (memfd, shm); a dma-buf without one
        raises RenderError so the session can fall back to another path.
        """
        with self._lock:
            self._begin()
            self._sweep_targets()
            if buffer.released:
                raise RenderError("render_to a released buffer")
            if (buffer.width, buffer.height) != (self.width, self.height):
                raise RenderError(f"buffer is {buffer.width}x{buffer.height}, the renderer {self.width}x{self.height}")
            # A swapchain buffer that already holds the current picture needs no redraw: an idle
            # desktop then costs nothing on this path either (measured: 1-4 ms a frame otherwise).
            if scene.damaged:
                self._content_version += 1
            held = self._buffer_versions.get(id(buffer))
            if held is not None and held[0] is buffer and held[1] == self._content_version:
                self.stats.reused += 1
                return
            # Frames drawn here are not what render() last returned: its cache is stale now.
            self._last_frame = None
            target = self._dmabuf_target(buffer) if buffer.fds else None
            if target is not None:
                self._draw(scene, target)
                self.ctx.finish()
            else:
                self._render_into_memory(scene, buffer)
            self._buffer_versions[id(buffer)] = (buffer, self._content_version)

    def forget(self, buffer: OutputBuffer) -> None:
        """Drop the framebuffer and EGLImage kept for buffer (also done once it is released)."""
        with self._lock:
            self._buffer_versions.pop(id(buffer), None)
            target = self._targets.pop(id(buffer), None)
            if target is not None and target.buffer is buffer:
                self.ctx.make_current()
                self._delete_target(target)

    def close(self) -> None:
        """Free the context with every GL object in it, and the EGL images (display objects).

        Call it from the render thread; from another thread the context is freed by EGL once
        the render thread no longer has it current.
        """
        with self._lock:
            if not self.ctx.context:
                return
            for texture in self._dmabufs.values():
                self.ctx.destroy_image(texture.image)
            for target in self._targets.values():
                self.ctx.destroy_image(target.image)
            self._textures.clear()
            self._pool.clear()
            self._dmabufs.clear()
            self._targets.clear()
            self._readback = None
            self._last_frame = None
            self.ctx.destroy()

    def __enter__(self) -> GlRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- setup ----------------------------------------------------------------------------------

    def _begin(self) -> None:
        self.ctx.make_current()
        if not self._ready:
            self._setup()
        self._frame += 1

    def _setup(self) -> None:
        gl = self.gl
        ext = gl.extensions()
        es3 = self.ctx.version.startswith("3")
        self._external = "GL_OES_EGL_image_external" in ext and gl.glEGLImageTargetTexture2DOES is not None
        self._egl_image = "GL_OES_EGL_image" in ext and gl.glEGLImageTargetTexture2DOES is not None
        # Row lengths let one call upload a padded shm buffer or fill a padded output buffer.
        self._unpack_rows = es3 or "GL_EXT_unpack_subimage" in ext
        self._pack_rows = es3 or "GL_NV_pack_subimage" in ext
        self._storage = es3 or "GL_EXT_texture_storage" in ext
        self._max_texture = gl.integer(G.GL_MAX_TEXTURE_SIZE)
        self._blit = es3
        self._bgra_upload = "GL_EXT_texture_format_BGRA8888" in ext
        # On a software renderer a memcpy is far cheaper than a textured draw (llvmpipe, 1080p:
        # 0.24 ms to upload straight into the output against 4-5 ms to draw a fullscreen quad), so
        # opaque 1:1 shm surfaces are uploaded into dma-buf outputs directly. On a GPU that would
        # re-send unchanged pixels over the bus every frame; the cached texture is drawn instead.
        self._software = any(name in gl.string(G.GL_RENDERER).lower() for name in ("llvmpipe", "softpipe"))
        self._read_fbo = gl.gen("glGenFramebuffers") if es3 else 0
        fragment = _FRAGMENT_PRELUDE + _FRAGMENT_TEXTURE
        self._tex2d = _Program(gl, fragment.replace("SAMPLER", "sampler2D"))
        # The external sampler takes any importable format, YUV included, and is the only way to
        # sample formats or modifiers EGL lists as external-only (NVIDIA's LINEAR, for one).
        self._texext = _Program(gl, "#extension GL_OES_EGL_image_external : require\n"
                                + fragment.replace("SAMPLER", "samplerExternalOES")) if self._external else None
        self._solid = _Program(gl, _FRAGMENT_PRELUDE + _FRAGMENT_SOLID)
        self._vbo = gl.gen("glGenBuffers")
        gl.glBindBuffer(G.GL_ARRAY_BUFFER, self._vbo)
        quad = (ctypes.c_float * 8)(0, 0, 1, 0, 0, 1, 1, 1)  # a triangle strip over the unit square
        gl.glBufferData(G.GL_ARRAY_BUFFER, ctypes.sizeof(quad), quad, G.GL_STATIC_DRAW)
        # The context is ours alone, so this attribute setup (default vertex array) stays put.
        gl.glVertexAttribPointer(0, 2, G.GL_FLOAT, 0, 0, None)
        gl.glEnableVertexAttribArray(0)
        gl.glDisable(G.GL_DEPTH_TEST)
        gl.glBlendFunc(G.GL_ONE, G.GL_ONE_MINUS_SRC_ALPHA)  # premultiplied "over"
        gl.check("renderer setup")
        self._ready = True
        log.info("GL renderer %dx%d: %s, GLES %s, %s", self.width, self.height, gl.string(G.GL_RENDERER),
                 self.ctx.version, "external textures" if self._external else "no external textures")

    def _new_texture(self, width: int, height: int) -> int:
        gl = self.gl
        name = gl.gen("glGenTextures")
        gl.glBindTexture(G.GL_TEXTURE_2D, name)
        if self._storage:
            gl.glTexStorage2D(G.GL_TEXTURE_2D, 1, G.GL_RGBA8, width, height)
        else:
            gl.glTexImage2D(G.GL_TEXTURE_2D, 0, G.GL_RGBA, width, height, 0, G.GL_RGBA, G.GL_UNSIGNED_BYTE, None)
        self._texture_params(G.GL_TEXTURE_2D, G.GL_LINEAR)
        return name

    def _texture_params(self, target: int, filter_: int) -> None:
        gl = self.gl
        gl.glTexParameteri(target, G.GL_TEXTURE_WRAP_S, G.GL_CLAMP_TO_EDGE)
        gl.glTexParameteri(target, G.GL_TEXTURE_WRAP_T, G.GL_CLAMP_TO_EDGE)
        gl.glTexParameteri(target, G.GL_TEXTURE_MIN_FILTER, filter_)
        gl.glTexParameteri(target, G.GL_TEXTURE_MAG_FILTER, filter_)

    def _readback_target(self) -> _Target:
        if self._readback is None:
            gl = self.gl
            texture = self._new_texture(self.width, self.height)
            fbo = gl.gen("glGenFramebuffers")
            gl.glBindFramebuffer(G.GL_FRAMEBUFFER, fbo)
            gl.glFramebufferTexture2D(G.GL_FRAMEBUFFER, G.GL_COLOR_ATTACHMENT0, G.GL_TEXTURE_2D, texture, 0)
            status = gl.glCheckFramebufferStatus(G.GL_FRAMEBUFFER)
            if status != G.GL_FRAMEBUFFER_COMPLETE:
                raise RenderError(f"offscreen framebuffer incomplete (0x{status:04x})")
            # B,G,R,A in r,g,b,a: glReadPixels(GL_RGBA) then yields BGRx bytes (module docstring).
            self._readback = _Target(fbo, self.width, self.height, bgr=True, texture=texture, blit=self._blit)
        return self._readback

    def _dmabuf_target(self, buffer: OutputBuffer) -> _Target | None:
        """A framebuffer drawing into buffer's dma-buf, or None when this format cannot be one."""
        target = self._targets.get(id(buffer))
        if target is not None and target.buffer is buffer:
            return target
        layout = (buffer.fourcc, buffer.modifier)
        if layout in self.target_failures or not self._egl_image:
            return None
        gl, image, texture, fbo = self.gl, 0, 0, 0
        import_fourcc = buffer.fourcc
        if self._software and buffer.modifier == G.DRM_FORMAT_MOD_LINEAR and buffer.fourcc in OPAQUE_ALIAS:
            # Mesa refuses uploads into an X-format image; the A-format twin has the same bytes
            # in a linear layout, accepts them, and our draws keep its alpha at 1.
            import_fourcc = OPAQUE_ALIAS[buffer.fourcc]
        try:
            image = self.ctx.import_dmabuf(buffer.width, buffer.height, import_fourcc, buffer.fds, buffer.offsets,
                                          buffer.strides, buffer.modifier)
            texture = gl.gen("glGenTextures")
            gl.glBindTexture(G.GL_TEXTURE_2D, texture)
            gl.glEGLImageTargetTexture2DOES(G.GL_TEXTURE_2D, image)
            gl.check("glEGLImageTargetTexture2DOES(output)")
            fbo = gl.gen("glGenFramebuffers")
            gl.glBindFramebuffer(G.GL_FRAMEBUFFER, fbo)
            gl.glFramebufferTexture2D(G.GL_FRAMEBUFFER, G.GL_COLOR_ATTACHMENT0, G.GL_TEXTURE_2D, texture, 0)
            status = gl.glCheckFramebufferStatus(G.GL_FRAMEBUFFER)
            if status != G.GL_FRAMEBUFFER_COMPLETE:
                raise GlError(f"framebuffer on the dma-buf is incomplete (0x{status:04x})")
        except GlError as exc:
            gl.glGetError()  # clear the flag so the next frame's check does not blame itself
            self._delete_target(_Target(fbo, 0, 0, False, texture=texture, image=image))
            self.target_failures[layout] = str(exc)
            log.warning("cannot render into a %s dma-buf (modifier 0x%016x): %s; reading back instead",
                        G.fourcc_name(buffer.fourcc), buffer.modifier, exc)
            return None
        # The driver lays the format out in memory itself: no channel swap for dma-buf targets.
        target = _Target(fbo, buffer.width, buffer.height, bgr=False, texture=texture, image=image, buffer=buffer,
                         alpha_matters=buffer.fourcc in (AR24, AB24))
        if self._software and import_fourcc == AR24 and self._bgra_upload:
            target.upload_format, target.upload_bgr = G.GL_BGRA_EXT, True
        elif self._software and import_fourcc == AB24:
            target.upload_format, target.upload_bgr = G.GL_RGBA, False
        self._targets[id(buffer)] = target
        return target

    def _sweep_targets(self) -> None:
        """Free the framebuffers of buffers released since (their memory is pinned by the image)."""
        for key, target in list(self._targets.items()):
            if target.buffer is None or target.buffer.released:
                del self._targets[key]
                self._delete_target(target)

    def _delete_target(self, target: _Target) -> None:
        self.gl.delete("glDeleteFramebuffers", target.fbo)
        self.gl.delete("glDeleteTextures", target.texture)
        self.ctx.destroy_image(target.image)

    def _delete_texture(self, texture: _Texture) -> None:
        self.gl.delete("glDeleteTextures", texture.name)
        self.ctx.destroy_image(texture.image)

    # --- one frame ------------------------------------------------------------------------------

    def _draw(self, scene: Scene, target: _Target) -> None:
        gl = self.gl
        gl.glBindFramebuffer(G.GL_FRAMEBUFFER, target.fbo)
        gl.glViewport(0, 0, target.width, target.height)
        drawables = [*scene.drawables, *([scene.cursor] if scene.cursor is not None else [])]
        self._evict(drawables)
        self._draw_range(drawables, 0, len(drawables), scene, target)
        gl.check("drawing the scene")
        self.stats.frames += 1

    def _draw_range(self, drawables: list[Drawable], lo: int, hi: int, scene: Scene, target: _Target) -> None:
        # Start at the topmost drawable that covers the whole output opaquely: what lies below
        # it cannot show, so it is neither uploaded nor drawn (a fullscreen app over a background).
        start = next((i for i in range(hi - 1, lo - 1, -1) if self._covers(drawables[i], scene)), -1)
        if start < 0:
            self._clear()
        for index in range(max(start, lo), hi):
            if not self._draw_one(drawables[index], scene, target) and index == start:
                # The covering drawable could not be drawn and nothing is drawn yet: what it
                # would have hidden shows instead.
                self._draw_range(drawables, lo, start, scene, target)

    def _clear(self) -> None:
        # Opaque black: the desktop background, and a defined alpha for the X byte of BGRx.
        self.gl.glClearColor(0.0, 0.0, 0.0, 1.0)
        self.gl.glClear(G.GL_COLOR_BUFFER_BIT)

    def _covers(self, d: Drawable, scene: Scene) -> bool:
        return (d.x <= 0 and d.y <= 0 and d.x + d.width >= scene.width and d.y + d.height >= scene.height
                and self._is_opaque(d))

    @staticmethod
    def _is_opaque(d: Drawable) -> bool:
        content: Any = d.content
        if d.opaque:
            return True
        if hasattr(content, "data"):
            return SHM_FORMATS.get(content.format, (False, False))[1]
        if hasattr(content, "fds"):
            return G.fourcc_name(content.fourcc).startswith("X")
        return bool(getattr(content, "a", 0.0) >= 1.0)

    def _evict(self, drawables: list[Drawable]) -> None:
        """Recycle shm textures whose key left the scene; drop dma-bufs idle for a while."""
        keys = {d.buffer_key for d in drawables if hasattr(d.content, "data")}
        for key in [k for k in self._textures if k not in keys]:
            texture = self._textures.pop(key)
            if len(self._pool) < TEXTURE_POOL_MAX:
                self._pool.append(texture)
            else:
                self._delete_texture(texture)
        for key, texture in list(self._dmabufs.items()):
            if self._frame - texture.last_used > DMABUF_IDLE_FRAMES:
                del self._dmabufs[key]
                self._delete_texture(texture)

    def _draw_one(self, d: Drawable, scene: Scene, target: _Target) -> bool:
        """Draw one drawable; False (logged, counted) when it had to be left out."""
        gl = self.gl
        content: Any = d.content
        if d.width <= 0 or d.height <= 0:
            return False
        if hasattr(content, "fds"):
            texture = self._dmabuf_texture(content)
        elif hasattr(content, "data"):
            if target.upload_format and self._upload_into_target(d, scene, target):
                return True
            texture = self._shm_texture(d.buffer_key, content)
        elif all(hasattr(content, c) for c in "rgba"):
            self._draw_solid(d, scene, target)
            return True
        else:
            self._log_once(type(content).__name__, "unknown drawable content %r", type(content).__name__)
            texture = None
        if texture is None:
            self.stats.skipped += 1
            return False
        sx, sy, sw, sh = _source(d, texture.width, texture.height)
        if sw <= 0 or sh <= 0:
            self.stats.skipped += 1
            return False
        if target.blit and texture.target == G.GL_TEXTURE_2D and texture.bgr == target.bgr \
                and self._copyable(d, target, texture.opaque):
            rect = _copy_rect(d, scene, target, texture.width, texture.height)
            if rect is not None:
                self._blit_texture(texture, target, rect)
                return True
        # Nearest for a 1:1 copy on whole pixels (exact, and llvmpipe's cheapest sampling);
        # linear when scaling, so viewporter-scaled surfaces do not alias.
        one_to_one = (sw == d.width and sh == d.height and (target.width, target.height) == (scene.width, scene.height)
                      and all(float(v).is_integer() for v in (sx, sy, d.x, d.y)))
        filter_ = G.GL_NEAREST if one_to_one else G.GL_LINEAR
        gl.glBindTexture(texture.target, texture.name)
        if texture.filter != filter_:
            gl.glTexParameteri(texture.target, G.GL_TEXTURE_MIN_FILTER, filter_)
            gl.glTexParameteri(texture.target, G.GL_TEXTURE_MAG_FILTER, filter_)
            texture.filter = filter_
        program = self._texext if texture.target == G.GL_TEXTURE_EXTERNAL_OES else self._tex2d
        assert program is not None
        u = program.uniforms
        gl.glUseProgram(program.name)
        opaque = texture.opaque or d.opaque
        gl.glUniform4f(u["u_dst"], d.x, d.y, d.width, d.height)
        gl.glUniform4f(u["u_src"], sx / texture.width, sy / texture.height, sw / texture.width, sh / texture.height)
        gl.glUniform2f(u["u_scene"], scene.width, scene.height)
        gl.glUniform1i(u["u_tex"], 0)
        gl.glUniform1i(u["u_swap"], int(texture.bgr != target.bgr))
        gl.glUniform1i(u["u_opaque"], int(opaque))
        (gl.glDisable if opaque else gl.glEnable)(G.GL_BLEND)
        gl.glDrawArrays(G.GL_TRIANGLE_STRIP, 0, 4)
        return True

    def _copyable(self, d: Drawable, target: _Target, alpha_undefined: bool) -> bool:
        """An opaque drawable may replace what is below by copying, not blending, its pixels.

        Copies keep the buffer's alpha bytes: fine where the output ignores alpha, and for an
        opaque buffer in a format with alpha (its alpha is 1 by the protocol's opaque region).
        """
        return self._is_opaque(d) and (not target.alpha_matters or not alpha_undefined)

    def _blit_texture(self, texture: _Texture, target: _Target, rect: _Rect) -> None:
        # A same-format blit is a memcpy on llvmpipe (0.22 ms at 1080p against 5 ms for a draw).
        gl = self.gl
        x, y, sx, sy, w, h = rect
        gl.glBindFramebuffer(G.GL_READ_FRAMEBUFFER, self._read_fbo)
        gl.glFramebufferTexture2D(G.GL_READ_FRAMEBUFFER, G.GL_COLOR_ATTACHMENT0, G.GL_TEXTURE_2D, texture.name, 0)
        gl.glBlitFramebuffer(sx, sy, sx + w, sy + h, x, y, x + w, y + h, G.GL_COLOR_BUFFER_BIT, G.GL_NEAREST)
        gl.glBindFramebuffer(G.GL_READ_FRAMEBUFFER, target.fbo)
        self.stats.copies += 1

    def _upload_into_target(self, d: Drawable, scene: Scene, target: _Target) -> bool:
        """Copy an opaque 1:1 shm surface straight into the output's texture (software renderers)."""
        c: Any = d.content
        layout = self._shm_layout(d.buffer_key, c)
        if layout is None or layout[0] != target.upload_bgr or not self._copyable(d, target, layout[1]) \
                or c.stride % 4 or not self._unpack_rows:
            return False
        rect = _copy_rect(d, scene, target, c.width, c.height)
        if rect is None:
            return False
        x, y, sx, sy, w, h = rect
        gl = self.gl
        try:
            with G.Pinned(c.data) as pinned:
                gl.glBindTexture(G.GL_TEXTURE_2D, target.texture)
                gl.glPixelStorei(G.GL_UNPACK_ROW_LENGTH, c.stride // 4)
                gl.glTexSubImage2D(G.GL_TEXTURE_2D, 0, x, y, w, h, target.upload_format, G.GL_UNSIGNED_BYTE,
                                   pinned.address + c.offset + sy * c.stride + sx * 4)
                gl.glPixelStorei(G.GL_UNPACK_ROW_LENGTH, 0)
        except (ValueError, BufferError, GlError):
            return False  # the texture path logs the problem
        if gl.glGetError() != G.GL_NO_ERROR:
            log.info("uploading into the output is refused by the driver; drawing instead")
            target.upload_format = 0
            return False
        self.stats.copies += 1
        return True

    def _draw_solid(self, d: Drawable, scene: Scene, target: _Target) -> None:
        gl = self.gl
        content: Any = d.content
        # Premultiplied, as wp_single_pixel_buffer_v1 defines its colour.
        r, g, b, a = (min(max(float(v), 0.0), 1.0) for v in (content.r, content.g, content.b, content.a))
        if target.bgr:
            r, b = b, r
        if (d.opaque or a >= 1.0) and self._covers(d, scene):
            # A clear fills the output at memory speed; a quad costs a rasterised pass (llvmpipe
            # 1080p: 0.5 against 1.7 ms). The usual case: the desktop's background colour.
            gl.glClearColor(r, g, b, 1.0)
            gl.glClear(G.GL_COLOR_BUFFER_BIT)
            return
        u = self._solid.uniforms
        gl.glUseProgram(self._solid.name)
        gl.glUniform4f(u["u_dst"], d.x, d.y, d.width, d.height)
        gl.glUniform2f(u["u_scene"], scene.width, scene.height)
        gl.glUniform4f(u["u_color"], r, g, b, 1.0 if d.opaque else a)
        (gl.glDisable if d.opaque or a >= 1.0 else gl.glEnable)(G.GL_BLEND)
        gl.glDrawArrays(G.GL_TRIANGLE_STRIP, 0, 4)

    # --- client buffers -------------------------------------------------------------------------

    def _shm_texture(self, key: Any, c: Any) -> _Texture | None:
        """The texture for an shm buffer, uploaded only when its key is new."""
        texture = self._textures.get(key)
        if texture is not None and (texture.width, texture.height) == (c.width, c.height):
            texture.last_used = self._frame
            return texture
        layout = self._shm_layout(key, c)
        if layout is None:
            return None
        width, height, stride, offset = int(c.width), int(c.height), int(c.stride), int(c.offset)
        if texture is not None:
            self._pool.append(self._textures.pop(key))
        texture = self._texture_from_pool(width, height)
        texture.bgr, texture.opaque, texture.last_used = layout[0], layout[1], self._frame
        try:
            with G.Pinned(c.data) as pinned:
                self._upload(texture, pinned.address + offset, width, height, stride)
        except (ValueError, BufferError, GlError) as exc:  # e.g. the pool was unmapped
            self._pool.append(texture)
            self._log_once(("pin", key), "shm buffer memory is not readable (%s); surface left out", exc)
            return None
        self._textures[key] = texture
        self.stats.uploads += 1
        self.stats.upload_bytes += width * height * 4
        return texture

    def _shm_layout(self, key: Any, c: Any) -> tuple[bool, bool] | None:
        """(B,G,R,A memory order, alpha undefined) of a valid shm buffer; None, logged, if invalid."""
        layout = SHM_FORMATS.get(c.format)
        if layout is None:
            self._log_once(("format", c.format), "shm format %s is not supported; surface left out",
                           _shm_format_name(c.format))
            return None
        width, height, stride, offset = int(c.width), int(c.height), int(c.stride), int(c.offset)
        # A bad size or offset would make GL read outside the pool: check before passing a pointer.
        end = offset + stride * (height - 1) + width * 4
        if (width <= 0 or height <= 0 or width > self._max_texture or height > self._max_texture
                or stride < width * 4 or offset < 0 or end > c.data.nbytes):
            self._log_once(("bounds", key), "shm buffer %dx%d stride %d offset %d does not fit its %d-byte pool "
                           "(or the %d-pixel texture limit); surface left out",
                           width, height, stride, offset, c.data.nbytes, self._max_texture)
            return None
        return layout

    def _texture_from_pool(self, width: int, height: int) -> _Texture:
        for i, texture in enumerate(self._pool):
            if (texture.width, texture.height) == (width, height):
                return self._pool.pop(i)
        return _Texture(self._new_texture(width, height), width, height, bgr=True, opaque=False,
                        filter=G.GL_LINEAR)

    def _upload(self, texture: _Texture, address: int, width: int, height: int, stride: int) -> None:
        gl = self.gl
        gl.glBindTexture(G.GL_TEXTURE_2D, texture.name)
        if stride == width * 4:
            gl.glTexSubImage2D(G.GL_TEXTURE_2D, 0, 0, 0, width, height, G.GL_RGBA, G.GL_UNSIGNED_BYTE, address)
        elif stride % 4 == 0 and self._unpack_rows:
            gl.glPixelStorei(G.GL_UNPACK_ROW_LENGTH, stride // 4)
            gl.glTexSubImage2D(G.GL_TEXTURE_2D, 0, 0, 0, width, height, G.GL_RGBA, G.GL_UNSIGNED_BYTE, address)
            gl.glPixelStorei(G.GL_UNPACK_ROW_LENGTH, 0)
        else:
            # A stride GL cannot describe (not a whole number of pixels): one call per row.
            gl.glPixelStorei(G.GL_UNPACK_ALIGNMENT, 1)
            for row in range(height):
                gl.glTexSubImage2D(G.GL_TEXTURE_2D, 0, 0, row, width, 1, G.GL_RGBA, G.GL_UNSIGNED_BYTE,
                                   address + row * stride)
            gl.glPixelStorei(G.GL_UNPACK_ALIGNMENT, 4)
        gl.check("glTexSubImage2D")

    def _dmabuf_texture(self, c: Any) -> _Texture | None:
        """The texture over a client's dma-buf, imported once per buffer (it aliases the memory)."""
        try:
            # The inode names the dma-buf itself; fd numbers are reused once a buffer is closed.
            identity = tuple(os.fstat(fd).st_ino for fd in c.fds)
        except OSError as exc:
            self._log_once(("fstat", tuple(c.fds)), "client dma-buf fd is not valid (%s); surface left out", exc)
            return None
        key = (identity, tuple(c.offsets), tuple(c.strides), c.width, c.height, c.fourcc, c.modifier)
        texture = self._dmabufs.get(key)
        if texture is not None:
            texture.last_used = self._frame
            return texture
        problem = G.client_dmabuf_problem(tuple(c.fds), tuple(c.offsets), tuple(c.strides), c.width, c.height)
        if problem is not None:
            self._log_once(("bad-dmabuf", key), "client dma-buf refused: %s; surface left out", problem)
            return None
        if not self._egl_image:
            self._log_once("no-egl-image", "GL_OES_EGL_image is missing: client dma-bufs cannot be shown")
            return None
        gl, image, name = self.gl, 0, 0
        target = G.GL_TEXTURE_EXTERNAL_OES if self._external else G.GL_TEXTURE_2D
        try:
            image = self.ctx.import_dmabuf(c.width, c.height, c.fourcc, c.fds, c.offsets, c.strides, c.modifier)
            name = gl.gen("glGenTextures")
            gl.glBindTexture(target, name)
            gl.glEGLImageTargetTexture2DOES(target, image)
            gl.check("glEGLImageTargetTexture2DOES(client buffer)")
            self._texture_params(target, G.GL_LINEAR)
        except GlError as exc:
            gl.glGetError()
            self._delete_texture(_Texture(name, 0, 0, False, False, image=image))
            self._log_once(("import", c.fourcc, c.modifier), "client dma-buf %s modifier 0x%016x: %s; surface left out",
                           G.fourcc_name(c.fourcc), c.modifier, exc)
            return None
        texture = _Texture(name, c.width, c.height, bgr=False, opaque=G.fourcc_name(c.fourcc).startswith("X"),
                           target=target, filter=G.GL_LINEAR, image=image, last_used=self._frame)
        self._dmabufs[key] = texture
        self.stats.imports += 1
        return texture

    # --- output ---------------------------------------------------------------------------------

    def _render_into_memory(self, scene: Scene, buffer: OutputBuffer) -> None:
        memory = buffer.memory
        if memory is None:
            reason = self.target_failures.get((buffer.fourcc, buffer.modifier), "the driver cannot render into it")
            raise RenderError(f"cannot render into this {G.fourcc_name(buffer.fourcc)} dma-buf ({reason}) "
                              "and it has no CPU mapping to read back into")
        bgr = READBACK_ORDER.get(buffer.fourcc)
        if bgr is None:
            raise RenderError(f"cannot read back into a {G.fourcc_name(buffer.fourcc)} buffer")
        stride, offset = buffer.strides[0], buffer.offsets[0] if buffer.offsets else 0
        if stride % 4 or stride < buffer.width * 4 or (stride != buffer.width * 4 and not self._pack_rows) \
                or offset + stride * (buffer.height - 1) + buffer.width * 4 > memory.nbytes:
            raise RenderError(f"output buffer layout (stride {stride}, offset {offset}, {memory.nbytes} bytes) "
                              f"does not hold {buffer.width}x{buffer.height} pixels")
        target = replace(self._readback_target(), bgr=bgr, alpha_matters=buffer.fourcc in (AR24, AB24))
        self._draw(scene, target)
        with G.Pinned(memory, writable=True) as pinned:
            self._read_pixels(target, pinned.address + offset, stride // 4)

    def _read_pixels(self, target: _Target, address: int, row_pixels: int) -> None:
        gl = self.gl
        gl.glBindFramebuffer(G.GL_FRAMEBUFFER, target.fbo)
        if row_pixels != target.width:
            gl.glPixelStorei(G.GL_PACK_ROW_LENGTH, row_pixels)
        gl.glReadPixels(0, 0, target.width, target.height, G.GL_RGBA, G.GL_UNSIGNED_BYTE, address)
        if row_pixels != target.width:
            gl.glPixelStorei(G.GL_PACK_ROW_LENGTH, 0)
        gl.check("glReadPixels")

    def _log_once(self, key: Any, message: str, *args: Any) -> None:
        """Log a per-buffer problem once: a broken client would otherwise log every frame."""
        if key in self._logged:
            return
        if len(self._logged) > 1024:
            self._logged.clear()
        self._logged.add(key)
        log.warning(message, *args)
