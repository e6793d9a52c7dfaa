"""wl_data_device_manager: the clipboard between the apps of one desktop (no drag and drop).

GTK and Qt bind it at start-up and expect set_selection to work; the selection is offered to the
client with keyboard focus (wayland.xml wl_data_device.selection), and a paste is a
wl_data_offer.receive forwarded as wl_data_source.send to the owner, fd and all. Drags are
cancelled at once: nothing on a streamed desktop could be dropped on anyway.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from moonhowl.wayland.server import Client, NewId, Resource

if TYPE_CHECKING:
    from moonhowl.wayland.compositor import Surface
    from moonhowl.wayland.seat import Seat

log = logging.getLogger(__name__)


class Selection:
    """The seat's clipboard: one current source, offered to the focused client."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.source: DataSource | None = None
        self.devices: list[DataDevice] = []
        seat.focus_listeners.append(self._focus_changed)

    def set(self, source: DataSource | None) -> None:
        old = self.source
        if old is source:
            return
        self.source = source
        if old is not None and not old.destroyed:
            old.send("cancelled")
        focus = self.seat.keyboard_focus
        if focus is not None:
            self.offer_to(focus.client)

    def source_gone(self, source: DataSource) -> None:
        if self.source is source:
            self.source = None
            focus = self.seat.keyboard_focus
            if focus is not None:
                self.offer_to(focus.client)

    def _focus_changed(self, surface: Surface | None) -> None:
        if surface is not None:
            self.offer_to(surface.client)

    def offer_to(self, client: Client) -> None:
        source = self.source
        for device in self.devices:
            if device.client is not client or device.destroyed:
                continue
            if source is None or source.destroyed:
                device.send("selection", None)
                continue
            offer = DataOffer(client, client.new_server_id("wl_data_offer", device.version), source)
            device.send("data_offer", offer)
            for mime in source.mime_types:
                offer.send("offer", mime)
            device.send("selection", offer)


class DataDeviceManager(Resource):
    interface = "wl_data_device_manager"

    def __init__(self, client: Client, new: NewId, selection: Selection) -> None:
        super().__init__(client, new)
        self.selection = selection

    def on_create_data_source(self, new: NewId) -> None:
        DataSource(self.client, new, self.selection)

    def on_get_data_device(self, new: NewId, seat: Resource) -> None:
        device = DataDevice(self.client, new, self.selection)
        self.selection.devices.append(device)
        focus = self.selection.seat.keyboard_focus
        if focus is not None and focus.client is self.client:
            self.selection.offer_to(self.client)


class DataSource(Resource):
    interface = "wl_data_source"

    def __init__(self, client: Client, new: NewId, selection: Selection) -> None:
        super().__init__(client, new)
        self.selection = selection
        self.mime_types: list[str] = []
        self.actions = 0

    def on_offer(self, mime_type: str) -> None:
        self.mime_types.append(mime_type)

    def on_set_actions(self, dnd_actions: int) -> None:
        self.actions = dnd_actions

    def on_destroyed(self) -> None:
        self.selection.source_gone(self)


class DataOffer(Resource):
    interface = "wl_data_offer"

    def __init__(self, client: Client, new: NewId, source: DataSource) -> None:
        super().__init__(client, new)
        self.source = source

    def on_accept(self, serial: int, mime_type: str | None) -> None:
        pass  # drag and drop only

    def on_receive(self, mime_type: str, fd: int) -> None:
        try:
            if not self.source.destroyed and self.selection_is_current():
                self.source.send("send", mime_type, fd)
        finally:
            os.close(fd)  # send() dup()ed it for the owner

    def selection_is_current(self) -> bool:
        return self.source.selection.source is self.source

    def on_finish(self) -> None:
        pass

    def on_set_actions(self, dnd_actions: int, preferred_action: int) -> None:
        pass


class DataDevice(Resource):
    interface = "wl_data_device"

    def __init__(self, client: Client, new: NewId, selection: Selection) -> None:
        super().__init__(client, new)
        self.selection = selection

    def on_start_drag(self, source: DataSource | None, origin: Resource, icon: Resource | None,
                      serial: int) -> None:
        if source is not None:
            source.send("cancelled")

    def on_set_selection(self, source: DataSource | None, serial: int) -> None:
        self.selection.set(source)

    def on_destroyed(self) -> None:
        if self in self.selection.devices:
            self.selection.devices.remove(self)
