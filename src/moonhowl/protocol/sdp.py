"""SDP bodies of the GameStream RTSP handshake.

Three texts cross the wire:

* the host's DESCRIBE reply (:func:`describe_sdp`), which moonlight-common-c only searches with
  ``strstr`` (RtspConnection.c ``performRtspHandshake``/``parseOpusConfigurations``);
* the client's ANNOUNCE body (:func:`parse_announce_sdp`), built by SdpGenerator.c;
* moonhowl's own test client needs the reverse of both (:func:`parse_describe_sdp`,
  :func:`announce_sdp`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from moonhowl.protocol.errors import ProtocolError

Codec = Literal["h264", "hevc", "av1"]

# Sunshine encryption bits (x-ss-general.encryption*; Limelight-internal.h SS_ENC_*).
SS_ENC_CONTROL_V2 = 0x01
SS_ENC_VIDEO = 0x02
SS_ENC_AUDIO = 0x04
# Host feature bits in x-ss-general.featureFlags (Limelight-internal.h SS_FF_*).
SS_FF_PEN_TOUCH_EVENTS = 0x01
SS_FF_CONTROLLER_TOUCH_EVENTS = 0x02
# Client feature bits in x-ml-general.featureFlags (Limelight-internal.h ML_FF_*).
ML_FF_FEC_STATUS = 0x01
ML_FF_SESSION_ID_V1 = 0x02
# x-nv-general.featureFlags bits (SdpGenerator.c addGen5Options).
NVFF_BASE = 0x07
NVFF_AUDIO_ENCRYPTION = 0x20
NVFF_RI_ENCRYPTION = 0x80
# sizeof(ENC_VIDEO_HEADER) = iv[12] + frameNumber + tag[16]; the client shrinks packetSize by it.
ENC_VIDEO_HEADER_SIZE = 32
# RtspConnection.c: at or above this bitrate the client asks for high quality audio.
HIGH_AUDIO_BITRATE_THRESHOLD = 15000
LOW_AUDIO_BITRATE_THRESHOLD = 5000

CHANNEL_MASKS: Mapping[int, int] = {2: 0x3, 6: 0x3F, 8: 0x63F}  # Limelight.h AUDIO_CONFIGURATION_*
_CODEC_BY_FORMAT: Mapping[int, Codec] = {0: "h264", 1: "hevc", 2: "av1"}
_FORMAT_BY_CODEC: Mapping[Codec, int] = {v: k for k, v in _CODEC_BY_FORMAT.items()}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_TOKEN_RE = re.compile(r"[!-~]+")  # printable ASCII, no spaces: safe inside an RTSP header value


class SdpError(ProtocolError):
    """A malformed SDP body."""


class SdpValueError(SdpError):
    """An attribute the host needs holds a non-numeric or out-of-range value."""


class UnknownCodecError(SdpValueError):
    """x-nv-vqos[0].bitStreamFormat is not 0 (H.264), 1 (HEVC) or 2 (AV1)."""


@dataclass(frozen=True)
class OpusLayout:
    """One Opus multistream layout; mapping is the host encoder's (FL FR C LFE BL BR SL SR order)."""

    channels: int
    streams: int
    coupled_streams: int
    mapping: tuple[int, ...]
    bitrate: int = 0

    def surround_params(self, *, normal_quality: bool) -> str:
        """The digits after ``surround-params=`` for this layout.

        parseOpusConfigurations() moves the last mapping digit of the *normal quality* 5.1/7.1 entry
        to index 3 (it assumes GFE's FL FR C RL RR SL SR LFE order); pre-rotating index 3 to the
        end makes the client end up with exactly our mapping. Sunshine does the same rotation but
        only over indexes 3..5 (it passes MAX_STREAM_CONFIG as the end), which is right for 5.1
        only; we rotate the whole tail so 7.1 matches too.
        """
        m = list(self.mapping)
        if normal_quality and self.channels in (6, 8):
            m = m[:3] + m[4:] + [m[3]]
        return f"{self.channels}{self.streams}{self.coupled_streams}" + "".join(str(d) for d in m)


# Sunshine audio.cpp stream_configs: (channels, high quality) -> layout.
OPUS_LAYOUTS: Mapping[tuple[int, bool], OpusLayout] = {
    (2, False): OpusLayout(2, 1, 1, (0, 1), 96000),
    (2, True): OpusLayout(2, 1, 1, (0, 1), 512000),
    (6, False): OpusLayout(6, 4, 2, (0, 1, 2, 3, 4, 5), 256000),
    (6, True): OpusLayout(6, 6, 0, (0, 1, 2, 3, 4, 5), 1536000),
    (8, False): OpusLayout(8, 5, 3, (0, 1, 2, 3, 4, 5, 6, 7), 450000),
    (8, True): OpusLayout(8, 8, 0, (0, 1, 2, 3, 4, 5, 6, 7), 2048000),
}


@dataclass(frozen=True)
class StreamOffer:
    """What the host offers for one launch; fresh ids/payloads per launch (FACTS: RTSP)."""

    session_id: str
    video_port: int
    audio_port: int
    control_port: int
    video_ping_payload: str
    audio_ping_payload: str
    control_connect_data: int
    h264: bool = True
    hevc: bool = False
    av1: bool = False
    audio_channels: tuple[int, ...] = (2, 6, 8)
    surround_high_quality: bool = True
    encryption_supported: int = SS_ENC_CONTROL_V2 | SS_ENC_AUDIO
    encryption_requested: int = SS_ENC_CONTROL_V2
    feature_flags: int = 0
    reference_frame_invalidation: bool = False

    def __post_init__(self) -> None:
        # The client splits Session at ';' and copies it into later headers verbatim.
        if not _TOKEN_RE.fullmatch(self.session_id) or ";" in self.session_id:
            raise ValueError(f"session id must be printable ASCII without ';' or spaces: {self.session_id!r}")
        for name in ("video_port", "audio_port", "control_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"{name} out of range")
        # RtspConnection.c copies X-SS-Ping-Payload only when strlen() == 16.
        for name in ("video_ping_payload", "audio_ping_payload"):
            value = getattr(self, name)
            if len(value) != 16 or not _TOKEN_RE.fullmatch(value):
                raise ValueError(f"{name} must be 16 printable ASCII characters")
        if not 0 <= self.control_connect_data <= 0xFFFFFFFF:
            raise ValueError("control_connect_data must fit in a u32")
        if not set(self.audio_channels) <= {2, 6, 8}:
            raise ValueError("audio_channels may only hold 2, 6 and 8")

    @property
    def codecs(self) -> frozenset[Codec]:
        names: tuple[tuple[bool, Codec], ...] = ((self.h264, "h264"), (self.hevc, "hevc"), (self.av1, "av1"))
        return frozenset(c for on, c in names if on)


def describe_sdp(offer: StreamOffer) -> str:
    """The DESCRIBE reply body. Only substrings matter to the client, so it is kept minimal."""
    lines = [
        "v=0",
        "o=- 0 0 IN IP4 0.0.0.0",
        "s=moonhowl",
        "t=0 0",
        # parseSdpAttributeToUInt() reads these with strtoul(base 0): plain decimal, no leading 0.
        f"a=x-ss-general.featureFlags:{offer.feature_flags}",
        f"a=x-ss-general.encryptionSupported:{offer.encryption_supported}",
        f"a=x-ss-general.encryptionRequested:{offer.encryption_requested}",
    ]
    if offer.reference_frame_invalidation:
        lines.append("a=x-nv-video[0].refPicInvalidation:1")
    lines.append("m=video 0 RTP/AVP 96")
    if offer.hevc:
        # The client detects HEVC by this base64 VPS prefix, not by a MIME type (RtspConnection.c).
        lines.append("a=fmtp:96 sprop-parameter-sets=AAAAAU")
    if offer.av1:
        lines.append("a=rtpmap:98 AV1/90000")
    lines.append("m=audio 0 RTP/AVP 97")
    for channels in sorted(set(offer.audio_channels)):
        # First match per channel count = normal quality, second = high quality, in that order.
        lines.append("a=fmtp:97 surround-params=" + OPUS_LAYOUTS[channels, False].surround_params(
            normal_quality=True))
        if offer.surround_high_quality:
            lines.append("a=fmtp:97 surround-params=" + OPUS_LAYOUTS[channels, True].surround_params(
                normal_quality=False))
    return "\r\n".join(lines) + "\r\n"


@dataclass(frozen=True)
class DescribeInfo:
    """What moonlight-common-c extracts from a DESCRIBE reply."""

    hevc: bool
    av1: bool
    reference_frame_invalidation: bool
    feature_flags: int
    encryption_supported: int
    encryption_requested: int
    text: str

    @property
    def codecs(self) -> frozenset[Codec]:
        found: set[Codec] = {"h264"}
        if self.hevc:
            found.add("hevc")
        if self.av1:
            found.add("av1")
        return frozenset(found)

    def opus_layouts(self, channels: int) -> tuple[OpusLayout | None, OpusLayout | None]:
        """(normal, high quality) layouts as parseOpusConfigurations() derives them, swap included."""
        if channels == 2:
            return OpusLayout(2, 1, 1, (0, 1)), None
        prefix = f"a=fmtp:97 surround-params={channels}"
        found: list[OpusLayout] = []
        pos = self.text.find(prefix)
        while pos >= 0 and len(found) < 2:
            digits = self.text[pos + len(prefix): pos + len(prefix) + 2 + channels]
            if len(digits) != 2 + channels or not digits.isdigit():
                raise SdpValueError(f"bad surround-params for {channels} channels")
            found.append(OpusLayout(channels, int(digits[0]), int(digits[1]),
                                    tuple(int(d) for d in digits[2:])))
            pos = self.text.find(prefix, pos + len(prefix))
        if not found:
            if channels == 6:  # the client's hardcoded fallback for hosts without surround-params
                return OpusLayout(6, 4, 2, (0, 4, 1, 5, 2, 3)), None
            return None, None
        normal = found[0]
        if channels in (6, 8):
            m = normal.mapping
            normal = OpusLayout(channels, normal.streams, normal.coupled_streams,
                                (*m[:3], m[-1], *m[3:-1]))
        return normal, (found[1] if len(found) > 1 else None)


def c_strtoul(text: str) -> int:
    """C ``strtoul(text, NULL, 0)`` for the non-negative values GameStream uses (0 when no digits)."""
    m = re.match(r"[ \t]*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return 0
    digits = m.group(1)
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    return int(digits, 8) if digits.startswith("0") else int(digits, 10)


def _sdp_uint(text: str, name: str) -> int:
    # Mirrors parseSdpAttributeToUInt(): first occurrence, value after the next ':', strtoul base 0.
    at = text.find(name)
    colon = text.find(":", at) if at >= 0 else -1
    return c_strtoul(text[colon + 1:]) if colon >= 0 else 0


def parse_describe_sdp(data: bytes | str) -> DescribeInfo:
    """Read a DESCRIBE body the way RtspConnection.c does (substring searches)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if not text:
        raise SdpError("empty DESCRIBE body")  # the client fails the handshake on no payload
    return DescribeInfo(
        hevc="sprop-parameter-sets=AAAAAU" in text,
        av1="AV1/90000" in text,
        reference_frame_invalidation="x-nv-video[0].refPicInvalidation" in text,
        feature_flags=_sdp_uint(text, "x-ss-general.featureFlags"),
        encryption_supported=_sdp_uint(text, "x-ss-general.encryptionSupported"),
        encryption_requested=_sdp_uint(text, "x-ss-general.encryptionRequested"),
        text=text,
    )


@dataclass(frozen=True)
class StreamConfig:
    """The stream a client asked for in its ANNOUNCE SDP; defaults stand in for absent lines."""

    width: int = 1920
    height: int = 1080
    fps: int = 60
    packet_size: int = 1392
    bitrate_kbps: int = 20000  # x-nv-vqos[0].bw.maximumBitrateKbps (already cut for FEC by the client)
    configured_bitrate_kbps: int = 0  # x-ml-video.configuredBitrateKbps: the user's setting, 0 = absent
    codec: Codec = "h264"
    hdr: bool = False
    yuv444: bool = False
    audio_channels: int = 2
    audio_channel_mask: int = 0x3
    audio_packet_duration_ms: int = 5
    audio_high_quality: bool = False
    encrypt_video: bool = False
    encrypt_audio: bool = False
    encrypt_control: bool = False
    fec_min_required: int = 0
    fec_repair_percent: int | None = None
    slices_per_frame: int = 1
    max_reference_frames: int = 0
    client_refresh_rate_x100: int = 0
    encoder_csc_mode: int = 0
    control_protocol: int = 1
    nv_feature_flags: int = NVFF_BASE | NVFF_RI_ENCRYPTION
    ml_feature_flags: int = 0
    raw: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def encryption_flags(self) -> int:
        return ((SS_ENC_CONTROL_V2 if self.encrypt_control else 0)
                | (SS_ENC_VIDEO if self.encrypt_video else 0)
                | (SS_ENC_AUDIO if self.encrypt_audio else 0))

    @property
    def opus_layout(self) -> OpusLayout:
        """The Opus layout the host must encode with (what the client decodes with)."""
        channels = self.audio_channels if self.audio_channels in (2, 6, 8) else 2
        return OPUS_LAYOUTS[channels, self.audio_high_quality]


def _int_attr(attrs: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    value = attrs.get(name)
    if value is None:
        return default
    if not _INT_RE.fullmatch(value):
        raise SdpValueError(f"{name} is not an integer: {value!r}")
    number = int(value, 10)
    if minimum is not None and number < minimum:
        raise SdpValueError(f"{name} must be >= {minimum}: {number}")
    return number


def sdp_attributes(text: str) -> dict[str, str]:
    """``a=name:value`` lines in order; SdpGenerator.c ends each value with a space, dropped here."""
    attrs: dict[str, str] = {}
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.startswith("a="):
            continue
        name, sep, value = line[2:].partition(":")
        if not sep or not name:
            raise SdpError(f"attribute line without name or ':': {line!r}")
        attrs[name] = value.strip()
    return attrs


def parse_announce_sdp(data: bytes | str, *, host_header: str | None = None) -> StreamConfig:
    """Parse the client's ANNOUNCE SDP (SdpGenerator.c ``getSdpPayloadForStreamConfig``).

    ``host_header``: stereo quality is signalled by the RTSP Host header, not the SDP: the client
    sends 0.0.0.0 when it wants low quality (Sunshine rtsp.cpp cmd_announce).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise SdpError("ANNOUNCE body is not UTF-8") from exc
    a = sdp_attributes(text)
    fmt = _int_attr(a, "x-nv-vqos[0].bitStreamFormat", 0)
    if fmt not in _CODEC_BY_FORMAT:
        raise UnknownCodecError(f"unknown bitStreamFormat {fmt}")
    enc = _int_attr(a, "x-ss-general.encryptionEnabled", 0, 0)
    nvff = _int_attr(a, "x-nv-general.featureFlags", NVFF_BASE | NVFF_RI_ENCRYPTION)
    control_protocol = _int_attr(a, "x-nv-general.useReliableUdp", 1)
    channels = _int_attr(a, "x-nv-audio.surround.numChannels", 2, 1)
    high_quality = _int_attr(a, "x-nv-audio.surround.AudioQuality", 0) != 0
    if channels == 2 and host_header is not None:
        high_quality = "0.0.0.0" not in host_header
    repair = a.get("x-nv-vqos[0].fec.repairPercent")
    return StreamConfig(
        width=_int_attr(a, "x-nv-video[0].clientViewportWd", 1920, 1),
        height=_int_attr(a, "x-nv-video[0].clientViewportHt", 1080, 1),
        fps=_int_attr(a, "x-nv-video[0].maxFPS", 60, 1),
        packet_size=_int_attr(a, "x-nv-video[0].packetSize", 1392, 1),
        bitrate_kbps=_int_attr(a, "x-nv-vqos[0].bw.maximumBitrateKbps", 20000, 1),
        configured_bitrate_kbps=_int_attr(a, "x-ml-video.configuredBitrateKbps", 0, 0),
        codec=_CODEC_BY_FORMAT[fmt],
        hdr=_int_attr(a, "x-nv-video[0].dynamicRangeMode", 0) != 0,
        yuv444=_int_attr(a, "x-ss-video[0].chromaSamplingType", 0) == 1,
        audio_channels=channels,
        audio_channel_mask=_int_attr(a, "x-nv-audio.surround.channelMask", CHANNEL_MASKS.get(channels, 0), 0),
        audio_packet_duration_ms=_int_attr(a, "x-nv-aqos.packetDuration", 5, 1),
        audio_high_quality=high_quality,
        encrypt_video=bool(enc & SS_ENC_VIDEO),
        # Legacy clients say "audio encryption" through nvFeatureFlags 0x20 (Sunshine cmd_announce).
        encrypt_audio=bool(enc & SS_ENC_AUDIO) or bool(nvff & NVFF_AUDIO_ENCRYPTION),
        # useReliableUdp 13 selects the encrypted control protocol (Sunshine stream.cpp).
        encrypt_control=bool(enc & SS_ENC_CONTROL_V2) or control_protocol == 13,
        fec_min_required=_int_attr(a, "x-nv-vqos[0].fec.minRequiredFecPackets", 0, 0),
        fec_repair_percent=None if repair is None else _int_attr(a, "x-nv-vqos[0].fec.repairPercent", 0, 0),
        slices_per_frame=_int_attr(a, "x-nv-video[0].videoEncoderSlicesPerFrame", 1, 1),
        max_reference_frames=_int_attr(a, "x-nv-video[0].maxNumReferenceFrames", 0, 0),
        client_refresh_rate_x100=_int_attr(a, "x-nv-video[0].clientRefreshRateX100", 0, 0),
        encoder_csc_mode=_int_attr(a, "x-nv-video[0].encoderCscMode", 0, 0),
        control_protocol=control_protocol,
        nv_feature_flags=nvff,
        ml_feature_flags=_int_attr(a, "x-ml-general.featureFlags", 0, 0),
        raw=a,
    )


def announce_sdp(config: StreamConfig, *, url_addr: str, video_port: int, client_version: str = "14",
                 remote: bool = False, ipv6: bool = False, encryption_enabled: int | None = None) -> str:
    """The ANNOUNCE body moonlight-common-c sends to a 7.1.431 Sunshine-style host.

    Mirrors SdpGenerator.c attribute for attribute and in order; ``config`` plays the client's
    STREAM_CONFIGURATION: the user's bitrate is ``configured_bitrate_kbps`` or, when 0,
    ``bitrate_kbps`` (the client derives maximumBitrateKbps from it), and ``packet_size`` is
    before the video-encryption cut. ``encryption_enabled`` is the negotiated
    EncryptionFeaturesEnabled (default: ``config.encryption_flags``); ``config.encrypt_audio`` is
    the client's own opt-in, which sets nvFeatureFlags 0x20 even if the host lacks SS_ENC_AUDIO.
    """
    attrs: list[tuple[str, str]] = []

    def add(name: str, value: int | str) -> None:
        attrs.append((name, str(value)))

    bitrate = config.configured_bitrate_kbps or config.bitrate_kbps
    add("x-ml-general.featureFlags", config.ml_feature_flags or (ML_FF_FEC_STATUS | ML_FF_SESSION_ID_V1))
    enabled = config.encryption_flags if encryption_enabled is None else encryption_enabled
    add("x-ss-general.encryptionEnabled", enabled)
    add("x-ss-video[0].chromaSamplingType", 1 if config.yuv444 else 0)
    add("x-nv-video[0].clientViewportWd", config.width)
    add("x-nv-video[0].clientViewportHt", config.height)
    add("x-nv-video[0].maxFPS", config.fps)
    # The client shrinks packetSize by the encryption header when video is encrypted.
    overhead = ENC_VIDEO_HEADER_SIZE if enabled & SS_ENC_VIDEO else 0
    add("x-nv-video[0].packetSize", config.packet_size - overhead)
    add("x-nv-video[0].rateControlMode", 4)
    add("x-nv-video[0].timeoutLengthMs", 7000)
    add("x-nv-video[0].framesWithInvalidRefThreshold", 0)
    adjusted = int(bitrate * 0.80)  # 20% kept for FEC
    if remote and adjusted > 500:
        adjusted -= 500
    adjusted = min(adjusted, 100000)
    for name in ("x-nv-video[0].initialBitrateKbps", "x-nv-video[0].initialPeakBitrateKbps",
                 "x-nv-vqos[0].bw.minimumBitrateKbps", "x-nv-vqos[0].bw.maximumBitrateKbps"):
        add(name, adjusted)
    add("x-ml-video.configuredBitrateKbps", bitrate)
    add("x-nv-vqos[0].fec.enable", 1)
    add("x-nv-vqos[0].videoQualityScoreUpdateTime", 5000)
    add("x-nv-vqos[0].qosTrafficType", 0 if remote else 5)
    add("x-nv-aqos.qosTrafficType", 0 if remote else 4)
    # addGen5Options() for APP_VERSION_AT_LEAST(7, 1, 431) but not 7.1.446.
    audio_encrypted = config.encrypt_audio or bool(enabled & SS_ENC_AUDIO)
    nvff = NVFF_BASE | NVFF_RI_ENCRYPTION | (NVFF_AUDIO_ENCRYPTION if audio_encrypted else 0)
    add("x-nv-general.featureFlags", nvff)
    add("x-nv-general.useReliableUdp", 13)
    add("x-nv-vqos[0].fec.minRequiredFecPackets", 2)
    add("x-nv-vqos[0].bllFec.enable", 0)
    add("x-nv-vqos[0].drc.enable", 0)
    add("x-nv-general.enableRecoveryMode", 0)
    add("x-nv-video[0].videoEncoderSlicesPerFrame", config.slices_per_frame)
    if config.codec == "av1":
        add("x-nv-vqos[0].bitStreamFormat", 2)
    else:
        add("x-nv-clientSupportHevc", 1 if config.codec == "hevc" else 0)
        add("x-nv-vqos[0].bitStreamFormat", _FORMAT_BY_CODEC[config.codec])
    add("x-nv-video[0].dynamicRangeMode", 1 if config.hdr else 0)
    add("x-nv-video[0].maxNumReferenceFrames", config.max_reference_frames)
    add("x-nv-video[0].clientRefreshRateX100", config.client_refresh_rate_x100)
    add("x-nv-audio.surround.numChannels", config.audio_channels)
    add("x-nv-audio.surround.channelMask", config.audio_channel_mask)
    add("x-nv-audio.surround.enable", 1 if config.audio_channels > 2 else 0)
    high_quality_surround = config.audio_high_quality and config.audio_channels > 2
    add("x-nv-audio.surround.AudioQuality", 1 if high_quality_surround else 0)
    add("x-nv-aqos.packetDuration", config.audio_packet_duration_ms)
    add("x-nv-video[0].encoderCscMode", config.encoder_csc_mode)
    head = (f"v=0\r\no=android 0 {client_version} IN {'IPv6' if ipv6 else 'IPv4'} {url_addr}\r\n"
            "s=NVIDIA Streaming Client\r\n")
    body = "".join(f"a={name}:{value} \r\n" for name, value in attrs)  # " \r\n": fillSerializedAttributeList
    return head + body + f"t=0 0\r\nm=video {video_port}  \r\n"
