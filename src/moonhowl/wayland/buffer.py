"""wl_buffer and its release rule, shared by shm, dmabuf and single-pixel buffers.

A buffer is released to its client (wl_buffer.release) once no surface shows it any more AND no
scene taken for rendering still references it: the renderer reads the client's memory directly
(no copy at commit), so releasing earlier would let the client scribble on pixels being drawn.
With in-order presentation a double-buffering client (weston-simple-shm, GTK, Qt) always gets its
previous buffer back before it needs it.
"""

from __future__ import annotations

import itertools
import logging

from moonhowl.wayland.scene import Content
from moonhowl.wayland.server import Client, NewId, Resource

log = logging.getLogger(__name__)

_uids = itertools.count(1)


class Buffer(Resource):
    interface = "wl_buffer"

    def __init__(self, client: Client, new: NewId, width: int, height: int) -> None:
        super().__init__(client, new)
        self.width = width
        self.height = height
        self.uid = next(_uids)
        self.generation = 0  # bumped on every commit that attaches or damages it (see key)
        self._users = 0      # surfaces whose current state shows this buffer
        self._holds = 0      # scenes not yet presented that reference it
        self._busy = False   # committed since the last release event
        self._freed = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.uid, self.generation)

    @property
    def has_alpha(self) -> bool:
        content = self.content()
        return content is None or content.has_alpha

    def content(self) -> Content | None:
        """What to draw (None if the storage is unusable); overridden per buffer type."""
        return None

    # --- use counting -----------------------------------------------------------------------
    def attach_use(self) -> None:
        self._users += 1
        self._busy = True
        self.generation += 1

    def damaged(self) -> None:
        self.generation += 1

    def detach_use(self) -> None:
        self._users -= 1
        self._maybe_release()

    def hold(self) -> None:
        self._holds += 1

    def unhold(self) -> None:
        self._holds -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self._users > 0 or self._holds > 0:
            return
        if self._busy and not self.destroyed:
            self._busy = False
            self.send("release")
        if self.destroyed:
            self._free()

    def _free(self) -> None:
        if not self._freed:
            self._freed = True
            self.free_storage()

    def free_storage(self) -> None:
        """Override: close fds / drop mappings; called once nothing can read the buffer."""

    def on_destroyed(self) -> None:
        # A client may destroy a buffer a surface still shows (wayland.xml wl_buffer.destroy):
        # the contents stay until nothing uses them.
        if self._users <= 0 and self._holds <= 0:
            self._free()
