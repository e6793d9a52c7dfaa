"""moonhowl's RTSP client against a real TCP server built on RtspServerSession."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from moonhowl.client.rtsp import RtspClientHandshake, RtspHandshakeError, rtsp_handshake, transact
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.rtsp import RtspReader, RtspRequest, RtspServerSession
from moonhowl.protocol.sdp import SS_ENC_AUDIO, SS_ENC_CONTROL_V2, SS_ENC_VIDEO, StreamConfig, StreamOffer

pytestmark = pytest.mark.integration


def make_offer(**kw: object) -> StreamOffer:
    base: dict[str, object] = dict(
        session_id="MHsession42", video_port=47998, audio_port=48000, control_port=47999,
        video_ping_payload="vvvvvvvvvvvvvvv1", audio_ping_payload="aaaaaaaaaaaaaaa2",
        control_connect_data=0x1234ABCD)
    base.update(kw)
    return StreamOffer(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def rtsp_server(session: RtspServerSession, seen: list[RtspRequest]) -> AsyncIterator[int]:
    """One request per connection; reply, then close (what the client reads to EOF for)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtspReader(RtspRequest)
        try:
            while chunk := await reader.read(1024):
                try:
                    requests = parser.feed(chunk)
                except ProtocolError as exc:
                    writer.write(bytes(session.error_response(exc)))
                    break
                if requests:
                    seen.append(requests[0])
                    writer.write(bytes(session.handle(requests[0])))
                    break
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_full_handshake() -> None:
    offer = make_offer(hevc=True)
    session = RtspServerSession(offer)
    seen: list[RtspRequest] = []
    config = StreamConfig(width=1280, height=720, fps=120, bitrate_kbps=30000, codec="hevc",
                          encrypt_audio=True)
    async with rtsp_server(session, seen) as port:
        result = await rtsp_handshake("127.0.0.1", port, config)
    assert [r.method for r in seen] == ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "SETUP", "ANNOUNCE", "PLAY"]
    assert [r.cseq for r in seen] == [str(i) for i in range(1, 8)]
    assert seen[0].target == f"rtsp://127.0.0.1:{port}" and seen[0].headers["Host"] == "127.0.0.1"
    assert [r.target for r in seen[2:]] == [
        "streamid=audio/0/0", "streamid=video/0/0", "streamid=control/13/0", "streamid=control/13/0", "/"]
    assert "Session" not in seen[2].headers and seen[3].headers["Session"] == "MHsession42"
    assert (result.audio_port, result.video_port, result.control_port) == (48000, 47998, 47999)
    assert result.audio_ping_payload == offer.audio_ping_payload
    assert result.video_ping_payload == offer.video_ping_payload
    assert result.control_connect_data == 0x1234ABCD and result.session_id == "MHsession42"
    assert result.codecs == {"h264", "hevc"}
    assert session.playing and session.config == result.config
    cfg = result.config
    assert (cfg.width, cfg.height, cfg.fps, cfg.codec) == (1280, 720, 120, "hevc")
    assert cfg.configured_bitrate_kbps == 30000 and cfg.bitrate_kbps == 24000
    assert cfg.encrypt_control and cfg.encrypt_audio and not cfg.encrypt_video
    assert cfg.encryption_flags == SS_ENC_CONTROL_V2 | SS_ENC_AUDIO and cfg.audio_high_quality


async def test_codec_falls_back_and_host_requested_encryption() -> None:
    offer = make_offer(hevc=False, encryption_supported=7,
                       encryption_requested=SS_ENC_CONTROL_V2 | SS_ENC_VIDEO)
    session = RtspServerSession(offer)
    config = StreamConfig(codec="hevc", bitrate_kbps=10000, audio_channels=6, audio_channel_mask=0x3F)
    async with rtsp_server(session, []) as port:
        result = await rtsp_handshake("127.0.0.1", port, config, codecs=["av1", "hevc"])
    cfg = result.config
    assert cfg.codec == "h264" and cfg.encrypt_video and cfg.packet_size == 1392 - 32
    assert cfg.audio_channels == 6 and not cfg.audio_high_quality  # < 15 Mbps: low quality audio
    assert result.describe.opus_layouts(6)[0] is not None
    assert session.config is not None and session.config.encrypt_video


async def test_low_bitrate_uses_zero_address() -> None:
    seen: list[RtspRequest] = []
    async with rtsp_server(RtspServerSession(make_offer()), seen) as port:
        result = await rtsp_handshake("127.0.0.1", port, StreamConfig(bitrate_kbps=5000))
    assert seen[0].target == f"rtsp://0.0.0.0:{port}" and seen[5].headers["Host"] == "0.0.0.0"
    assert not result.config.audio_high_quality


async def test_host_refusal_surfaces_status() -> None:
    session = RtspServerSession(make_offer(audio_channels=(2,)))
    async with rtsp_server(session, []) as port:
        with pytest.raises(RtspHandshakeError) as info:
            await rtsp_handshake("127.0.0.1", port, StreamConfig(audio_channels=8, audio_channel_mask=0x63F))
    # The client itself gives up on 7.1 without surround-params, as parseOpusConfigurations() does.
    assert info.value.step == "DESCRIBE"
    session = RtspServerSession(make_offer(encryption_requested=SS_ENC_CONTROL_V2 | SS_ENC_AUDIO))
    async with rtsp_server(session, []) as port:
        bad = RtspClientHandshake("127.0.0.1", port, StreamConfig())
        for _ in range(2):
            request = bad.next_request()
            assert request is not None
            bad.receive(await transact("127.0.0.1", port, request))
        setup = bad.next_request()
        assert setup is not None
        unknown = replace(setup, target="streamid=bogus/0/0")
        with pytest.raises(RtspHandshakeError) as info:
            bad.receive(await transact("127.0.0.1", port, unknown, "SETUP"))
    assert info.value.status == 404 and not session.playing


async def test_malformed_request_gets_400_over_tcp() -> None:
    async with rtsp_server(RtspServerSession(make_offer()), []) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS * RTSP/1.0\r\nContent-Length: nope\r\n\r\n")
        await writer.drain()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert reply.startswith(b"RTSP/1.0 400 ")
