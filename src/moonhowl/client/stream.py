"""One stream of moonhowl's own Moonlight client: launch, RTSP, control, video and audio.

It runs in moonlight-common-c's order (``Connection.c`` ``LiStartConnection``): ``/launch`` (or
``/resume``) over HTTPS, the RTSP handshake on the port from ``sessionUrl0``, then the control
stream (ENet connect with ``X-SS-Connect-Data``, "start A" = 0x0302 and "start B" = 0x0307 on the
generic channel, ``ControlStream.c`` ``startControlStream``), then video and audio: one UDP socket
each that pings the host every 500 ms with ``X-SS-Ping-Payload`` + a BE32 counter (``SS_PING``,
``VideoStream.c``/``AudioStream.c``) so the host learns where to send.

While running, every 100 ms the control stream carries the per-FEC-block status messages
(0x5502, unsequenced, Sunshine-like hosts only) and a reliable periodic ping (0x0200), as
``lossStatsThreadFunc`` does; a lost frame triggers an IDR request (0x0302 on the urgent channel).
Video datagrams go (after optional on-purpose loss, to exercise FEC) through the sans-IO
:class:`~moonhowl.protocol.video.Depacketizer` into an optional decoder; audio is only counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import secrets
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moonhowl.client.gamestream import GameStreamClient, GameStreamError
from moonhowl.client.rtsp import HandshakeResult, rtsp_handshake
from moonhowl.net import enet as net_enet
from moonhowl.protocol import control
from moonhowl.protocol.enet import Disconnected, EnetPeer, Event, Received
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.sdp import SS_ENC_CONTROL_V2, Codec, StreamConfig, c_strtoul
from moonhowl.protocol.video import Depacketizer, Frame

if TYPE_CHECKING:
    from moonhowl.client.audio import AudioReceiver

logger = logging.getLogger(__name__)

__all__ = ["Decoder", "FecStatusTracker", "IdrPolicy", "StreamError", "StreamSession", "StreamStats",
           "decrypt_video_packet", "new_rikey", "percentile", "ping_packet", "rtsp_port_from_url"]

DEFAULT_RTSP_PORT = 48010  # Connection.c: used when sessionUrl0 has no usable port
UDP_PING_INTERVAL_S = 0.5  # VideoPingThreadProc / AudioPingThreadProc sleep 500 ms
CONTROL_PING_INTERVAL_S = 0.1  # ControlStream.c PERIODIC_PING_INTERVAL_MS
CONTROL_TIMEOUT_S = 10.0  # CONTROL_STREAM_TIMEOUT_SEC; also enet_peer_timeout(peer, 2, 10000, 10000)
CONTROL_LINGER_S = 2.0  # CONTROL_STREAM_LINGER_TIMEOUT_SEC: graceful ENet disconnect wait
STALL_TIMEOUT_S = 10.0  # VideoStream.c FIRST_FRAME_TIMEOUT_SEC
MAX_FEC_STATUS_PER_PING = 8  # frameFecStatusQueue's bound: at most 8 reports per ping interval
RTP_RECV_PACKETS_BUFFERED = 2048  # VideoStream.c: socket buffer for this many packets
IDR_MIN_INTERVAL_S = 0.1
IDR_RETRY_S = 1.0
MAX_LATENCY_SAMPLES = 100_000
START_A_PAYLOAD = control.IDR_REQUEST_PAYLOAD  # packetTypesGen7Enc: start A *is* the IDR request
_ENC_VIDEO_HEADER = struct.Struct("<12sI16s")  # ENC_VIDEO_HEADER: iv, frameNumber, tag
_VIDEO_FIELDS = struct.Struct("<I")


class StreamError(Exception):
    """The stream could not start, or ended with an error."""


class Decoder(Protocol):
    """What :class:`StreamSession` needs from ``moonhowl.client.decoder.VideoDecoder``."""

    @property
    def frames_decoded(self) -> int: ...
    @property
    def errors(self) -> int: ...
    def decode(self, access_unit: bytes, pts_ns: int | None = None) -> Any: ...
    def flush(self, timeout: float) -> Any: ...
    def close(self) -> None: ...


DecoderFactory = Callable[[Codec], Decoder]


# ---------------------------------------------------------------------------------------------- pure parts
def rtsp_port_from_url(url: str) -> int:
    """The RTSP port as moonlight-common-c's ``parseRtspPortNumberFromUrl`` reads it from
    ``sessionUrl0``: strtol after the *last* ':' (so IPv6 hosts work), 48010 when unusable."""
    if url.lower().startswith("rtspenc://"):
        # Sunshine answers corever>=1 clients with encrypted RTSP; this client only speaks plain RTSP.
        raise StreamError(f"the host wants encrypted RTSP ({url}), which moonhowl's client does not speak")
    match = re.match(r"[ \t\n]*([+-]?[0-9]+)", url[url.rfind(":") + 1:]) if ":" in url else None
    port = int(match.group(1)) if match else 0
    if not 0 < port <= 65535:
        logger.warning("no usable port in sessionUrl0 %r: using %d", url, DEFAULT_RTSP_PORT)
        return DEFAULT_RTSP_PORT
    return port


def ping_packet(payload: str, count: int) -> bytes:
    """``SS_PING``: the 16-byte ping payload from RTSP SETUP, then the BE32 ping count (from 1)."""
    raw = payload.encode("ascii")
    if len(raw) != 16:
        raise ValueError("the ping payload is 16 characters")
    return raw + struct.pack(">I", count & 0xFFFFFFFF)


def new_rikey() -> tuple[bytes, int]:
    """A fresh AES key and key id: moonlight-qt randomises the key and the first 4 bytes of the IV,
    whose big-endian value, as a signed int, is ``rikeyid``."""
    return secrets.token_bytes(16), int.from_bytes(secrets.token_bytes(4), "big", signed=True)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def decrypt_video_packet(aead: AESGCM, datagram: bytes) -> bytes | None:
    """Undo SS_ENC_VIDEO: ``{iv 12, LE32 frame, tag 16}`` + AES-GCM(rikey) of the whole RTP packet
    (VideoStream.c ``VideoReceiveThreadProc``); None when it is too short or does not verify."""
    if len(datagram) <= _ENC_VIDEO_HEADER.size:
        return None
    iv, _frame, tag = _ENC_VIDEO_HEADER.unpack_from(datagram)
    try:
        return aead.decrypt(iv, datagram[_ENC_VIDEO_HEADER.size:] + tag, None)
    except InvalidTag:
        return None


class IdrPolicy:
    """When to ask for an IDR frame: once per new loss, at most every ``min_interval`` seconds, and
    again every ``retry`` seconds while still waiting (the requested IDR frame may be lost too)."""

    def __init__(self, min_interval: float = IDR_MIN_INTERVAL_S, retry: float = IDR_RETRY_S) -> None:
        self.min_interval = min_interval
        self.retry = retry
        self.sent = 0
        self._last_sent = -math.inf
        self._seen_lost = 0

    def due(self, now: float, needs_idr: bool, lost_frames: int) -> bool:
        """True when a request should go out now (and counts it as sent)."""
        if not needs_idr or now - self._last_sent < self.min_interval:
            return False
        if lost_frames > self._seen_lost or now - self._last_sent >= self.retry:
            self._last_sent, self._seen_lost = now, lost_frames
            self.sent += 1
            return True
        return False


class _Block:
    __slots__ = ("base", "data", "got_data", "got_parity", "highest", "last_block", "parity", "pct", "seen")

    def __init__(self, seq: int, shard: int, n_data: int, pct: int, last_block: int) -> None:
        self.base = (seq - shard) & 0xFFFF
        self.data, self.pct, self.last_block = n_data, pct, last_block
        self.parity = (n_data * pct + 99) // 100  # what RtpVideoQueue.c derives from fecInfo
        self.seen: set[int] = set()
        self.got_data = self.got_parity = 0
        self.highest = shard


class FecStatusTracker:
    """Per-FEC-block receive counts for ``SS_FRAME_FEC_STATUS`` (0x5502).

    moonlight-common-c's RtpVideoQueue reports each block when it is done with it
    (``reportFinalFrameFecStatus``); here a block is done when a packet of a newer block arrives,
    which is after its parity, since hosts send a block's data then its parity.
    """

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._block: _Block | None = None

    def feed(self, datagram: bytes) -> control.FrameFecStatus | None:
        """Account one (decrypted) video datagram; returns the status of a block it finishes."""
        if len(datagram) < 32:
            return None
        seq = struct.unpack_from(">H", datagram, 2)[0]
        frame = _VIDEO_FIELDS.unpack_from(datagram, 20)[0]
        blocks = datagram[27]
        fec_info = _VIDEO_FIELDS.unpack_from(datagram, 28)[0]
        key = (frame, (blocks >> 4) & 0x3)
        n_data, shard, pct = fec_info >> 22, (fec_info >> 12) & 0x3FF, (fec_info >> 4) & 0xFF
        if n_data == 0:
            return None
        finished = None
        if self._key is None or key > self._key:
            finished = self._status()
            self._key, self._block = key, _Block(seq, shard, n_data, pct, (blocks >> 6) & 0x3)
        elif key < self._key:
            return None  # late packet of a block already reported
        block = self._block
        assert block is not None
        if shard in block.seen or shard >= block.data + block.parity:
            return finished
        block.seen.add(shard)
        if shard < block.data:
            block.got_data += 1
        else:
            block.got_parity += 1
        block.highest = max(block.highest, shard)
        return finished

    def _status(self) -> control.FrameFecStatus | None:
        block, key = self._block, self._key
        if block is None or key is None:
            return None
        contiguous = next((i for i in range(block.highest + 2) if i not in block.seen), block.highest + 1)
        missing = sum(1 for i in range(block.highest) if i not in block.seen)
        return control.FrameFecStatus(
            frame_index=key[0], highest_received_seq=(block.base + block.highest) & 0xFFFF,
            next_contiguous_seq=(block.base + contiguous) & 0xFFFF, missing_before_highest=missing,
            total_data_packets=block.data, total_parity_packets=block.parity,
            received_data_packets=block.got_data, received_parity_packets=block.got_parity,
            fec_percentage=block.pct, block_index=key[1], block_count=block.last_block + 1)


@dataclass(frozen=True)
class StreamStats:
    """What one session saw. Rates are over the time video flowed (first packet to now/stop)."""

    codec: str
    width: int
    height: int
    duration_s: float  # since the first video packet
    frames: int  # complete frames out of the depacketizer
    fps: float
    lost_frames: int  # frames that never arrived or could not be rebuilt
    frame_gaps: int  # loss episodes (each one cost an IDR wait)
    dropped_frames: int  # complete frames thrown away while waiting for an IDR
    idr_frames: int
    fec_repaired_shards: int
    unrecoverable_blocks: int
    idr_requests: int  # not counting "start A"
    host_latency_p50_ms: float | None
    host_latency_p99_ms: float | None
    bitrate_kbps: float  # video datagrams as received from the network
    video_packets: int
    dropped_on_purpose: int
    malformed_packets: int
    decrypt_failures: int
    decoded_frames: int
    decode_errors: int
    audio_packets: int
    audio_repaired: int  # audio packets rebuilt from the 4+2 parity
    audio_lost: int
    audio_decoded_ms: float
    control_messages: int
    termination_reason: int | None
    error: str | None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.on_datagram(data)
        except Exception:  # a bug in one datagram's handling must not kill the socket
            logger.exception("handling a %d-byte datagram failed", len(data))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable before the host binds its port; VideoPingThreadProc ignores these too.
        logger.debug("UDP error: %s", exc)


# ---------------------------------------------------------------------------------------------- the session
class StreamSession:
    """One running stream; create it with :meth:`start`, end it with :meth:`stop` (or ``async with``)."""

    def __init__(self, client: GameStreamClient, app_id: int, rikey: bytes, rikeyid: int,
                 handshake: HandshakeResult, *, sunshine: bool, loss_percent: float = 0.0, seed: int = 0,
                 decoder: Decoder | None = None, stall_timeout: float = STALL_TIMEOUT_S,
                 audio: bool = True) -> None:
        if not 0.0 <= loss_percent < 100.0:
            raise ValueError("loss_percent must be in [0, 100)")
        self.client = client
        self.app_id = app_id
        self.rikey = rikey
        self.rikeyid = rikeyid
        self.handshake = handshake
        self.config: StreamConfig = handshake.config
        self.sunshine = sunshine
        self.stall_timeout = stall_timeout
        self.error: str | None = None
        self.termination_reason: int | None = None
        self.ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # The IV form follows EncryptionFeaturesEnabled & SS_ENC_CONTROL_V2 as announced, not
        # StreamConfig.encrypt_control (which useReliableUdp 13 also sets: encrypted, legacy IV).
        enabled = c_strtoul(self.config.raw.get("x-ss-general.encryptionEnabled", "0"))
        self._cipher = control.ControlCipher(rikey, is_host=False, v2=bool(enabled & SS_ENC_CONTROL_V2))
        self._video_aead = AESGCM(rikey) if self.config.encrypt_video else None
        self._loss = loss_percent / 100.0
        self._rng = random.Random(seed)
        self._depacketizer = Depacketizer()
        self._fec = FecStatusTracker() if sunshine else None
        self._fec_queue: deque[control.FrameFecStatus] = deque()
        self._idr = IdrPolicy()
        self._decoder = decoder
        self.audio: AudioReceiver | None = None
        if audio and decoder is not None:  # the receiver decodes with GStreamer, like the video
            # The layout DESCRIBE announced for our channel count (normal quality: we ask no more).
            from moonhowl.client.audio import AudioReceiver

            layout = handshake.describe.opus_layouts(self.config.audio_channels)[0] or self.config.opus_layout
            self.audio = AudioReceiver(rikey, rikeyid, self.config.encrypt_audio, layout,
                                       packet_duration_ms=self.config.audio_packet_duration_ms,
                                       decode=True)
        self._endpoint: net_enet.EnetEndpoint | None = None
        self._peer: EnetPeer | None = None
        self._control_gone = asyncio.Event()
        self._video: _Datagrams | None = None
        self._audio: _Datagrams | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped_at: float | None = None
        self._started_at = self._loop.time()
        self._first_video: float | None = None
        self._last_video: float | None = None
        self._video_packets = self._video_bytes = self._dropped = self._decrypt_failures = 0
        self._frames = self._idr_frames = self._gaps = self._decode_failures = 0
        self._audio_packets = self._control_messages = 0
        self._latencies: deque[float] = deque(maxlen=MAX_LATENCY_SAMPLES)
        self._last_ts: int | None = None
        self._ts_epoch = 0

    # ------------------------------------------------------------------ start
    @classmethod
    async def start(
        cls, client: GameStreamClient, app_id: int, width: int, height: int, fps: int, *,
        codec: Codec = "h264", bitrate_kbps: int = 10000, packet_size: int = 1392,
        loss_percent: float = 0.0, seed: int = 0, decode: bool = True,
        decoder_factory: DecoderFactory | None = None, encrypt_video: bool = False,
        resume: bool | None = None, stall_timeout: float = STALL_TIMEOUT_S,
    ) -> Self:
        """Launch (or, when the app already runs and ``resume`` is None/True, resume) ``app_id`` and
        bring the whole stream up. ``codec`` is the preferred codec; H.264 is the fallback the
        host always has. Raises StreamError, GameStreamError or RtspHandshakeError."""
        if not 0.0 <= loss_percent < 100.0:  # checked before /launch starts anything on the host
            raise ValueError("loss_percent must be in [0, 100)")
        if decode and decoder_factory is None:
            try:  # before /launch, so a missing GStreamer does not leave an app running for nothing
                from moonhowl.client.decoder import VideoDecoder
            except (ImportError, ValueError) as exc:  # ValueError: gi present, Gst typelibs missing
                raise StreamError(f"decoding needs GStreamer (run inside the moonhowl runtime) or "
                                  f"decode=False / --no-decode: {exc}") from exc
            decoder_factory = VideoDecoder
        info = await client.serverinfo(https=True)
        version = info.get("appversion", "")
        # IS_SUNSHINE(): a negative 4th appversion field; only those hosts get FEC status messages.
        fields = version.split(".")
        sunshine = len(fields) == 4 and fields[3].lstrip().startswith("-")
        running = info.get("state", "").endswith("_SERVER_BUSY") and info.get("currentgame") == str(app_id)
        rikey, rikeyid = new_rikey()
        start_app = client.resume if (running if resume is None else resume) else client.launch
        url = await start_app(app_id, width, height, fps, rikey=rikey, rikeyid=rikeyid)
        port = rtsp_port_from_url(url)
        config = StreamConfig(width=width, height=height, fps=fps, packet_size=packet_size,
                              bitrate_kbps=bitrate_kbps, codec=codec, encrypt_audio=True,
                              encrypt_video=encrypt_video, audio_channels=2, audio_channel_mask=0x3)
        # The RTSP host is the one we talk HTTP to (RemoteAddr); only the port comes from the URL.
        handshake = await rtsp_handshake(client.host, port, config, codecs={codec, "h264"})
        logger.info("RTSP done: %s %dx%d@%d, %d kbps, encryption %#x, ports video %d audio %d control %d",
                    handshake.config.codec, width, height, fps, handshake.config.bitrate_kbps,
                    handshake.config.encryption_flags, handshake.video_port, handshake.audio_port,
                    handshake.control_port)
        decoder = decoder_factory(handshake.config.codec) if decode and decoder_factory else None
        session = cls(client, app_id, rikey, rikeyid, handshake, sunshine=sunshine,
                      loss_percent=loss_percent, seed=seed, decoder=decoder, stall_timeout=stall_timeout)
        try:
            await session._open()
        except BaseException:
            await session.stop()
            raise
        return session

    async def _open(self) -> None:
        hs = self.handshake
        loop = self._loop
        try:
            self._endpoint, self._peer = await net_enet.connect(
                self.client.host, hs.control_port, channel_count=control.CHANNEL_COUNT,
                data=hs.control_connect_data, timeout=CONTROL_TIMEOUT_S, on_event=self._on_control_event)
        except (OSError, TimeoutError) as exc:
            raise StreamError(f"control stream: no ENet connection to {self.client.host}:{hs.control_port} "
                              f"({exc!r})") from exc
        self._endpoint.host.set_timeout(self._peer, 2, CONTROL_TIMEOUT_S, CONTROL_TIMEOUT_S)
        self._send(control.REQUEST_IDR_FRAME, START_A_PAYLOAD, control.CHANNEL_GENERIC)
        self._send(control.START_B, control.START_B_PAYLOAD, control.CHANNEL_GENERIC)

        infos = await loop.getaddrinfo(self.client.host, None, type=socket.SOCK_DGRAM)
        # Connection.c resolveHostName: IPv4 first (GFE does not listen on IPv6).
        family, _, _, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
        bind = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        self._video = await self._udp(family, bind, self._on_video,
                                      RTP_RECV_PACKETS_BUFFERED * (self.config.packet_size + 16))
        self._audio = await self._udp(family, bind, self._on_audio, 64 * 1024)
        self._started_at = loop.time()
        pings = [(self._video, (address[0], hs.video_port, *address[2:]), hs.video_ping_payload),
                 (self._audio, (address[0], hs.audio_port, *address[2:]), hs.audio_ping_payload)]
        self._tasks = [loop.create_task(self._ping_loop(pings), name="stream-udp-ping"),
                       loop.create_task(self._control_loop(), name="stream-control")]

    async def _udp(self, family: int, bind: tuple[str, int], handler: Callable[[bytes], None],
                   rcvbuf: int) -> _Datagrams:
        _, proto = await self._loop.create_datagram_endpoint(lambda: _Datagrams(handler), local_addr=bind,
                                                             family=family)
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):  # the kernel may cap it; a smaller buffer still works
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return proto

    # ------------------------------------------------------------------ periodic work
    async def _ping_loop(self, pings: Iterable[tuple[_Datagrams, tuple[Any, ...], str]]) -> None:
        count = 0
        while True:
            count += 1  # the first ping carries 1 (pingCount++ before sendto)
            for proto, address, payload in pings:
                if proto.transport is not None:
                    proto.transport.sendto(ping_packet(payload, count), address)
            await asyncio.sleep(UDP_PING_INTERVAL_S)

    async def _control_loop(self) -> None:
        ping = bytes(control.PeriodicPing())
        while not self.ended.is_set():
            while self._fec_queue:
                # Unsequenced, not critical: lossStatsThreadFunc sends these with ENET_PACKET_FLAG_UNSEQUENCED.
                self._send(control.FRAME_FEC_STATUS, bytes(self._fec_queue.popleft()), control.CHANNEL_GENERIC,
                           reliable=False, unsequenced=True)
            # Reliable so ENet keeps measuring the RTT (ControlStream.c's comment on 0x0200).
            self._send(control.PERIODIC_PING, ping, control.CHANNEL_GENERIC)
            now = self._loop.time()
            self._maybe_request_idr(now)
            self._check_stall(now)
            await asyncio.sleep(CONTROL_PING_INTERVAL_S)

    def _check_stall(self, now: float) -> None:
        if self._first_video is None:
            if now - self._started_at > self.stall_timeout:
                self._end(f"no video packet from the host within {self.stall_timeout:g} s")
        elif self._last_video is not None and now - self._last_video > self.stall_timeout:
            self._end(f"the host stopped sending video for more than {self.stall_timeout:g} s")
        elif self._frames == 0 and now - self._first_video > self.stall_timeout:
            # VideoStream.c ML_ERROR_NO_VIDEO_FRAME: packets flow but no frame ever completes.
            self._end(f"video packets but no complete frame within {self.stall_timeout:g} s")

    def _maybe_request_idr(self, now: float) -> None:
        d = self._depacketizer
        if self._idr.due(now, d.needs_idr, d.stats.lost_frames):
            logger.debug("requesting an IDR frame (%d frames lost so far)", d.stats.lost_frames)
            self._send(control.REQUEST_IDR_FRAME, control.IDR_REQUEST_PAYLOAD, control.CHANNEL_URGENT)

    # ------------------------------------------------------------------ input paths
    def _on_video(self, data: bytes) -> None:
        now = self._loop.time()
        self._video_packets += 1
        self._video_bytes += len(data)
        self._last_video = now
        if self._first_video is None:
            self._first_video = now
            logger.info("first video packet after %.0f ms", (now - self._started_at) * 1000)
        if self._loss and self._rng.random() < self._loss:
            self._dropped += 1
            return
        if self._video_aead is not None:
            plain = decrypt_video_packet(self._video_aead, data)
            if plain is None:
                self._decrypt_failures += 1
                return
            data = plain
        status = self._fec.feed(data) if self._fec is not None else None
        # Best effort, like LbqOfferQueueItem on the bounded frameFecStatusQueue.
        if status is not None and len(self._fec_queue) < MAX_FEC_STATUS_PER_PING:
            self._fec_queue.append(status)
        waiting = self._depacketizer.needs_idr
        for frame in self._depacketizer.push(data):
            self._on_frame(frame)
        if self._depacketizer.needs_idr and not waiting:
            self._gaps += 1  # a new loss episode: the picture now waits for an IDR frame
        self._maybe_request_idr(now)

    def _on_frame(self, frame: Frame) -> None:
        self._frames += 1
        self._idr_frames += frame.is_idr
        self._latencies.append(frame.host_latency_ms)
        # The 90 kHz RTP timestamp wraps every 13 h; the decoder wants a PTS that only grows.
        if self._last_ts is not None and frame.timestamp_90k < self._last_ts - (1 << 31):
            self._ts_epoch += 1 << 32
        self._last_ts = frame.timestamp_90k
        if self._decoder is not None:
            try:
                self._decoder.decode(frame.data, (self._ts_epoch + frame.timestamp_90k) * 100_000 // 9)
            except Exception:
                self._decode_failures += 1
                logger.exception("decoding frame %d failed", frame.frame_index)

    def _on_audio(self, data: bytes) -> None:
        self._audio_packets += 1
        if self.audio is not None:
            self.audio.push(data)

    def _on_control_event(self, event: Event) -> None:
        if isinstance(event, Disconnected):
            self._control_gone.set()
            if not self._stopping and self.termination_reason is None:
                self._end(f"control stream disconnected ({event.reason})")
            return
        if not isinstance(event, Received):
            return
        try:
            msg_type, payload = self._cipher.open(event.data)
        except ProtocolError as exc:
            logger.warning("dropping a control packet: %s", exc)
            return
        self._control_messages += 1
        if msg_type == control.TERMINATION:
            try:
                reason = control.Termination.parse(payload).reason
            except ProtocolError:
                reason = 0
            self._on_termination(reason)
        elif msg_type == control.HDR_MODE:
            logger.info("host HDR mode: %s", "on" if payload[:1] not in (b"", b"\0") else "off")
        else:
            logger.debug("control message %#06x (%d bytes)", msg_type, len(payload))

    def _on_termination(self, reason: int) -> None:
        self.termination_reason = reason
        logger.info("host ended the stream: %#010x", reason)
        if reason == control.TERMINATION_GRACEFUL and self._frames:
            self._end(None)
        elif reason == control.TERMINATION_GRACEFUL:
            # ControlStream.c: "graceful" before any frame is ML_ERROR_UNEXPECTED_EARLY_TERMINATION.
            self._end("the host ended the stream before any video frame (0x80030023)")
        else:
            self._end(f"the host terminated the stream with error {reason:#010x}")
        # Like ControlStream.c (enet_peer_disconnect_now): the host will not acknowledge a graceful
        # disconnect any more. Deferred: we are inside the endpoint's own event delivery here.
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            self._loop.call_soon(endpoint.close)

    def _send(self, msg_type: int, payload: bytes, channel: int, *, reliable: bool = True,
              unsequenced: bool = False) -> bool:
        if self._endpoint is None or self._peer is None:
            return False
        return self._endpoint.send(self._peer, channel, self._cipher.seal(msg_type, payload), reliable,
                                   unsequenced=unsequenced)

    def _end(self, error: str | None) -> None:
        if self.ended.is_set():
            return
        if error is not None:
            self.error = error
            logger.warning("stream ended: %s", error)
        self.ended.set()

    # ------------------------------------------------------------------ public API
    def send_input(self, event: Any) -> bool:
        """Sends one input packet (a moonhowl.protocol.input dataclass) on its channel, as
        moonlight-common-c's LiSend*Event functions do: control message 0x0206, encrypted."""
        return self._send(control.INPUT_DATA, bytes(event), event.channel)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the stream ends by itself (termination, stall, disconnect); True if it did."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), timeout)
        return self.ended.is_set()

    def stats(self) -> StreamStats:
        d = self._depacketizer.stats
        audio = self.audio.stats if self.audio is not None else None
        end = self._stopped_at if self._stopped_at is not None else self._loop.time()
        duration = end - self._first_video if self._first_video is not None else 0.0
        return StreamStats(
            codec=self.config.codec, width=self.config.width, height=self.config.height,
            duration_s=duration, frames=self._frames, fps=self._frames / duration if duration > 0 else 0.0,
            lost_frames=d.lost_frames, frame_gaps=self._gaps, dropped_frames=d.dropped_frames,
            idr_frames=self._idr_frames, fec_repaired_shards=d.repaired_shards,
            unrecoverable_blocks=d.unrecoverable_blocks, idr_requests=self._idr.sent,
            host_latency_p50_ms=percentile(self._latencies, 50), host_latency_p99_ms=percentile(self._latencies, 99),
            bitrate_kbps=self._video_bytes * 8 / duration / 1000 if duration > 0 else 0.0,
            video_packets=self._video_packets, dropped_on_purpose=self._dropped,
            malformed_packets=d.malformed_packets, decrypt_failures=self._decrypt_failures,
            decoded_frames=self._decoder.frames_decoded if self._decoder is not None else 0,
            decode_errors=self._decode_failures + (self._decoder.errors if self._decoder is not None else 0),
            audio_packets=self._audio_packets,
            audio_repaired=audio.repaired if audio else 0, audio_lost=audio.lost if audio else 0,
            audio_decoded_ms=audio.decoded_ms if audio else 0.0, control_messages=self._control_messages,
            termination_reason=self.termination_reason, error=self.error)

    async def stop(self, *, cancel_app: bool = False) -> None:
        """Tear down in LiStopConnection's order (audio, video, control), then optionally quit the app."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped_at = self._loop.time()
        self._end(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for proto in (self._audio, self._video):
            if proto is not None and proto.transport is not None:
                proto.transport.close()
        if self._decoder is not None:
            try:
                await asyncio.to_thread(self._decoder.flush, 2.0)
                self._decoder.close()
            except Exception:
                logger.exception("closing the video decoder failed")
        if self.audio is not None:
            try:
                self.audio.finish()
                await asyncio.to_thread(self.audio.flush, 1.0)
                self.audio.close()
            except Exception:
                logger.exception("closing the audio decoder failed")
        await self._close_control()
        if cancel_app:
            try:
                await self.client.cancel()
            except (GameStreamError, OSError, TimeoutError) as exc:
                logger.warning("quitting the app on %s failed: %s", self.client.host, exc)

    async def _close_control(self) -> None:
        endpoint, peer = self._endpoint, self._peer
        self._endpoint = None
        if endpoint is None:
            return
        if peer is not None and not self._control_gone.is_set():
            # gracefullyDisconnectEnetPeer: let queued messages go, then wait for the host's ack.
            endpoint.disconnect(peer, later=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._control_gone.wait(), CONTROL_LINGER_S)
        endpoint.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
