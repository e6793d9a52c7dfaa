"""Audio/video offset at the client: the test pattern's flash against the test tone's beep.

Run inside the runtime: ./moonhowl exec python bench/av_sync.py [--seconds 10] [--modes 1920x1080x60]

The "Test pattern" app beeps (1 kHz, 50 ms) at every whole second of running time and paints a
white band across the middle of the frames of that instant (media/audio.py beep_active,
media/pipeline.py). An in-process host streams it to moonhowl's client in the same process, which
decodes video and audio as a user's client would. On the client:

* a flash is a decoded frame whose middle rows' mean luma jumps to white after at least 5 darker
  frames; its time is the arrival (time.monotonic_ns() as the socket handler runs) of the
  datagram that completed the frame, i.e. when the client could show it;
* a beep is the first 5 ms Opus packet whose decoded PCM carries 1 kHz above -20 dBFS after at
  least 100 ms without; its time is the arrival of that packet (or of the parity that rebuilt it).

The A/V offset of an event is flash arrival - beep arrival (positive: the picture is late). Host
and client share one monotonic clock, being one process. The host side is measured too: the
flash frame's capture (it left videotestsrc) and its encoded output against those of the Opus
packet holding the beep's first sample. "frame q" is how far the flash frame's own running time
lies from the beep's instant: frames are 1/fps apart and not on the whole-second grid, so the
flash starts on the nearest frame, up to half a frame early or late.

Sharing the time base: the offset is only meaningful when both pipelines' running times count
from the same instant (one base time on the same monotonic clock). Where the session code does
not pass one base time to both yet, this program does it for the run marked "shared (bench)", by
wrapping the two pipeline constructors, and also measures the session as it is ("as wired"). All
the instrumentation wraps methods here; no library code is changed for it.

Before the stream, the flash's own cost: the 1080p60 test pattern with and without the flash (no
encoder: identity drops every frame, so only the source and the per-frame probe run), and the
same with x264, as CPU ms per frame of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moonhowl import config as config_mod
from moonhowl.app import Host
from moonhowl.client import audio as client_audio
from moonhowl.client.audio import tone_level_db
from moonhowl.client.decoder import VideoDecoder
from moonhowl.client.gamestream import GameStreamClient
from moonhowl.client.identity import ClientIdentity
from moonhowl.client.stream import StreamSession
from moonhowl.media import audio as media_audio
from moonhowl.media.audio import BEEP_HZ, beep_active
from moonhowl.media.encoders import ENCODERS
from moonhowl.media.glib import Gst, GstVideo, init
from moonhowl.media.pipeline import VideoPipeline
from moonhowl.media.probe import probe, working
from moonhowl.session import session as session_mod
from moonhowl.session import video as session_video
from moonhowl.session.audio import SessionAudio
from moonhowl.state import HostState

log = logging.getLogger("av_sync")

TEST_PATTERN_APP = 2  # the default configuration's "Test pattern" app
SECOND_NS = 1_000_000_000
FLASH_LUMA = 200  # of 255, in the middle rows: the bars average ~140 there, the flash band is white (235)
DARK_FRAMES_BEFORE_FLASH = 5
BEEP_LEVEL_DB = -20.0  # the beep is -6 dBFS; the 440 Hz tone leaks about -35 dB into a 5 ms 1 kHz bin
QUIET_CHUNKS_BEFORE_BEEP = 20  # 100 ms of 5 ms packets
PAIR_WITHIN_NS = 500_000_000  # a flash and a beep further apart than this are different events
WARMUP_S = 1.0


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Recorder:
    """What the wrapped methods saw during one stream. Appends only (atomic under the GIL)."""

    shared_base: bool
    start_ns: int | None = None  # the session's start instant (PLAY), for the shared base time
    video_rx_now: int = 0  # arrival of the video datagram being handled (client's loop thread)
    audio_rx_now: int = 0
    video_rx: dict[int, int] = field(default_factory=dict)  # decoder pts -> arrival of the completing datagram
    luma: list[tuple[int, float]] = field(default_factory=list)  # (pts, mean luma) per decoded picture
    audio_rx: list[int] = field(default_factory=list)  # arrival per 5 ms decoder input, in decode order
    host_frames: list[tuple[int, int, int]] = field(default_factory=list)  # (pts, capture_ns, out_ns)
    host_packets: list[tuple[int, int]] = field(default_factory=list)  # (capture_ns, out_ns)
    video_pipelines: list[VideoPipeline] = field(default_factory=list)
    audio_pipelines: list[media_audio.AudioPipeline] = field(default_factory=list)
    probe_errors: int = 0


class LumaDecoder(VideoDecoder):
    """The client's decoder, plus the mean luma of every picture (a pad probe on its output)."""

    def __init__(self, codec: str, recorder: Recorder) -> None:
        super().__init__(codec)
        self._recorder = recorder
        sink = self._pipeline.get_by_name("sink")
        sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._on_picture)

    def decode(self, access_unit: bytes, pts_ns: int | None = None) -> None:
        # StreamSession._on_frame calls this as the frame's last datagram is handled.
        if pts_ns is not None:
            self._recorder.video_rx[pts_ns] = self._recorder.video_rx_now
        super().decode(access_unit, pts_ns)

    def _on_picture(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """Decoder streaming thread: the mean luma of the middle quarter of the rows (every 61st byte),
        where the flash band is."""
        try:
            buffer = info.get_buffer()
            meta = GstVideo.buffer_get_video_meta(buffer)
            if meta is not None:
                offset, stride, height = meta.offset[0], meta.stride[0], meta.height
            else:
                video = GstVideo.VideoInfo.new_from_caps(pad.get_current_caps())
                offset, stride, height = video.offset[0], video.stride[0], video.height
            ok, mapped = buffer.map(Gst.MapFlags.READ)
            if ok:
                try:
                    top, bottom = offset + stride * (height * 3 // 8), offset + stride * (height * 5 // 8)
                    luma = bytes(mapped.data[top:bottom:61])
                finally:
                    buffer.unmap(mapped)
                self._recorder.luma.append((buffer.pts, sum(luma) / max(1, len(luma))))
        except Exception:
            self._recorder.probe_errors += 1
            if self._recorder.probe_errors <= 3:
                log.exception("luma probe failed")
        return Gst.PadProbeReturn.OK


@contextlib.contextmanager
def instrumented(recorder: Recorder) -> Iterator[None]:
    """Wraps the client's and the host's methods to record times; restores them afterwards."""
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def on_video(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(self: StreamSession, data: bytes) -> None:
            recorder.video_rx_now = time.monotonic_ns()
            original(self, data)
        return wrapper

    def on_audio(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(self: StreamSession, data: bytes) -> None:
            recorder.audio_rx_now = time.monotonic_ns()
            original(self, data)
        return wrapper

    def push(original: Callable[..., None]) -> Callable[..., None]:
        # One call per 5 ms of decoder input (a packet or a concealed hole), in order: the PCM's
        # n-th 240 samples are the n-th call's.
        def wrapper(self: client_audio.AudioReceiver, index: int, payload: bytes) -> None:
            recorder.audio_rx.append(recorder.audio_rx_now)
            original(self, index, payload)
        return wrapper

    def host_frame(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(self: session_mod.Session, frame: Any) -> None:
            recorder.host_frames.append((frame.pts_ns, frame.capture_ns, time.monotonic_ns()))
            original(self, frame)
        return wrapper

    def host_packet(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(self: SessionAudio, opus: bytes, capture_ns: int) -> None:
            recorder.host_packets.append((capture_ns, time.monotonic_ns()))
            original(self, opus, capture_ns)
        return wrapper

    def start_streaming(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(self: session_mod.Session, *args: Any, **kwargs: Any) -> None:
            recorder.start_ns = time.monotonic_ns()
            original(self, *args, **kwargs)
        return wrapper

    def video_pipeline(original: Callable[..., VideoPipeline]) -> Callable[..., VideoPipeline]:
        def make(*args: Any, **kwargs: Any) -> VideoPipeline:
            if recorder.shared_base and kwargs.get("base_time_ns") is None:
                kwargs["base_time_ns"] = recorder.start_ns
            pipeline = original(*args, **kwargs)
            recorder.video_pipelines.append(pipeline)
            return pipeline
        return make

    def audio_pipeline(original: Callable[..., Any]) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            if recorder.shared_base and kwargs.get("base_time_ns") is None:
                kwargs["base_time_ns"] = recorder.start_ns
            pipeline = original(*args, **kwargs)
            recorder.audio_pipelines.append(pipeline)
            return pipeline
        return make

    wrap(StreamSession, "_on_video", on_video)
    wrap(StreamSession, "_on_audio", on_audio)
    wrap(client_audio.AudioReceiver, "_push", push)
    wrap(session_mod.Session, "_on_frame", host_frame)
    wrap(session_mod.Session, "_start_streaming", start_streaming)
    wrap(SessionAudio, "_on_packet", host_packet)
    # session/video.py calls its module's VideoPipeline; session/audio.py imports AudioPipeline
    # from media.audio when the stream starts.
    wrap(session_video, "VideoPipeline", video_pipeline)
    wrap(media_audio, "AudioPipeline", audio_pipeline)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# ---------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Event:
    second: int  # the beep's whole second of (video) running time
    flash_rx_ns: int
    beep_rx_ns: int
    frame_q_ms: float  # flash frame's running time - the beep instant
    host_capture_ms: float | None  # flash frame left the source - beep packet's first sample
    host_out_ms: float | None  # flash frame out of the encoder - beep packet out of opusenc

    @property
    def offset_ms(self) -> float:
        return (self.flash_rx_ns - self.beep_rx_ns) / 1e6


def flashes(recorder: Recorder) -> list[tuple[int, int]]:
    """(pts, arrival) of the first white picture after a run of darker ones."""
    found, dark = [], 0
    for pts, luma in sorted(recorder.luma):
        if luma >= FLASH_LUMA:
            if dark >= DARK_FRAMES_BEFORE_FLASH and pts in recorder.video_rx:
                found.append((pts, recorder.video_rx[pts]))
            dark = 0
        else:
            dark += 1
    return found


def beeps(receiver: client_audio.AudioReceiver, recorder: Recorder) -> list[int]:
    """Arrival of each packet that starts a beep in the decoded audio."""
    per_packet = client_audio.SAMPLE_RATE * receiver.packet_duration_ms // 1000
    samples = receiver.channel(0)
    found, quiet = [], 0
    for n, arrival in enumerate(recorder.audio_rx):
        chunk = samples[n * per_packet:(n + 1) * per_packet]
        if len(chunk) < per_packet:
            break
        if tone_level_db(chunk, BEEP_HZ) > BEEP_LEVEL_DB:
            if quiet >= QUIET_CHUNKS_BEFORE_BEEP:
                found.append(arrival)
            quiet = 0
        else:
            quiet += 1
    return found


def host_offsets(recorder: Recorder, second: int, fps: int) -> tuple[float | None, float | None]:
    """Host side of one event: (capture, encoder out) of the flash frame minus the beep packet's."""
    if not recorder.audio_pipelines:
        return None, None
    frame_ns = SECOND_NS // fps
    frame = next((f for f in recorder.host_frames
                  if beep_active(f[0] + frame_ns // 2) and round(f[0] / SECOND_NS) == second), None)
    audio_base = recorder.audio_pipelines[-1].base_time_ns
    packet_ns = 5_000_000
    instant = audio_base + second * SECOND_NS
    packet = next((p for p in recorder.host_packets if p[0] <= instant < p[0] + packet_ns), None)
    if frame is None or packet is None:
        return None, None
    return (frame[1] - packet[0]) / 1e6, (frame[2] - packet[1]) / 1e6


def events(recorder: Recorder, receiver: client_audio.AudioReceiver, fps: int) -> tuple[list[Event], int, int]:
    """Each flash paired with the beep that arrived nearest to it; also the unpaired counts."""
    video, audio = flashes(recorder), beeps(receiver, recorder)
    paired: list[Event] = []
    for pts, flash_rx in video:
        if not audio:
            break
        beep_rx = min(audio, key=lambda rx, at=flash_rx: abs(rx - at))
        if abs(beep_rx - flash_rx) > PAIR_WITHIN_NS:
            continue
        second = round(pts / SECOND_NS)
        capture, out = host_offsets(recorder, second, fps)
        paired.append(Event(second, flash_rx, beep_rx, (pts - second * SECOND_NS) / 1e6, capture, out))
    return paired, len(video), len(audio)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------------------------------------- the run
def host_config(state_dir: Path) -> config_mod.Config:
    return config_mod.parse("", None, {
        "server": {"bind": "127.0.0.1", "http_port": 0, "https_port": 0, "state_dir": str(state_dir),
                   "rtsp_port": 0, "control_port": 0, "video_port": 0, "audio_port": 0},
        "pairing": {"pin_timeout": 10}})


async def paired_client(host: Host) -> GameStreamClient:
    client = GameStreamClient("127.0.0.1", http_port=host.ports["http"], https_port=host.ports["https"],
                              identity=ClientIdentity.generate())

    async def enter_pin() -> None:
        for _ in range(500):
            if any(not p.pin.done() for p in host.pairing.pending):
                host.pairing.submit_pin("1234")
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("no pairing request reached the host")

    await asyncio.gather(client.pair("1234"), enter_pin())
    return client


@dataclass
class Run:
    label: str
    mode: str
    events: list[Event]
    flashes: int
    beeps: int
    base_gap_ms: float | None  # audio base time - video base time
    decoded: int
    fps: float


async def stream_once(host: Host, client: GameStreamClient, width: int, height: int, fps: int, kbps: int,
                      seconds: float, shared_base: bool, label: str) -> Run:
    recorder = Recorder(shared_base)
    with instrumented(recorder):
        session = await StreamSession.start(client, TEST_PATTERN_APP, width, height, fps, bitrate_kbps=kbps,
                                            decoder_factory=lambda codec: LumaDecoder(codec, recorder))
        try:
            await asyncio.sleep(seconds)
        finally:
            await session.stop(cancel_app=True)
    receiver = session.audio
    assert receiver is not None
    stats = session.stats()
    gap = None
    if recorder.video_pipelines and recorder.audio_pipelines:
        gap = (recorder.audio_pipelines[-1].base_time_ns - recorder.video_pipelines[-1].base_time_ns) / 1e6
    found, n_flashes, n_beeps = events(recorder, receiver, fps)
    return Run(label, f"{width}x{height}@{fps}", found, n_flashes, n_beeps, gap, stats.decoded_frames, stats.fps)


def report(run: Run) -> None:
    print(f"\n### {run.mode}, time base {run.label}: {run.flashes} flashes, {run.beeps} beeps, "
          f"{len(run.events)} paired; {run.decoded} pictures decoded, {run.fps:.1f} fps received; "
          f"audio base - video base = {fmt(run.base_gap_ms)} ms\n")
    print("| second | A/V offset ms (client) | frame q ms | host capture offset ms | host encoded offset ms |")
    print("|---|---|---|---|---|")
    for e in run.events:
        print(f"| {e.second} | {e.offset_ms:+.1f} | {e.frame_q_ms:+.1f} | {fmt(e.host_capture_ms, '+')} | "
              f"{fmt(e.host_out_ms, '+')} |")
    summary(run)


def fmt(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.1f}"


def summary(run: Run) -> None:
    if not run.events:
        print("\nno flash could be paired with a beep")
        return
    offsets = [abs(e.offset_ms) for e in run.events]
    signed = [e.offset_ms for e in run.events]
    host = [abs(e.host_out_ms) for e in run.events if e.host_out_ms is not None]
    print(f"\n|offset| client: p50 {percentile(offsets, 0.5):.1f} ms, p99 {percentile(offsets, 0.99):.1f} ms, "
          f"max {max(offsets):.1f} ms (mean signed {sum(signed) / len(signed):+.1f} ms; + = picture late); "
          f"within 40 ms: {sum(o <= 40 for o in offsets)}/{len(offsets)}")
    if host:
        print(f"|offset| host (encoded): p50 {percentile(host, 0.5):.1f} ms, p99 {percentile(host, 0.99):.1f} ms, "
              f"max {max(host):.1f} ms")


# ---------------------------------------------------------------------------------------------- flash cost
@dataclass
class CostRow:
    cpu_ms: float  # this process's CPU per source frame
    draw_ms: list[float]  # VideoPipeline._flash_frame on the frames that flashed
    check_us: list[float]  # ... and on the others (the caps check and the beep test)


def cpu_per_frame(width: int, height: int, fps: int, seconds: float, flash: bool, encoder: str | None) -> CostRow:
    """One test-pattern VideoPipeline: CPU per frame, and the flash probe's own time per call."""
    spec = next(s for s in ENCODERS if s.name == "x264")
    frames = [0]
    errors: list[str] = []
    row = CostRow(0.0, [], [])
    # Without an encoder: identity drops every frame, so only the source and its probe run. I420,
    # as x264's chain negotiates it (left open, videotestsrc would pick a costlier 16-bit format).
    chain = None if encoder else "video/x-raw,format=I420 ! identity drop-probability=1.0"
    original = VideoPipeline._flash_frame

    def timed(self: VideoPipeline, pad: Gst.Pad, buffer: Gst.Buffer, running: int) -> None:
        start = time.perf_counter_ns()
        original(self, pad, buffer, running)
        spent = time.perf_counter_ns() - start
        if VideoPipeline._flash_due(running, buffer.duration):
            row.draw_ms.append(spent / 1e6)
        else:
            row.check_us.append(spent / 1e3)

    VideoPipeline._flash_frame = timed
    try:
        pipeline = VideoPipeline(width, height, fps, spec, 20_000, lambda _frame: None, errors.append,
                                 chain=chain, flash=flash)

        def count(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            frames[0] += 1
            return Gst.PadProbeReturn.OK

        pipeline.source.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, count)
        pipeline.start()
        time.sleep(WARMUP_S)
        cpu0, n0 = time.process_time(), frames[0]
        row.draw_ms.clear()
        row.check_us.clear()
        time.sleep(seconds)
        cpu, n = time.process_time() - cpu0, frames[0] - n0
        pipeline.stop()
    finally:
        VideoPipeline._flash_frame = original
    if errors:
        raise RuntimeError(f"the pipeline failed: {errors[0]}")
    row.cpu_ms = cpu * 1000 / max(1, n)
    return row


def flash_cost(seconds: float) -> None:
    width, height, fps = 1920, 1080, 60
    rounds = 4
    print(f"### The flash's cost at {width}x{height}@{fps}\n")
    print(f"CPU ms per frame of this process (median of {rounds} alternating rows of {seconds / rounds:g} s: "
          "the machine's other load drifts), and the flash probe's own time per call.\n")
    print("| pipeline | CPU flash off | CPU flash on | difference | drawing a flash frame p50 / max | "
          "other frames p50 |")
    print("|---|---|---|---|---|---|")
    for encoder in (None, "x264"):
        off, on = [], []
        for _ in range(rounds):
            off.append(cpu_per_frame(width, height, fps, seconds / rounds, False, encoder))
            on.append(cpu_per_frame(width, height, fps, seconds / rounds, True, encoder))
        a = statistics.median(r.cpu_ms for r in off)
        b = statistics.median(r.cpu_ms for r in on)
        draws = [d for r in on for d in r.draw_ms]
        checks = [c for r in on for c in r.check_us]
        name = "videotestsrc only (identity drops)" if encoder is None else "videotestsrc ! x264 (20 Mbit/s)"
        print(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {statistics.median(draws):.2f} / {max(draws):.2f} ms "
              f"({len(draws)} frames) | {statistics.median(checks):.0f} us |")


# ---------------------------------------------------------------------------------------------- main
def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1024 / 1024:.1f} GiB"
    render = sorted(p.name for p in Path("/dev/dri").glob("renderD*")) if Path("/dev/dri").exists() else []
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({model}), {memory} RAM, "
            f"{'render nodes ' + ', '.join(render) if render else 'no GPU render node'}, "
            f"Linux {platform.release()}, {Gst.version_string()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time per run")
    parser.add_argument("--modes", default="1920x1080x60", help="WxHxFPS[,WxHxFPS...]")
    parser.add_argument("--cost-seconds", type=float, default=8.0,
                        help="per flash-cost configuration; 0 skips the cost rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init()
    print(f"machine: {machine()}\n")
    if args.cost_seconds > 0:
        flash_cost(args.cost_seconds)
    encoders = working(probe({"h264": ["x264", "openh264"]}, ("h264",), min_fps=0), min_fps=0)
    if "h264" not in encoders:
        raise SystemExit("no working H.264 encoder here")
    with tempfile.TemporaryDirectory(prefix="moonhowl-av-sync-") as state:
        config = host_config(Path(state))
        host = Host(config, HostState.open(config.state_dir), encoders=encoders)
        await host.start()
        try:
            client = await paired_client(host)
            runs = []
            for mode in args.modes.split(","):
                width, height, fps = (int(x) for x in mode.split("x"))
                kbps = 20_000 if height >= 1080 else 10_000
                run = await stream_once(host, client, width, height, fps, kbps, args.seconds, False, "as wired")
                report(run)
                runs.append(run)
                if run.base_gap_ms is None or abs(run.base_gap_ms) > 0.001:
                    # The session gave the two pipelines different base times: measure with one.
                    run = await stream_once(host, client, width, height, fps, kbps, args.seconds, True,
                                            "shared (bench)")
                    report(run)
                    runs.append(run)
        finally:
            await host.stop()


if __name__ == "__main__":
    asyncio.run(main())
