"""Output buffer allocators: where the compositor's frames are rendered to.

One interface, `Allocator.allocate(width, height, fourcc, modifier) -> OutputBuffer`, three kinds,
tried in this order by `default_allocator()`:

* GbmAllocator: a GPU buffer object from libgbm on a DRM render node (/dev/dri/renderD*), in the
  modifier the encoder negotiated (tiled/compressed layouts included). The zero-copy path.
* MemfdAllocator: a linear buffer in a memfd. EGL on Mesa imports a memfd as a dma-buf
  (FACTS section 2), so the import/render/wrap code runs the same way on machines without
  /dev/dri (CI, these machines), and GStreamer can wrap the fd with GstDmaBufAllocator.
* ShmAllocator: plain process memory, the last fallback: the renderer reads pixels back into it.

An OutputBuffer owns its fds; release() closes them (and frees the GBM object). Consumers that
keep the buffer alive (a GstBuffer downstream) dup the fds they need.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import glob
import logging
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moonhowl.render.gl import DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR, fourcc

log = logging.getLogger(__name__)

# Single-plane RGB formats the renderer can draw into, with their bytes per pixel.
# Multi-planar YUV outputs would need a conversion pass in the renderer; the encoder's own
# converter (glcolorconvert, vapostproc) does that instead.
BYTES_PER_PIXEL: dict[int, int] = {fourcc(code): 4 for code in ("XR24", "AR24", "XB24", "AB24",
                                                                 "XR30", "AR30", "XB30", "AB30")}

# Row pitch alignment for linear buffers: 256 bytes satisfies every importer we know of
# (Intel and AMD need 64-256 for linear scanout/encode surfaces, NVIDIA 256 for pitch-linear),
# costs nothing at 4 bytes per pixel and common widths (1280, 1920, 2560, 3840 are all multiples).
LINEAR_PITCH_ALIGN = 256


class AllocationError(RuntimeError):
    """A buffer could not be allocated with the requested size, format or modifier."""


class AllocatorUnavailable(AllocationError):
    """This kind of allocator cannot work on this machine (no render node, no libgbm, ...)."""


@dataclass
class OutputBuffer:
    """One output frame buffer: dma-buf planes (fds may be empty for system memory).

    `memory` is a CPU view of the whole buffer where one exists (a memfd's mapping, the shm
    bytearray); GPU buffers (GBM) have none.
    """

    width: int
    height: int
    fourcc: int
    modifier: int
    fds: tuple[int, ...]
    offsets: tuple[int, ...]
    strides: tuple[int, ...]
    size: int
    memory: memoryview | None = None
    _on_release: Callable[[], None] | None = field(default=None, repr=False)
    released: bool = False

    def release(self) -> None:
        """Close the fds and free the memory; safe to call twice."""
        if self.released:
            return
        self.released = True
        if self._on_release is not None:
            self._on_release()

    @property
    def is_dmabuf(self) -> bool:
        return bool(self.fds)


class Allocator:
    """Allocates OutputBuffers. Subclasses raise AllocatorUnavailable from __init__ when unusable."""

    name = "abstract"

    def allocate(self, width: int, height: int, fourcc: int, modifier: int = DRM_FORMAT_MOD_LINEAR) -> OutputBuffer:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the allocator itself holds (a device); buffers are released separately."""


def _check_size(width: int, height: int, drm_fourcc: int) -> int:
    if width <= 0 or height <= 0 or width > 16384 or height > 16384:
        raise AllocationError(f"invalid buffer size {width}x{height}")
    bpp = BYTES_PER_PIXEL.get(drm_fourcc)
    if bpp is None:
        raise AllocationError(f"unsupported output format 0x{drm_fourcc:08x} "
                              f"({drm_fourcc.to_bytes(4, 'little').decode(errors='replace')!r})")
    return bpp


def _linear_pitch(width: int, bpp: int) -> int:
    return -(-width * bpp // LINEAR_PITCH_ALIGN) * LINEAR_PITCH_ALIGN


class MemfdAllocator(Allocator):
    """Linear buffers in sealed memfds: a dma-buf stand-in that EGL (Mesa) and GStreamer accept."""

    name = "memfd"

    def __init__(self) -> None:
        if not hasattr(os, "memfd_create"):
            raise AllocatorUnavailable("memfd_create is not available on this system")

    def allocate(self, width: int, height: int, fourcc: int, modifier: int = DRM_FORMAT_MOD_LINEAR) -> OutputBuffer:
        bpp = _check_size(width, height, fourcc)
        if modifier not in (DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID):
            raise AllocationError(f"a memfd buffer is linear only; modifier 0x{modifier:016x} was asked for")
        pitch = _linear_pitch(width, bpp)
        size = pitch * height
        fd = os.memfd_create("moonhowl-output", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # Seal the size: importers (EGL, GStreamer) mmap the fd, and a shrink would make their
            # reads fault with SIGBUS. Growing is sealed too so the size we advertise stays true.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise AllocationError(f"memfd buffer {width}x{height} ({size} bytes): {exc}") from None
        view = memoryview(mapping)

        def release() -> None:
            view.release()
            mapping.close()
            os.close(fd)

        return OutputBuffer(width, height, fourcc, DRM_FORMAT_MOD_LINEAR, (fd,), (0,), (pitch,), size,
                            memory=view, _on_release=release)


class ShmAllocator(Allocator):
    """System memory, no fds: the renderer reads back into it. Always available."""

    name = "shm"

    def allocate(self, width: int, height: int, fourcc: int, modifier: int = DRM_FORMAT_MOD_LINEAR) -> OutputBuffer:
        bpp = _check_size(width, height, fourcc)
        if modifier not in (DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID):
            raise AllocationError(f"system memory is linear only; modifier 0x{modifier:016x} was asked for")
        # Tightly packed: system-memory consumers (videoconvert, appsink users) expect width*bpp rows.
        pitch = width * bpp
        memory = memoryview(bytearray(pitch * height))
        return OutputBuffer(width, height, fourcc, DRM_FORMAT_MOD_LINEAR, (), (), (pitch,), pitch * height,
                            memory=memory, _on_release=memory.release)


# --- GBM -----------------------------------------------------------------------------------------

GBM_BO_USE_RENDERING = 1 << 2
GBM_BO_USE_LINEAR = 1 << 4


def render_nodes() -> list[str]:
    return sorted(glob.glob("/dev/dri/renderD*"))


class GbmAllocator(Allocator):
    """Buffer objects from libgbm on a DRM render node, in any modifier the driver offers."""

    name = "gbm"

    def __init__(self, node: str | None = None) -> None:
        nodes = [node] if node else render_nodes()
        if not nodes:
            raise AllocatorUnavailable("GBM needs a DRM render node and there is none (/dev/dri/renderD* is absent)")
        libname = ctypes.util.find_library("gbm") or "libgbm.so.1"
        try:
            lib = ctypes.CDLL(libname, use_errno=True)
        except OSError as exc:
            raise AllocatorUnavailable(f"cannot load libgbm ({exc})") from None
        vp, u32, u64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
        for name, restype, argtypes in (
            ("gbm_create_device", vp, [i32]),
            ("gbm_device_destroy", None, [vp]),
            ("gbm_bo_create", vp, [vp, u32, u32, u32, u32]),
            ("gbm_bo_create_with_modifiers", vp, [vp, u32, u32, u32, ctypes.POINTER(u64), ctypes.c_uint]),
            ("gbm_bo_destroy", None, [vp]),
            ("gbm_bo_get_plane_count", i32, [vp]),
            ("gbm_bo_get_fd_for_plane", i32, [vp, i32]),
            ("gbm_bo_get_offset", u32, [vp, i32]),
            ("gbm_bo_get_stride_for_plane", u32, [vp, i32]),
            ("gbm_bo_get_modifier", u64, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        # gbm_bo_create_with_modifiers2 (Mesa 23.1+) adds usage flags; older libgbm lacks it.
        self._create2 = getattr(lib, "gbm_bo_create_with_modifiers2", None)
        if self._create2 is not None:
            self._create2.restype = vp
            self._create2.argtypes = [vp, u32, u32, u32, ctypes.POINTER(u64), ctypes.c_uint, u32]
        self.lib = lib
        errors = []
        for path in nodes:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                continue
            device = lib.gbm_create_device(fd)
            if device:
                self.node, self.fd, self.device = path, fd, device
                log.info("GBM allocator on %s", path)
                return
            os.close(fd)
            errors.append(f"{path}: gbm_create_device failed")
        raise AllocatorUnavailable("no usable render node for GBM: " + "; ".join(errors))

    def allocate(self, width: int, height: int, fourcc: int, modifier: int = DRM_FORMAT_MOD_LINEAR) -> OutputBuffer:
        _check_size(width, height, fourcc)
        lib = self.lib
        if modifier == DRM_FORMAT_MOD_INVALID:
            bo = lib.gbm_bo_create(self.device, width, height, fourcc, GBM_BO_USE_RENDERING)
        else:
            mods = (ctypes.c_uint64 * 1)(modifier)
            if self._create2 is not None:
                bo = self._create2(self.device, width, height, fourcc, mods, 1, GBM_BO_USE_RENDERING)
            else:
                bo = lib.gbm_bo_create_with_modifiers(self.device, width, height, fourcc, mods, 1)
        if not bo:
            reason = os.strerror(ctypes.get_errno())
            raise AllocationError(f"gbm_bo_create {width}x{height} fourcc 0x{fourcc:08x} "
                                  f"modifier 0x{modifier:016x} failed on {self.node}: {reason}")
        fds: list[int] = []
        try:
            planes = lib.gbm_bo_get_plane_count(bo)
            for plane in range(planes):
                fd = lib.gbm_bo_get_fd_for_plane(bo, plane)
                if fd < 0:
                    raise AllocationError(f"gbm_bo_get_fd_for_plane({plane}) failed on {self.node}")
                fds.append(fd)
            offsets = tuple(lib.gbm_bo_get_offset(bo, p) for p in range(planes))
            strides = tuple(lib.gbm_bo_get_stride_for_plane(bo, p) for p in range(planes))
            actual_modifier = lib.gbm_bo_get_modifier(bo)
            size = os.lseek(fds[0], 0, os.SEEK_END)
        except BaseException:
            for fd in fds:
                os.close(fd)
            lib.gbm_bo_destroy(bo)
            raise

        def release() -> None:
            for fd in fds:
                os.close(fd)
            lib.gbm_bo_destroy(bo)

        return OutputBuffer(width, height, fourcc, actual_modifier, tuple(fds), offsets, strides, size,
                            _on_release=release)

    def close(self) -> None:
        if getattr(self, "device", None):
            self.lib.gbm_device_destroy(self.device)
            self.device = None
            with contextlib.suppress(OSError):
                os.close(self.fd)


def default_allocator(kinds: Sequence[str] = ("gbm", "memfd", "shm")) -> Allocator:
    """The first allocator kind that works here, logging why each earlier one was skipped."""
    makers: dict[str, Callable[[], Allocator]] = {"gbm": GbmAllocator, "memfd": MemfdAllocator,
                                                  "shm": ShmAllocator}
    for kind in kinds:
        try:
            return makers[kind]()
        except AllocatorUnavailable as exc:
            log.info("%s allocator unavailable: %s", kind, exc)
    raise AllocatorUnavailable(f"none of the allocators {', '.join(kinds)} works here")
