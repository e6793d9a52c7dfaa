"""Resource: one Wayland object of one client, and what handlers raise to report an error.

Like pywayland's and Smithay's resources: a subclass per interface sets `interface` and defines
`on_<request>` methods; events go out with `send("<event>", *args)`, checked against the version
the client bound. The dispatcher (server.Client) creates nothing itself: a handler receiving a
NewId constructs the Resource for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from moonhowl.wayland import protocols

if TYPE_CHECKING:
    from moonhowl.wayland.server import Client

log = logging.getLogger(__name__)


class NewId(NamedTuple):
    """A new_id argument: the handler creates a Resource for it (Resource(client, new_id))."""

    id: int
    interface: str
    version: int


class ResourceError(Exception):
    """Raised by a handler: the client broke the protocol on `resource`; it is disconnected."""

    def __init__(self, resource: Resource, code: int, message: str) -> None:
        super().__init__(f"{resource}: error {code}: {message}")
        self.resource = resource
        self.code = code
        self.message = message


class Resource:
    """One Wayland object of one client. Subclasses set `interface` and define on_<request>."""

    interface: ClassVar[str | None] = None

    def __init__(self, client: Client, new: NewId) -> None:
        name = type(self).interface or new.interface
        if type(self).interface and new.interface != type(self).interface:
            raise ValueError(f"{type(self).__name__} is {type(self).interface}, not {new.interface}")
        self.client = client
        self.id = new.id
        self.version = new.version
        self.iface = protocols.interface(name)
        self.destroyed = False
        self._destroy_listeners: list[Callable[[Resource], None]] = []
        client._register(self)

    def __repr__(self) -> str:
        return f"{self.iface.name}@{self.id}"

    # --- events -----------------------------------------------------------------------------
    def send(self, event: str, *args: Any) -> None:
        """Queues an event; Resource arguments become ids, fds are dup()ed (the caller keeps its)."""
        message = self.iface.event(event)
        if message.since > self.version:
            raise RuntimeError(f"{self}: event {event} needs version {message.since}, bound {self.version}")
        if self.destroyed or self.client.closed:
            return
        values = list(args)
        for i, arg in enumerate(message.args):
            if arg.type in ("object", "new_id"):
                value = values[i]
                # Resources become ids; a bare int id is accepted (wl_display.error of a dead object).
                values[i] = 0 if value is None else value if isinstance(value, int) else value.id
        self.client.send_message(self.id, message.opcode, message.signature, values)

    def can_send(self, event: str) -> bool:
        return self.iface.event(event).since <= self.version and not self.destroyed

    # --- errors -----------------------------------------------------------------------------
    def error(self, code: str | int, message: str, enum_of: str | None = None) -> ResourceError:
        """A ResourceError to raise; `code` is an entry of the "error" enum of this interface (or
        of `enum_of`: wl_shm_pool reports wl_shm's errors, as libwayland does)."""
        if isinstance(code, str):
            iface = protocols.interface(enum_of) if enum_of else self.iface
            code = iface.enum_value("error", code)
        return ResourceError(self, code, message)

    # --- lifetime ---------------------------------------------------------------------------
    def add_destroy_listener(self, callback: Callable[[Resource], None]) -> None:
        self._destroy_listeners.append(callback)

    def remove_destroy_listener(self, callback: Callable[[Resource], None]) -> None:
        with contextlib.suppress(ValueError):
            self._destroy_listeners.remove(callback)

    def destroy(self) -> None:
        """Removes the object (wl_resource_destroy): hooks run, the client learns delete_id."""
        if self.destroyed:
            return
        self.destroyed = True
        try:
            self.on_destroyed()
        finally:
            for callback in self._destroy_listeners[:]:
                try:
                    callback(self)
                except Exception:
                    log.exception("destroy listener of %s failed", self)
            self._destroy_listeners.clear()
            self.client._unregister(self)

    def on_destroyed(self) -> None:
        """Override: undo whatever this object added (called once, also on disconnect)."""


class Inert(Resource):
    """Stands in for a new id a handler chose not to implement: accepts and ignores requests."""
