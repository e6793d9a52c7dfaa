"""wl_shm: buffers in client shared memory (ARGB8888 and XRGB8888).

Reading a client's file is only safe if the client cannot shrink it under us: a read past the
end of a shared mapping raises SIGBUS and would kill every session in this process. libwayland
catches that SIGBUS (wayland-shm.c, wl_shm_buffer_begin_access); Python cannot. So a pool is
mapped only when its fd is a memfd sealed against shrinking (F_SEAL_SHRINK: weston's
os_create_anonymous_file, GTK, Qt and Mesa all seal) and at least as large as the pool; any other
fd is read with pread(), which returns short instead of faulting, into a copy per content change.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat
import sys
import weakref

from moonhowl.wayland.buffer import Buffer
from moonhowl.wayland.scene import WL_SHM_FORMAT_ARGB8888, WL_SHM_FORMAT_XRGB8888, ShmContent
from moonhowl.wayland.server import Client, NewId, Resource

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = (WL_SHM_FORMAT_ARGB8888, WL_SHM_FORMAT_XRGB8888)
BYTES_PER_PIXEL = 4
MAX_POOL_SIZE = 1 << 30


class PoolMemory:
    """The bytes of one wl_shm_pool: a read-only mapping when safe, else pread on demand."""

    def __init__(self, fd: int, size: int, client: Client) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None
        client.hold_fd(fd)
        # Buffers outlive their pool (wayland.xml): the fd goes when the last user does.
        weakref.finalize(self, _close_held, fd, client)
        self.resize(size)

    def _safe_to_map(self, size: int) -> bool:
        try:
            seals = fcntl.fcntl(self.fd, fcntl.F_GET_SEALS)
        except OSError:  # not a memfd
            return False
        return bool(seals & fcntl.F_SEAL_SHRINK) and os.fstat(self.fd).st_size >= size

    def resize(self, size: int) -> None:
        """Maps `size` bytes (a new mapping: mmap.resize would also ftruncate the client's file)."""
        self.size = size
        self.map = None
        if self._safe_to_map(size):
            # trackfd=False (3.13+): the mapping does not keep a second fd of its own.
            extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ, **extra)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # the file is shorter than the client said: zeros, like libwayland
            data += bytes(length - len(data))
        return data


def _close_held(fd: int, client: Client) -> None:
    os.close(fd)
    client.release_fd()


class Shm(Resource):
    interface = "wl_shm"

    def __init__(self, client: Client, new: NewId) -> None:
        super().__init__(client, new)
        for fmt in SUPPORTED_FORMATS:
            self.send("format", fmt)

    def on_create_pool(self, new: NewId, fd: int, size: int) -> None:
        if not 0 < size <= MAX_POOL_SIZE:
            os.close(fd)
            raise self.error("invalid_stride", f"invalid pool size {size}")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
        except OSError as exc:
            os.close(fd)
            raise self.error("invalid_fd", f"cannot use pool fd: {exc}") from None
        try:
            memory = PoolMemory(fd, size, self.client)
        except (OSError, ValueError) as exc:  # the fd is closed by the pool's finalizer
            raise self.error("invalid_fd", f"cannot map pool fd: {exc}") from None
        ShmPool(self.client, new, memory)


class ShmPool(Resource):
    interface = "wl_shm_pool"

    def __init__(self, client: Client, new: NewId, memory: PoolMemory) -> None:
        super().__init__(client, new)
        self.memory = memory

    def on_create_buffer(self, new: NewId, offset: int, width: int, height: int, stride: int, fmt: int) -> None:
        if fmt not in SUPPORTED_FORMATS:
            raise self.error("invalid_format", enum_of="wl_shm", message=f"unsupported format {fmt:#x}")
        # libwayland wayland-shm.c shm_pool_create_buffer's checks
        if (offset < 0 or width <= 0 or height <= 0 or stride < width * BYTES_PER_PIXEL
                or offset + stride * height > self.memory.size):
            raise self.error("invalid_stride", enum_of="wl_shm",
                             message=f"invalid buffer {width}x{height} stride {stride} offset {offset} "
                                     f"in a {self.memory.size}-byte pool")
        ShmBuffer(self.client, new, self.memory, offset, width, height, stride, fmt)

    def on_resize(self, size: int) -> None:
        if size < self.memory.size or size > MAX_POOL_SIZE:
            raise self.error("invalid_fd", enum_of="wl_shm",
                             message=f"pool cannot shrink or exceed the limit ({self.memory.size} -> {size})")
        try:
            self.memory.resize(size)
        except (OSError, ValueError) as exc:
            raise self.error("invalid_fd", enum_of="wl_shm", message=f"cannot remap pool: {exc}") from None


class ShmBuffer(Buffer):
    def __init__(self, client: Client, new: NewId, memory: PoolMemory, offset: int, width: int, height: int,
                 stride: int, fmt: int) -> None:
        super().__init__(client, new, width, height)
        self.memory = memory
        self.offset = offset
        self.stride = stride
        self.format = fmt
        self._copy: tuple[int, ShmContent] | None = None

    @property
    def has_alpha(self) -> bool:
        return self.format == WL_SHM_FORMAT_ARGB8888

    def content(self) -> ShmContent | None:
        memory = self.memory
        if memory.map is not None:
            return ShmContent(memoryview(memory.map), self.offset, self.width, self.height, self.stride, self.format)
        if self._copy is None or self._copy[0] != self.generation:
            length = self.stride * self.height
            try:
                data = memory.read(self.offset, length)
            except OSError as exc:
                log.warning("%s: cannot read pool: %s", self, exc)
                return None
            self._copy = (self.generation, ShmContent(memoryview(data), 0, self.width, self.height, self.stride,
                                                      self.format))
        return self._copy[1]

    def free_storage(self) -> None:
        self._copy = None
