"""Protocol behaviour of moonhowl's compositor, driven by a wire-level client (WireClient).

Frames are taken by hand here (snapshot -> CpuRenderer -> frame_presented), so each test decides
exactly when a frame is shown and can check what a client may and may not have received by then.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from moonhowl.render.cpu import CpuRenderer
from moonhowl.wayland.client import WireClient
from moonhowl.wayland.display import Compositor
from moonhowl.wayland.scene import DRM_FORMAT_XRGB8888, DmabufContent, Scene, SolidContent

pytestmark = pytest.mark.integration

W, H, FPS = 640, 480, 30
LINEAR = 0


class Harness:
    def __init__(self, comp: Compositor) -> None:
        self.comp = comp
        self.renderer = CpuRenderer(W, H)
        self.clients: list[WireClient] = []
        self.frame = b""

    async def client(self) -> WireClient:
        client = WireClient(self.comp.socket_path)
        self.clients.append(client)
        await client.setup()
        return client

    def present(self) -> Scene:
        scene = self.comp.snapshot()
        self.frame = self.renderer.render(scene)
        self.comp.frame_presented(scene, time.monotonic_ns())
        return scene

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        b, g, r = self.frame[(y * W + x) * 4:(y * W + x) * 4 + 3]
        return r, g, b

    async def settle(self) -> None:
        for client in self.clients:
            if not client.eof:
                await client.roundtrip()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    comp = Compositor(runtime, W, H, FPS, dmabuf_formats=[(DRM_FORMAT_XRGB8888, LINEAR)])
    await comp.start()
    h = Harness(comp)
    yield h
    for client in h.clients:
        client.close()
    await comp.stop()


def no_event(client: WireClient, match: Callable[..., bool]) -> bool:
    return not any(match(e) for e in client.events)


async def test_buffers_and_frame_callbacks_follow_presentation(harness: Harness) -> None:
    client = await harness.client()
    surface, _, first = await client.map_toplevel((10, 200, 30))
    scene = harness.comp.snapshot()  # being "rendered" while the client moves on
    second = client.shm_buffer(W, H, (1, 2, 3))
    callback = client.new("wl_callback")
    client.send(surface, "attach", second, 0, 0)
    client.send(surface, "frame", callback)
    client.send(surface, "commit")
    await client.roundtrip()
    # the first buffer is in a scene not yet presented: not released; the callback waits
    assert no_event(client, lambda e: e.object_id in (first, callback))
    assert harness.comp.needs_frame
    harness.comp.frame_presented(scene, time.monotonic_ns())
    await client.event(first, "release")
    assert no_event(client, lambda e: e.object_id == callback)
    harness.present()
    done = await client.event(callback, "done")
    assert abs(done.args[0] - (time.monotonic_ns() // 1_000_000) % 2**32) < 1000
    assert harness.pixel(320, 240) == (1, 2, 3)
    assert not harness.comp.needs_frame  # idle: nothing to draw, nobody waiting
    assert not harness.comp.snapshot().damaged


async def test_presentation_feedback_presented_or_discarded(harness: Harness) -> None:
    client = await harness.client()
    presentation = client.singleton("wp_presentation")
    assert (await client.event(presentation, "clock_id")).args == [1]  # CLOCK_MONOTONIC
    client.singleton("wl_output")
    surface, _, _ = await client.map_toplevel((0, 0, 0))
    superseded, shown = client.new("wp_presentation_feedback"), client.new("wp_presentation_feedback")
    client.send(presentation, "feedback", surface, superseded)
    client.send(surface, "commit")
    client.send(presentation, "feedback", surface, shown)
    client.send(surface, "commit")
    await client.event(superseded, "discarded")
    before = time.monotonic_ns()
    harness.present()
    await client.event(shown, "sync_output")
    presented = await client.event(shown, "presented")
    sec_hi, sec_lo, nsec, refresh, _, msc, flags = presented.args
    assert (sec_hi << 32 | sec_lo) * 10**9 + nsec >= before
    assert refresh == 10**9 // FPS and msc >= 1 and flags & 1


async def test_fullscreen_toplevel_smaller_than_the_output_is_centred(harness: Harness) -> None:
    client = await harness.client()
    surface, xdg, _, configure = await client.toplevel()
    assert configure.args[:2] == [W, H] and client.states(configure.args[2]) == [2, 4]  # fullscreen, activated
    client.send(xdg, "ack_configure", configure.args[3])
    client.send(surface, "attach", client.shm_buffer(100, 50, (255, 0, 0)), 0, 0)
    client.send(surface, "commit")
    await client.roundtrip()
    drawable = harness.present().drawables[0]
    assert (drawable.x, drawable.y, drawable.width, drawable.height) == (270, 215, 100, 50)
    assert harness.pixel(320, 240) == (255, 0, 0) and harness.pixel(10, 10) == (0, 0, 0)


async def test_activation_and_keyboard_focus_follow_the_top_toplevel(harness: Harness) -> None:
    first, second = await harness.client(), await harness.client()
    kb = first.new("wl_keyboard")
    first.send(first.singleton("wl_seat"), "get_keyboard", kb)
    surface, _, _ = await first.map_toplevel((1, 1, 1))
    assert (await first.event(kb, "enter")).args[1] == surface
    await second.map_toplevel((2, 2, 2))
    await first.event(kb, "leave")
    # the first toplevel is reconfigured without "activated" and never acks: it stays drawn
    deactivated = await first.wait(lambda e: e.name == "configure" and e.interface == "xdg_toplevel")
    assert first.states(deactivated.args[2]) == [2]
    harness.present()
    assert harness.pixel(5, 5) == (2, 2, 2)
    second.close()
    await asyncio.sleep(0.05)
    assert (await first.event(kb, "enter")).args[1] == surface
    assert harness.present() and harness.pixel(5, 5) == (1, 1, 1)


async def test_subsurfaces_sync_desync_and_stacking(harness: Harness) -> None:
    client = await harness.client()
    parent, _, _ = await client.map_toplevel((0, 0, 255))
    child = client.surface()
    sub = client.new("wl_subsurface")
    client.send(client.singleton("wl_subcompositor"), "get_subsurface", sub, child, parent)
    client.send(sub, "set_position", 10, 20)
    client.send(child, "attach", client.shm_buffer(50, 50, (0, 255, 0)), 0, 0)
    client.send(child, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(30, 40) == (0, 0, 255)  # synchronized: waits for the parent's commit
    client.send(parent, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(30, 40) == (0, 255, 0) and harness.pixel(5, 5) == (0, 0, 255)
    client.send(sub, "set_desync")
    client.send(child, "attach", client.shm_buffer(50, 50, (255, 255, 0)), 0, 0)
    client.send(child, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(30, 40) == (255, 255, 0)  # desynchronized: applied at once
    client.send(sub, "place_below", parent)
    client.send(parent, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(30, 40) == (0, 0, 255)  # now under the opaque parent


async def test_viewport_and_single_pixel_buffer(harness: Harness) -> None:
    client = await harness.client()
    surface, xdg, _, configure = await client.toplevel()
    client.send(xdg, "ack_configure", configure.args[3])
    pixel = client.new("wl_buffer")
    client.send(client.singleton("wp_single_pixel_buffer_manager_v1"), "create_u32_rgba_buffer", pixel,
                0xFFFFFFFF, 0x80000000, 0, 0xFFFFFFFF)
    viewport = client.new("wp_viewport")
    client.send(client.singleton("wp_viewporter"), "get_viewport", viewport, surface)
    client.send(viewport, "set_destination", W, H)
    client.send(surface, "attach", pixel, 0, 0)
    client.send(surface, "commit")
    await client.roundtrip()
    drawable = harness.present().drawables[0]
    assert isinstance(drawable.content, SolidContent) and drawable.opaque
    assert (drawable.width, drawable.height) == (W, H)
    assert harness.pixel(600, 400) == (255, 128, 0)
    # a crop of a 4x2 shm buffer, scaled up: the drawable carries the source rectangle
    client.send(surface, "attach", client.shm_buffer(4, 2, (9, 9, 9)), 0, 0)
    client.send(viewport, "set_source", 1.0, 0.0, 2.0, 2.0)
    client.send(surface, "commit")
    await client.roundtrip()
    drawable = harness.present().drawables[0]
    assert drawable.src is not None and (drawable.src.x, drawable.src.width) == (1, 2)
    assert harness.pixel(320, 240) == (9, 9, 9)
    client.send(viewport, "set_source", 1.0, 0.0, 5.0, 2.0)  # beyond the buffer
    client.send(surface, "commit")
    assert (await client.wait(lambda e: e.name == "error")).args[:2] == [viewport, 2]  # out_of_buffer


async def test_linux_dmabuf_feedback_and_buffers(harness: Harness) -> None:
    client = await harness.client()
    dmabuf = client.singleton("zwp_linux_dmabuf_v1")
    feedback = client.new("zwp_linux_dmabuf_feedback_v1")
    client.send(dmabuf, "get_default_feedback", feedback)
    table = await client.event(feedback, "format_table")
    data = os.pread(table.fds[0], table.args[1], 0)
    assert struct.unpack("=IIQ", data) == (DRM_FORMAT_XRGB8888, 0, LINEAR)
    assert struct.unpack("=H", (await client.event(feedback, "tranche_formats")).args[0]) == (0,)
    await client.event(feedback, "done")
    surface, xdg, _, configure = await client.toplevel()
    client.send(xdg, "ack_configure", configure.args[3])
    fd = os.memfd_create("fake-dmabuf")
    os.write(fd, bytes((40, 30, 20, 255)) * (W * H))
    params, buffer = client.new("zwp_linux_buffer_params_v1"), client.new("wl_buffer")
    client.send(dmabuf, "create_params", params)
    client.send(params, "add", fd, 0, 0, W * 4, 0, 0, fds=(fd,))
    client.send(params, "create_immed", buffer, W, H, DRM_FORMAT_XRGB8888, 0)
    bad = client.new("zwp_linux_buffer_params_v1")
    client.send(dmabuf, "create_params", bad)
    client.send(bad, "add", fd, 0, 0, W * 4, 0, 0, fds=(fd,))
    client.send(bad, "create", W, H, 0x34325241, 0)  # AR24: not offered
    os.close(fd)
    await client.event(bad, "failed")
    client.send(surface, "attach", buffer, 0, 0)
    client.send(surface, "commit")
    await client.roundtrip()
    drawable = harness.present().drawables[0]
    assert isinstance(drawable.content, DmabufContent) and drawable.content.strides == (W * 4,)
    assert harness.pixel(100, 100) == (20, 30, 40)


async def test_popup_is_positioned_and_constrained(harness: Harness) -> None:
    client = await harness.client()
    _, xdg, _ = await client.map_toplevel((0, 0, 255))
    positioner = client.new("xdg_positioner")
    client.send(client.wm_base, "create_positioner", positioner)
    client.send(positioner, "set_size", 200, 100)
    client.send(positioner, "set_anchor_rect", 600, 10, 30, 20)
    client.send(positioner, "set_anchor", 8)   # bottom_right
    client.send(positioner, "set_gravity", 8)  # bottom_right
    client.send(positioner, "set_constraint_adjustment", 4 | 2)  # flip_x | slide_y
    surface, pxdg, popup = client.surface(), client.new("xdg_surface"), client.new("xdg_popup")
    client.send(client.wm_base, "get_xdg_surface", pxdg, surface)
    client.send(pxdg, "get_popup", popup, xdg, positioner)
    client.send(surface, "commit")
    # 630 + 200 overflows 640: flipped to the anchor rectangle's left edge, growing leftwards
    assert (await client.event(popup, "configure")).args == [400, 30, 200, 100]
    client.send(pxdg, "ack_configure", (await client.event(pxdg, "configure")).args[0])
    client.send(surface, "attach", client.shm_buffer(200, 100, (255, 255, 0)), 0, 0)
    client.send(surface, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(450, 60) == (255, 255, 0) and harness.pixel(390, 60) == (0, 0, 255)
    client.send(positioner, "set_anchor_rect", 10, 470, 20, 10)  # near the bottom: slides up
    client.send(popup, "reposition", positioner, 7)
    assert (await client.event(popup, "repositioned")).args == [7]
    assert (await client.event(popup, "configure")).args == [30, 380, 200, 100]


async def test_seat_input_reaches_the_focused_client(harness: Harness) -> None:
    client = await harness.client()
    seat = client.singleton("wl_seat")
    pointer, keyboard, touch = client.new("wl_pointer"), client.new("wl_keyboard"), client.new("wl_touch")
    for device, request in ((pointer, "get_pointer"), (keyboard, "get_keyboard"), (touch, "get_touch")):
        client.send(seat, request, device)
    keymap = await client.event(keyboard, "keymap")
    assert keymap.args[0] == 1 and os.pread(keymap.fds[0], 10, 0) == b"xkb_keymap"
    surface, _, _ = await client.map_toplevel((0, 128, 0))
    assert (await client.event(keyboard, "enter")).args[1] == surface
    seat_state = harness.comp.seat
    seat_state.pointer_motion(100, 50)
    assert (await client.event(pointer, "motion")).args[1:] == [100.0, 50.0]
    await client.event(pointer, "frame")
    seat_state.pointer_button(0x110, True)
    assert (await client.event(pointer, "button")).args[2:] == [0x110, 1]
    seat_state.pointer_axis(0, 15.0, 120)
    assert (await client.event(pointer, "axis_value120")).args == [0, 120]
    assert (await client.event(pointer, "axis")).args[1:] == [0, 15.0]
    seat_state.key(42, True)  # KEY_LEFTSHIFT
    assert (await client.event(keyboard, "key")).args[2:] == [42, 1]
    await client.event(keyboard, "modifiers")  # the state at enter: nothing pressed
    assert (await client.event(keyboard, "modifiers")).args[1] & 1  # Shift depressed
    seat_state.touch_down(0, 10, 20)
    seat_state.touch_motion(0, 15, 25)
    seat_state.touch_up(0)
    seat_state.touch_frame()
    assert (await client.event(touch, "down")).args[2:] == [surface, 0, 10.0, 20.0]
    assert (await client.event(touch, "motion")).args[1:] == [0, 15.0, 25.0]
    await client.event(touch, "up")
    await client.event(touch, "frame")


async def test_locked_pointer_gets_relative_motion_only(harness: Harness) -> None:
    client = await harness.client()
    pointer = client.new("wl_pointer")
    client.send(client.singleton("wl_seat"), "get_pointer", pointer)
    surface, _, _ = await client.map_toplevel((0, 0, 0))
    relative, lock = client.new("zwp_relative_pointer_v1"), client.new("zwp_locked_pointer_v1")
    client.send(client.singleton("zwp_relative_pointer_manager_v1"), "get_relative_pointer", relative, pointer)
    client.send(client.singleton("zwp_pointer_constraints_v1"), "lock_pointer", lock, surface, pointer, 0, 2)
    await client.event(lock, "locked")
    seat = harness.comp.seat
    x, y = seat.pointer_x, seat.pointer_y
    seat.pointer_motion_relative(5, -3)
    assert (await client.event(relative, "relative_motion")).args[2:4] == [5.0, -3.0]
    assert (seat.pointer_x, seat.pointer_y) == (x, y)


async def test_clipboard_between_clients(harness: Harness) -> None:
    owner, reader = await harness.client(), await harness.client()
    source = owner.new("wl_data_source")
    owner.send(owner.singleton("wl_data_device_manager"), "create_data_source", source)
    owner.send(source, "offer", "text/plain;charset=utf-8")
    device = owner.new("wl_data_device")
    owner.send(owner.singleton("wl_data_device_manager"), "get_data_device", device, owner.singleton("wl_seat"))
    owner.send(device, "set_selection", source, 0)
    await owner.roundtrip()
    reader_device = reader.new("wl_data_device")
    reader.send(reader.singleton("wl_data_device_manager"), "get_data_device", reader_device,
                reader.singleton("wl_seat"))
    await reader.map_toplevel((0, 0, 0))  # keyboard focus: the selection is offered
    offer = (await reader.event(reader_device, "data_offer")).args[0]
    assert (await reader.event(offer, "offer")).args == ["text/plain;charset=utf-8"]
    assert (await reader.event(reader_device, "selection")).args == [offer]
    r, w = os.pipe()
    reader.send(offer, "receive", "text/plain;charset=utf-8", w, fds=(w,))
    os.close(w)
    request = await owner.event(source, "send")
    assert request.args[0] == "text/plain;charset=utf-8"
    os.write(request.fds[0], b"moonhowl")
    os.close(request.fds[0])
    assert os.read(r, 100) == b"moonhowl"
    os.close(r)


async def test_disconnect_removes_everything_the_client_added(harness: Harness) -> None:
    client = await harness.client()
    await client.map_toplevel((50, 60, 70))
    assert harness.present().drawables
    client.close()
    for _ in range(100):
        if not harness.comp.clients:
            break
        await asyncio.sleep(0.01)
    scene = harness.present()
    assert scene.damaged and not scene.drawables and not harness.comp.toplevels
    assert harness.pixel(5, 5) == (0, 0, 0)


async def test_decorations_are_server_side(harness: Harness) -> None:
    client = await harness.client()
    _, xdg, top, _ = await client.toplevel()
    decoration = client.new("zxdg_toplevel_decoration_v1")
    client.send(client.singleton("zxdg_decoration_manager_v1"), "get_toplevel_decoration", decoration, top)
    assert (await client.event(decoration, "configure")).args == [2]
    client.send(decoration, "set_mode", 1)  # asks for client side
    assert (await client.event(decoration, "configure")).args == [2]
    await client.event(xdg, "configure")


@pytest.mark.parametrize("how", ["unsealed_then_shrunk", "sealed_but_short"])
async def test_pools_that_could_fault_are_read_safely(harness: Harness, how: str) -> None:
    """Reading a mapping past the end of its file raises SIGBUS, which would kill every session:
    such pools must be copied with pread (see shm.py), never mapped."""
    client = await harness.client()
    surface, xdg, _, configure = await client.toplevel()
    client.send(xdg, "ack_configure", configure.args[3])
    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    size = W * H * 4
    os.write(fd, bytes((0, 0, 255, 255)) * (W * H))
    if how == "sealed_but_short":
        os.ftruncate(fd, size // 2)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    pool, buffer = client.new("wl_shm_pool"), client.new("wl_buffer")
    client.send(client.singleton("wl_shm"), "create_pool", pool, fd, size, fds=(fd,))
    client.send(pool, "create_buffer", buffer, 0, W, H, W * 4, 1)
    client.send(surface, "attach", buffer, 0, 0)
    client.send(surface, "commit")
    await client.roundtrip()
    harness.present()
    assert harness.pixel(10, 10) == (255, 0, 0)
    if how == "unsealed_then_shrunk":
        os.ftruncate(fd, 0)
        client.send(surface, "damage_buffer", 0, 0, W, H)
        client.send(surface, "commit")
        await client.roundtrip()
        harness.present()
    assert harness.pixel(10, H - 10) == (0, 0, 0)  # missing bytes read as zeros
    os.close(fd)
    await client.roundtrip()  # still connected, the compositor alive
