"""Encoder cost per session: the bare GStreamer pipeline against moonhowl's VideoPipeline.

Run inside the runtime: ./moonhowl exec python bench/encode.py [--seconds 5] [--everything]

For each mode and each working encoder row (media.probe: the first that works per codec, or every
row with --everything) it runs, one after the other in this process:
  bare  -- bare_encoder_description(): the same live test pattern and encoder fragment into a
           fakesink, no Python on the streaming path;
  mh    -- VideoPipeline with a no-op on_frame: leaky queue, appsink, the capture-time probe and
           the Python callback per frame.
CPU% is this process's CPU time over wall time (100% = one core); CPU ms/frame divides it by the
frame rate reached, which compares rows fairly when an encoder cannot keep up (it then does less
work per second). The difference between the two rows is what moonhowl adds per session.
"others CPU%" is the rest of the machine's load during the row: on a shared machine, a row where it
is high is not to be trusted. The bare pipeline has no queue, so its source and encoder share one
streaming thread; VideoPipeline's leaky queue gives the encoder its own, which is why a slow
encoder can reach a higher rate there.
Latency is capture (the source's src pad) -> appsink.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from moonhowl.media.encoders import EncoderSpec
from moonhowl.media.glib import Gst, init
from moonhowl.media.pipeline import EncodedFrame, VideoPipeline, bare_encoder_description
from moonhowl.media.probe import probe, working

# (name, width, height, fps, kbps): Moonlight's default bitrates for these modes are in this range.
MODES = {
    "720p60": (1280, 720, 60, 10_000),
    "1080p60": (1920, 1080, 60, 20_000),
}
WARMUP_S = 1.0  # encoder start-up (x265 and aom allocate a lot) stays out of the numbers


@dataclass
class Row:
    mode: str
    encoder: str
    kind: str
    fps: float
    cpu_pct: float
    other_pct: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (Linux /proc/stat; 0.0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(seconds: float, frames_now: Callable[[], int]) -> tuple[float, float, float]:
    """(frames per second, our CPU%, everyone else's CPU%) over `seconds` after the warm-up.

    The last one flags a measurement spoiled by other work on a shared machine.
    """
    time.sleep(WARMUP_S)
    f0, c0, m0, w0 = frames_now(), time.process_time(), machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    f1, c1, m1, w1 = frames_now(), time.process_time(), machine_busy_s(), time.monotonic()
    wall = w1 - w0
    ours = 100.0 * (c1 - c0) / wall
    return (f1 - f0) / wall, ours, max(0.0, 100.0 * (m1 - m0) / wall - ours)


def run_bare(mode: str, spec: EncoderSpec, seconds: float) -> Row:
    width, height, fps, kbps = MODES[mode]
    pipeline = Gst.parse_launch(bare_encoder_description(width, height, fps, spec, kbps))
    sink = iter_sinks(pipeline)[0]

    def frames_now() -> int:
        # basesink's own counter: reading it costs nothing on the streaming thread.
        return int(sink.get_property("stats").get_value("rendered"))

    pipeline.set_state(Gst.State.PLAYING)
    try:
        rate, cpu, other = measure(seconds, frames_now)
    finally:
        pipeline.set_state(Gst.State.NULL)
    return Row(mode, f"{spec.codec}/{spec.name}", "bare", rate, cpu, other)


def iter_sinks(pipeline: Gst.Pipeline) -> list[Gst.Element]:
    sinks: list[Gst.Element] = []
    iterator = pipeline.iterate_sinks()
    while True:
        result, element = iterator.next()
        if result != Gst.IteratorResult.OK:
            return sinks
        sinks.append(element)


def run_moonhowl(mode: str, spec: EncoderSpec, seconds: float) -> Row:
    width, height, fps, kbps = MODES[mode]
    errors: list[str] = []

    def on_frame(_frame: EncodedFrame) -> None:
        pass

    pipeline = VideoPipeline(width, height, fps, spec, kbps, on_frame, errors.append)
    pipeline.start()
    try:
        rate, cpu, other = measure(seconds, lambda: pipeline.stats.frames)
    finally:
        pipeline.stop()
    stats = pipeline.stats
    note = f"error: {errors[0]}" if errors else ""
    return Row(mode, f"{spec.codec}/{spec.name}", "moonhowl", rate, cpu, other,
               stats.latency_p50_ms, stats.latency_p99_ms, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (after warm-up)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--everything", action="store_true", help="every working row, not one per codec")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    init()

    results = probe(everything=args.everything)
    if args.everything:
        specs = [r.spec for rows in results.values() for r in rows if r.ok]
    else:
        specs = list(working(results).values())
    for rows in results.values():
        for r in rows:
            if not r.ok and not r.spec.hardware:
                print(f"# skipped {r.spec.codec}/{r.spec.name}: {r.reason}")

    print(f"{'mode':8} {'encoder':14} {'pipeline':9} {'fps':>6} {'CPU%':>6} {'CPU ms/frame':>12} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'others CPU%':>11}  note")
    for mode in args.modes.split(","):
        for spec in specs:
            for row in (run_bare(mode, spec, args.seconds), run_moonhowl(mode, spec, args.seconds)):
                p50 = f"{row.p50_ms:7.1f}" if row.p50_ms is not None else f"{'-':>7}"
                p99 = f"{row.p99_ms:7.1f}" if row.p99_ms is not None else f"{'-':>7}"
                # Per frame, because a pipeline that cannot keep up does less work per second.
                per_frame = 10 * row.cpu_pct / row.fps if row.fps else float("nan")
                print(f"{row.mode:8} {row.encoder:14} {row.kind:9} {row.fps:6.1f} {row.cpu_pct:6.0f} "
                      f"{per_frame:12.1f} {p50} {p99} {row.other_pct:11.0f}  {row.note}", flush=True)


if __name__ == "__main__":
    main()
