"""GLES 2/3 through ctypes, and an EGL context on the headless display from egl.py.

Only the calls the compositor's renderer needs are bound. Core GLES entry points come from
libGLESv2 (glvnd dispatches them to the context current on the calling thread); extension entry
points (glEGLImageTargetTexture2DOES) come from eglGetProcAddress. ctypes releases the GIL during
each foreign call, so two sessions' render threads run their GL work in parallel.

A context is made current on one thread at a time: GlContext records the thread that made it
current and refuses use from another one, instead of letting two threads race on GL state.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from moonhowl.render.egl import EGL_EXTENSIONS, EGL_NONE, Egl, EglError, fourcc_to_str

log = logging.getLogger(__name__)

_voidp = ctypes.c_void_p
_uint = ctypes.c_uint
_int = ctypes.c_int
_float = ctypes.c_float
_ubyte = ctypes.c_ubyte
_ssize = ctypes.c_ssize_t
_uintp = ctypes.POINTER(_uint)
_intp = ctypes.POINTER(_int)

# --- GLES enums (values from Khronos gl2.h / gl3.h / gl2ext.h) ---------------------------------
GL_NO_ERROR = 0
GL_VENDOR = 0x1F00
GL_RENDERER = 0x1F01
GL_VERSION = 0x1F02
GL_EXTENSIONS = 0x1F03
GL_TEXTURE_2D = 0x0DE1
GL_TEXTURE_EXTERNAL_OES = 0x8D65
GL_TEXTURE0 = 0x84C0
GL_TEXTURE_MIN_FILTER = 0x2801
GL_TEXTURE_MAG_FILTER = 0x2800
GL_TEXTURE_WRAP_S = 0x2802
GL_TEXTURE_WRAP_T = 0x2803
GL_NEAREST = 0x2600
GL_LINEAR = 0x2601
GL_CLAMP_TO_EDGE = 0x812F
GL_RGBA = 0x1908
GL_RGBA8 = 0x8058
GL_BGRA_EXT = 0x80E1
GL_BGRA8_EXT = 0x93A1
GL_UNSIGNED_BYTE = 0x1401
GL_FLOAT = 0x1406
GL_UNPACK_ALIGNMENT = 0x0CF5
GL_PACK_ALIGNMENT = 0x0D05
GL_UNPACK_ROW_LENGTH = 0x0CF2
GL_PACK_ROW_LENGTH = 0x0D02
GL_FRAMEBUFFER = 0x8D40
GL_READ_FRAMEBUFFER = 0x8CA8
GL_DRAW_FRAMEBUFFER = 0x8CA9
GL_RENDERBUFFER = 0x8D41
GL_COLOR_ATTACHMENT0 = 0x8CE0
GL_FRAMEBUFFER_COMPLETE = 0x8CD5
GL_COLOR_BUFFER_BIT = 0x4000
GL_BLEND = 0x0BE2
GL_SCISSOR_TEST = 0x0C11
GL_DEPTH_TEST = 0x0B71
GL_ONE = 1
GL_ONE_MINUS_SRC_ALPHA = 0x0303
GL_VERTEX_SHADER = 0x8B31
GL_FRAGMENT_SHADER = 0x8B30
GL_COMPILE_STATUS = 0x8B81
GL_LINK_STATUS = 0x8B82
GL_INFO_LOG_LENGTH = 0x8B84
GL_ARRAY_BUFFER = 0x8892
GL_STATIC_DRAW = 0x88E4
GL_TRIANGLE_STRIP = 0x0005
GL_IMPLEMENTATION_COLOR_READ_FORMAT = 0x8B9B
GL_IMPLEMENTATION_COLOR_READ_TYPE = 0x8B9A
GL_MAX_TEXTURE_SIZE = 0x0D33

# --- EGL enums (egl.h / eglext.h) ----------------------------------------------------------------
EGL_OPENGL_ES_API = 0x30A0
EGL_CONTEXT_MAJOR_VERSION = 0x3098
EGL_CONTEXT_MINOR_VERSION = 0x30FB
EGL_RENDERABLE_TYPE = 0x3040
EGL_OPENGL_ES2_BIT = 0x0004
EGL_OPENGL_ES3_BIT = 0x0040
EGL_SURFACE_TYPE = 0x3033
EGL_PBUFFER_BIT = 0x0001
EGL_WIDTH = 0x3057
EGL_HEIGHT = 0x3056
EGL_LINUX_DMA_BUF_EXT = 0x3270
EGL_LINUX_DRM_FOURCC_EXT = 0x3271
EGL_IMAGE_PRESERVED_KHR = 0x30D2
EGL_TRUE = 1
EGL_SYNC_FENCE_KHR = 0x30F9
EGL_SYNC_FLUSH_COMMANDS_BIT_KHR = 0x0001
EGL_FOREVER_KHR = 0xFFFFFFFFFFFFFFFF
EGL_CONDITION_SATISFIED_KHR = 0x30F6
EGL_TIMEOUT_EXPIRED_KHR = 0x30F5
# Per plane: FD, OFFSET, PITCH, MODIFIER_LO, MODIFIER_HI (EGL_EXT_image_dma_buf_import(_modifiers)).
_PLANE_ATTRS = (
    (0x3272, 0x3273, 0x3274, 0x3443, 0x3444),
    (0x3275, 0x3276, 0x3277, 0x3445, 0x3446),
    (0x3278, 0x3279, 0x327A, 0x3447, 0x3448),
    (0x3440, 0x3441, 0x3442, 0x3449, 0x344A),
)
# The kernel's "no explicit modifier": the importer must then use the implicit (driver) layout.
DRM_FORMAT_MOD_INVALID = 0x00FFFFFFFFFFFFFF
DRM_FORMAT_MOD_LINEAR = 0


class GlError(RuntimeError):
    """A GLES or EGL call failed; the message names the call and the error code."""


def fourcc(code: str) -> int:
    """'XR24' -> the DRM fourcc integer (little-endian, as drm_fourcc.h builds it)."""
    padded = code.ljust(4)
    return ord(padded[0]) | ord(padded[1]) << 8 | ord(padded[2]) << 16 | ord(padded[3]) << 24


def fourcc_name(code: int) -> str:
    """The DRM fourcc integer as its four letters, for messages ('XR24')."""
    return fourcc_to_str(code) or f"0x{code:08x}"


# name -> (restype, argtypes). The subset of GLES 2.0/3.0 core the renderer uses.
_GL_FUNCTIONS: dict[str, tuple[type | None, tuple[type, ...]]] = {
    "glGetString": (ctypes.c_char_p, (_uint,)),
    "glGetError": (_uint, ()),
    "glGetIntegerv": (None, (_uint, _intp)),
    "glGenTextures": (None, (_int, _uintp)),
    "glDeleteTextures": (None, (_int, _uintp)),
    "glBindTexture": (None, (_uint, _uint)),
    "glActiveTexture": (None, (_uint,)),
    "glTexParameteri": (None, (_uint, _uint, _int)),
    "glTexImage2D": (None, (_uint, _int, _int, _int, _int, _int, _uint, _uint, _voidp)),
    "glTexSubImage2D": (None, (_uint, _int, _int, _int, _int, _int, _uint, _uint, _voidp)),
    "glTexStorage2D": (None, (_uint, _int, _uint, _int, _int)),
    "glPixelStorei": (None, (_uint, _int)),
    "glGenFramebuffers": (None, (_int, _uintp)),
    "glDeleteFramebuffers": (None, (_int, _uintp)),
    "glBindFramebuffer": (None, (_uint, _uint)),
    "glFramebufferTexture2D": (None, (_uint, _uint, _uint, _uint, _int)),
    "glFramebufferRenderbuffer": (None, (_uint, _uint, _uint, _uint)),
    "glCheckFramebufferStatus": (_uint, (_uint,)),
    "glGenRenderbuffers": (None, (_int, _uintp)),
    "glDeleteRenderbuffers": (None, (_int, _uintp)),
    "glBindRenderbuffer": (None, (_uint, _uint)),
    "glViewport": (None, (_int, _int, _int, _int)),
    "glScissor": (None, (_int, _int, _int, _int)),
    "glClearColor": (None, (_float, _float, _float, _float)),
    "glClear": (None, (_uint,)),
    "glEnable": (None, (_uint,)),
    "glDisable": (None, (_uint,)),
    "glBlendFunc": (None, (_uint, _uint)),
    "glCreateShader": (_uint, (_uint,)),
    "glShaderSource": (None, (_uint, _int, ctypes.POINTER(ctypes.c_char_p), _intp)),
    "glCompileShader": (None, (_uint,)),
    "glGetShaderiv": (None, (_uint, _uint, _intp)),
    "glGetShaderInfoLog": (None, (_uint, _int, _intp, ctypes.c_char_p)),
    "glDeleteShader": (None, (_uint,)),
    "glCreateProgram": (_uint, ()),
    "glAttachShader": (None, (_uint, _uint)),
    "glBindAttribLocation": (None, (_uint, _uint, ctypes.c_char_p)),
    "glLinkProgram": (None, (_uint,)),
    "glGetProgramiv": (None, (_uint, _uint, _intp)),
    "glGetProgramInfoLog": (None, (_uint, _int, _intp, ctypes.c_char_p)),
    "glUseProgram": (None, (_uint,)),
    "glDeleteProgram": (None, (_uint,)),
    "glGetUniformLocation": (_int, (_uint, ctypes.c_char_p)),
    "glUniform1i": (None, (_int, _int)),
    "glUniform1f": (None, (_int, _float)),
    "glUniform2f": (None, (_int, _float, _float)),
    "glUniform4f": (None, (_int, _float, _float, _float, _float)),
    "glGenBuffers": (None, (_int, _uintp)),
    "glDeleteBuffers": (None, (_int, _uintp)),
    "glBindBuffer": (None, (_uint, _uint)),
    "glBufferData": (None, (_uint, _ssize, _voidp, _uint)),
    "glGenVertexArrays": (None, (_int, _uintp)),
    "glDeleteVertexArrays": (None, (_int, _uintp)),
    "glBindVertexArray": (None, (_uint,)),
    "glVertexAttribPointer": (None, (_uint, _int, _uint, _ubyte, _int, _voidp)),
    "glEnableVertexAttribArray": (None, (_uint,)),
    "glDrawArrays": (None, (_uint, _int, _int)),
    "glBlitFramebuffer": (None, (_int, _int, _int, _int, _int, _int, _int, _int, _uint, _uint)),
    "glReadPixels": (None, (_int, _int, _int, _int, _uint, _uint, _voidp)),
    "glFlush": (None, ()),
    "glFinish": (None, ()),
}

# Extension entry points, resolved through eglGetProcAddress (they are not exported by libGLESv2).
_GL_EXT_FUNCTIONS: dict[str, tuple[type | None, tuple[type, ...]]] = {
    "glEGLImageTargetTexture2DOES": (None, (_uint, _voidp)),
    "glEGLImageTargetRenderbufferStorageOES": (None, (_uint, _voidp)),
}


class Gles:
    """The bound GLES functions as attributes (gl.glClear(...)), plus a few helpers.

    Calls act on the context current on the calling thread; create it with GlContext first.
    """

    def __init__(self, egl_lib: ctypes.CDLL) -> None:
        try:
            lib = ctypes.CDLL("libGLESv2.so.2")
        except OSError as exc:
            raise GlError(f"cannot load libGLESv2 ({exc})") from None
        for name, (restype, argtypes) in _GL_FUNCTIONS.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        get_proc = egl_lib.eglGetProcAddress
        get_proc.restype, get_proc.argtypes = _voidp, [ctypes.c_char_p]
        for name, (restype, argtypes) in _GL_EXT_FUNCTIONS.items():
            address = get_proc(name.encode())
            # Missing extension functions stay None; callers check the extension string first.
            setattr(self, name, ctypes.CFUNCTYPE(restype, *argtypes)(address) if address else None)
        self._lib = lib

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only reached for names not bound above: a typo or a function missing from the tables.
        raise AttributeError(f"GL function {name} is not bound in moonhowl.render.gl")

    def string(self, name: int) -> str:
        value = self.glGetString(name)
        return value.decode() if value else ""

    def extensions(self) -> set[str]:
        return set(self.string(GL_EXTENSIONS).split())

    def integer(self, name: int) -> int:
        value = ctypes.c_int()
        self.glGetIntegerv(name, ctypes.byref(value))
        return value.value

    def check(self, what: str) -> None:
        """Raise GlError if any call since the last check failed (GL errors are sticky flags)."""
        error = self.glGetError()
        if error != GL_NO_ERROR:
            errors = [error]
            # Drain the remaining flags so the next check reports only new failures.
            for _ in range(8):
                more = self.glGetError()
                if more == GL_NO_ERROR:
                    break
                errors.append(more)
            raise GlError(f"{what}: GL error " + ", ".join(f"0x{e:04x}" for e in errors))

    def gen(self, fn_name: str) -> int:
        """One object name from a glGen* function (textures, framebuffers, buffers...)."""
        name = ctypes.c_uint()
        getattr(self, fn_name)(1, ctypes.byref(name))
        return name.value

    def delete(self, fn_name: str, name: int) -> None:
        if name:
            getattr(self, fn_name)(1, ctypes.byref(ctypes.c_uint(name)))

    def compile_program(self, vertex: str, fragment: str, attributes: Sequence[str]) -> int:
        """Compile and link; attributes are bound to locations 0, 1, ... in order."""
        shaders = [self._compile(GL_VERTEX_SHADER, vertex), self._compile(GL_FRAGMENT_SHADER, fragment)]
        program = self.glCreateProgram()
        for shader in shaders:
            self.glAttachShader(program, shader)
        for index, attribute in enumerate(attributes):
            self.glBindAttribLocation(program, index, attribute.encode())
        self.glLinkProgram(program)
        for shader in shaders:
            self.glDeleteShader(shader)  # flagged; freed with the program
        status = ctypes.c_int()
        self.glGetProgramiv(program, GL_LINK_STATUS, ctypes.byref(status))
        if not status.value:
            log_text = self._info_log(self.glGetProgramiv, self.glGetProgramInfoLog, program)
            self.glDeleteProgram(program)
            raise GlError(f"program link failed: {log_text}")
        return int(program)

    def _compile(self, kind: int, source: str) -> int:
        shader = self.glCreateShader(kind)
        text = ctypes.c_char_p(source.encode())
        self.glShaderSource(shader, 1, ctypes.byref(text), None)
        self.glCompileShader(shader)
        status = ctypes.c_int()
        self.glGetShaderiv(shader, GL_COMPILE_STATUS, ctypes.byref(status))
        if not status.value:
            log_text = self._info_log(self.glGetShaderiv, self.glGetShaderInfoLog, shader)
            self.glDeleteShader(shader)
            raise GlError(f"shader compile failed: {log_text}")
        return int(shader)

    @staticmethod
    def _info_log(get_iv: Callable[..., Any], get_log: Callable[..., Any], obj: int) -> str:
        length = ctypes.c_int()
        get_iv(obj, GL_INFO_LOG_LENGTH, ctypes.byref(length))
        buf = ctypes.create_string_buffer(max(length.value, 1))
        get_log(obj, len(buf), None, buf)
        return buf.value.decode(errors="replace").strip()


_shared_lock = threading.Lock()
_shared_egl: Egl | None = None


def shared_egl() -> Egl:
    """The process's headless EGL display, initialized once and never terminated.

    EGL hands out one display per (platform, device): two Egl() objects in one process share it,
    and eglTerminate on either would tear down every session's contexts. So renderers that are
    not given a display share this one and leave it initialized until the process exits.
    """
    global _shared_egl
    with _shared_lock:
        if _shared_egl is None:
            _shared_egl = Egl()
        return _shared_egl


class GlContext:
    """A GLES 3 (else 2) context without a surface on an Egl display, plus EGL images and fences.

    Rendering goes to framebuffer objects, so no surface is needed (EGL_KHR_surfaceless_context).
    """

    def __init__(self, egl: Egl) -> None:
        if not egl.display:
            raise GlError("the EGL display is closed")
        self.egl = egl
        self.display = egl.display
        # A private handle on libEGL: prototypes set here do not touch egl.py's function objects.
        lib = ctypes.CDLL(egl.lib._name)
        self._egl = lib
        for name, restype, argtypes in (
            ("eglBindAPI", _uint, [_uint]),
            ("eglChooseConfig", _uint, [_voidp, _intp, ctypes.POINTER(_voidp), _int, _intp]),
            ("eglCreateContext", _voidp, [_voidp, _voidp, _voidp, _intp]),
            ("eglDestroyContext", _uint, [_voidp, _voidp]),
            ("eglMakeCurrent", _uint, [_voidp, _voidp, _voidp, _voidp]),
            ("eglGetCurrentContext", _voidp, []),
            ("eglGetError", _int, []),
            ("eglQueryString", ctypes.c_char_p, [_voidp, _int]),
            ("eglGetProcAddress", _voidp, [ctypes.c_char_p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.egl_extensions = set((lib.eglQueryString(self.display, EGL_EXTENSIONS) or b"").decode().split())
        if "EGL_KHR_surfaceless_context" not in self.egl_extensions:
            raise GlError("EGL_KHR_surfaceless_context is missing: a context without a surface cannot be current")
        self._create_image = self._ext("eglCreateImageKHR", _voidp, _voidp, _voidp, _uint, _voidp, _intp)
        self._destroy_image = self._ext("eglDestroyImageKHR", _uint, _voidp, _voidp)
        self._create_sync = self._ext("eglCreateSyncKHR", _voidp, _voidp, _uint, _intp)
        self._client_wait_sync = self._ext("eglClientWaitSyncKHR", _int, _voidp, _voidp, _int, ctypes.c_uint64)
        self._destroy_sync = self._ext("eglDestroySyncKHR", _uint, _voidp, _voidp)
        if not lib.eglBindAPI(EGL_OPENGL_ES_API):
            raise GlError(f"eglBindAPI(GLES) failed: 0x{lib.eglGetError():x}")
        self.context: int | None
        self.context, self.version = self._create_context()
        self.thread: int | None = None
        self.gl = Gles(lib)
        log.debug("GLES %s context created on the %s platform", self.version, egl.platform)

    def _ext(self, name: str, restype: type | None, *argtypes: type) -> Callable[..., Any] | None:
        address = self._egl.eglGetProcAddress(name.encode())
        return ctypes.CFUNCTYPE(restype, *argtypes)(address) if address else None

    def _create_context(self) -> tuple[int, str]:
        lib = self._egl
        config = _voidp()
        if "EGL_KHR_no_config_context" not in self.egl_extensions:
            # Without configless contexts any ES-renderable config will do: we never draw to a surface.
            attribs = (_int * 5)(EGL_RENDERABLE_TYPE, EGL_OPENGL_ES2_BIT, EGL_SURFACE_TYPE, 0, EGL_NONE)
            count = _int()
            if not lib.eglChooseConfig(self.display, attribs, ctypes.byref(config), 1, ctypes.byref(count)) \
                    or not count.value:
                raise GlError("no EGL config renders GLES")
        for major, minor in ((3, 2), (3, 0), (2, 0)):
            attribs = (_int * 5)(EGL_CONTEXT_MAJOR_VERSION, major, EGL_CONTEXT_MINOR_VERSION, minor, EGL_NONE)
            context = lib.eglCreateContext(self.display, config, None, attribs)
            if context:
                return context, f"{major}.{minor}"
        raise GlError(f"eglCreateContext failed for GLES 3.x and 2.0: 0x{lib.eglGetError():x}")

    def make_current(self) -> None:
        """Make the context current on this thread; the first thread to do so owns it."""
        me = threading.get_ident()
        if self.thread is not None and self.thread != me:
            raise GlError("this GL context belongs to another thread (the render thread that first used it)")
        if not self.context:
            raise GlError("the GL context is destroyed")
        if self._egl.eglGetCurrentContext() != self.context \
                and not self._egl.eglMakeCurrent(self.display, None, None, self.context):
            raise GlError(f"eglMakeCurrent failed: 0x{self._egl.eglGetError():x}")
        self.thread = me

    def release_current(self) -> None:
        """Detach the context from this thread so another thread may take it over."""
        if self._egl.eglGetCurrentContext() == self.context:
            self._egl.eglMakeCurrent(self.display, None, None, None)
        self.thread = None

    def destroy(self) -> None:
        if self.context:
            self.release_current()
            self._egl.eglDestroyContext(self.display, self.context)
            self.context = None

    # --- dma-buf images ------------------------------------------------------------------------

    def import_dmabuf(self, width: int, height: int, drm_fourcc: int, fds: Sequence[int],
                      offsets: Sequence[int], strides: Sequence[int], modifier: int) -> int:
        """An EGLImage over a dma-buf (one to four planes); the caller destroys it.

        EGL takes its own reference on the buffer, so the fds may be closed afterwards.
        """
        if self._create_image is None or "EGL_EXT_image_dma_buf_import" not in self.egl_extensions:
            raise GlError("EGL cannot import dma-bufs (EGL_EXT_image_dma_buf_import is missing)")
        if not 1 <= len(fds) <= 4 or not len(fds) == len(offsets) == len(strides):
            raise GlError(f"a dma-buf needs 1-4 planes with an offset and stride each, got {len(fds)} fds")
        attribs = [EGL_WIDTH, width, EGL_HEIGHT, height, EGL_LINUX_DRM_FOURCC_EXT, drm_fourcc]
        explicit = modifier != DRM_FORMAT_MOD_INVALID
        if explicit and "EGL_EXT_image_dma_buf_import_modifiers" not in self.egl_extensions:
            if modifier != DRM_FORMAT_MOD_LINEAR:
                raise GlError(f"EGL cannot import modifier 0x{modifier:016x} (no dma_buf_import_modifiers)")
            explicit = False  # LINEAR is what an implicit import means on such drivers
        for plane, (fd, offset, stride) in enumerate(zip(fds, offsets, strides, strict=True)):
            fd_attr, offset_attr, pitch_attr, mod_lo, mod_hi = _PLANE_ATTRS[plane]
            attribs += [fd_attr, fd, offset_attr, offset, pitch_attr, stride]
            if explicit:
                # EGLint is signed: the modifier halves are passed as their two's-complement values.
                attribs += [mod_lo, ctypes.c_int32(modifier & 0xFFFFFFFF).value,
                            mod_hi, ctypes.c_int32(modifier >> 32).value]
        attribs.append(EGL_NONE)
        image = self._create_image(self.display, None, EGL_LINUX_DMA_BUF_EXT, None,
                                   (_int * len(attribs))(*attribs))
        if not image:
            raise GlError(f"eglCreateImageKHR(dma-buf {width}x{height} fourcc 0x{drm_fourcc:08x} "
                          f"modifier 0x{modifier:016x}) failed: 0x{self._egl.eglGetError():x}")
        return int(image)

    def destroy_image(self, image: int) -> None:
        if image and self._destroy_image is not None:
            self._destroy_image(self.display, image)

    # --- fences --------------------------------------------------------------------------------

    def finish(self, timeout_ns: int = EGL_FOREVER_KHR) -> None:
        """Block until every GL command issued so far has executed (an EGL fence, else glFinish).

        A fence rather than glFinish because it is what a GPU driver can signal without draining
        its whole queue, and because the same sync can later become a sync fd for downstream.
        """
        if self._create_sync is None or self._client_wait_sync is None or self._destroy_sync is None:
            self.gl.glFinish()
            return
        sync = self._create_sync(self.display, EGL_SYNC_FENCE_KHR, None)
        if not sync:
            log.debug("eglCreateSyncKHR failed (0x%x); using glFinish", self._egl.eglGetError())
            self.gl.glFinish()
            return
        try:
            # FLUSH_COMMANDS: without a flush the fence may never reach the GPU and the wait hangs.
            result = self._client_wait_sync(self.display, sync, EGL_SYNC_FLUSH_COMMANDS_BIT_KHR, timeout_ns)
            if result != EGL_CONDITION_SATISFIED_KHR:
                raise GlError("eglClientWaitSyncKHR: " + ("timed out" if result == EGL_TIMEOUT_EXPIRED_KHR
                                                          else f"failed (0x{self._egl.eglGetError():x})"))
        finally:
            self._destroy_sync(self.display, sync)


# --- Python buffers and fds handed to GL/EGL ---------------------------------------------------


class _BufferView(ctypes.Structure):
    """CPython's Py_buffer, to get the address of any buffer (read-only mmaps included)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_BufferView), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_BufferView)]
_release_buffer.restype = None
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.argtypes = [ctypes.py_object]
_bytes_address.restype = ctypes.c_void_p


class Pinned:
    """The address of a buffer's memory, held exported so it cannot be unmapped meanwhile."""

    def __init__(self, obj: Any, writable: bool = False) -> None:
        self.view = _BufferView()
        # PyBUF_SIMPLE (0) demands contiguous bytes; PyBUF_WRITABLE (1) refuses read-only memory.
        if _get_buffer(obj, ctypes.byref(self.view), 1 if writable else 0) != 0:
            raise GlError("buffer is not a contiguous" + (" writable" if writable else "") + " buffer")
        self.address: int = self.view.buf or 0
        self.length: int = self.view.len

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        _release_buffer(ctypes.byref(self.view))


def uninitialized_bytes(size: int) -> tuple[bytes, int]:
    """A new bytes object and its address, for glReadPixels to fill before anyone else sees it.

    This is CPython's own idiom (PyBytes_FromStringAndSize(NULL, n), then fill) and it saves a
    full-frame memset or copy: 0.8-2.6 ms per 4K frame measured here.
    """
    data: bytes = _new_bytes(None, size)
    return data, _bytes_address(data)


def client_dmabuf_problem(fds: tuple[int, ...], offsets: tuple[int, ...], strides: tuple[int, ...],
                          width: int, height: int) -> str | None:
    """Why a client's dma-buf must not be imported, or None when it may be.

    Mesa's software drivers (llvmpipe) import any fd by mapping it, with no type or size check:
    a pipe, a regular file or a memfd too small for the image is accepted by eglCreateImageKHR,
    and the process then dies (SIGSEGV, measured) when the frame is drawn. A kernel dma-buf has a
    fixed size; a memfd must be sealed against shrinking, or its owner could cut it short under
    our mapping (SIGBUS). The compositor can call this when zwp_linux_buffer_params_v1 creates
    the buffer, to fail it there; the renderer checks again before importing.
    """
    if not fds or not len(fds) == len(offsets) == len(strides):
        return "a dma-buf needs one offset and stride per plane fd"
    for plane, (fd, offset, stride) in enumerate(zip(fds, offsets, strides, strict=True)):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info.read().splitlines() if ":" in line)
        except OSError as exc:
            return f"plane {plane}: fd {fd} is not open ({exc.strerror})"
        if "exp_name" in fields:  # only dma-bufs have an exporter
            size = int(fields.get("size", "0").strip() or 0)
        else:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                return f"plane {plane}: fd {fd} is neither a dma-buf nor a memfd"
            if not seals & fcntl.F_SEAL_SHRINK:
                return f"plane {plane}: memfd {fd} is not sealed against shrinking (F_SEAL_SHRINK)"
            size = os.fstat(fd).st_size
        # Planes past the first are at most 2x subsampled vertically (4:2:0) in every format we import.
        rows = height if plane == 0 else (height + 1) // 2
        if offset < 0 or stride <= 0 or width <= 0 or height <= 0 or offset + stride * rows > size:
            return (f"plane {plane}: offset {offset} + stride {stride} x {rows} rows does not fit "
                    f"the {size}-byte buffer")
    return None


__all__ = ["DRM_FORMAT_MOD_INVALID", "DRM_FORMAT_MOD_LINEAR", "EglError", "GlContext", "GlError", "Gles",
           "Pinned", "client_dmabuf_problem", "fourcc", "fourcc_name", "shared_egl",
           "uninitialized_bytes"]
