"""RTSP/1.0 as GameStream speaks it over TCP 48010, sans-IO.

Messages parse and serialise in both directions; :class:`RtspReader` assembles them from TCP
reads; :class:`RtspServerSession` answers moonlight-common-c's handshake (RtspConnection.c
``performRtspHandshake``): OPTIONS, DESCRIBE, SETUP audio/video/control, ANNOUNCE, PLAY, each on
its own connection which the host closes after replying.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.sdp import (
    SS_ENC_AUDIO,
    SS_ENC_VIDEO,
    StreamConfig,
    StreamOffer,
    describe_sdp,
    parse_announce_sdp,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "BadContentLengthError",
    "BadHeaderLineError",
    "BadStatusLineError",
    "BadVersionError",
    "BodyTooLargeError",
    "Headers",
    "HeadersTooLargeError",
    "NegativeContentLengthError",
    "NoRequestLineError",
    "RtspError",
    "RtspReader",
    "RtspRequest",
    "RtspResponse",
    "RtspServerSession",
    "StreamConfig",
    "StreamOffer",
    "TrailingDataError",
    "TruncatedBodyError",
    "TruncatedMessageError",
    "response",
]

RTSP_VERSION = "RTSP/1.0"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
PUBLIC_METHODS = "OPTIONS, DESCRIBE, SETUP, ANNOUNCE, PLAY"
# RtspConnection.c splits Session at ';'; Sunshine sends exactly this suffix.
SESSION_TIMEOUT_SUFFIX = ";timeout = 90"

REASONS: Mapping[int, str] = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Request Entity Too Large",
    454: "Session Not Found", 455: "Method Not Valid in This State", 500: "Internal Server Error",
    501: "Not Implemented", 505: "RTSP Version Not Supported",
}

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_LINE_RE = re.compile(r"\r?\n")


class RtspError(ProtocolError):
    """A malformed RTSP message."""


class NoRequestLineError(RtspError):
    """The message does not start with ``METHOD target RTSP/1.0``."""


class BadStatusLineError(RtspError):
    """The response does not start with ``RTSP/1.0 NNN reason``."""


class BadVersionError(RtspError):
    """The protocol version is not RTSP/1.0 (the client insists on it, RtspParser.c)."""

    status_code = 505


class BadHeaderLineError(RtspError):
    """A header line is not ``Name: value``."""


class BadContentLengthError(RtspError):
    """Content-Length is not a decimal number, or appears twice with different values."""


class NegativeContentLengthError(BadContentLengthError):
    """Content-Length is negative."""


class BodyTooLargeError(RtspError):
    """The body is larger than the reader's limit."""

    status_code = 413


class HeadersTooLargeError(RtspError):
    """The start line and headers are larger than the reader's limit."""


class TruncatedMessageError(RtspError):
    """The input ended before the blank line that closes the headers."""


class TruncatedBodyError(TruncatedMessageError):
    """The input ended before Content-Length bytes of body arrived."""


class TrailingDataError(RtspError):
    """Bytes follow a complete message where exactly one message was expected."""


class Headers:
    """Ordered RTSP headers with case-insensitive lookup; immutable; iterates (name, value) pairs."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        checked: list[tuple[str, str]] = []
        for name, value in pairs:
            if not _TOKEN_RE.fullmatch(name):
                raise ValueError(f"bad header name {name!r}")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} value holds a line break")
            checked.append((name, value))
        self._items: tuple[tuple[str, str], ...] = tuple(checked)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        return next((v for n, v in self._items if n.lower() == key), default)

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._items if n.lower() == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def replace(self, name: str, value: str) -> Headers:
        """A copy without any ``name`` header, with ``name: value`` appended."""
        key = name.lower()
        return Headers([*((n, v) for n, v in self._items if n.lower() != key), (name, value)])

    def serialise(self) -> bytes:
        # ": " is required: RtspParser.c skips exactly one byte after the ':' (content = token + 1).
        return "".join(f"{n}: {v}\r\n" for n, v in self._items).encode("latin-1")


@dataclass(frozen=True)
class RtspRequest:
    method: str
    target: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def cseq(self) -> str | None:
        return self.headers.get("CSeq")

    @classmethod
    def parse(cls, data: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES,
              max_body_bytes: int = MAX_BODY_BYTES) -> RtspRequest:
        """Exactly one complete request; raises a specific :class:`RtspError` otherwise."""
        return _parse_one(cls, data, max_header_bytes, max_body_bytes)

    @classmethod
    def _from_head(cls, start: str, headers: Headers) -> RtspRequest:
        parts = start.split()
        if not start or len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]):
            raise NoRequestLineError(f"no request line: {start[:80]!r}")
        if parts[2] != RTSP_VERSION:
            raise BadVersionError(f"unsupported version {parts[2][:20]!r}")
        return cls(parts[0], parts[1], headers)

    def __bytes__(self) -> bytes:
        start = f"{self.method} {self.target} {RTSP_VERSION}\r\n".encode("latin-1")
        return start + self.headers.serialise() + b"\r\n" + self.body


@dataclass(frozen=True)
class RtspResponse:
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def cseq(self) -> str | None:
        return self.headers.get("CSeq")

    @classmethod
    def parse(cls, data: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES,
              max_body_bytes: int = MAX_BODY_BYTES) -> RtspResponse:
        """Exactly one complete response; without Content-Length the body is the rest of ``data``
        (the client reads until the host closes, RtspConnection.c transactRtspMessageTcp)."""
        return _parse_one(cls, data, max_header_bytes, max_body_bytes)

    @classmethod
    def _from_head(cls, start: str, headers: Headers) -> RtspResponse:
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("RTSP/"):
            raise BadStatusLineError(f"no status line: {start[:80]!r}")
        if version != RTSP_VERSION:
            raise BadVersionError(f"unsupported version {version[:20]!r}")
        if not re.fullmatch(r"[0-9]{3}", code):
            raise BadStatusLineError(f"bad status code {code[:20]!r}")
        return cls(int(code), reason.strip(), headers)

    def __bytes__(self) -> bytes:
        start = f"{RTSP_VERSION} {self.status} {self.reason}\r\n".encode("latin-1")
        return start + self.headers.serialise() + b"\r\n" + self.body


M = TypeVar("M", RtspRequest, RtspResponse)


def _split_head(head: bytes) -> tuple[str, Headers]:
    lines = _LINE_RE.split(head.decode("latin-1"))
    pairs: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # Folded continuation lines are not produced by any GameStream client: reject them.
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise BadHeaderLineError(f"bad header line {line[:80]!r}")
        pairs.append((name, value.strip(" \t")))
    return lines[0], Headers(pairs)


def _content_length(headers: Headers, max_body_bytes: int) -> int | None:
    # ANNOUNCE carries "Content-length" (RtspConnection.c sendVideoAnnounce): lookup ignores case.
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise BadContentLengthError(f"conflicting Content-Length values {sorted(values)}")
    value = values.pop()
    if re.fullmatch(r"-[0-9]+", value):
        raise NegativeContentLengthError(f"negative Content-Length {value}")
    if not re.fullmatch(r"[0-9]+", value):
        raise BadContentLengthError(f"Content-Length is not a number: {value[:20]!r}")
    length = int(value)
    if length > max_body_bytes:
        raise BodyTooLargeError(f"Content-Length {length} exceeds {max_body_bytes}")
    return length


class RtspReader(Generic[M]):
    """Incremental parser: feed TCP reads, get complete messages.

    ``RtspReader(RtspRequest)`` or ``RtspReader(RtspResponse)``. A request without Content-Length has
    no body; a response without one runs to EOF (:meth:`feed_eof`). After an error the stream is
    unusable: answer (if a server) and close.
    """

    def __init__(self, kind: type[M], *, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._kind: type[M] = kind
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._buf = bytearray()
        self._scanned = 0
        self._head: tuple[M, int | None] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[M]:
        self._buf += data
        out: list[M] = []
        while (message := self._next()) is not None:
            out.append(message)
        return out

    def feed_eof(self) -> list[M]:
        """The peer closed: completes a to-EOF response body, else raises if a message was cut."""
        if self._head is not None:
            message, length = self._head
            if length is None:
                self._head = None
                body, self._buf = bytes(self._buf), bytearray()
                return [_with_body(message, body)]
            raise TruncatedBodyError(f"body ended after {len(self._buf)} of {length} bytes")
        if self._buf:
            raise TruncatedMessageError(f"input ended inside the headers ({len(self._buf)} bytes)")
        return []

    def _next(self) -> M | None:
        if self._head is None:
            match = _HEADER_END_RE.search(self._buf, max(0, self._scanned - 3))
            if match is None:
                self._scanned = len(self._buf)
                if len(self._buf) > self._max_header:
                    raise HeadersTooLargeError(f"no end of headers within {self._max_header} bytes")
                return None
            if match.start() > self._max_header:
                raise HeadersTooLargeError(f"headers exceed {self._max_header} bytes")
            start, headers = _split_head(bytes(self._buf[: match.start()]))
            message = self._kind._from_head(start, headers)
            length = _content_length(headers, self._max_body)
            if length is None and self._kind is RtspRequest:
                length = 0
            del self._buf[: match.end()]
            self._scanned = 0
            self._head = (message, length)
        message, length = self._head
        if length is None:
            if len(self._buf) > self._max_body:
                raise BodyTooLargeError(f"body exceeds {self._max_body} bytes")
            return None
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        self._head = None
        return _with_body(message, body)


def _with_body(message: M, body: bytes) -> M:
    if isinstance(message, RtspRequest):
        return RtspRequest(message.method, message.target, message.headers, body)
    return RtspResponse(message.status, message.reason, message.headers, body)


def _parse_one(kind: type[M], data: bytes, max_header: int, max_body: int) -> M:
    if not data.strip():
        if kind is RtspRequest:
            raise NoRequestLineError("empty input")
        raise BadStatusLineError("empty input")
    reader = RtspReader(kind, max_header_bytes=max_header, max_body_bytes=max_body)
    messages = reader.feed(data)
    if not messages:
        messages = reader.feed_eof()
    if len(messages) != 1 or reader.buffered:
        raise TrailingDataError("more than one message in the input")
    return messages[0]


def response(status: int, cseq: str | None, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
             reason: str | None = None) -> RtspResponse:
    """A response echoing ``cseq`` first (as Sunshine does), with Content-Length when there is a body."""
    items = [("CSeq", cseq)] if cseq is not None else []
    items.extend(headers)
    if body:
        items.append(("Content-Length", str(len(body))))
    return RtspResponse(status, reason or REASONS.get(status, "Unknown"), Headers(items), body)


def _stream_type(target: str) -> str | None:
    # Sunshine cmd_setup: the text between "streamid=" and the next '/'.
    _, found, rest = target.partition("streamid=")
    return rest.split("/", 1)[0] if found else None


class RtspServerSession:
    """Answers one launch's RTSP handshake; one request in, one response out.

    State only gates what would be meaningless (ANNOUNCE before any SETUP, PLAY before ANNOUNCE,
    a second ANNOUNCE once playing: 455) and never changes on an error reply, so a stray or
    broken request cannot spoil a handshake in progress. Requests naming another launch's
    Session get 454.
    """

    def __init__(self, offer: StreamOffer) -> None:
        self.offer = offer
        self._setup: set[str] = set()
        self._config: StreamConfig | None = None
        self._playing = False

    @property
    def setup_streams(self) -> frozenset[str]:
        return frozenset(self._setup)

    @property
    def config(self) -> StreamConfig | None:
        """The client's stream parameters, once ANNOUNCE succeeded."""
        return self._config

    @property
    def playing(self) -> bool:
        return self._playing

    def handle_bytes(self, data: bytes) -> bytes:
        """Parse one complete request and serialise the reply; malformed input gets an error reply."""
        try:
            request = RtspRequest.parse(data)
        except ProtocolError as exc:
            found = re.search(rb"(?im)^cseq:[ \t]*([0-9]{1,10})[ \t]*\r?$", data)
            return bytes(self.error_response(exc, found.group(1).decode() if found else None))
        return bytes(self.handle(request))

    @staticmethod
    def error_response(exc: ProtocolError, cseq: str | None = None) -> RtspResponse:
        return response(exc.status_code, cseq)

    def handle(self, request: RtspRequest) -> RtspResponse:
        cseq = request.cseq
        session = request.headers.get("Session")
        if session is not None and session.split(";", 1)[0].strip() != self.offer.session_id:
            return response(454, cseq)
        handler = {
            "OPTIONS": self._options, "DESCRIBE": self._describe, "SETUP": self._setup_stream,
            "ANNOUNCE": self._announce, "PLAY": self._play,
        }.get(request.method)
        if handler is None:
            return response(501, cseq, [("Public", PUBLIC_METHODS)])
        return handler(request, cseq)

    def _options(self, request: RtspRequest, cseq: str | None) -> RtspResponse:
        return response(200, cseq, [("Public", PUBLIC_METHODS)])

    def _describe(self, request: RtspRequest, cseq: str | None) -> RtspResponse:
        body = describe_sdp(self.offer).encode("ascii")
        return response(200, cseq, [("Content-Type", "application/sdp")], body)

    def _setup_stream(self, request: RtspRequest, cseq: str | None) -> RtspResponse:
        kind = _stream_type(request.target)
        offer = self.offer
        extra: tuple[str, str]
        if kind == "audio":
            port, extra = offer.audio_port, ("X-SS-Ping-Payload", offer.audio_ping_payload)
        elif kind == "video":
            port, extra = offer.video_port, ("X-SS-Ping-Payload", offer.video_ping_payload)
        elif kind == "control":
            port, extra = offer.control_port, ("X-SS-Connect-Data", str(offer.control_connect_data))
        else:
            return response(404, cseq)
        self._setup.add(kind)
        # Header names are matched case-sensitively by the client (getOptionContent uses strcmp).
        return response(200, cseq, [
            ("Session", offer.session_id + SESSION_TIMEOUT_SUFFIX),
            ("Transport", f"server_port={port}"),
            extra,
        ])

    def _announce(self, request: RtspRequest, cseq: str | None) -> RtspResponse:
        if not self._setup or self._playing:
            return response(455, cseq)
        try:
            config = parse_announce_sdp(request.body, host_header=request.headers.get("Host"))
        except ProtocolError as exc:
            return response(exc.status_code, cseq)
        offer = self.offer
        if config.codec not in offer.codecs or config.audio_channels not in offer.audio_channels:
            return response(400, cseq)
        if config.audio_high_quality and config.audio_channels > 2 and not offer.surround_high_quality:
            return response(400, cseq)
        # Sunshine rejects clients that cannot honour mandatory A/V encryption; a real client
        # enables every bit the host requests (SdpGenerator.c), so only broken ones get here.
        mandatory = offer.encryption_requested & (SS_ENC_VIDEO | SS_ENC_AUDIO)
        if config.encryption_flags & mandatory != mandatory:
            return response(403, cseq)
        self._config = config
        return response(200, cseq)

    def _play(self, request: RtspRequest, cseq: str | None) -> RtspResponse:
        if self._config is None:
            return response(455, cseq)
        self._playing = True
        return response(200, cseq)
