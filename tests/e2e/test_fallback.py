"""Runtime fallback of a desktop session's frame path, as moonhowl's client sees it (issue 5, item 5).

An empty desktop (no app: the compositor renders its background) is streamed to the client; a
fault is injected into the path the session negotiated (the producer's next frame raises, or the
encoder posts an error on the pipeline's bus), and the session must rebuild on the next path
within a second while the client stays connected and keeps decoding. When every path fails, the
session ends and tells the client why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.media.glib import Gst, init
from moonhowl.protocol import control
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e

DESKTOP = 1
W, H, FPS = 320, 240, 30
ZERO_COPY = "dmabuf:XR24:0x0"  # what llvmpipe renders into: linear XR24 (FACTS section 2)
SYSTEM = "system:BGRx"

init()


def has(*elements: str) -> bool:
    return all(Gst.ElementFactory.find(name) is not None for name in elements)


needs_gl = pytest.mark.skipif(not has("glupload", "glcolorconvert", "gldownload", "x264enc"),
                              reason="the DMA_DRM chain needs GStreamer GL and x264enc")


def config_text(video_paths: list[str] | None) -> str:
    stream = f"[stream]\nvideo_paths = {video_paths!r}\n".replace("'", '"') if video_paths is not None else ""
    return stream + '[[apps]]\ntitle = "Desktop"\nkind = "desktop"\ncommand = []\n'


async def api_status(host: Any) -> dict[str, Any]:
    """GET /v1/status on the management API's unix socket, as `moonhowl status` does."""
    connector = aiohttp.UnixConnector(path=str(host.config.api_socket))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://moonhowl/v1/status") as reply:
        assert reply.status == 200
        status: dict[str, Any] = await reply.json()
        return status


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.05)


class Stream:
    """A desktop session streamed to moonhowl's client, with every received frame's arrival time."""

    def __init__(self, host: Any, client_session: StreamSession) -> None:
        self.host = host
        self.client = client_session
        self.server = next(iter(host.sessions.sessions.values()))
        self.arrivals: list[tuple[float, bool]] = []  # (monotonic time, is IDR)
        original = StreamSession._on_frame

        def on_frame(frame: Any) -> None:
            self.arrivals.append((time.monotonic(), frame.is_idr))
            original(client_session, frame)

        client_session._on_frame = on_frame  # type: ignore[method-assign]  # the depacketizer calls it
        # GLES, not the CPU fallback: only it renders into dma-bufs (the zero-copy path).
        assert self.server.desktop.renderer_name == "gles"

    @classmethod
    async def start(cls, start_host: Any, encoders: Any, video_paths: list[str] | None) -> Stream:
        host = await start_host(encoders=encoders, config_text=config_text(video_paths), rtsp_port=0,
                                control_port=0, video_port=0, audio_port=0)
        client = client_for(host, ClientIdentity.generate())
        await pair(host, client)
        return cls(host, await StreamSession.start(client, DESKTOP, W, H, FPS))

    @property
    def video(self) -> Any:
        return self.server.pipeline

    def decoded(self) -> int:
        return self.client.stats().decoded_frames

    def frames_since(self, t: float) -> int:
        return sum(1 for at, _idr in self.arrivals if at > t)

    def first_idr_after(self, t: float) -> float | None:
        return next((at for at, idr in self.arrivals if at > t and idr), None)


@needs_gl
async def test_zero_copy_failure_mid_stream_switches_to_system_memory_within_a_second(
        start_host, h264_encoder, caplog):
    caplog.set_level(logging.INFO, logger="moonhowl.session.video")
    stream = await Stream.start(start_host, h264_encoder, ["dmabuf", "system"])
    try:
        await wait_until(lambda: stream.decoded() >= 10, 8, "frames decoded on the first path")
        # (a) The negotiated path, and what it costs, are in the session's stats.
        video = (await api_status(stream.host))["sessions"][0]["video"]
        assert video["path"] == ZERO_COPY and video["paths"] == [ZERO_COPY, SYSTEM]
        assert video["copies"] == 1  # gldownload only: rendered straight into the dma-buf
        assert video["fallbacks"] == [] and video["source"]["frames"] >= 10

        # (b) The producer's next frame fails (as a failed EGL import or render would).
        injected = time.monotonic()
        assert stream.video.inject_fault("render")
        await wait_until(lambda: stream.video.path == SYSTEM and stream.frames_since(injected) >= 30, 6,
                         "30 frames on the system path")
        stats = stream.client.stats()
        status = await api_status(stream.host)
    finally:
        await stream.client.stop(cancel_app=True)
    first_idr = stream.first_idr_after(injected)
    assert first_idr is not None and first_idr - injected < 1.0, "no keyframe within a second of the failure"
    # Connected throughout: no termination, no error, nothing lost; the decoder took the new stream.
    assert stats.error is None and stats.termination_reason is None
    assert stats.lost_frames == 0 and stats.decode_errors == 0
    assert stats.decoded_frames >= 40
    [session] = status["sessions"]
    video = session["video"]
    assert session["video_path"] == SYSTEM and video["copies"] == 3  # readback, wrap, videoconvert
    [fallback] = video["fallbacks"]
    assert fallback["path"] == ZERO_COPY and fallback["next"] == SYSTEM
    assert "injected render fault" in fallback["reason"]
    assert fallback["switch_ms"] < 1000
    warnings = [r for r in caplog.records if r.name == "moonhowl.session.video" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and ZERO_COPY in warnings[0].getMessage()


@needs_gl
async def test_encoder_error_on_the_bus_falls_back_along_the_default_order(start_host, h264_encoder):
    stream = await Stream.start(start_host, h264_encoder, None)
    try:
        await wait_until(lambda: stream.decoded() >= 10, 8, "frames decoded on the first path")
        first = stream.video.path
        order = stream.video.stats()["paths"]
        # On a CPU GL (llvmpipe here) the GL-converting chain costs more than the copies it saves.
        if stream.server.desktop.software_rendering:
            assert order == [SYSTEM, ZERO_COPY]
        assert first == order[0]
        injected = time.monotonic()
        assert stream.video.inject_fault("encoder")
        await wait_until(lambda: stream.video.path == order[1] and stream.frames_since(injected) >= 20, 6,
                         "20 frames on the second path")
        stats = stream.client.stats()
        video = (await api_status(stream.host))["sessions"][0]["video"]
    finally:
        await stream.client.stop(cancel_app=True)
    assert stats.error is None and stats.termination_reason is None and stats.decode_errors == 0
    [fallback] = video["fallbacks"]
    assert fallback["path"] == first and "injected encoder fault" in fallback["reason"]
    assert fallback["switch_ms"] < 1000


async def test_every_path_failing_ends_the_session_with_a_clear_reason(start_host, h264_encoder):
    stream = await Stream.start(start_host, h264_encoder, ["system", "dmabuf"])
    server = stream.server
    try:
        await wait_until(lambda: stream.decoded() >= 5, 8, "frames decoded")
        # Every frame fails from now on, on whichever path is tried.
        stream.video.inject_fault("render", persistent=True)
        assert await stream.client.wait(5), "the stream did not end"
        stats = stream.client.stats()
    finally:
        await stream.client.stop()
    # Moonlight shows this code as "the host PC reported a fatal video encoding error".
    assert stats.termination_reason == control.TERMINATION_FRAME_CONVERSION
    assert stats.error is not None and "0x800e9403" in stats.error
    assert server.end_reason is not None and "every video path failed" in server.end_reason
    assert "injected render fault" in server.end_reason
    tried = [path for path, _reason in server.pipeline.fallbacks]
    assert tried == ([SYSTEM, ZERO_COPY] if has("glupload", "glcolorconvert", "gldownload") else [SYSTEM])
    assert stream.host.sessions.sessions == {}
