"""EGL through ctypes: open a headless display and ask what it can do.

Headless means no window system: the device platform (EGL_EXT_platform_device) when a GPU is
there, else Mesa's surfaceless platform (llvmpipe). The dma-buf formats and modifiers EGL can
import are what the source element offers downstream (DMA_DRM caps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

EGL_EXTENSIONS = 0x3055
EGL_VENDOR = 0x3053
EGL_VERSION = 0x3054
EGL_PLATFORM_DEVICE_EXT = 0x313F
EGL_PLATFORM_SURFACELESS_MESA = 0x31DD
EGL_DEFAULT_DISPLAY = 0
EGL_NONE = 0x3038

_voidp = ctypes.c_void_p


class EglError(RuntimeError):
    """EGL is unavailable or failed; the message says which call."""


@dataclass
class EglInfo:
    platform: str
    vendor: str
    version: str
    extensions: list[str]
    # fourcc string -> list of (modifier, external_only)
    dmabuf_formats: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)


def fourcc_to_str(code: int) -> str:
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).rstrip()


class Egl:
    """A loaded libEGL with an initialized headless display."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("EGL") or "libEGL.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as exc:
            raise EglError(f"cannot load libEGL ({exc})") from None
        lib = self.lib
        lib.eglGetProcAddress.restype = _voidp
        lib.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        lib.eglQueryString.restype = ctypes.c_char_p
        lib.eglQueryString.argtypes = [_voidp, ctypes.c_int]
        lib.eglInitialize.argtypes = [_voidp, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        lib.eglTerminate.argtypes = [_voidp]
        client_ext = (lib.eglQueryString(None, EGL_EXTENSIONS) or b"").decode().split()
        get_platform_display = self._proc("eglGetPlatformDisplayEXT", _voidp, ctypes.c_int, _voidp,
                                          ctypes.POINTER(ctypes.c_int))
        self.display, self.platform = None, ""
        attribs = (ctypes.c_int * 1)(EGL_NONE)
        if "EGL_EXT_platform_device" in client_ext:
            device = self._first_device()
            if device:
                self.display = get_platform_display(EGL_PLATFORM_DEVICE_EXT, device, attribs)
                self.platform = "device"
        if not self.display and "EGL_MESA_platform_surfaceless" in client_ext:
            self.display = get_platform_display(EGL_PLATFORM_SURFACELESS_MESA, None, attribs)
            self.platform = "surfaceless"
        if not self.display:
            raise EglError("no headless EGL platform (device or surfaceless) is available")
        major, minor = ctypes.c_int(), ctypes.c_int()
        if not lib.eglInitialize(self.display, ctypes.byref(major), ctypes.byref(minor)):
            raise EglError(f"eglInitialize failed on the {self.platform} platform")

    def _proc(self, name: str, restype: type | None, *argtypes: type) -> ctypes._CFuncPtr:
        address = self.lib.eglGetProcAddress(name.encode())
        if not address:
            raise EglError(f"{name} is not available")
        return ctypes.CFUNCTYPE(restype, *argtypes)(address)  # type: ignore[no-any-return]

    def _first_device(self) -> int | None:
        try:
            query = self._proc("eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int,
                               ctypes.POINTER(_voidp), ctypes.POINTER(ctypes.c_int))
        except EglError:
            return None
        devices, count = (_voidp * 8)(), ctypes.c_int()
        if not query(8, devices, ctypes.byref(count)) or count.value == 0:
            return None
        return devices[0]  # type: ignore[no-any-return]

    def info(self) -> EglInfo:
        q = self.lib.eglQueryString
        extensions = (q(self.display, EGL_EXTENSIONS) or b"").decode().split()
        info = EglInfo(self.platform, (q(self.display, EGL_VENDOR) or b"").decode(),
                       (q(self.display, EGL_VERSION) or b"").decode(), extensions)
        if "EGL_EXT_image_dma_buf_import_modifiers" in extensions:
            info.dmabuf_formats = self.dmabuf_formats()
        return info

    def dmabuf_formats(self) -> dict[str, list[tuple[int, bool]]]:
        query_formats = self._proc("eglQueryDmaBufFormatsEXT", ctypes.c_uint, _voidp, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
        query_modifiers = self._proc("eglQueryDmaBufModifiersEXT", ctypes.c_uint, _voidp, ctypes.c_int,
                                     ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                                     ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_int))
        count = ctypes.c_int()
        query_formats(self.display, 0, None, ctypes.byref(count))
        formats = (ctypes.c_int * count.value)()
        query_formats(self.display, count.value, formats, ctypes.byref(count))
        result: dict[str, list[tuple[int, bool]]] = {}
        for fmt in formats:
            n = ctypes.c_int()
            query_modifiers(self.display, fmt, 0, None, None, ctypes.byref(n))
            mods, ext = (ctypes.c_uint64 * max(n.value, 1))(), (ctypes.c_uint * max(n.value, 1))()
            query_modifiers(self.display, fmt, n.value, mods, ext, ctypes.byref(n))
            result[fourcc_to_str(fmt)] = [(mods[i], bool(ext[i])) for i in range(n.value)]
        return result

    def close(self) -> None:
        if self.display:
            self.lib.eglTerminate(self.display)
            self.display = None
