"""The "Desktop" app end to end: a real Wayland client in the session's desktop shows up in the
stream that moonhowl's client decodes."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e

APPS = Path(__file__).resolve().parents[1] / "apps"


def desktop_config(command: list[str], env: dict[str, str] | None = None) -> str:
    env_toml = ", ".join(f'{k} = "{v}"' for k, v in (env or {}).items())
    return (f'[[apps]]\ntitle = "Desktop"\nkind = "desktop"\ncommand = {command!r}\n'
            f"env = {{{env_toml}}}\n".replace("'", '"'))


def dominant_colour(frame: tuple[int, int, bytes]) -> tuple[tuple[int, int, int], float]:
    """The most common RGB colour of the decoded picture (coarsely binned) and its share."""
    _width, _height, rgb = frame
    counts: dict[tuple[int, int, int], int] = {}
    step = 3 * 7  # every 7th pixel is plenty
    for i in range(0, len(rgb) - 2, step):
        key = (rgb[i] >> 4 << 4, rgb[i + 1] >> 4 << 4, rgb[i + 2] >> 4 << 4)
        counts[key] = counts.get(key, 0) + 1
    colour, n = max(counts.items(), key=lambda kv: kv[1])
    return colour, n / sum(counts.values())


async def stream_desktop(start_host, h264_encoder, command, env=None, seconds=4.0):
    host = await start_host(encoders=h264_encoder, config_text=desktop_config(command, env), rtsp_port=0,
                            control_port=0, video_port=0, audio_port=0)
    client = client_for(host, ClientIdentity.generate())
    await pair(host, client)
    session = await StreamSession.start(client, 1, 640, 480, 30)
    await asyncio.sleep(seconds)
    frame = session._decoder.last_frame() if session._decoder else None
    stats = session.stats()
    server = host.status()["sessions"][0]
    await session.stop(cancel_app=True)
    return stats, server, frame


@pytest.mark.skipif(shutil.which("weston-simple-shm") is None, reason="weston-simple-shm not installed")
async def test_weston_simple_shm_is_streamed(start_host, h264_encoder):
    stats, _server, frame = await stream_desktop(start_host, h264_encoder, ["weston-simple-shm"])
    assert stats.error is None and stats.decoded_frames > 30, stats
    assert frame is not None and frame[:2] == (640, 480)
    colour, share = dominant_colour(frame)
    assert colour != (0, 0, 0) or share < 0.9, "the picture is all black"


@pytest.mark.parametrize("toolkit, command, env", [
    ("gtk4", [sys.executable, str(APPS / "gtk4_color.py"), "#2080e0"], {}),
    ("qt6", [sys.executable, str(APPS / "qt6_color.py"), "#2080e0"], {"QT_QPA_PLATFORM": "wayland"}),
])
async def test_toolkit_app_colour_is_streamed(start_host, h264_encoder, toolkit, command, env):
    stats, _server, frame = await stream_desktop(start_host, h264_encoder, command, env)
    assert stats.error is None and stats.decoded_frames > 30, stats
    colour, share = dominant_colour(frame)
    expected = (0x20, 0x80, 0xE0)
    assert share > 0.5 and all(abs(c - e) <= 24 for c, e in zip(colour, expected, strict=True)), (colour, share)


@pytest.mark.skipif(shutil.which("weston-simple-egl") is None, reason="weston-simple-egl not installed")
async def test_weston_simple_egl_triangle_is_streamed(start_host, h264_encoder):
    stats, _server, frame = await stream_desktop(start_host, h264_encoder, ["weston-simple-egl"])
    assert stats.error is None and stats.decoded_frames > 30, stats
    width, height, rgb = frame
    lit = 0
    for y in range(height // 4, 3 * height // 4, 8):  # the spinning triangle covers the middle
        for x in range(width // 4, 3 * width // 4, 8):
            i = (y * width + x) * 3
            lit += max(rgb[i:i + 3]) > 64
    assert lit > 100, lit
