"""Input end to end: what moonhowl's client sends through the encrypted control stream reaches
the apps in the session's desktop."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest

from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.protocol import input as inp
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e

VK_A, VK_RETURN = 0x41, 0x0D
KEY_A, KEY_ENTER = 30, 28
BTN_LEFT = 0x110


async def start(start_host, h264_encoder, config_text="", app_id=2, mode=(640, 480, 30)):
    host = await start_host(encoders=h264_encoder, config_text=config_text, rtsp_port=0, control_port=0,
                            video_port=0, audio_port=0)
    client = client_for(host, ClientIdentity.generate())
    await pair(host, client)
    session = await StreamSession.start(client, app_id, *mode, decode=False)
    return host, session


async def test_input_without_a_desktop_is_counted_and_bad_input_dropped(start_host, h264_encoder):
    host, session = await start(start_host, h264_encoder)
    await asyncio.sleep(0.3)
    session.send_input(inp.MousePosition(320, 240, 640, 480))
    session.send_input(inp.KeyEvent(VK_A, True))
    session.send_input(inp.KeyEvent(VK_A, False))
    # A truncated packet and one with an unknown magic, sealed correctly: counted, dropped.
    session._send(0x0206, b"\x00\x00\x00\x08\x99\x99\x99\x99\x00\x00\x00\x00", 0)
    session._send(0x0206, b"\x00\x00\x00\x10", 0)
    await asyncio.sleep(0.5)
    stats = host.status()["sessions"][0]["input"]
    frames_ok = session.stats().frames > 5
    await session.stop(cancel_app=True)
    assert stats["delivered"] == 3 and stats["dropped"] == 2, stats
    assert frames_ok


@pytest.mark.skipif(shutil.which("weston-eventdemo") is None, reason="weston-eventdemo not installed")
async def test_keys_pointer_and_scroll_reach_a_wayland_app(start_host, h264_encoder, caplog):
    caplog.set_level(logging.INFO)
    # stdbuf: the app's stdout is a pipe, and its log lines must arrive while it runs.
    config = ('[[apps]]\ntitle = "Desktop"\nkind = "desktop"\ncommand = ["stdbuf", "-oL", "weston-eventdemo", '
              '"--log-key", "--log-button", "--log-axis", "--log-motion"]\n')
    _host, session = await start(start_host, h264_encoder, config, app_id=1)
    await asyncio.sleep(2)  # the app maps its window
    session.send_input(inp.MousePosition(320, 240, 640, 480))
    session.send_input(inp.MouseButton(1, True))
    session.send_input(inp.MouseButton(1, False))
    session.send_input(inp.KeyEvent(VK_A, True))
    session.send_input(inp.KeyEvent(VK_A, False))
    session.send_input(inp.KeyEvent(VK_RETURN, True))
    session.send_input(inp.KeyEvent(VK_RETURN, False))
    session.send_input(inp.Scroll(120))
    await asyncio.sleep(1.5)
    await session.stop(cancel_app=True)
    log = "\n".join(r.getMessage() for r in caplog.records if "app:" in r.getMessage())
    # weston-eventdemo prints evdev key codes and unicode: "key key: 30, unicode: 97, state: pressed".
    keys = re.findall(r"key key: (\d+), unicode: (\d+), state: (\w+)", log)
    assert keys == [(str(KEY_A), "97", "pressed"), (str(KEY_A), "97", "released"),
                    (str(KEY_ENTER), "65293", "pressed"), (str(KEY_ENTER), "65293", "released")], log
    # The absolute position, scaled from the client's 640x480 reference to the 640x480 output.
    assert re.search(r"motion time: \d+, x: 319\.\d+, y: 239\.\d+", log), log
    assert f"button: {BTN_LEFT}, state: pressed" in log and f"button: {BTN_LEFT}, state: released" in log
    # Moonlight's +120 is one detent up: Wayland's axis goes negative.
    assert "axis discrete axis: 0 value: -1" in log and "axis: vertical, value: -15.0" in log, log


@pytest.mark.skipif(shutil.which("foot") is None, reason="foot not installed")
async def test_text_typed_into_the_terminal_shows_in_the_stream(start_host, h264_encoder):
    from moonhowl.client.keyboard import type_events
    from tests.e2e.test_desktop import dominant_colour

    config = '[[apps]]\ntitle = "Desktop"\nkind = "desktop"\ncommand = ["foot"]\nenv = { SHELL = "/bin/sh" }\n'
    host = await start_host(encoders=h264_encoder, config_text=config, rtsp_port=0, control_port=0, video_port=0,
                            audio_port=0)
    client = client_for(host, ClientIdentity.generate())
    await pair(host, client)
    session = await StreamSession.start(client, 1, 640, 480, 30)
    await asyncio.sleep(2.5)  # the terminal and its shell start
    before, _ = dominant_colour(session._decoder.last_frame())
    # Typed key by key: a command that turns the terminal's background red (OSC 11).
    for event in type_events("printf '\\033]11;#ff0000\\007'\n"):
        session.send_input(event)
        await asyncio.sleep(0.005)
    await asyncio.sleep(1.5)
    after, share = dominant_colour(session._decoder.last_frame())
    await session.stop(cancel_app=True)
    assert before != after
    assert after[0] >= 0xE0 and after[1] <= 0x10 and after[2] <= 0x10 and share > 0.6, (before, after, share)


async def test_touch_reaches_a_wayland_app(start_host, h264_encoder, caplog):
    caplog.set_level(logging.INFO)
    app = Path(__file__).resolve().parents[1] / "apps" / "touch_logger.py"
    config = f'[[apps]]\ntitle = "Desktop"\nkind = "desktop"\ncommand = ["{sys.executable}", "{app}"]\n'
    _host, session = await start(start_host, h264_encoder, config, app_id=1)
    for _ in range(100):  # until the app has mapped its window
        if any("app: mapped" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    # Normalised coordinates over the video area, as Moonlight sends them (SS_TOUCH).
    session.send_input(inp.Touch(inp.TOUCH_DOWN, 7, 0.5, 0.5, 1.0))
    session.send_input(inp.Touch(inp.TOUCH_MOVE, 7, 0.25, 0.75, 1.0))
    session.send_input(inp.Touch(inp.TOUCH_UP, 7, 0.25, 0.75, 0.0))
    await asyncio.sleep(1.0)
    await session.stop(cancel_app=True)
    lines = [r.getMessage().split("app: ", 1)[1] for r in caplog.records if "app: touch" in r.getMessage()]
    downs = [line for line in lines if line.startswith("touch down")]
    assert len(downs) == 1 and re.fullmatch(r"touch down id=\d+ x=3(19|20)\.\d y=2(39|40)\.\d", downs[0]), lines
    assert any(re.fullmatch(r"touch motion id=\d+ x=1(59|60)\.\d y=3(59|60)\.\d", line) for line in lines), lines
    assert any(line.startswith("touch up") for line in lines) and "touch frame" in lines, lines
