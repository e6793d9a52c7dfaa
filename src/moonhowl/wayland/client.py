"""A minimal Wayland client on moonhowl's own wire module, for tests and benchmarks.

It speaks the protocol at the message level (object ids, request names, raw arguments), so it
can also break it on purpose: `raw()` sends arbitrary bytes. Events are decoded with the same
interface tables as the server; fds that come with events are received and closed (or kept, for
the keymap and format table, in `Event.fds`).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moonhowl.wayland import protocols, wire

XRGB8888 = 1  # wl_shm.format


@dataclass
class Event:
    object_id: int
    interface: str
    name: str
    args: list[Any]
    fds: list[int] = field(default_factory=list)


class WireClient:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.ids: dict[int, str] = {1: "wl_display"}
        self._next = 1
        self.decoder = wire.Decoder()
        self.events: list[Event] = []
        self.eof = False
        self.globals: dict[str, tuple[int, int]] = {}
        self.registry = 0
        self.wm_base = 0
        self._bound: dict[str, int] = {}

    # --- sending ----------------------------------------------------------------------------
    def new(self, interface: str) -> int:
        self._next += 1
        self.ids[self._next] = interface
        return self._next

    def send(self, object_id: int, request: str, *args: Any, fds: tuple[int, ...] = ()) -> None:
        """A request by name; new ids are passed as ints from new(), fds both as args and fds."""
        message = protocols.interface(self.ids[object_id]).request(request)
        data, _ = wire.encode(object_id, message.opcode, message.signature, args)
        self.raw(data, fds)

    def raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    # --- receiving --------------------------------------------------------------------------
    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.sock.fileno(), readable)
        try:
            await ready
        finally:
            loop.remove_reader(self.sock.fileno())
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(28 * 4))
        except BlockingIOError:
            return
        except ConnectionResetError:
            data, anc = b"", []
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % 4])
                fds.extend(got)
        if not data:
            self.eof = True
            return
        self.decoder.feed(data, fds)
        for raw in self.decoder:
            name = self.ids.get(raw.object_id)
            if name is None:
                continue  # an object we never heard of (or already destroyed)
            message = protocols.interface(name).events[raw.opcode]
            args = self.decoder.decode(message.signature, raw.body)
            event_fds = [a for a, arg in zip(args, message.args, strict=False) if arg.type == "fd"]
            for value, arg in zip(args, message.args, strict=False):
                if arg.type == "new_id" and arg.interface:  # a server-created object (wl_data_offer)
                    self.ids[value] = arg.interface
            self.events.append(Event(raw.object_id, name, message.name, args, event_fds))
            if message.destructor:
                self.ids.pop(raw.object_id, None)

    async def wait(self, match: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first event (received or to come) that matches; it is removed from `events`."""
        async def find() -> Event:
            while True:
                for event in self.events:
                    if match(event):
                        self.events.remove(event)
                        return event
                if self.eof:
                    raise ConnectionError("the compositor closed the connection")
                await self._read()
        return await asyncio.wait_for(find(), timeout)

    async def event(self, object_id: int, name: str, timeout: float = 5.0) -> Event:
        return await self.wait(lambda e: e.object_id == object_id and e.name == name, timeout)

    async def closed(self, timeout: float = 5.0) -> None:
        async def drain() -> None:
            while not self.eof:
                await self._read()
        await asyncio.wait_for(drain(), timeout)

    async def roundtrip(self) -> None:
        callback = self.new("wl_callback")
        self.send(1, "sync", callback)
        await self.event(callback, "done")

    # --- conveniences -----------------------------------------------------------------------
    async def setup(self) -> None:
        self.registry = self.new("wl_registry")
        self.send(1, "get_registry", self.registry)
        await self.roundtrip()
        for e in [e for e in self.events if e.object_id == self.registry and e.name == "global"]:
            self.globals[e.args[1]] = (e.args[0], e.args[2])
            self.events.remove(e)

    def bind(self, interface: str, version: int | None = None) -> int:
        name, top = self.globals[interface]
        new = self.new(interface)
        self.send(self.registry, "bind", name, interface, version or top, new)
        return new

    def singleton(self, interface: str) -> int:
        """One bound instance per interface (bound on first use)."""
        if interface not in self._bound:
            self._bound[interface] = self.bind(interface)
        return self._bound[interface]

    def surface(self) -> int:
        surface = self.new("wl_surface")
        self.send(self.singleton("wl_compositor"), "create_surface", surface)
        return surface

    def shm_buffer(self, width: int, height: int, rgb: tuple[int, int, int], seal: bool = True) -> int:
        """An XRGB8888 buffer filled with one colour (its own pool), in a memfd sealed against
        shrinking like real toolkits' (seal=False exercises the compositor's copying path)."""
        fd = os.memfd_create("moonhowl-wire-client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, bytes((rgb[2], rgb[1], rgb[0], 255)) * (width * height))
            if seal:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            pool = self.new("wl_shm_pool")
            self.send(self.singleton("wl_shm"), "create_pool", pool, fd, width * height * 4, fds=(fd,))
        finally:
            os.close(fd)
        buffer = self.new("wl_buffer")
        self.send(pool, "create_buffer", buffer, 0, width, height, width * 4, XRGB8888)
        self.send(pool, "destroy")
        return buffer

    async def toplevel(self) -> tuple[int, int, int, Event]:
        """surface, xdg_surface, xdg_toplevel after the initial commit, and the first
        xdg_toplevel.configure event with the xdg_surface.configure serial appended to its args:
        [width, height, states, serial]. Nothing is acked."""
        self.wm_base = self.singleton("xdg_wm_base")
        surface = self.surface()
        xdg = self.new("xdg_surface")
        self.send(self.wm_base, "get_xdg_surface", xdg, surface)
        top = self.new("xdg_toplevel")
        self.send(xdg, "get_toplevel", top)
        self.send(surface, "commit")
        configure = await self.event(top, "configure")
        serial = (await self.event(xdg, "configure")).args[0]
        configure.args.append(serial)
        return surface, xdg, top, configure

    async def map_toplevel(self, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        """A toplevel at the configured size in one colour; returns surface, xdg_surface, buffer."""
        surface, xdg, _, configure = await self.toplevel()
        width, height, _, serial = configure.args
        self.send(xdg, "ack_configure", serial)
        buffer = self.shm_buffer(width, height, rgb)
        self.send(surface, "attach", buffer, 0, 0)
        self.send(surface, "damage_buffer", 0, 0, width, height)
        self.send(surface, "commit")
        await self.roundtrip()
        return surface, xdg, buffer

    @staticmethod
    def states(array_arg: bytes) -> list[int]:
        return list(struct.unpack(f"={len(array_arg) // 4}I", array_arg))

    def close(self) -> None:
        for event in self.events:
            for fd in event.fds:
                os.close(fd)
        self.events.clear()
        self.decoder.close()
        self.sock.close()
