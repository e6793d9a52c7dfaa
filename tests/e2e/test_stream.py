"""Streaming end to end: moonhowl's client launches "Test pattern", receives, repairs, decodes."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.protocol import control
from moonhowl.protocol.video import VideoPacket
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e

TEST_PATTERN = 2


async def paired_client(host, pin="1234"):
    client = client_for(host, ClientIdentity.generate())
    await pair(host, client, pin)
    return client


async def test_720p60_stream_decodes(streaming_host):
    host = streaming_host
    client = await paired_client(host)
    session = await StreamSession.start(client, TEST_PATTERN, 1280, 720, 60)
    info = await client.serverinfo(https=True)
    assert info["currentgame"] == str(TEST_PATTERN) and info["state"].endswith("_SERVER_BUSY")
    await asyncio.sleep(5)
    stats = session.stats()
    server_side = host.status()["sessions"]
    await session.stop()
    assert stats.error is None
    assert (stats.width, stats.height) == (1280, 720)
    # At least 95% of the frames of 5 s at 60 fps decoded.
    assert stats.decoded_frames >= 0.95 * 60 * stats.duration_s, stats
    assert stats.decode_errors == 0 and stats.lost_frames == 0
    assert stats.idr_frames >= 1
    # The frame header carries the host's real processing latency (capture -> packetize).
    assert 0 < stats.host_latency_p50_ms < 100
    assert server_side[0]["frames_sent"] >= stats.frames and server_side[0]["encoder"] == "x264"


def drop_matching(monkeypatch, predicate):
    """Makes the client lose the video datagrams `predicate(packet)` picks, before FEC repair."""
    original = StreamSession._on_video
    dropped = []

    def on_video(self, data: bytes) -> None:
        try:
            packet = VideoPacket.parse(data)
        except Exception:
            packet = None
        if packet is not None and predicate(packet):
            dropped.append(packet)
            return
        original(self, data)

    monkeypatch.setattr(StreamSession, "_on_video", on_video)
    return dropped


async def test_loss_below_the_parity_of_each_block_is_always_repaired(streaming_host, monkeypatch):
    # The second datagram of every block is lost: always fewer than the block's parity shards.
    dropped = drop_matching(monkeypatch, lambda p: p.shard_index == 1)
    client = await paired_client(streaming_host)
    session = await StreamSession.start(client, TEST_PATTERN, 640, 360, 30)
    await asyncio.sleep(3)
    stats = session.stats()
    await session.stop()
    assert len(dropped) >= 60
    assert stats.fec_repaired_shards >= len(dropped) - 2  # the last frames may still be in flight
    assert stats.lost_frames == 0 and stats.idr_requests == 0
    assert stats.decoded_frames >= 0.9 * 30 * stats.duration_s


async def test_loss_above_parity_asks_for_an_idr_and_recovers_within_a_second(streaming_host, monkeypatch):
    lost_at: list[float] = []

    def lose_frame_40(packet: VideoPacket) -> bool:
        if packet.frame_index == 40:
            if not lost_at:
                lost_at.append(time.monotonic())
            return True
        return False

    drop_matching(monkeypatch, lose_frame_40)
    client = await paired_client(streaming_host)
    session = await StreamSession.start(client, TEST_PATTERN, 640, 360, 30)
    original_on_frame = StreamSession._on_frame
    idr_after_loss: list[float] = []

    def on_frame(frame):
        if lost_at and frame.is_idr and frame.frame_index > 40 and not idr_after_loss:
            idr_after_loss.append(time.monotonic())
        original_on_frame(session, frame)

    session._on_frame = on_frame  # the depacketizer path calls self._on_frame
    await asyncio.sleep(4)
    stats = session.stats()
    await session.stop()
    assert lost_at, "frame 40 never arrived"
    assert stats.idr_requests >= 1
    assert idr_after_loss and idr_after_loss[0] - lost_at[0] < 1.0
    assert stats.lost_frames >= 1


async def test_two_clients_stream_independently(streaming_host):
    host = streaming_host
    first, second = await paired_client(host, "1111"), await paired_client(host, "2222")
    one = await StreamSession.start(first, TEST_PATTERN, 640, 360, 30)
    two = await StreamSession.start(second, TEST_PATTERN, 320, 240, 30)
    assert len(host.sessions.sessions) == 2
    await asyncio.sleep(2)
    # Stopping one (the client quits the app) leaves the other untouched.
    await one.stop(cancel_app=True)
    before = two.stats().frames
    await asyncio.sleep(2)
    after = two.stats()
    assert len(host.sessions.sessions) == 1
    await two.stop()
    assert one.stats().frames > 30
    assert after.frames - before >= 50 and after.error is None
    assert (after.width, after.height) == (320, 240)


async def test_cancel_sends_termination_and_frees_the_session(streaming_host):
    host = streaming_host
    client = await paired_client(host)
    session = await StreamSession.start(client, TEST_PATTERN, 320, 240, 30)
    await asyncio.sleep(1)
    pipeline = next(iter(host.sessions.sessions.values())).pipeline
    await client.cancel()
    assert await session.wait(5)
    assert session.termination_reason == control.TERMINATION_GRACEFUL
    assert host.sessions.sessions == {}
    assert not pipeline.running
    assert (await client.serverinfo(https=True))["currentgame"] == "0"
    await session.stop()


async def test_a_vanished_client_frees_its_session(streaming_host, monkeypatch):
    host = streaming_host
    host.config.values["stream"]["idle_timeout"] = 2
    client = await paired_client(host)
    session = await StreamSession.start(client, TEST_PATTERN, 320, 240, 30)
    await asyncio.sleep(0.5)
    server_session = next(iter(host.sessions.sessions.values()))
    # The client disappears without a word: its tasks stop and its sockets close silently.
    for task in session._tasks:
        task.cancel()
    session._endpoint._transport.abort()
    session._video.transport.abort()
    await asyncio.wait_for(server_session.ended.wait(), 10)
    assert "no control traffic for 2 s" in server_session.end_reason
    assert host.sessions.sessions == {}
    assert not server_session.pipeline.running


async def test_malformed_rtsp_and_control_input_do_not_touch_other_sessions(streaming_host):
    host = streaming_host
    client = await paired_client(host)
    session = await StreamSession.start(client, TEST_PATTERN, 320, 240, 30)
    server_session = next(iter(host.sessions.sessions.values()))
    await asyncio.sleep(0.5)
    before = session.stats().frames
    # Garbage on the RTSP port of the session, one request per connection as clients do.
    for garbage in (b"\x00\x01garbage\r\n\r\n", b"DESCRIBE rtsp://x RTSP/9.9\r\nCSeq: 1\r\n\r\n",
                    b"SETUP streamid=bogus/0/0 RTSP/1.0\r\nCSeq: 2\r\n\r\n",
                    b"ANNOUNCE / RTSP/1.0\r\nCSeq: 3\r\nContent-length: 99999999\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server_session.rtsp_port)
        writer.write(garbage)
        await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"RTSP/1.0 4") or reply.startswith(b"RTSP/1.0 5"), reply
    # Garbage datagrams on the shared control, video and audio ports.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for port in (host.sessions.control_port, host.sessions.video.port, host.sessions.audio.port):
            for payload in (b"", b"\xff" * 3, b"\x00" * 200, bytes(range(256)) * 4):
                udp.sendto(payload, ("127.0.0.1", port))
    # A control message sealed with the wrong key, through the session's own ENet peer.
    wrong = control.ControlCipher(b"\x00" * 16, is_host=False).seal(control.REQUEST_IDR_FRAME, b"\x00\x00")
    session._endpoint.send(session._peer, control.CHANNEL_URGENT, wrong)
    await asyncio.sleep(1.5)
    stats = session.stats()
    await session.stop()
    assert stats.error is None and stats.frames - before >= 30
    assert server_session.stats.control_errors >= 1


async def test_describe_offers_only_working_codecs(streaming_host):
    from moonhowl.client.rtsp import rtsp_handshake
    from moonhowl.protocol.sdp import StreamConfig

    client = await paired_client(streaming_host)
    from moonhowl.client.stream import new_rikey, rtsp_port_from_url

    rikey, rikeyid = new_rikey()
    url = await client.launch(TEST_PATTERN, 320, 240, 30, rikey=rikey, rikeyid=rikeyid)
    result = await rtsp_handshake("127.0.0.1", rtsp_port_from_url(url), StreamConfig(width=320, height=240, fps=30))
    assert result.describe.codecs == frozenset({"h264"})
    info = await client.serverinfo(https=True)
    assert int(info["ServerCodecModeSupport"]) == 0x1
    await client.cancel()


async def test_server_shutdown_terminates_streams_gracefully(streaming_host):
    host = streaming_host
    client = await paired_client(host)
    session = await StreamSession.start(client, TEST_PATTERN, 320, 240, 30)
    await asyncio.sleep(1)
    await host.stop()
    assert await session.wait(5)
    assert session.termination_reason == control.TERMINATION_GRACEFUL
    assert session.stats().error is None  # graceful after frames is a normal end for the client
    await session.stop()


async def test_launch_errors_are_answered_in_xml(streaming_host):
    from moonhowl.client.gamestream import GameStreamError
    from moonhowl.client.stream import new_rikey

    client = await paired_client(streaming_host)
    rikey, rikeyid = new_rikey()
    with pytest.raises(GameStreamError, match="no app with id 99"):
        await client.launch(99, 640, 360, 30, rikey=rikey, rikeyid=rikeyid)
    with pytest.raises(GameStreamError, match="no session to resume"):
        await client.resume(2, 640, 360, 30, rikey=rikey, rikeyid=rikeyid)
    streaming_host.config.values["stream"]["max_sessions"] = 1
    await client.launch(2, 320, 240, 30, rikey=rikey, rikeyid=rikeyid)
    other = await paired_client(streaming_host, "9999")
    with pytest.raises(GameStreamError, match="streaming to 1 clients already"):
        await other.launch(2, 320, 240, 30, rikey=rikey, rikeyid=rikeyid)
    await client.cancel()
