"""SessionVideo alone: a real Desktop (empty: its background) through moonhowlsrc and x264, no network.

What the e2e test (tests/e2e/test_fallback.py) cannot see from the client: an allocation failure
before the first frame, timestamps and keyframes across a rebuild, stop() from the encoder's own
thread, and the configuration of the path order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from moonhowl import config as config_mod
from moonhowl.config import AppConfig
from moonhowl.media.encoders import ENCODERS, EncoderSpec
from moonhowl.media.glib import Gst, init
from moonhowl.media.pipeline import EncodedFrame
from moonhowl.session.desktop import Desktop
from moonhowl.session.video import SessionVideo

pytestmark = pytest.mark.integration

W, H, FPS = 320, 240, 30
ZERO_COPY, SYSTEM = "dmabuf:XR24:0x0", "system:BGRx"

init()
needs_gl = pytest.mark.skipif(
    not all(Gst.ElementFactory.find(e) for e in ("glupload", "glcolorconvert", "gldownload", "x264enc")),
    reason="the DMA_DRM chain needs GStreamer GL and x264enc")


def x264() -> EncoderSpec:
    return next(s for s in ENCODERS if s.codec == "h264" and s.name == "x264")


class Recorder:
    """on_frame / on_failed of one SessionVideo (called on GStreamer and supervisor threads)."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, EncodedFrame]] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.in_frame: Callable[[EncodedFrame], None] | None = None

    def on_frame(self, frame: EncodedFrame) -> None:
        with self.lock:
            self.frames.append((time.monotonic(), frame))
        if self.in_frame is not None:
            self.in_frame(frame)

    def on_failed(self, reason: str) -> None:
        with self.lock:
            self.failures.append(reason)

    def count(self, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for at, _f in self.frames if at > after)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def desktop() -> AsyncIterator[Desktop]:
    app = AppConfig(1, "Desktop", "desktop", (), {}, False)
    d = Desktop("test-desktop", app, W, H, FPS, on_app_exit=lambda _reason: None)
    await d.start()
    yield d
    await d.stop()


def video_for(desktop: Desktop | None, rec: Recorder, paths: list[str] | None = None) -> SessionVideo:
    return SessionVideo(W, H, FPS, x264(), 2000, rec.on_frame, rec.on_failed, desktop, "test", paths=paths)


@needs_gl
async def test_allocation_failure_before_the_first_frame_falls_back(desktop: Desktop) -> None:
    rec = Recorder()
    video = video_for(desktop, rec, ["dmabuf", "system"])
    assert video.inject_fault("allocate")  # the first swapchain cannot be allocated
    video.start()
    try:
        await wait_until(lambda: rec.count() >= 10, 5, "10 frames")
        assert video.path == SYSTEM
        [(failed, reason)] = video.fallbacks
        assert failed == ZERO_COPY and "injected allocate fault" in reason
        assert rec.frames[0][1].is_keyframe and rec.failures == []
    finally:
        assert await asyncio.to_thread(video.stop)


@needs_gl
async def test_a_rebuild_starts_on_a_keyframe_and_timestamps_go_on(desktop: Desktop) -> None:
    rec = Recorder()
    video = video_for(desktop, rec, ["dmabuf", "system"])
    video.start()
    try:
        await wait_until(lambda: rec.count() >= 15, 5, "15 frames on the first path")
        assert video.path == ZERO_COPY
        before = rec.count()
        video.inject_fault("render")
        await wait_until(lambda: video.path == SYSTEM and rec.count() >= before + 15, 5, "15 more frames")
        stats = video.stats()
    finally:
        assert await asyncio.to_thread(video.stop)
    frames = [f for _at, f in rec.frames]
    switch = next(i for i, f in enumerate(frames) if i >= before and f.is_keyframe)
    assert all(not f.is_keyframe for f in frames[1:switch])  # one IDR per pipeline, none in between
    pts = [f.pts_ns for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)  # running time restarts; ours does not
    assert pts[switch] - pts[switch - 1] < 1_000_000_000  # the gap is the switch, not a reset
    assert stats["fallbacks"][0]["switch_ms"] < 1000 and stats["copies"] == 3
    assert stats["source"]["frames"] >= 10 and stats["encoder_latency_ms_p50"] > 0


async def test_test_pattern_failure_is_reported_once_and_stop_is_safe_from_any_thread() -> None:
    rec = Recorder()
    video = video_for(None, rec)
    video.start()
    await wait_until(lambda: rec.count() >= 5, 5, "5 test-pattern frames")
    assert video.path == "test-pattern" and video.stats()["copies"] is None
    assert video.inject_fault("encoder")
    await wait_until(lambda: bool(rec.failures), 5, "on_failed")
    assert video.inject_fault("encoder") is False  # nothing is left running to fail
    await asyncio.sleep(0.2)
    assert len(rec.failures) == 1 and "test-pattern" in rec.failures[0]
    assert await asyncio.to_thread(video.stop) and await asyncio.to_thread(video.stop)
    assert not video.running and video.request_keyframe() is False

    # stop() from inside on_frame (the encoder's streaming thread) returns without waiting for it.
    rec = Recorder()
    video = video_for(None, rec)
    stopped = threading.Event()

    def stop_inside(_frame: EncodedFrame) -> None:
        if not stopped.is_set():
            started = time.monotonic()
            video.stop()
            assert time.monotonic() - started < 1.0
            stopped.set()

    rec.in_frame = stop_inside
    video.start()
    assert await asyncio.to_thread(stopped.wait, 5)
    assert await asyncio.to_thread(video.stop, 5.0)
    count = rec.count()
    await asyncio.sleep(0.2)
    assert rec.count() <= count + 1  # at most a frame already on its way


def test_video_paths_configuration_is_checked() -> None:
    parsed = config_mod.parse('[stream]\nvideo_paths = ["dmabuf:XR24:0x0", "system"]\n')
    assert parsed.get("stream", "video_paths") == ["dmabuf:XR24:0x0", "system"]
    assert config_mod.parse("").get("stream", "video_paths") == []
    for bad in ('["gl"]', '["system:RGBx"]', '["dmabuf", "dmabuf"]', '"dmabuf"'):
        with pytest.raises(config_mod.ConfigError, match=r"stream\.video_paths"):
            config_mod.parse(f"[stream]\nvideo_paths = {bad}\n")
