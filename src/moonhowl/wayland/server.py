"""The Wayland server: an asyncio unix socket, one Client per connection, one Resource per object.

The socket and its lock file follow libwayland (src/wayland-server.c, wl_socket_lock): the lock
`<name>.lock` is flock()ed so two servers never share a name, and a stale socket left by a dead
server is removed once its lock is ours.

Per connection: requests are read with recvmsg (fds in SCM_RIGHTS), decoded with the interface
tables, checked (object exists and has the right interface, method exists in the bound version,
new ids are free) and dispatched to `Resource.on_<request>`. A handler that raises ResourceError,
or any malformed input, ends in wl_display.error and a disconnect of that client only. At most
REQUESTS_PER_TICK requests are dispatched per client per loop iteration, and the bytes queued to a
client that does not read are bounded, so one client cannot starve the others or grow memory.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moonhowl.wayland import protocols, wire
from moonhowl.wayland.resource import Inert, NewId, Resource, ResourceError

__all__ = ["Callback", "Client", "Global", "Inert", "NewId", "Resource", "ResourceError", "Server"]

log = logging.getLogger(__name__)

# The client id range ends where libwayland's server-allocated ids start (WL_SERVER_ID_START).
SERVER_ID_START = 0xFF000000
READ_SIZE = 32768
# Linux's SCM_MAX_FD: the most fds one recvmsg can carry.
MAX_FDS_IN = 253
# libwayland-client reads at most 28 fds per recvmsg (connection.c MAX_FDS_OUT); more in one
# sendmsg would be truncated (MSG_CTRUNC) and lost on its side.
MAX_FDS_OUT = 28
REQUESTS_PER_TICK = 256
# Events queued for a client that stopped reading. libwayland disconnects such a client too
# ("failed to flush"); 4 MiB is thousands of frames' worth of ordinary events.
MAX_OUT_BYTES = 4 * 1024 * 1024
MAX_CLIENTS = 128
# Per client: objects (a client allocating without end must not exhaust the host's memory) and
# fds kept open on its behalf (shm pools, dmabuf planes: the process's fd table is shared by all
# sessions). GTK, Qt and foot stay far below both.
MAX_OBJECTS = 1 << 18
MAX_HELD_FDS = 256
LINGER_S = 1.0

# wl_display.error codes (wayland.xml, wl_display.error enum)
INVALID_OBJECT = 0
INVALID_METHOD = 1
NO_MEMORY = 2
IMPLEMENTATION = 3


@dataclass
class Global:
    name: int
    interface: str
    version: int
    bind: Callable[[Client, NewId], Any]


class Client:
    """One connection: object map, request dispatch, event queue, teardown."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = server.loop
        self.decoder = wire.Decoder()
        self.objects: dict[int, Resource] = {}
        self.closed = False
        self.pid = self.uid = 0
        with contextlib.suppress(OSError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.pid, self.uid, _ = struct.unpack("3i", creds)
        self._next_server_id = SERVER_ID_START
        # Events not yet written: one byte buffer (few objects: a backlog of 100k events must
        # not be 100k Python objects), and the fds with the stream offset of their message.
        self._out = bytearray()
        self._out_start = 0  # stream offset of self._out[0]
        self._out_fds: deque[tuple[int, list[int]]] = deque()
        self._flush_scheduled = False
        self._writing = False
        self._reading = False
        self._sock_closed = False
        self._destroy_listeners: list[Callable[[Client], None]] = []
        self._created: set[int] = set()  # ids registered during the current dispatch
        self.held_fds = 0
        self.display = Display(self, NewId(1, "wl_display", 1))
        self._start_reading()

    def __repr__(self) -> str:
        return f"client(pid={self.pid})"

    # --- object map ------------------------------------------------------------------------
    def _register(self, resource: Resource) -> None:
        if resource.id in self.objects:
            raise ResourceError(self.display, INVALID_OBJECT, f"id {resource.id} is already in use")
        if len(self.objects) >= MAX_OBJECTS:
            raise ResourceError(self.display, NO_MEMORY, f"more than {MAX_OBJECTS} objects")
        self.objects[resource.id] = resource
        self._created.add(resource.id)

    def _unregister(self, resource: Resource) -> None:
        if self.objects.get(resource.id) is resource:
            del self.objects[resource.id]
            if resource.id < SERVER_ID_START and resource.id != 1 and not self.closed:
                self.display.send("delete_id", resource.id)

    def new_server_id(self, interface: str, version: int) -> NewId:
        """A NewId for an object the server creates (wl_data_offer...), sent as an event's new_id."""
        while self._next_server_id in self.objects:
            self._next_server_id += 1
        new = NewId(self._next_server_id, interface, version)
        self._next_server_id += 1
        return new

    def resources(self, cls: type[Resource]) -> list[Any]:
        return [r for r in self.objects.values() if isinstance(r, cls)]

    def add_destroy_listener(self, callback: Callable[[Client], None]) -> None:
        self._destroy_listeners.append(callback)

    def hold_fd(self, fd: int) -> None:
        """Accounts for an fd kept on this client's behalf (closes it and raises when over budget);
        whoever closes it later calls release_fd()."""
        if self.held_fds >= MAX_HELD_FDS:
            os.close(fd)
            raise ResourceError(self.display, NO_MEMORY, f"more than {MAX_HELD_FDS} fds held (pools, dmabufs)")
        self.held_fds += 1

    def release_fd(self) -> None:
        self.held_fds -= 1

    # --- reading and dispatch ---------------------------------------------------------------
    def _start_reading(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                READ_SIZE, socket.CMSG_SPACE(MAX_FDS_IN * 4), socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"read failed: {exc}")
            return
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            self.close("sent more fds in one message than can be received")
            return
        if not data:
            for fd in fds:
                os.close(fd)
            try:
                self.decoder.check_eof()
            except wire.WireError as exc:
                log.debug("%s: %s", self, exc)
            self.close("disconnected")
            return
        self.decoder.feed(data, fds)
        self._process()

    def _process(self) -> None:
        budget = REQUESTS_PER_TICK
        while budget and not self.closed:
            try:
                raw = self.decoder.next_message()
            except wire.WireError as exc:
                self.post_error(self.display, INVALID_METHOD, f"malformed message: {exc.message}")
                return
            if raw is None:
                break
            budget -= 1
            self._dispatch(raw)
        if self.closed:
            return
        if budget == 0 and self.decoder.buffered >= wire.HEADER_SIZE:
            # Fairness: yield to the other clients, continue on the next loop iteration.
            self._stop_reading()
            self.loop.call_soon(self._process)
        else:
            self._start_reading()

    def _dispatch(self, raw: wire.RawMessage) -> None:
        resource = self.objects.get(raw.object_id)
        if resource is None:
            self.post_error(self.display, INVALID_OBJECT, f"invalid object {raw.object_id}")
            return
        iface = resource.iface
        if raw.opcode >= len(iface.requests):
            self.post_error(resource, INVALID_METHOD, f"invalid method {raw.opcode}, object {resource}")
            return
        message = iface.requests[raw.opcode]
        if message.since > resource.version:
            self.post_error(resource, INVALID_METHOD, f"invalid method {message.name} (since {message.since} "
                            f"> version {resource.version}), object {resource}")
            return
        try:
            values = self.decoder.decode(message.signature, raw.body)
        except wire.WireError as exc:
            self.post_error(resource, INVALID_METHOD,
                            f"invalid arguments for {resource}.{message.name}: {exc.message}")
            return
        self._created.clear()
        try:
            try:
                args, new_ids = self._resolve(resource, message, values)
            except ResourceError:
                self._close_fd_args(message, values)  # the handler never saw them
                raise
            handler = getattr(resource, "on_" + message.name, None)
            if handler is not None:
                handler(*args)
            else:
                self._close_fd_args(message, args)
                if not message.destructor:
                    log.debug("%s: request %s ignored", resource, message.name)
            if message.destructor:
                resource.destroy()
            for new in new_ids:  # a handler that created nothing still leaves a valid object
                if new.id not in self._created and not self.closed:
                    Inert(self, new)
        except ResourceError as exc:
            # Usually this client; another one if a handler created an object for it (data offer).
            exc.resource.client.post_error(exc.resource, exc.code, exc.message)
        except Exception:
            log.exception("%s: handler for %s.%s failed", self, resource, message.name)
            self.post_error(self.display, IMPLEMENTATION, f"internal error in {resource}.{message.name}")

    @staticmethod
    def _close_fd_args(message: protocols.Message, values: list[Any]) -> None:
        """fd arguments belong to the handler; these are the ones no handler took. (Values and
        args line up: the only untyped new_id, wl_registry.bind's, comes with no fd.)"""
        for arg, value in zip(message.args, values, strict=False):
            if arg.type == "fd":
                with contextlib.suppress(OSError):
                    os.close(value)

    def _resolve(self, resource: Resource, message: protocols.Message,
                 values: list[Any]) -> tuple[list[Any], list[NewId]]:
        """Object ids -> Resources (type-checked), new ids -> NewId (checked to be free)."""
        args: list[Any] = []
        new_ids: list[NewId] = []
        it = iter(values)
        for arg in message.args:
            value = next(it)
            if arg.type == "object":
                if value is not None:
                    target = self.objects.get(value)
                    if target is None:
                        raise ResourceError(self.display, INVALID_OBJECT, f"invalid object {value} as {resource}."
                                            f"{message.name}.{arg.name}")
                    if arg.interface and target.iface.name != arg.interface:
                        raise ResourceError(self.display, INVALID_OBJECT, f"{resource}.{message.name}.{arg.name}: "
                                            f"{target} is not a {arg.interface}")
                    value = target
            elif arg.type == "new_id":
                if arg.interface is None:  # wl_registry.bind: interface, version, id
                    name, version, value = value, next(it), next(it)
                    new = NewId(value, name, version)
                else:
                    new = NewId(value, arg.interface, resource.version)
                if new.id >= SERVER_ID_START or new.id in self.objects:
                    raise ResourceError(self.display, INVALID_OBJECT, f"invalid new id {new.id} in {resource}."
                                        f"{message.name}")
                new_ids.append(new)
                value = new
            args.append(value)
        return args, new_ids

    # --- writing ----------------------------------------------------------------------------
    def send_message(self, object_id: int, opcode: int, signature: str, args: list[Any]) -> None:
        data, fds = wire.encode(object_id, opcode, signature, args)
        if self.closed:
            return
        if fds:
            self._out_fds.append((self._out_start + len(self._out), [os.dup(fd) for fd in fds]))
        self._out += data
        if len(self._out) > MAX_OUT_BYTES:
            log.warning("%s does not read its events (%d bytes queued); disconnecting", self, len(self._out))
            self.close("event queue overflow")
            return
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        while self._out and not self._sock_closed:
            limit = min(len(self._out), 1 << 18)
            fds: list[int] = []
            taken = 0
            for offset, mfds in self._out_fds:
                at = offset - self._out_start
                if at >= limit:
                    break
                if fds and len(fds) + len(mfds) > MAX_FDS_OUT:
                    limit = at  # the rest goes with the next sendmsg
                    break
                fds.extend(mfds)
                taken += 1
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                with memoryview(self._out) as view, view[:limit] as chunk:
                    sent = self.sock.sendmsg([chunk], ancillary)
            except (BlockingIOError, InterruptedError):
                if not self._writing:
                    self.loop.add_writer(self.sock.fileno(), self.flush)
                    self._writing = True
                return
            except OSError as exc:
                self.close(f"write failed: {exc}")
                self._close_socket()
                return
            # The fds went with the first byte sent (SCM_RIGHTS attaches to the whole sendmsg).
            for _ in range(taken):
                for fd in self._out_fds.popleft()[1]:
                    os.close(fd)
            del self._out[:sent]
            self._out_start += sent
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False
        if self.closed:
            self._close_socket()

    # --- errors and teardown ----------------------------------------------------------------
    def post_error(self, resource: Resource, code: int, message: str) -> None:
        """wl_display.error, then disconnect (libwayland: wl_resource_post_error).

        The objects go at once; the socket lingers (not read) up to LINGER_S so the error event
        can still be flushed to a client whose socket buffer is momentarily full.
        """
        if self.closed:
            return
        log.warning("%s: protocol error on %s (code %d): %s", self, resource, code, message)
        self.display.send("error", resource.id if resource.id in self.objects else 1, code, message)
        self.close("protocol error", linger=True)

    def close(self, reason: str = "closed", linger: bool = False) -> None:
        """Removes everything the client added; closes the socket (after flushing, if linger)."""
        if self.closed:
            return
        log.debug("%s: %s", self, reason)
        self._stop_reading()
        self.closed = True
        for resource in reversed(list(self.objects.values())):
            if resource.destroyed:
                continue
            try:
                resource.destroy()
            except Exception:
                log.exception("%s: teardown of %s failed", self, resource)
        self.objects.clear()
        self.decoder.close()
        for callback in self._destroy_listeners:
            try:
                callback(self)
            except Exception:
                log.exception("client destroy listener failed")
        self.server._client_gone(self)
        if linger and self._out and not self._sock_closed:
            self.flush()
            if not self._sock_closed:
                self.loop.call_later(LINGER_S, self._close_socket)
            return
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock_closed:
            return
        self._sock_closed = True
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False
        for _, fds in self._out_fds:
            for fd in fds:
                os.close(fd)
        self._out_fds.clear()
        self._out.clear()
        self.sock.close()


class Display(Resource):
    """wl_display (object 1 of every client)."""

    interface = "wl_display"

    def on_sync(self, new: NewId) -> None:
        Callback(self.client, new).done(self.client.server.next_serial())

    def on_get_registry(self, new: NewId) -> None:
        registry = Registry(self.client, new)
        self.client.server._registries.append(registry)
        for glob in self.client.server.globals.values():
            registry.send("global", glob.name, glob.interface, glob.version)


class Registry(Resource):
    interface = "wl_registry"

    def on_bind(self, name: int, new: NewId) -> None:
        glob = self.client.server.globals.get(name)
        if glob is None or glob.interface != new.interface:
            raise ResourceError(self, INVALID_OBJECT, f"invalid global {new.interface} ({name})")
        if not 1 <= new.version <= glob.version:
            raise ResourceError(self, INVALID_OBJECT, f"invalid version for global {new.interface} ({name}): "
                                f"have {glob.version}, wanted {new.version}")
        glob.bind(self.client, new)

    def on_destroyed(self) -> None:
        with contextlib.suppress(ValueError):
            self.client.server._registries.remove(self)


class Callback(Resource):
    interface = "wl_callback"

    def done(self, data: int) -> None:
        """wl_callback.done is a destructor event: the object is gone once it is sent."""
        self.send("done", data & 0xFFFFFFFF)
        self.destroy()


class Server:
    """The listening socket, the globals and the connected clients."""

    def __init__(self, runtime_dir: Path, prefix: str = "wayland-moonhowl", max_clients: int = MAX_CLIENTS) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.prefix = prefix
        self.max_clients = max_clients
        self.globals: dict[int, Global] = {}
        self.clients: list[Client] = []
        self.name = ""
        self._registries: list[Registry] = []
        self._next_global = 1
        self._serial = 0
        self._sock: socket.socket | None = None
        self._lock_fd = -1
        self._client_listeners: list[Callable[[Client], None]] = []
        self.loop: asyncio.AbstractEventLoop  # set by start()

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / self.name

    def next_serial(self) -> int:
        self._serial = (self._serial + 1) & 0xFFFFFFFF
        return self._serial

    # --- globals ----------------------------------------------------------------------------
    def add_global(self, interface: str, version: int, bind: Callable[[Client, NewId], Any]) -> Global:
        iface = protocols.interface(interface)
        if not 1 <= version <= iface.version:
            raise ValueError(f"{interface} version {version} is not in 1..{iface.version} of the XML")
        glob = Global(self._next_global, interface, version, bind)
        self._next_global += 1
        self.globals[glob.name] = glob
        for registry in self._registries:
            registry.send("global", glob.name, glob.interface, glob.version)
        return glob

    def remove_global(self, glob: Global) -> None:
        if self.globals.pop(glob.name, None) is not None:
            for registry in self._registries:
                registry.send("global_remove", glob.name)

    def on_client_connected(self, callback: Callable[[Client], None]) -> None:
        self._client_listeners.append(callback)

    # --- socket -----------------------------------------------------------------------------
    async def start(self) -> str:
        """Binds the first free `<prefix>-N` in runtime_dir; returns the name (WAYLAND_DISPLAY)."""
        self.loop = asyncio.get_running_loop()
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for n in range(64):
            name = f"{self.prefix}-{n}"
            path = self.runtime_dir / name
            if len(os.fsencode(path)) >= 108:
                raise OSError(errno.ENAMETOOLONG, f"socket path too long for sun_path: {path}")
            lock_fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o660)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                continue
            # The lock is ours: a socket file left there belongs to a dead server.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(str(path))
                sock.listen(128)
            except OSError:
                sock.close()
                os.close(lock_fd)
                raise
            sock.setblocking(False)
            self._sock, self._lock_fd, self.name = sock, lock_fd, name
            self.loop.add_reader(sock.fileno(), self._accept)
            log.info("wayland display %s listening", path)
            return name
        raise OSError(errno.EADDRINUSE, f"no free {self.prefix}-N socket name in {self.runtime_dir}")

    def _accept(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        if len(self.clients) >= self.max_clients:
            log.warning("refusing a wayland client: %d clients connected", len(self.clients))
            conn.close()
            return
        conn.setblocking(False)
        client = Client(self, conn)
        self.clients.append(client)
        log.debug("%s connected", client)
        for callback in self._client_listeners:
            callback(client)

    def _client_gone(self, client: Client) -> None:
        with contextlib.suppress(ValueError):
            self.clients.remove(client)

    async def stop(self) -> None:
        for client in self.clients[:]:
            client.close("server stopping")
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._lock_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.socket_path}.lock").unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1
