"""wl_compositor, wl_surface, wl_region, wl_subcompositor and wl_subsurface.

Surface state is double-buffered (wayland.xml wl_surface.commit): requests fill `pending`, commit
applies it, except for an effectively synchronized sub-surface, whose commits accumulate in
`cached` until its parent's state is applied (wl_subsurface.set_sync). Extensions that add
double-buffered state (viewport, presentation feedback) keep it in the same SurfaceState.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moonhowl.wayland.buffer import Buffer
from moonhowl.wayland.scene import Rect
from moonhowl.wayland.server import Callback, Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.display import Compositor

log = logging.getLogger(__name__)


class Region(Resource):
    """wl_region: rectangles added and subtracted in order (evaluated on demand)."""

    interface = "wl_region"

    def __init__(self, client: Client, new: NewId) -> None:
        super().__init__(client, new)
        self.ops: list[tuple[bool, int, int, int, int]] = []

    def on_add(self, x: int, y: int, width: int, height: int) -> None:
        self.ops.append((True, x, y, width, height))

    def on_subtract(self, x: int, y: int, width: int, height: int) -> None:
        self.ops.append((False, x, y, width, height))


@dataclass(frozen=True)
class RegionShape:
    """A committed copy of a wl_region (later requests on the wl_region must not affect it)."""

    ops: tuple[tuple[bool, int, int, int, int], ...]

    def contains(self, x: float, y: float) -> bool:
        for add, rx, ry, rw, rh in reversed(self.ops):
            if rx <= x < rx + rw and ry <= y < ry + rh:
                return add
        return False

    def covers(self, width: int, height: int) -> bool:
        """True if the whole width x height rectangle is inside (conservative)."""
        for i, (add, rx, ry, rw, rh) in enumerate(self.ops):
            if add and rx <= 0 and ry <= 0 and rx + rw >= width and ry + rh >= height:
                return not any(not a for a, *_ in self.ops[i + 1:])
        return False


UNSET: Any = object()


@dataclass
class SurfaceState:
    """One commit's worth of double-buffered state; UNSET fields were not touched."""

    buffer: Any = UNSET                 # Buffer | None
    dx: int = 0
    dy: int = 0
    damaged: bool = False
    opaque: Any = UNSET                 # RegionShape | None
    input: Any = UNSET                  # RegionShape | None (None = infinite)
    scale: Any = UNSET                  # int
    transform: Any = UNSET              # int (wl_output.transform)
    offset: tuple[int, int] = (0, 0)
    viewport_src: Any = UNSET           # Rect | None
    viewport_dst: Any = UNSET           # tuple[int, int] | None
    frame_callbacks: list[Callback] = field(default_factory=list)
    feedbacks: list[Any] = field(default_factory=list)

    def merge(self, newer: SurfaceState) -> None:
        """Folds a later commit's state into this one (the sub-surface cache)."""
        for name in ("buffer", "opaque", "input", "scale", "transform", "viewport_src", "viewport_dst"):
            value = getattr(newer, name)
            if value is not UNSET:
                setattr(self, name, value)
        if newer.buffer is not UNSET:
            self.dx, self.dy = newer.dx, newer.dy
        self.damaged |= newer.damaged
        self.offset = (self.offset[0] + newer.offset[0], self.offset[1] + newer.offset[1])
        self.frame_callbacks += newer.frame_callbacks
        self.feedbacks += newer.feedbacks


class Role:
    """What a role object (xdg_surface, wl_subsurface, cursor...) is told about its surface."""

    name = ""

    def pre_commit(self, surface: Surface, state: SurfaceState) -> None:
        """Before `state` is applied: raise a ResourceError to refuse it."""

    def post_commit(self, surface: Surface) -> None:
        """After the state is applied."""

    def is_synchronized(self) -> bool:
        return False

    @property
    def mapped(self) -> bool:
        """Whether the role lets the surface be shown (e.g. an xdg_surface that was configured)."""
        return True


class Surface(Resource):
    interface = "wl_surface"

    def __init__(self, client: Client, new: NewId, desktop: Compositor) -> None:
        super().__init__(client, new)
        self.desktop = desktop
        self.pending = SurfaceState()
        self.cached: SurfaceState | None = None
        # current state
        self.buffer: Buffer | None = None
        self.scale = 1
        self.transform = 0
        self.opaque: RegionShape | None = None
        self.input: RegionShape | None = None
        self.viewport_src: Rect | None = None
        self.viewport_dst: tuple[int, int] | None = None
        self.frame_callbacks: list[Callback] = []
        self.feedbacks: list[Any] = []
        self.commits = 0
        # roles and extensions
        self.role_name = ""
        self.role: Role | None = None
        self.viewport: Resource | None = None
        self.extensions: dict[str, Any] = {}  # per-protocol add-ons (fractional scale...)
        # sub-surfaces: stacking order, self marks where the parent itself is drawn
        self.subsurfaces_pending: list[Any] = [self]
        self.subsurfaces: list[Any] = [self]
        self.parent_sub: Subsurface | None = None  # set when this surface is a sub-surface
        self.entered_outputs: set[int] = set()
        self._commit_listeners: list[Callable[[Surface], None]] = []
        if self.version >= 6:
            # We render at scale 1, untransformed (one virtual output): say so up front.
            self.send("preferred_buffer_scale", 1)
            self.send("preferred_buffer_transform", 0)

    # --- roles ------------------------------------------------------------------------------
    def set_role(self, name: str, role: Role, error_resource: Resource, error_code: str | int) -> None:
        """Gives the surface a role; a surface keeps its role type for life (wayland.xml)."""
        if (self.role_name and self.role_name != name) or self.role is not None:
            raise error_resource.error(error_code, f"{self} already has the role {self.role_name or '?'}")
        self.role_name = name
        self.role = role

    def clear_role_object(self, role: Role) -> None:
        if self.role is role:
            self.role = None

    def add_commit_listener(self, callback: Callable[[Surface], None]) -> None:
        self._commit_listeners.append(callback)

    # --- requests ---------------------------------------------------------------------------
    def on_attach(self, buffer: Buffer | None, x: int, y: int) -> None:
        if self.version >= 5 and (x or y):
            raise self.error("invalid_offset", "attach with a non-zero offset (use offset) since version 5")
        if buffer is not None and not isinstance(buffer, Buffer):
            raise self.error("invalid_size", f"{buffer} is not a buffer")
        self.pending.buffer = buffer
        self.pending.dx, self.pending.dy = x, y

    def on_damage(self, x: int, y: int, width: int, height: int) -> None:
        self.pending.damaged = True

    def on_damage_buffer(self, x: int, y: int, width: int, height: int) -> None:
        self.pending.damaged = True

    def on_frame(self, new: NewId) -> None:
        self.pending.frame_callbacks.append(Callback(self.client, new))

    def on_set_opaque_region(self, region: Region | None) -> None:
        self.pending.opaque = RegionShape(tuple(region.ops)) if region is not None else None

    def on_set_input_region(self, region: Region | None) -> None:
        self.pending.input = RegionShape(tuple(region.ops)) if region is not None else None

    def on_set_buffer_scale(self, scale: int) -> None:
        if scale < 1:
            raise self.error("invalid_scale", f"buffer scale {scale}")
        self.pending.scale = scale

    def on_set_buffer_transform(self, transform: int) -> None:
        if not 0 <= transform <= 7:
            raise self.error("invalid_transform", f"buffer transform {transform}")
        self.pending.transform = transform

    def on_offset(self, x: int, y: int) -> None:
        ox, oy = self.pending.offset
        self.pending.offset = (ox + x, oy + y)

    def on_commit(self) -> None:
        state, self.pending = self.pending, SurfaceState()
        if self.role is not None:
            self.role.pre_commit(self, state)
        if self.is_synchronized():
            if self.cached is None:
                self.cached = state
            else:
                self.cached.merge(state)
            return
        if self.cached is not None:
            self.cached.merge(state)
            state, self.cached = self.cached, None
        self.apply(state)

    # --- state ------------------------------------------------------------------------------
    def is_synchronized(self) -> bool:
        sub = self.parent_sub
        while sub is not None:
            if sub.sync:
                return True
            sub = sub.parent.parent_sub
        return False

    def apply(self, state: SurfaceState) -> None:
        visible_change = state.damaged
        if state.buffer is not UNSET and state.buffer is not None and state.buffer.destroyed:
            state.buffer = None  # destroyed between attach and commit (wlroots does the same)
        if state.buffer is not UNSET and state.buffer is not self.buffer:
            old = self.buffer
            self.buffer = state.buffer
            if self.buffer is not None:
                self.buffer.attach_use()
            if old is not None:
                old.detach_use()
            visible_change = True
        elif state.damaged and self.buffer is not None:
            self.buffer.damaged()
        for name in ("opaque", "input", "scale", "transform", "viewport_src", "viewport_dst"):
            value = getattr(state, name)
            if value is not UNSET and value != getattr(self, name):
                setattr(self, name, value)
                visible_change = True
        if self.viewport is not None and self.viewport_src is not None and self.buffer is not None:
            # viewporter.xml: wp_viewport.error bad_size / out_of_buffer are checked at commit.
            src = self.viewport_src
            if self.viewport_dst is None and (src.width != int(src.width) or src.height != int(src.height)):
                raise self.viewport.error("bad_size", "source size is not integer and no destination is set")
            bw, bh = self.buffer_size_in_surface()
            if src.x + src.width > bw or src.y + src.height > bh:
                raise self.viewport.error("out_of_buffer", f"source {src} lies outside the {bw}x{bh} buffer")
        self.frame_callbacks += state.frame_callbacks
        if state.feedbacks:
            # Content that was never shown is superseded (presentation-time.xml "discarded").
            self.desktop.discard_feedbacks(self.feedbacks)
            self.feedbacks = list(state.feedbacks)
        self.commits += 1
        # The stacking order and positions of sub-surfaces are this surface's state.
        if self.subsurfaces_pending != self.subsurfaces:
            self.subsurfaces = list(self.subsurfaces_pending)
            visible_change = True
        for sub in self.subsurfaces:
            if sub is self:
                continue
            if sub.position != sub.pending_position:
                sub.position = sub.pending_position
                visible_change = True
            if sub.surface.cached is not None:
                cached, sub.surface.cached = sub.surface.cached, None
                sub.surface.apply(cached)
        if self.role is not None:
            self.role.post_commit(self)
        for callback in self._commit_listeners:
            callback(self)
        self.desktop.surface_committed(self, visible_change)

    # --- geometry ---------------------------------------------------------------------------
    def buffer_size_in_surface(self) -> tuple[float, float]:
        """The buffer's size in surface coordinates (scale and transform applied)."""
        assert self.buffer is not None
        w, h = self.buffer.width / self.scale, self.buffer.height / self.scale
        return (h, w) if self.transform in (1, 3, 5, 7) else (w, h)

    def size(self) -> tuple[int, int] | None:
        """The surface size, or None while no buffer is attached (unmapped)."""
        if self.buffer is None:
            return None
        if self.viewport_dst is not None:
            return self.viewport_dst
        if self.viewport_src is not None:
            return int(self.viewport_src.width), int(self.viewport_src.height)
        w, h = self.buffer_size_in_surface()
        return int(w), int(h)

    def accepts_input_at(self, sx: float, sy: float) -> bool:
        size = self.size()
        if size is None or not (0 <= sx < size[0] and 0 <= sy < size[1]):
            return False
        return self.input is None or self.input.contains(sx, sy)

    def tree(self, x: int, y: int) -> Iterator[tuple[Surface, int, int]]:
        """(surface, x, y) bottom to top for this surface and its mapped sub-surfaces."""
        if self.buffer is None:
            return
        for entry in self.subsurfaces:
            if entry is self:
                yield self, x, y
            else:
                px, py = entry.position
                yield from entry.surface.tree(x + px, y + py)

    # --- output tracking --------------------------------------------------------------------
    def enter_outputs(self) -> None:
        for output in self.desktop.output_resources(self.client):
            if output.id not in self.entered_outputs:
                self.entered_outputs.add(output.id)
                self.send("enter", output)

    # --- teardown ---------------------------------------------------------------------------
    def on_destroyed(self) -> None:
        if self.buffer is not None:
            self.buffer.detach_use()
            self.buffer = None
        for state in (self.pending, self.cached):
            if state is not None:
                for cb in state.frame_callbacks:
                    cb.destroy()
        self.frame_callbacks.clear()
        self.desktop.discard_feedbacks(self.feedbacks)
        self.feedbacks = []
        for entry in self.subsurfaces[:]:
            if entry is not self:
                entry.orphan()
        if self.parent_sub is not None:
            self.parent_sub.detach()
        self.desktop.surface_destroyed(self)


class WlCompositor(Resource):
    interface = "wl_compositor"

    def __init__(self, client: Client, new: NewId, desktop: Compositor) -> None:
        super().__init__(client, new)
        self.desktop = desktop

    def on_create_surface(self, new: NewId) -> None:
        Surface(self.client, new, self.desktop)

    def on_create_region(self, new: NewId) -> None:
        Region(self.client, new)


class Subcompositor(Resource):
    interface = "wl_subcompositor"

    def on_get_subsurface(self, new: NewId, surface: Surface, parent: Surface) -> None:
        ancestor: Surface | None = parent
        while ancestor is not None:
            if ancestor is surface:
                raise self.error("bad_parent", f"{parent} is {surface} or one of its descendants")
            ancestor = ancestor.parent_sub.parent if ancestor.parent_sub else None
        sub = Subsurface(self.client, new, surface, parent)
        surface.set_role("wl_subsurface", sub, self, "bad_surface")
        surface.parent_sub = sub
        # wayland.xml: a new sub-surface starts at the top of its parent's stack.
        parent.subsurfaces_pending.append(sub)
        parent.subsurfaces.append(sub)


class Subsurface(Resource, Role):
    interface = "wl_subsurface"
    name = "wl_subsurface"

    def __init__(self, client: Client, new: NewId, surface: Surface, parent: Surface) -> None:
        Resource.__init__(self, client, new)
        self.surface = surface
        self.parent: Surface = parent
        self.sync = True  # wayland.xml: "sub-surfaces start in synchronized mode"
        self.position = (0, 0)
        self.pending_position = (0, 0)
        self.attached = True

    def is_synchronized(self) -> bool:
        return self.sync

    def on_set_position(self, x: int, y: int) -> None:
        self.pending_position = (x, y)

    def _restack(self, sibling: Surface, above: bool) -> None:
        if not self.attached:
            return
        order = self.parent.subsurfaces_pending
        if sibling is self.parent:
            target: Any = self.parent
        else:
            target = sibling.parent_sub
            if target is None or target.parent is not self.parent or target is self:
                raise self.error("bad_surface", f"{sibling} is not a sibling of {self.surface}")
        order.remove(self)
        index = order.index(target)
        order.insert(index + 1 if above else index, self)

    def on_place_above(self, sibling: Surface) -> None:
        self._restack(sibling, True)

    def on_place_below(self, sibling: Surface) -> None:
        self._restack(sibling, False)

    def on_set_sync(self) -> None:
        self.sync = True

    def on_set_desync(self) -> None:
        self.sync = False
        # wayland.xml set_desync: cached state is applied as if the parent had committed.
        if not self.surface.is_synchronized() and self.surface.cached is not None:
            cached, self.surface.cached = self.surface.cached, None
            self.surface.apply(cached)

    def detach(self) -> None:
        """Leaves the parent's stack (sub-surface or its surface destroyed)."""
        if self.attached:
            self.attached = False
            for order in (self.parent.subsurfaces_pending, self.parent.subsurfaces):
                if self in order:
                    order.remove(self)
            self.surface.desktop.surface_committed(self.parent, True)

    def orphan(self) -> None:
        """The parent was destroyed: the sub-surface is unmapped until destroyed."""
        self.detach()

    def on_destroyed(self) -> None:
        self.detach()
        self.surface.parent_sub = None
        self.surface.clear_role_object(self)
