"""SDP of the RTSP handshake, checked against what moonlight-common-c generates and searches for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.sdp import (
    OPUS_LAYOUTS,
    SS_ENC_AUDIO,
    SS_ENC_CONTROL_V2,
    SS_ENC_VIDEO,
    OpusLayout,
    SdpError,
    SdpValueError,
    StreamConfig,
    StreamOffer,
    UnknownCodecError,
    announce_sdp,
    c_strtoul,
    describe_sdp,
    parse_announce_sdp,
    parse_describe_sdp,
)

pytestmark = pytest.mark.unit

# Transcribed by hand from SdpGenerator.c (getAttributesList, addGen5Options for 7.1.431,
# fillSdpHeader, fillSdpTail) for a Sunshine-style host: 1080p60, 20 Mbps local, HEVC SDR,
# stereo, 5 ms audio, control v2 + audio encryption, RTSP client version 14, video port 47998.
MOONLIGHT_ANNOUNCE = (
    "v=0\r\n"
    "o=android 0 14 IN IPv4 192.168.1.10\r\n"
    "s=NVIDIA Streaming Client\r\n"
    "a=x-ml-general.featureFlags:3 \r\n"
    "a=x-ss-general.encryptionEnabled:5 \r\n"
    "a=x-ss-video[0].chromaSamplingType:0 \r\n"
    "a=x-nv-video[0].clientViewportWd:1920 \r\n"
    "a=x-nv-video[0].clientViewportHt:1080 \r\n"
    "a=x-nv-video[0].maxFPS:60 \r\n"
    "a=x-nv-video[0].packetSize:1392 \r\n"
    "a=x-nv-video[0].rateControlMode:4 \r\n"
    "a=x-nv-video[0].timeoutLengthMs:7000 \r\n"
    "a=x-nv-video[0].framesWithInvalidRefThreshold:0 \r\n"
    "a=x-nv-video[0].initialBitrateKbps:16000 \r\n"
    "a=x-nv-video[0].initialPeakBitrateKbps:16000 \r\n"
    "a=x-nv-vqos[0].bw.minimumBitrateKbps:16000 \r\n"
    "a=x-nv-vqos[0].bw.maximumBitrateKbps:16000 \r\n"
    "a=x-ml-video.configuredBitrateKbps:20000 \r\n"
    "a=x-nv-vqos[0].fec.enable:1 \r\n"
    "a=x-nv-vqos[0].videoQualityScoreUpdateTime:5000 \r\n"
    "a=x-nv-vqos[0].qosTrafficType:5 \r\n"
    "a=x-nv-aqos.qosTrafficType:4 \r\n"
    "a=x-nv-general.featureFlags:167 \r\n"
    "a=x-nv-general.useReliableUdp:13 \r\n"
    "a=x-nv-vqos[0].fec.minRequiredFecPackets:2 \r\n"
    "a=x-nv-vqos[0].bllFec.enable:0 \r\n"
    "a=x-nv-vqos[0].drc.enable:0 \r\n"
    "a=x-nv-general.enableRecoveryMode:0 \r\n"
    "a=x-nv-video[0].videoEncoderSlicesPerFrame:1 \r\n"
    "a=x-nv-clientSupportHevc:1 \r\n"
    "a=x-nv-vqos[0].bitStreamFormat:1 \r\n"
    "a=x-nv-video[0].dynamicRangeMode:0 \r\n"
    "a=x-nv-video[0].maxNumReferenceFrames:1 \r\n"
    "a=x-nv-video[0].clientRefreshRateX100:6000 \r\n"
    "a=x-nv-audio.surround.numChannels:2 \r\n"
    "a=x-nv-audio.surround.channelMask:3 \r\n"
    "a=x-nv-audio.surround.enable:0 \r\n"
    "a=x-nv-audio.surround.AudioQuality:0 \r\n"
    "a=x-nv-aqos.packetDuration:5 \r\n"
    "a=x-nv-video[0].encoderCscMode:0 \r\n"
    "t=0 0\r\n"
    "m=video 47998  \r\n"
)

CLIENT_CONFIG = StreamConfig(
    width=1920,
    height=1080,
    fps=60,
    packet_size=1392,
    bitrate_kbps=20000,
    codec="hevc",
    audio_channels=2,
    audio_channel_mask=0x3,
    audio_packet_duration_ms=5,
    encrypt_audio=True,
    encrypt_control=True,
    max_reference_frames=1,
    client_refresh_rate_x100=6000,
)


def offer(**kw: object) -> StreamOffer:
    base: dict[str, object] = dict(
        session_id="DEADBEEFCAFE",
        video_port=47998,
        audio_port=48000,
        control_port=47999,
        video_ping_payload="A" * 16,
        audio_ping_payload="B" * 16,
        control_connect_data=1234,
    )
    base.update(kw)
    return StreamOffer(**base)  # type: ignore[arg-type]


def test_announce_generator_mirrors_sdpgenerator_exactly() -> None:
    assert announce_sdp(CLIENT_CONFIG, url_addr="192.168.1.10", video_port=47998) == MOONLIGHT_ANNOUNCE


def test_parse_moonlight_announce() -> None:
    cfg = parse_announce_sdp(MOONLIGHT_ANNOUNCE.encode(), host_header="192.168.1.10")
    assert (cfg.width, cfg.height, cfg.fps, cfg.packet_size) == (1920, 1080, 60, 1392)
    assert (cfg.bitrate_kbps, cfg.configured_bitrate_kbps) == (16000, 20000)
    assert cfg.codec == "hevc" and not cfg.hdr and not cfg.yuv444
    assert (cfg.audio_channels, cfg.audio_channel_mask, cfg.audio_packet_duration_ms) == (2, 3, 5)
    assert cfg.audio_high_quality  # stereo quality comes from the Host header
    assert cfg.encrypt_audio and cfg.encrypt_control and not cfg.encrypt_video
    assert cfg.encryption_flags == SS_ENC_CONTROL_V2 | SS_ENC_AUDIO
    assert cfg.fec_min_required == 2 and cfg.fec_repair_percent is None
    assert (cfg.control_protocol, cfg.nv_feature_flags, cfg.ml_feature_flags) == (13, 167, 3)
    assert (cfg.max_reference_frames, cfg.client_refresh_rate_x100, cfg.slices_per_frame) == (1, 6000, 1)
    assert cfg.raw["x-nv-video[0].rateControlMode"] == "4"  # trailing space stripped
    assert cfg.opus_layout == OPUS_LAYOUTS[2, True]


def test_stereo_low_quality_when_host_is_zero_address() -> None:
    assert not parse_announce_sdp(MOONLIGHT_ANNOUNCE, host_header="0.0.0.0").audio_high_quality


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1"])
@pytest.mark.parametrize("channels", [2, 6, 8])
def test_generate_then_parse(codec: str, channels: int) -> None:
    from moonhowl.protocol.sdp import CHANNEL_MASKS

    cfg = replace(
        CLIENT_CONFIG,
        codec=codec,
        audio_channels=channels,  # type: ignore[arg-type]
        audio_channel_mask=CHANNEL_MASKS[channels],
        audio_high_quality=channels > 2,
        hdr=codec != "h264",
        yuv444=True,
    )
    parsed = parse_announce_sdp(announce_sdp(cfg, url_addr="10.0.0.1", video_port=1))
    assert parsed.codec == codec and parsed.hdr == (codec != "h264") and parsed.yuv444
    assert parsed.audio_channels == channels and parsed.audio_channel_mask == CHANNEL_MASKS[channels]
    assert parsed.audio_high_quality == (channels > 2)
    assert parsed.configured_bitrate_kbps == 20000 and parsed.bitrate_kbps == 16000
    if codec == "av1":
        assert "x-nv-clientSupportHevc" not in parsed.raw


def test_video_encryption_shrinks_packet_size_and_remote_bitrate() -> None:
    sdp = announce_sdp(
        replace(CLIENT_CONFIG, encrypt_video=True),
        url_addr="h",
        video_port=1,
        remote=True,
        encryption_enabled=SS_ENC_CONTROL_V2 | SS_ENC_VIDEO,
    )
    cfg = parse_announce_sdp(sdp)
    assert cfg.packet_size == 1392 - 32 and cfg.encrypt_video
    assert cfg.bitrate_kbps == 16000 - 500
    # The client's own audio opt-in still sets nvFeatureFlags 0x20 without SS_ENC_AUDIO.
    assert cfg.encrypt_audio and cfg.raw["x-ss-general.encryptionEnabled"] == "3"


def test_absent_lines_take_defaults() -> None:
    assert parse_announce_sdp("v=0\r\ns=x\r\nt=0 0\r\n") == StreamConfig()


def test_legacy_audio_encryption_flag() -> None:
    assert parse_announce_sdp("a=x-nv-general.featureFlags:167\r\n").encrypt_audio
    assert not parse_announce_sdp("a=x-nv-general.featureFlags:135\r\n").encrypt_audio


def test_repair_percent_from_older_clients() -> None:
    assert parse_announce_sdp("a=x-nv-vqos[0].fec.repairPercent:20 \r\n").fec_repair_percent == 20


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a=x-nv-video[0].clientViewportWd:wide \r\n", SdpValueError),
        ("a=x-nv-video[0].maxFPS:6 0\r\n", SdpValueError),
        ("a=x-nv-video[0].packetSize:0\r\n", SdpValueError),
        ("a=x-nv-audio.surround.numChannels:\r\n", SdpValueError),
        ("a=x-nv-vqos[0].bitStreamFormat:3\r\n", UnknownCodecError),
        ("a=no-colon-here\r\n", SdpError),
        ("a=:value\r\n", SdpError),
    ],
)
def test_bad_announce_values(text: str, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_announce_sdp(text)
    assert isinstance(info.value, ProtocolError) and info.value.status_code == 400


def test_non_utf8_announce() -> None:
    with pytest.raises(SdpError):
        parse_announce_sdp(b"a=x:\xff\r\n")


@pytest.mark.parametrize("hevc", [False, True])
@pytest.mark.parametrize("av1", [False, True])
def test_describe_codec_markers(hevc: bool, av1: bool) -> None:
    text = describe_sdp(offer(hevc=hevc, av1=av1))
    # The exact substrings RtspConnection.c searches for.
    assert ("sprop-parameter-sets=AAAAAU" in text) == hevc
    assert ("AV1/90000" in text) == av1
    assert ("a=rtpmap:98 AV1/90000" in text) == av1
    info = parse_describe_sdp(text)
    assert (info.hevc, info.av1) == (hevc, av1)
    assert info.codecs == {"h264"} | ({"hevc"} if hevc else set()) | ({"av1"} if av1 else set())


def test_describe_flags() -> None:
    text = describe_sdp(
        offer(
            encryption_supported=7, encryption_requested=3, feature_flags=2, reference_frame_invalidation=True
        )
    )
    assert "a=x-ss-general.featureFlags:2" in text
    assert "a=x-ss-general.encryptionSupported:7" in text
    assert "a=x-ss-general.encryptionRequested:3" in text
    info = parse_describe_sdp(text)
    assert (info.feature_flags, info.encryption_supported, info.encryption_requested) == (2, 7, 3)
    assert info.reference_frame_invalidation
    plain = parse_describe_sdp(describe_sdp(offer()))
    assert (plain.feature_flags, plain.encryption_supported, plain.encryption_requested) == (0, 5, 1)
    assert not plain.reference_frame_invalidation


def test_surround_params_match_sunshine_for_51() -> None:
    text = describe_sdp(offer())
    assert "a=fmtp:97 surround-params=642012453\r\n" in text  # Sunshine's normal 5.1 line
    assert "a=fmtp:97 surround-params=660012345\r\n" in text
    assert "a=fmtp:97 surround-params=85301245673\r\n" in text
    assert "a=fmtp:97 surround-params=88001234567\r\n" in text
    assert text.index("surround-params=642") < text.index("surround-params=660")


@pytest.mark.parametrize("channels", [6, 8])
def test_client_ends_with_encoder_mapping(channels: int) -> None:
    # parseOpusConfigurations(): first match = normal (with its LFE swap), second = high quality.
    normal, high = parse_describe_sdp(describe_sdp(offer())).opus_layouts(channels)
    assert normal is not None and high is not None
    expected_normal = OPUS_LAYOUTS[channels, False]
    assert (normal.streams, normal.coupled_streams, normal.mapping) == (
        expected_normal.streams,
        expected_normal.coupled_streams,
        expected_normal.mapping,
    )
    assert high.mapping == OPUS_LAYOUTS[channels, True].mapping and high.coupled_streams == 0
    no_hq = parse_describe_sdp(describe_sdp(offer(surround_high_quality=False)))
    assert no_hq.opus_layouts(channels)[1] is None


def test_surround_fallbacks_without_params() -> None:
    info = parse_describe_sdp(describe_sdp(offer(audio_channels=(2,))))
    assert info.opus_layouts(6) == (OpusLayout(6, 4, 2, (0, 4, 1, 5, 2, 3)), None)  # hardcoded
    assert info.opus_layouts(8) == (None, None)  # the client gives up (-4)
    assert info.opus_layouts(2)[0] == OpusLayout(2, 1, 1, (0, 1))


def test_describe_requires_content() -> None:
    with pytest.raises(SdpError):
        parse_describe_sdp(b"")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12 ", 12),
        ("0x1F", 31),
        ("010", 8),
        ("0", 0),
        (" 7abc", 7),
        ("abc", 0),
        ("", 0),
        ("4294967295", 2**32 - 1),
    ],
)
def test_c_strtoul(text: str, value: int) -> None:
    assert c_strtoul(text) == value


@pytest.mark.parametrize(
    "kw",
    [
        {"session_id": "has;semicolon"},
        {"session_id": "has space"},
        {"session_id": ""},
        {"video_ping_payload": "short"},
        {"audio_ping_payload": "x" * 17},
        {"video_port": 0},
        {"control_connect_data": 2**32},
        {"audio_channels": (2, 4)},
    ],
)
def test_offer_validation(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        offer(**kw)
