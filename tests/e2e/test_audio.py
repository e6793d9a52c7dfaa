"""Audio end to end: each session's sound reaches its own client, encrypted, repaired, decoded."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from moonhowl.client.audio import dominant_frequency, tone_level_db
from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e


def tone_app(freq: int, pan: float) -> str:
    """A desktop whose app plays a sine into the session's sink, panned (-1 left .. 1 right)."""
    pipeline = f"audiotestsrc freq={freq} volume=0.5 ! audiopanorama panorama={pan} ! pulsesink"
    return ('[[apps]]\ntitle = "Desktop"\nkind = "desktop"\n'
            f'command = ["gst-launch-1.0", "-q", {", ".join(f"{w!r}" for w in pipeline.split())}]\n'
            ).replace("'", '"')


async def streaming(host, pin, app_id):
    client = client_for(host, ClientIdentity.generate())
    await pair(host, client, pin)
    return await StreamSession.start(client, app_id, 320, 240, 30)


async def host_with(start_host, h264_encoder, config_text=""):
    return await start_host(encoders=h264_encoder, config_text=config_text, rtsp_port=0, control_port=0,
                            video_port=0, audio_port=0)


async def test_test_pattern_tone_arrives_encrypted_and_decoded(start_host, h264_encoder):
    host = await host_with(start_host, h264_encoder)
    session = await streaming(host, "1234", 2)
    await asyncio.sleep(2.5)
    audio = session.audio
    await session.stop(cancel_app=True)
    stats = audio.stats
    assert session.config.encrypt_audio and stats.packets > 300 and stats.decrypt_failures == 0, stats
    # Between the once-a-second beeps, the steady 440 Hz tone on both channels.
    for channel in (0, 1):
        tone = dominant_frequency(audio.channel(channel, 1.2, 0.4))
        assert abs(tone.frequency_hz - 440) < 5, tone


async def test_an_app_tone_arrives_on_the_right_channel_with_losses_repaired(start_host, h264_encoder,
                                                                           monkeypatch):
    # One data packet lost in every FEC group of 4: each is rebuilt from the 2 parity packets.
    original = StreamSession._on_audio

    def lossy(self, data: bytes) -> None:
        seq = int.from_bytes(data[2:4], "big")
        if data[1] & 0x7F == 97 and seq % 4 == 2:
            return
        original(self, data)

    monkeypatch.setattr(StreamSession, "_on_audio", lossy)
    host = await host_with(start_host, h264_encoder, tone_app(880, -1.0))
    session = await streaming(host, "1234", 1)
    await asyncio.sleep(3)
    audio = session.audio
    await session.stop(cancel_app=True)
    stats = audio.stats
    # A few may be lost at the edges (start, stop) or to scheduling stalls on a loaded machine.
    assert stats.repaired > 100 and stats.lost <= 8, stats
    left, right = audio.channel(0, 1.5, 0.5), audio.channel(1, 1.5, 0.5)
    assert abs(dominant_frequency(left).frequency_hz - 880) < 5
    assert tone_level_db(left, 880) - tone_level_db(right, 880) > 20  # panned hard left


async def test_a_second_session_hears_nothing_of_the_first(start_host, h264_encoder):
    config = tone_app(880, 0.0) + '[[apps]]\ntitle = "Quiet"\nkind = "desktop"\ncommand = ["sleep", "60"]\n'
    host = await host_with(start_host, h264_encoder, config)
    loud = await streaming(host, "1111", 1)
    quiet = await streaming(host, "2222", 2)
    await asyncio.sleep(3)
    loud_audio, quiet_audio = loud.audio, quiet.audio
    await loud.stop(cancel_app=True)
    await quiet.stop(cancel_app=True)
    assert abs(dominant_frequency(loud_audio.channel(0, 1.5, 0.5)).frequency_hz - 880) < 5
    assert quiet_audio.stats.packets > 200  # the quiet session streams audio too: silence
    assert tone_level_db(quiet_audio.channel(0, 1.5, 0.5), 880) < -60


async def test_a_session_whose_audio_server_dies_keeps_its_video(start_host, h264_encoder):
    # The app plays through the dying server and may die with it: that must not end the session.
    config = tone_app(440, 0.0) + "exit_ends_session = false\n"
    host = await host_with(start_host, h264_encoder, config)
    session = await streaming(host, "1234", 1)
    await asyncio.sleep(1.5)
    server = await host.sessions.audio_server()
    assert server is not None and server.pid
    os.kill(server.pid, signal.SIGKILL)
    await asyncio.sleep(1)
    before = session.stats().frames
    await asyncio.sleep(1.5)
    after = session.stats()
    status = host.status()["sessions"][0]
    await session.stop(cancel_app=True)
    assert after.error is None and after.frames - before >= 30
    assert status["audio"]["problem"], status["audio"]
