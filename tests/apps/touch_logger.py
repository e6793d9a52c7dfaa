"""A small Wayland client of our own that maps a fullscreen window and prints every wl_touch
event it receives ("touch down id=0 x=320.0 y=240.0"), for the input tests. No toolkit in
Debian's test clients logs touch, so this one speaks the protocol with moonhowl's wire module."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from moonhowl.wayland.client import WireClient


async def main() -> None:
    path = Path(os.environ["XDG_RUNTIME_DIR"]) / os.environ["WAYLAND_DISPLAY"]
    client = WireClient(path)
    await client.setup()
    touch = client.new("wl_touch")
    client.send(client.singleton("wl_seat"), "get_touch", touch)
    await client.map_toplevel((40, 40, 40))
    print("mapped", flush=True)
    while True:
        event = await client.wait(lambda e: e.object_id == touch, timeout=3600)
        if event.name in ("down", "motion"):
            # down: serial, time, surface, id, x, y; motion: time, id, x, y
            touch_id, x, y = event.args[-3:]
            print(f"touch {event.name} id={touch_id} x={x:.1f} y={y:.1f}", flush=True)
        elif event.name == "up":
            print(f"touch up id={event.args[2]}", flush=True)
        else:
            print(f"touch {event.name}", flush=True)


asyncio.run(main())
