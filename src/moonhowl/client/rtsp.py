"""Client side of the RTSP handshake, modelled on moonlight-common-c RtspConnection.c.

:class:`RtspClientHandshake` is the sans-IO sequence (request out, response in);
:func:`rtsp_handshake` drives it over asyncio with one TCP connection per request, reading each
reply until the host closes, as ``transactRtspMessageTcp`` does. Deliberately stricter than the
real client (which silently falls back to default ports or zero ping payloads) so host bugs show.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.rtsp import Headers, RtspReader, RtspRequest, RtspResponse
from moonhowl.protocol.sdp import (
    HIGH_AUDIO_BITRATE_THRESHOLD,
    SS_ENC_AUDIO,
    SS_ENC_CONTROL_V2,
    SS_ENC_VIDEO,
    Codec,
    DescribeInfo,
    StreamConfig,
    announce_sdp,
    c_strtoul,
    parse_announce_sdp,
    parse_describe_sdp,
)

# RtspConnection.c: RTSP_CONNECT_TIMEOUT_SEC, RTSP_RECEIVE_TIMEOUT_SEC, RTSP_RETRY_DELAY_MS.
CONNECT_TIMEOUT_S = 10.0
RECEIVE_TIMEOUT_S = 15.0
RETRY_DELAY_S = 0.5
IF_MODIFIED_SINCE = "Thu, 01 Jan 1970 00:00:00 GMT"
# appversion 7.1.431+ targets (controlStreamId, one PLAY on "/").
AUDIO_STREAM = "streamid=audio/0/0"
VIDEO_STREAM = "streamid=video/0/0"
CONTROL_STREAM = "streamid=control/13/0"


class RtspHandshakeError(ProtocolError):
    """A handshake step failed: transport error, non-200 status or a reply missing something."""

    def __init__(self, step: str, message: str, status: int | None = None) -> None:
        super().__init__(f"RTSP {step}: {message}")
        self.step = step
        self.status = status


@dataclass(frozen=True)
class HandshakeResult:
    session_id: str
    audio_port: int
    video_port: int
    control_port: int
    audio_ping_payload: str
    video_ping_payload: str
    control_connect_data: int
    describe: DescribeInfo
    config: StreamConfig  # the ANNOUNCE as the host parses it (negotiated codec and encryption)
    announce_sdp: str

    @property
    def codecs(self) -> frozenset[Codec]:
        """Codecs the host offered in DESCRIBE (H.264 always)."""
        return self.describe.codecs


def url_address(host: str) -> str:
    """The host as it appears in an rtsp:// URL (addrToUrlSafeString brackets IPv6)."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _option(response: RtspResponse, name: str) -> str | None:
    # getOptionContent() compares names with strcmp, and insertOption() lets a later duplicate
    # overwrite the earlier content: exact case, last value.
    values = [v for n, v in response.headers if n == name]
    return values[-1] if values else None


def _server_port(step: str, response: RtspResponse) -> int:
    transport = _option(response, "Transport") or ""
    _, found, rest = transport.partition("server_port=")
    port = c_strtoul(rest) if found else 0  # parseServerPortFromTransport(): strtol after the key
    if not 0 < port <= 65535:
        raise RtspHandshakeError(step, f"no usable server_port in Transport {transport!r}")
    return port


def _ping_payload(step: str, response: RtspResponse) -> str:
    payload = _option(response, "X-SS-Ping-Payload")
    if payload is None or len(payload) != 16:  # the client only copies exactly 16 characters
        raise RtspHandshakeError(step, f"bad X-SS-Ping-Payload {payload!r}")
    return payload


class RtspClientHandshake:
    """The seven requests of a modern (7.1.431+) handshake, one at a time.

    ``config`` plays the client's STREAM_CONFIGURATION: ``codec`` is the preferred codec (H.264 is
    always possible; pass ``codecs`` to allow several), ``encrypt_video``/``encrypt_audio`` are the
    client's opt-ins, ``configured_bitrate_kbps`` (or ``bitrate_kbps``) the user's bitrate.
    """

    STEPS = ("OPTIONS", "DESCRIBE", "SETUP audio", "SETUP video", "SETUP control", "ANNOUNCE", "PLAY")

    def __init__(self, host: str, port: int, config: StreamConfig, client_version: str = "14", *,
                 codecs: Iterable[Codec] | None = None, remote: bool = False) -> None:
        self.config = config
        self.client_version = client_version
        self.remote = remote
        self.codecs = frozenset(codecs) if codecs is not None else frozenset({config.codec})
        bitrate = config.configured_bitrate_kbps or config.bitrate_kbps
        # performRtspHandshake(): the real address only when high quality audio is wanted,
        # otherwise 0.0.0.0 (the host reads stereo quality from the Host header).
        if bitrate >= HIGH_AUDIO_BITRATE_THRESHOLD and (not remote or config.audio_channels <= 2):
            self.url_addr = url_address(host)
        else:
            self.url_addr = "0.0.0.0"
        self.target_url = f"rtsp://{self.url_addr}:{port}"
        self._ipv6 = self.url_addr.startswith("[")
        self._cseq = 1
        self._step = 0
        self._session_id: str | None = None
        self._ports: dict[str, int] = {}
        self._pings: dict[str, str] = {}
        self._connect_data = 0
        self._describe: DescribeInfo | None = None
        self._announce: tuple[str, StreamConfig] | None = None

    @property
    def done(self) -> bool:
        return self._step == len(self.STEPS)

    @property
    def step(self) -> str:
        return self.STEPS[self._step] if not self.done else "done"

    def _request(self, method: str, target: str, extra: Iterable[tuple[str, str]] = (),
                 body: bytes = b"") -> RtspRequest:
        # initializeRtspRequest(): CSeq, X-GS-ClientVersion, Host (no port), then per-method options.
        headers = [("CSeq", str(self._cseq)), ("X-GS-ClientVersion", self.client_version),
                   ("Host", self.url_addr), *extra]
        return RtspRequest(method, target, Headers(headers), body)

    def next_request(self) -> RtspRequest | None:
        """The request for the current step, or None when the handshake is complete."""
        step = self.step
        if step == "OPTIONS":
            return self._request("OPTIONS", self.target_url)
        if step == "DESCRIBE":
            return self._request("DESCRIBE", self.target_url, [
                ("Accept", "application/sdp"), ("If-Modified-Since", IF_MODIFIED_SINCE)])
        if step.startswith("SETUP"):
            target = {"SETUP audio": AUDIO_STREAM, "SETUP video": VIDEO_STREAM,
                      "SETUP control": CONTROL_STREAM}[step]
            session = [("Session", self._session_id)] if self._session_id is not None else []
            return self._request("SETUP", target, [
                *session, ("Transport", "unicast;X-GS-ClientPort=50000-50001"),
                ("If-Modified-Since", IF_MODIFIED_SINCE)])
        assert self._session_id is not None
        if step == "ANNOUNCE":
            sdp = self._announce_body().encode("ascii")
            return self._request("ANNOUNCE", CONTROL_STREAM, [
                ("Session", self._session_id), ("Content-type", "application/sdp"),
                ("Content-length", str(len(sdp)))], sdp)
        if step == "PLAY":
            return self._request("PLAY", "/", [("Session", self._session_id)])
        return None

    def _announce_body(self) -> str:
        describe = self._describe
        assert describe is not None
        cfg = self.config
        # Codec choice as in performRtspHandshake(): AV1, then HEVC, then H.264.
        codec: Codec = "h264"
        if "av1" in self.codecs and describe.av1:
            codec = "av1"
        elif "hevc" in self.codecs and describe.hevc:
            codec = "hevc"
        # getAttributesList(): control v2 whenever supported; A/V when wanted and supported, or
        # when the host requests it.
        sup, req = describe.encryption_supported, describe.encryption_requested
        enabled = sup & SS_ENC_CONTROL_V2
        for bit, wanted in ((SS_ENC_VIDEO, cfg.encrypt_video), (SS_ENC_AUDIO, cfg.encrypt_audio)):
            if (sup & bit and wanted) or (req & bit and not wanted):
                enabled |= bit
        normal, high = describe.opus_layouts(cfg.audio_channels)
        if normal is None:
            raise RtspHandshakeError("DESCRIBE", f"no surround-params for {cfg.audio_channels} channels")
        bitrate = cfg.configured_bitrate_kbps or cfg.bitrate_kbps
        hq = cfg.audio_channels > 2 and bitrate >= HIGH_AUDIO_BITRATE_THRESHOLD and high is not None
        announced = replace(cfg, codec=codec, hdr=cfg.hdr and codec != "h264", audio_high_quality=hq)
        sdp = announce_sdp(announced, url_addr=self.url_addr, video_port=self._ports["video"],
                           client_version=self.client_version, remote=self.remote, ipv6=self._ipv6,
                           encryption_enabled=enabled)
        self._announce = (sdp, parse_announce_sdp(sdp, host_header=self.url_addr))
        return sdp

    def receive(self, response: RtspResponse) -> None:
        """Take the reply to :meth:`next_request`; raises :class:`RtspHandshakeError` on failure."""
        step = self.step
        if self.done:
            raise RtspHandshakeError(step, "handshake already complete")
        if response.status != 200:
            raise RtspHandshakeError(step, f"status {response.status} {response.reason}", response.status)
        if step == "DESCRIBE":
            if not response.body:
                raise RtspHandshakeError(step, "no content in response")
            self._describe = parse_describe_sdp(response.body)
        elif step == "SETUP audio":
            self._ports["audio"] = _server_port(step, response)
            self._pings["audio"] = _ping_payload(step, response)
            session = _option(response, "Session")
            if not session or not session.split(";", 1)[0]:
                raise RtspHandshakeError(step, "missing Session")
            self._session_id = session.split(";", 1)[0]  # strtok(sessionId, ";")
        elif step == "SETUP video":
            self._ports["video"] = _server_port(step, response)
            self._pings["video"] = _ping_payload(step, response)
        elif step == "SETUP control":
            self._ports["control"] = _server_port(step, response)
            data = _option(response, "X-SS-Connect-Data")
            if data is None:
                raise RtspHandshakeError(step, "missing X-SS-Connect-Data")
            self._connect_data = c_strtoul(data) & 0xFFFFFFFF
        self._cseq += 1
        self._step += 1

    def result(self) -> HandshakeResult:
        if not self.done or self._describe is None or self._announce is None or self._session_id is None:
            raise RtspHandshakeError(self.step, "handshake not complete")
        return HandshakeResult(
            session_id=self._session_id, audio_port=self._ports["audio"], video_port=self._ports["video"],
            control_port=self._ports["control"], audio_ping_payload=self._pings["audio"],
            video_ping_payload=self._pings["video"], control_connect_data=self._connect_data,
            describe=self._describe, config=self._announce[1], announce_sdp=self._announce[0])


async def _connect(host: str, port: int, step: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT_S
    while True:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        except ConnectionRefusedError as exc:
            # transactRtspMessageTcp() retries refusals for 10 s: hosts may answer /launch
            # before the RTSP port listens.
            if loop.time() + RETRY_DELAY_S > deadline:
                raise RtspHandshakeError(step, f"connection refused by {host}:{port}") from exc
            await asyncio.sleep(RETRY_DELAY_S)
        except (OSError, TimeoutError) as exc:
            raise RtspHandshakeError(step, f"cannot connect to {host}:{port}: {exc!r}") from exc


async def transact(host: str, port: int, request: RtspRequest, step: str = "RTSP") -> RtspResponse:
    """Send one request on a fresh connection and read the reply until the host closes."""
    reader, writer = await _connect(host, port, step)
    parser = RtspReader(RtspResponse)
    messages: list[RtspResponse] = []
    try:
        writer.write(bytes(request))
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(16384), RECEIVE_TIMEOUT_S):
            messages += parser.feed(chunk)
        messages += parser.feed_eof()
    except TimeoutError as exc:
        raise RtspHandshakeError(step, "request timed out") from exc
    except OSError as exc:
        raise RtspHandshakeError(step, f"socket error {exc!r}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if len(messages) != 1:
        raise RtspHandshakeError(step, f"expected one response, got {len(messages)}")
    return messages[0]


async def rtsp_handshake(host: str, port: int, config: StreamConfig, client_version: str = "14", *,
                         codecs: Iterable[Codec] | None = None, remote: bool = False) -> HandshakeResult:
    """OPTIONS, DESCRIBE, SETUP audio/video/control, ANNOUNCE, PLAY against ``host:port``."""
    handshake = RtspClientHandshake(host, port, config, client_version, codecs=codecs, remote=remote)
    while (request := handshake.next_request()) is not None:
        step = handshake.step
        try:
            reply = await transact(host, port, request, step)
        except RtspHandshakeError:
            raise
        except ProtocolError as exc:
            raise RtspHandshakeError(step, f"malformed response: {exc}") from exc
        handshake.receive(reply)
    return handshake.result()
