"""The Wayland wire format, sans-IO: messages to bytes + fds and back.

A message is a header of two host-endian 32-bit words, the object id and (size << 16 | opcode),
followed by its arguments, each padded to 4 bytes (libwayland src/connection.c,
wl_connection_demarshal / wl_closure_marshal):

  i int32, u uint32, f fixed 24.8 (int32 / 256), o object id (0 = null), n new id,
  s uint32 length including the NUL, then the bytes, NUL, padding (length 0 = null string),
  a uint32 byte length, then the bytes, padding,
  h fd: no bytes at all; the fd travels out of band in SCM_RIGHTS, in message order.

Signatures use libwayland's letters with "?" before a nullable argument (see protocols.Message).
Every malformed input raises a WireError subclass (a moonhowl ProtocolError) naming what broke.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from moonhowl.protocol.errors import ProtocolError

HEADER = struct.Struct("=II")
HEADER_SIZE = HEADER.size
# libwayland refuses messages larger than its 4096-byte connection buffer (WL_MAX_MESSAGE_SIZE).
MAX_MESSAGE_SIZE = 4096

_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_i32_unpack = _I32.unpack_from
_u32_unpack = _U32.unpack_from
_i32_pack = _I32.pack
_u32_pack = _U32.pack

ArgSpec = tuple[tuple[str, bool], ...]


class WireError(ProtocolError):
    """A message that cannot be decoded; the connection it came from is beyond repair."""


class MalformedHeader(WireError):
    """The size field is below the header size or not a multiple of 4."""


class OversizedMessage(WireError):
    """A message larger than MAX_MESSAGE_SIZE."""


class TruncatedMessage(WireError):
    """The arguments run past the end of the message (or the stream ended mid-message)."""


class TrailingData(WireError):
    """Bytes left in a message after its last argument."""


class BadString(WireError):
    """A string without its terminating NUL, or null where the protocol forbids it."""


class NullArgument(WireError):
    """A null object or new_id where the protocol does not allow null."""


class MissingFd(WireError):
    """A message needs an fd that did not arrive with it."""


class RawMessage(NamedTuple):
    object_id: int
    opcode: int
    body: bytes


@lru_cache(maxsize=1024)
def compile_signature(signature: str) -> ArgSpec:
    """"?s" style signature -> ((code, nullable), ...); version digits (libwayland) are skipped."""
    spec = []
    nullable = False
    for ch in signature:
        if ch == "?":
            nullable = True
        elif ch in "iufsonah":
            spec.append((ch, nullable))
            nullable = False
        elif not ch.isdigit():
            raise ValueError(f"bad signature letter {ch!r} in {signature!r}")
    return tuple(spec)


def _pad(n: int) -> int:
    return (n + 3) & ~3


def encode(object_id: int, opcode: int, signature: str, args: Sequence[Any]) -> tuple[bytes, list[int]]:
    """One message as bytes, plus the fds (in order) that must travel with it.

    Programming errors (wrong argument count, out-of-range numbers, a non-nullable None) raise
    ValueError; a result above MAX_MESSAGE_SIZE raises OversizedMessage.
    """
    spec = compile_signature(signature)
    if len(args) != len(spec):
        raise ValueError(f"signature {signature!r} takes {len(spec)} arguments, got {len(args)}")
    out = bytearray(HEADER_SIZE)
    fds: list[int] = []
    try:
        for (code, nullable), value in zip(spec, args, strict=True):
            if code == "i":
                out += _i32_pack(value)
            elif code == "u":
                out += _u32_pack(value)
            elif code == "f":
                out += _i32_pack(round(value * 256))
            elif code in "on":
                if value is None or value == 0:
                    if not nullable:
                        raise ValueError(f"null {code!r} argument where {signature!r} does not allow it")
                    value = 0
                out += _u32_pack(value)
            elif code == "s":
                if value is None:
                    if not nullable:
                        raise ValueError(f"null string where {signature!r} does not allow it")
                    out += _u32_pack(0)
                    continue
                data = value.encode() + b"\0"
                out += _u32_pack(len(data))
                out += data
                out += b"\0" * (_pad(len(data)) - len(data))
            elif code == "a":
                data = bytes(value)
                out += _u32_pack(len(data))
                out += data
                out += b"\0" * (_pad(len(data)) - len(data))
            else:  # "h"
                if not isinstance(value, int) or value < 0:
                    raise ValueError(f"fd argument must be a non-negative int, got {value!r}")
                fds.append(value)
    except struct.error as exc:
        raise ValueError(f"argument out of range for {signature!r}: {exc}") from None
    size = len(out)
    if size > MAX_MESSAGE_SIZE:
        raise OversizedMessage(f"message of {size} bytes exceeds {MAX_MESSAGE_SIZE}")
    HEADER.pack_into(out, 0, object_id, (size << 16) | (opcode & 0xFFFF))
    return bytes(out), fds


def decode_args(signature: str, body: bytes, fds: deque[int]) -> list[Any]:
    """The arguments of one message body; fd arguments are taken from the left of `fds`.

    Returns ints for i/u/o/n (object 0 -> None when nullable), float for f, str | None for s,
    bytes for a, and the received fd (now owned by the caller) for h. On error, fds this call
    took are closed and the WireError propagates.
    """
    spec = compile_signature(signature)
    values: list[Any] = []
    taken: list[int] = []
    pos = 0
    end = len(body)
    try:
        for code, nullable in spec:
            if code == "h":
                if not fds:
                    raise MissingFd(f"argument {len(values)} is an fd but none was received")
                fd = fds.popleft()
                taken.append(fd)
                values.append(fd)
                continue
            if pos + 4 > end:
                raise TruncatedMessage(f"argument {len(values)} ({code}) starts past the end of a "
                                       f"{end}-byte body")
            if code == "i":
                values.append(_i32_unpack(body, pos)[0])
                pos += 4
            elif code == "u":
                values.append(_u32_unpack(body, pos)[0])
                pos += 4
            elif code == "f":
                values.append(_i32_unpack(body, pos)[0] / 256.0)
                pos += 4
            elif code in "on":
                value = _u32_unpack(body, pos)[0]
                pos += 4
                if value == 0:
                    if not nullable or code == "n":
                        raise NullArgument(f"argument {len(values)} ({code}) is null")
                    values.append(None)
                else:
                    values.append(value)
            else:  # "s" or "a"
                length = _u32_unpack(body, pos)[0]
                pos += 4
                if length == 0 and code == "s":
                    if not nullable:
                        raise BadString(f"argument {len(values)} is a null string")
                    values.append(None)
                    continue
                padded = _pad(length)
                if padded > end - pos:
                    raise TruncatedMessage(f"argument {len(values)} ({code}) of {length} bytes runs past "
                                           f"the end of a {end}-byte body")
                data = body[pos:pos + length]
                pos += padded
                if code == "a":
                    values.append(data)
                    continue
                if data[-1] != 0:
                    raise BadString(f"argument {len(values)}: string is not NUL-terminated")
                # libwayland does not validate UTF-8 either; a bad title must not kill a client.
                values.append(data[:-1].decode("utf-8", "replace"))
        if pos != end:
            raise TrailingData(f"{end - pos} bytes after the last argument")
    except WireError:
        for fd in taken:
            _close(fd)
        raise
    return values


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class Decoder:
    """Incremental decoder of one connection's byte stream and the fds that came with it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.fds: deque[int] = deque()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes, fds: Iterable[int] = ()) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data
        self.fds.extend(fds)

    def next_message(self) -> RawMessage | None:
        """The next complete message, or None until more bytes arrive."""
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return None
        object_id, word = HEADER.unpack_from(self._buf, self._pos)
        size = word >> 16
        if size < HEADER_SIZE or size & 3:
            raise MalformedHeader(f"message size {size} for object {object_id} (must be >= 8, multiple of 4)")
        if size > MAX_MESSAGE_SIZE:
            raise OversizedMessage(f"message of {size} bytes for object {object_id} exceeds {MAX_MESSAGE_SIZE}")
        if avail < size:
            return None
        start = self._pos + HEADER_SIZE
        self._pos += size
        return RawMessage(object_id, word & 0xFFFF, bytes(self._buf[start:self._pos]))

    def __iter__(self) -> Iterator[RawMessage]:
        while (message := self.next_message()) is not None:
            yield message

    def decode(self, signature: str, body: bytes) -> list[Any]:
        """The arguments of a message returned by next_message, taking fds from this stream."""
        return decode_args(signature, body, self.fds)

    def check_eof(self) -> None:
        """At the end of the stream: a partial message left over is a TruncatedMessage."""
        if self.buffered:
            raise TruncatedMessage(f"stream ended inside a message ({self.buffered} bytes left)")

    def close(self) -> None:
        """Closes fds that were received but never claimed by a message."""
        while self.fds:
            _close(self.fds.popleft())
        self._buf.clear()
        self._pos = 0
