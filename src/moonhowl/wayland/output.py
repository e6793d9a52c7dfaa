"""wl_output and zxdg_output_manager_v1: the one virtual monitor, at the session's mode."""

from __future__ import annotations

from dataclasses import dataclass

from moonhowl.wayland.server import Client, NewId, Resource

# wl_output.mode flags (wayland.xml)
MODE_CURRENT = 0x1
MODE_PREFERRED = 0x2
# Physical size for a nominal 96 dpi, so toolkits that derive a DPI from it get 1x.
DPI = 96


@dataclass(frozen=True)
class OutputMode:
    width: int
    height: int
    refresh_mhz: int
    name: str = "MOONHOWL-1"
    description: str = "moonhowl virtual output"

    @property
    def physical_mm(self) -> tuple[int, int]:
        return round(self.width * 25.4 / DPI), round(self.height * 25.4 / DPI)


class Output(Resource):
    interface = "wl_output"

    def __init__(self, client: Client, new: NewId, mode: OutputMode) -> None:
        super().__init__(client, new)
        self.mode = mode
        mm_w, mm_h = mode.physical_mm
        # subpixel 0 = unknown, transform 0 = normal
        self.send("geometry", 0, 0, mm_w, mm_h, 0, "moonhowl", "virtual", 0)
        self.send("mode", MODE_CURRENT | MODE_PREFERRED, mode.width, mode.height, mode.refresh_mhz)
        if self.version >= 2:
            self.send("scale", 1)
        if self.version >= 4:
            self.send("name", mode.name)
            self.send("description", mode.description)
        self.done()

    def done(self) -> None:
        if self.version >= 2:
            self.send("done")


class XdgOutputManager(Resource):
    interface = "zxdg_output_manager_v1"

    def on_get_xdg_output(self, new: NewId, output: Output) -> None:
        XdgOutput(self.client, new, output)


class XdgOutput(Resource):
    interface = "zxdg_output_v1"

    def __init__(self, client: Client, new: NewId, output: Output) -> None:
        super().__init__(client, new)
        mode = output.mode
        self.send("logical_position", 0, 0)
        self.send("logical_size", mode.width, mode.height)
        if self.version >= 2:
            self.send("name", mode.name)
            self.send("description", mode.description)
        # xdg-output-unstable-v1.xml: since version 3 the wl_output.done event ends the batch.
        if self.version >= 3:
            output.done()
        else:
            self.send("done")
