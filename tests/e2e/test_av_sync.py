"""Audio/video sync end to end: the test pattern's flash and the test tone's beep arrive together.

The "Test pattern" app beeps at every whole second of running time and paints a white band across
those frames (media/audio.py beep_active, media/pipeline.py). The client decodes both streams; a
flash is a decoded picture whose middle turns white, a beep the first 5 ms packet whose PCM
carries 1 kHz. Each is
timed by the arrival of its datagrams (wrapped socket handlers: host and client share one process
and one monotonic clock), and each flash must arrive within 40 ms of its beep (bench/av_sync.py
measures the same, with tables).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import statistics
import time
from typing import Any

import pytest

from moonhowl.client import audio as client_audio
from moonhowl.client.audio import tone_level_db
from moonhowl.client.decoder import VideoDecoder
from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.media import audio as media_audio
from moonhowl.media.audio import BEEP_HZ
from moonhowl.media.glib import Gst, GstVideo
from moonhowl.session import session as session_mod
from moonhowl.session import video as session_video
from tests.conftest import client_for, pair

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

TEST_PATTERN_APP = 2
SECONDS = 7.0
MAX_OFFSET_MS = 40.0
FLASH_LUMA = 200  # of 255 in the middle rows: the bars average ~140 there, the flash band is white (235)


class Times:
    """What the wrapped methods saw; appended from the client's loop and from decoder threads."""

    def __init__(self) -> None:
        self.start_ns: int | None = None
        self.video_now = self.audio_now = 0
        self.video_rx: dict[int, int] = {}  # decoder pts -> arrival of the frame's last datagram
        self.luma: list[tuple[int, float]] = []  # (pts, mean luma) of each decoded picture
        self.audio_rx: list[int] = []  # arrival of each 5 ms of decoder input, in order
        self.video_pipelines: list[Any] = []
        self.audio_pipelines: list[Any] = []


class LumaDecoder(VideoDecoder):
    def __init__(self, codec: str, times: Times) -> None:
        super().__init__(codec)
        self.times = times
        self._pipeline.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._probe)

    def decode(self, access_unit: bytes, pts_ns: int | None = None) -> None:
        if pts_ns is not None:
            self.times.video_rx[pts_ns] = self.times.video_now
        super().decode(access_unit, pts_ns)

    def _probe(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        try:
            buffer = info.get_buffer()
            video = GstVideo.VideoInfo.new_from_caps(pad.get_current_caps())
            ok, mapped = buffer.map(Gst.MapFlags.READ)
            if ok:
                try:
                    # The middle quarter of the rows, inside the flash band.
                    rows = video.stride[0] * video.height // 8
                    luma = bytes(mapped.data[3 * rows:5 * rows:61])
                finally:
                    buffer.unmap(mapped)
                self.times.luma.append((buffer.pts, sum(luma) / max(1, len(luma))))
        except Exception:  # never into GStreamer's thread; the test then finds no flashes
            log.exception("luma probe failed")
        return Gst.PadProbeReturn.OK


def session_shares_time_base() -> bool:
    return "base_time_ns" in inspect.signature(session_video.SessionVideo).parameters


@pytest.fixture
def times(monkeypatch: pytest.MonkeyPatch) -> Times:
    times = Times()

    def wrap(owner: Any, name: str, make: Any) -> None:
        monkeypatch.setattr(owner, name, make(getattr(owner, name)))

    def on_video(original: Any) -> Any:
        def wrapper(self: StreamSession, data: bytes) -> None:
            times.video_now = time.monotonic_ns()
            original(self, data)
        return wrapper

    def on_audio(original: Any) -> Any:
        def wrapper(self: StreamSession, data: bytes) -> None:
            times.audio_now = time.monotonic_ns()
            original(self, data)
        return wrapper

    def push(original: Any) -> Any:
        def wrapper(self: Any, index: int, payload: bytes) -> None:
            times.audio_rx.append(times.audio_now)
            original(self, index, payload)
        return wrapper

    def start_streaming(original: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            times.start_ns = time.monotonic_ns()
            original(self, *args, **kwargs)
        return wrapper

    # Until the session gives both pipelines its start instant as their base time (see
    # docs/audio.md), the test gives it to them, as the session is to; once SessionVideo takes
    # base_time_ns, nothing is filled in here and the test checks the session's own wiring.
    fill_in = not session_shares_time_base()

    def pipeline(original: Any, made: list[Any]) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            if fill_in and kwargs.get("base_time_ns") is None:
                kwargs["base_time_ns"] = times.start_ns
            made.append(result := original(*args, **kwargs))
            return result
        return make

    wrap(StreamSession, "_on_video", on_video)
    wrap(StreamSession, "_on_audio", on_audio)
    wrap(client_audio.AudioReceiver, "_push", push)
    wrap(session_mod.Session, "_start_streaming", start_streaming)
    wrap(session_video, "VideoPipeline", lambda original: pipeline(original, times.video_pipelines))
    wrap(media_audio, "AudioPipeline", lambda original: pipeline(original, times.audio_pipelines))
    return times


def flash_arrivals(times: Times) -> list[int]:
    found, dark = [], 0
    for pts, luma in sorted(times.luma):
        if luma >= FLASH_LUMA:
            if dark >= 5 and pts in times.video_rx:
                found.append(times.video_rx[pts])
            dark = 0
        else:
            dark += 1
    return found


def beep_arrivals(receiver: client_audio.AudioReceiver, times: Times) -> list[int]:
    per_packet = client_audio.SAMPLE_RATE * receiver.packet_duration_ms // 1000
    samples = receiver.channel(0)
    found, quiet = [], 0
    for n, arrival in enumerate(times.audio_rx):
        chunk = samples[n * per_packet:(n + 1) * per_packet]
        if len(chunk) < per_packet:
            break
        if tone_level_db(chunk, BEEP_HZ) > -20:  # the beep is -6 dBFS, the 440 Hz tone leaks ~-35
            if quiet >= 20:
                found.append(arrival)
            quiet = 0
        else:
            quiet += 1
    return found


def intervals_s(arrivals: list[int]) -> list[float]:
    return [(b - a) / 1e9 for a, b in itertools.pairwise(arrivals)]


async def test_each_flash_arrives_within_40_ms_of_its_beep(streaming_host, times):
    client = client_for(streaming_host, ClientIdentity.generate())
    await pair(streaming_host, client)
    session = await StreamSession.start(client, TEST_PATTERN_APP, 640, 360, 60, bitrate_kbps=4000,
                                        decoder_factory=lambda codec: LumaDecoder(codec, times))
    try:
        await asyncio.sleep(SECONDS)
    finally:
        await session.stop(cancel_app=True)
    receiver = session.audio
    assert receiver is not None and session.stats().error is None, session.stats()

    # One time base: both pipelines count running time from the same monotonic instant.
    assert times.video_pipelines and times.audio_pipelines
    assert times.video_pipelines[-1].base_time_ns == times.audio_pipelines[-1].base_time_ns

    flashes, beeps = flash_arrivals(times), beep_arrivals(receiver, times)
    # About once a second each (the first second or so goes to starting up).
    assert len(flashes) >= SECONDS - 2 and len(beeps) >= SECONDS - 2, (len(flashes), len(beeps))
    assert abs(statistics.median(intervals_s(flashes)) - 1.0) < 0.1, intervals_s(flashes)
    assert abs(statistics.median(intervals_s(beeps)) - 1.0) < 0.1, intervals_s(beeps)

    offsets_ms = []
    for flash in flashes:
        beep = min(beeps, key=lambda rx, at=flash: abs(rx - at))
        if abs(beep - flash) < 500_000_000:
            offsets_ms.append((flash - beep) / 1e6)
    assert len(offsets_ms) >= SECONDS - 2, (flashes, beeps)
    # Every pair within 40 ms; one may miss on a loaded machine (a scheduling stall of the
    # in-process host, client and decoders), but not the typical one.
    late = [o for o in offsets_ms if abs(o) > MAX_OFFSET_MS]
    assert len(late) <= 1 and abs(statistics.median(offsets_ms)) <= MAX_OFFSET_MS, offsets_ms
