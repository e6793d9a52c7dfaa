"""Relative pointer motion and pointer constraints (lock / confine), for games.

Moonlight sends mostly relative mouse motion; a game that locks the pointer
(zwp_pointer_constraints_v1.lock_pointer) gets zwp_relative_pointer_v1 events while the cursor
position stays put. A constraint is active while its surface has pointer focus
(pointer-constraints-unstable-v1.xml); a oneshot constraint is dead after it deactivates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moonhowl.wayland.compositor import Region, RegionShape, Surface
from moonhowl.wayland.server import Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.seat import Pointer, Seat

LIFETIME_ONESHOT = 1
LIFETIME_PERSISTENT = 2


class RelativePointerManager(Resource):
    interface = "zwp_relative_pointer_manager_v1"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new)
        self.seat = seat

    def on_get_relative_pointer(self, new: NewId, pointer: Pointer) -> None:
        self.seat.relative_pointers.append(RelativePointer(self.client, new, self.seat))


class RelativePointer(Resource):
    interface = "zwp_relative_pointer_v1"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new)
        self.seat = seat

    def on_destroyed(self) -> None:
        if self in self.seat.relative_pointers:
            self.seat.relative_pointers.remove(self)


class PointerConstraints(Resource):
    interface = "zwp_pointer_constraints_v1"

    def __init__(self, client: Client, new: NewId, seat: Seat) -> None:
        super().__init__(client, new)
        self.seat = seat

    def _check(self, surface: Surface, lifetime: int) -> None:
        existing = self.seat.constraints.get(surface)
        if existing is not None and not existing.destroyed:
            raise self.error("already_constrained", f"{surface} already has a pointer constraint")
        if lifetime not in (LIFETIME_ONESHOT, LIFETIME_PERSISTENT):
            raise self.error("already_constrained", f"bad lifetime {lifetime}")

    def on_lock_pointer(self, new: NewId, surface: Surface, pointer: Pointer, region: Region | None,
                        lifetime: int) -> None:
        self._check(surface, lifetime)
        LockedPointer(self.client, new, self.seat, surface, region, lifetime)

    def on_confine_pointer(self, new: NewId, surface: Surface, pointer: Pointer, region: Region | None,
                           lifetime: int) -> None:
        self._check(surface, lifetime)
        ConfinedPointer(self.client, new, self.seat, surface, region, lifetime)


class _Constraint(Resource):
    on_event = ""
    off_event = ""

    def __init__(self, client: Client, new: NewId, seat: Seat, surface: Surface, region: Region | None,
                 lifetime: int) -> None:
        super().__init__(client, new)
        self.seat = seat
        self.surface: Surface | None = surface
        self.region = RegionShape(tuple(region.ops)) if region is not None else None
        self.lifetime = lifetime
        self.active = False
        self.dead = False
        seat.constraints[surface] = self
        if seat.pointer_focus is surface:
            self.set_active(True)

    def set_active(self, active: bool) -> None:
        if self.dead or self.destroyed or active == self.active:
            return
        self.active = active
        self.send(self.on_event if active else self.off_event)
        if not active and self.lifetime == LIFETIME_ONESHOT:
            self.dead = True

    def constrain(self, old_x: float, old_y: float, x: float, y: float) -> tuple[float, float]:
        return x, y

    def on_set_region(self, region: Region | None) -> None:
        self.region = RegionShape(tuple(region.ops)) if region is not None else None

    def surface_gone(self) -> None:
        self.dead = True
        self.surface = None

    def on_destroyed(self) -> None:
        if self.surface is not None and self.seat.constraints.get(self.surface) is self:
            del self.seat.constraints[self.surface]


class LockedPointer(_Constraint):
    interface = "zwp_locked_pointer_v1"
    on_event = "locked"
    off_event = "unlocked"

    def constrain(self, old_x: float, old_y: float, x: float, y: float) -> tuple[float, float]:
        return old_x, old_y  # the cursor stays; relative motion still flows

    def on_set_cursor_position_hint(self, surface_x: float, surface_y: float) -> None:
        pass  # a hint for where to put the cursor after unlocking; the stream's cursor is the client's


class ConfinedPointer(_Constraint):
    interface = "zwp_confined_pointer_v1"
    on_event = "confined"
    off_event = "unconfined"

    def constrain(self, old_x: float, old_y: float, x: float, y: float) -> tuple[float, float]:
        target = self.seat.desktop.surface_at(x, y)
        inside = target is not None and target[0] is self.surface
        if inside and (self.region is None or self.region.contains(target[1], target[2])):  # type: ignore[index]
            return x, y
        return old_x, old_y
