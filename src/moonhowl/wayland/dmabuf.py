"""zwp_linux_dmabuf_v1 (version 4): GPU buffers by fd, with format/modifier feedback.

Which (fourcc, modifier) pairs to offer is the renderer's knowledge (what EGL can import); the
session passes them to Compositor(dmabuf_formats=...). Version 4 clients read them from a format
table (a sealed memfd of 16-byte entries: u32 format, u32 padding, u64 modifier,
linux-dmabuf-v1.xml format_table) indexed by tranches; older clients get modifier events.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from typing import TYPE_CHECKING

from moonhowl.wayland.buffer import Buffer
from moonhowl.wayland.scene import DmabufContent
from moonhowl.wayland.server import Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.compositor import Surface
    from moonhowl.wayland.display import Compositor

log = logging.getLogger(__name__)

MAX_PLANES = 4
TABLE_ENTRY = struct.Struct("=IIQ")
RENDER_NODE = "/dev/dri/renderD128"


def format_table_fd(formats: list[tuple[int, int]]) -> tuple[int, int]:
    data = b"".join(TABLE_ENTRY.pack(fmt, 0, mod) for fmt, mod in formats)
    fd = os.memfd_create("moonhowl-dmabuf-formats", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    return fd, len(data)


def default_main_device() -> int:
    """dev_t of the render node, or 0 when there is none (no /dev/dri here: clients that need a
    device fall back to wl_shm, as Mesa's llvmpipe does anyway)."""
    try:
        return os.stat(RENDER_NODE).st_rdev
    except OSError:
        return 0


class DmabufManager(Resource):
    interface = "zwp_linux_dmabuf_v1"

    def __init__(self, client: Client, new: NewId, desktop: Compositor) -> None:
        super().__init__(client, new)
        self.desktop = desktop
        self.formats = list(dict.fromkeys(desktop.dmabuf_formats))
        if self.version < 4:
            seen: set[int] = set()
            for fmt, mod in self.formats:
                if self.version >= 3:
                    self.send("modifier", fmt, mod >> 32, mod & 0xFFFFFFFF)
                elif fmt not in seen:
                    self.send("format", fmt)
                seen.add(fmt)

    def on_create_params(self, new: NewId) -> None:
        BufferParams(self.client, new, self)

    def on_get_default_feedback(self, new: NewId) -> None:
        DmabufFeedback(self.client, new, self)

    def on_get_surface_feedback(self, new: NewId, surface: Surface) -> None:
        DmabufFeedback(self.client, new, self)  # one output, one renderer: same as the default


class DmabufFeedback(Resource):
    interface = "zwp_linux_dmabuf_feedback_v1"

    def __init__(self, client: Client, new: NewId, manager: DmabufManager) -> None:
        super().__init__(client, new)
        formats = manager.formats
        device = manager.desktop.main_device
        dev = struct.pack("=Q", default_main_device() if device is None else device)
        fd, size = format_table_fd(formats)
        try:
            self.send("format_table", fd, size)
        finally:
            os.close(fd)
        self.send("main_device", dev)
        self.send("tranche_target_device", dev)
        self.send("tranche_formats", struct.pack(f"={len(formats)}H", *range(len(formats))))
        self.send("tranche_flags", 0)
        self.send("tranche_done")
        self.send("done")


class BufferParams(Resource):
    interface = "zwp_linux_buffer_params_v1"

    def __init__(self, client: Client, new: NewId, manager: DmabufManager) -> None:
        super().__init__(client, new)
        self.manager = manager
        self.planes: dict[int, tuple[int, int, int, int]] = {}  # idx -> fd, offset, stride, modifier
        self.used = False

    def on_add(self, fd: int, plane_idx: int, offset: int, stride: int, modifier_hi: int, modifier_lo: int) -> None:
        if self.used:
            os.close(fd)
            raise self.error("already_used", "params already used to create a buffer")
        if plane_idx >= MAX_PLANES:
            os.close(fd)
            raise self.error("plane_idx", f"plane index {plane_idx}")
        if plane_idx in self.planes:
            os.close(fd)
            raise self.error("plane_set", f"plane {plane_idx} already set")
        self.client.hold_fd(fd)
        self.planes[plane_idx] = (fd, offset, stride, (modifier_hi << 32) | modifier_lo)

    def _validate(self, width: int, height: int, fmt: int) -> str | None:
        """None if good, else the error enum entry; raises nothing (create vs create_immed)."""
        if self.used:
            return "already_used"
        if not self.planes or sorted(self.planes) != list(range(len(self.planes))):
            return "incomplete"
        modifiers = {plane[3] for plane in self.planes.values()}
        if len(modifiers) != 1 or (fmt, modifiers.pop()) not in self.manager.formats:
            return "invalid_format"
        if width <= 0 or height <= 0:
            return "invalid_dimensions"
        for fd, offset, stride, _ in self.planes.values():
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
            except OSError:
                continue  # not seekable: cannot check (linux-dmabuf-v1.xml allows that)
            if offset + stride > size or (len(self.planes) == 1 and offset + stride * height > size):
                return "out_of_bounds"
        return None

    def _take(self, width: int, height: int, fmt: int) -> DmabufContent:
        self.used = True
        order = sorted(self.planes)
        mod = self.planes[0][3]
        content = DmabufContent(tuple(self.planes[i][0] for i in order), tuple(self.planes[i][1] for i in order),
                                tuple(self.planes[i][2] for i in order), width, height, fmt, mod)
        self.planes.clear()
        return content

    def on_create(self, width: int, height: int, fmt: int, flags: int) -> None:
        problem = self._validate(width, height, fmt)
        if problem == "already_used":
            raise self.error(problem, "params already used")
        if problem is not None:
            log.debug("%s: dmabuf create failed: %s", self, problem)
            self.used = True
            self.send("failed")
            return
        buffer = DmabufBuffer(self.client, self.client.new_server_id("wl_buffer", 1), self._take(width, height, fmt))
        self.send("created", buffer)

    def on_create_immed(self, new: NewId, width: int, height: int, fmt: int, flags: int) -> None:
        problem = self._validate(width, height, fmt)
        if problem is not None:
            raise self.error(problem, f"create_immed {width}x{height} format {fmt:#x}: {problem}")
        DmabufBuffer(self.client, NewId(new.id, "wl_buffer", 1), self._take(width, height, fmt))

    def on_destroyed(self) -> None:
        for fd, *_ in self.planes.values():
            os.close(fd)
            self.client.release_fd()
        self.planes.clear()


class DmabufBuffer(Buffer):
    def __init__(self, client: Client, new: NewId, content: DmabufContent) -> None:
        super().__init__(client, new, content.width, content.height)
        self._content = content

    def content(self) -> DmabufContent:
        return self._content

    def free_storage(self) -> None:
        for fd in self._content.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
