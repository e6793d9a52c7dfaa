"""Which encoder rows work here: their elements exist, they encode, and fast enough.

Speed is part of working: a software encoder that cannot keep up with 720p60 makes every
stream stutter, so its codec is not offered at all (Wolf's users report exactly this with a
slow software AV1 encoder). Each row encodes PROBE_FRAMES frames of 1280x720 as fast as it can;
rows under `min_fps` are reported but not used.

Each trial runs in a child process with a deadline: an encoder library that hangs or crashes
(seen: svtav1enc stuck in its teardown) costs the probe a row, never the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moonhowl.media.encoders import CODECS, ENCODERS, EncoderSpec, rows_for

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


PROBE_WIDTH, PROBE_HEIGHT, PROBE_FRAMES = 1280, 720, 40
DEFAULT_MIN_FPS = 60.0


@dataclass(frozen=True)
class ProbeResult:
    spec: EncoderSpec
    ok: bool  # it encodes at all
    reason: str
    seconds: float
    fps: float = 0.0  # frames per second at 1280x720, encoding as fast as it can

    def usable(self, min_fps: float) -> bool:
        return self.ok and self.fps >= min_fps


def missing_elements(spec: EncoderSpec) -> list[str]:
    from moonhowl.media.glib import Gst, init

    init()
    return [name for name in spec.elements if Gst.ElementFactory.find(name) is None]


def try_encode(spec: EncoderSpec) -> ProbeResult:
    """Runs _trial for the row in a child process; ok when encoded buffers came out."""
    t0 = time.monotonic()
    index = ENCODERS.index(spec)
    try:
        child = subprocess.run([sys.executable, "-m", "moonhowl.media.probe", str(index)],
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT_S + 5, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(spec, False, f"hung for more than {PROBE_TIMEOUT_S + 5:g} s", time.monotonic() - t0)
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        return ProbeResult(spec, False, f"the trial crashed (exit {child.returncode})", time.monotonic() - t0)
    ok, reason, fps = json.loads(lines[-1])
    return ProbeResult(spec, bool(ok), str(reason), time.monotonic() - t0, float(fps))


def _trial(spec: EncoderSpec) -> tuple[bool, str, float]:
    """In the child: encode PROBE_FRAMES frames of 720p with the row's fragment, timing the output."""
    from moonhowl.media.glib import Gst

    missing = missing_elements(spec)
    if missing:
        return False, f"missing element(s): {', '.join(missing)}", 0.0
    description = (f"videotestsrc num-buffers={PROBE_FRAMES} pattern=smpte horizontal-speed=4 ! "
                   f"video/x-raw,width={PROBE_WIDTH},height={PROBE_HEIGHT},framerate=60/1 ! "
                   f"{spec.fragment(10000)} ! fakesink name=sink signal-handoffs=true sync=false")
    try:
        pipeline = Gst.parse_launch(description)
    except Exception as exc:  # GLib.Error from the parser: the fragment does not fit this element
        return False, f"pipeline does not build: {exc}", 0.0
    frames: list[float] = []
    pipeline.get_by_name("sink").connect("handoff", lambda _sink, _buf, _pad: frames.append(time.monotonic()))
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(
        int(PROBE_TIMEOUT_S * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
    if message is None:
        return False, f"no result within {PROBE_TIMEOUT_S:g} s", 0.0
    pipeline.set_state(Gst.State.NULL)
    if message.type == Gst.MessageType.ERROR:
        error, _debug = message.parse_error()
        return False, f"encoding failed: {error.message}", 0.0
    if len(frames) < 2:
        return False, "no encoded frame came out", 0.0
    # From the first output on: a lookahead delay is latency, not throughput.
    fps = (len(frames) - 1) / max(frames[-1] - frames[0], 1e-6)
    return True, f"{fps:.0f} fps at {PROBE_WIDTH}x{PROBE_HEIGHT}", fps


def probe(order: dict[str, list[str]] | None = None, codecs: tuple[str, ...] = CODECS,
          everything: bool = False, min_fps: float = DEFAULT_MIN_FPS) -> dict[str, list[ProbeResult]]:
    """Per codec, the rows tried in order up to the first usable one (all of them if everything).

    One trial at a time: trials running side by side would slow each other and fail rows that
    are fast enough on their own.
    """
    results: dict[str, list[ProbeResult]] = {}
    for codec in codecs:
        results[codec] = []
        for spec in rows_for(codec, (order or {}).get(codec)):
            result = try_encode(spec)
            results[codec].append(result)
            log.debug("encoder %s/%s: %s", codec, spec.name, result.reason)
            if result.usable(min_fps) and not everything:
                break
    return results


def cached_working(order: dict[str, list[str]], min_fps: float = DEFAULT_MIN_FPS) -> dict[str, EncoderSpec]:
    """probe() + working(), remembered across starts while nothing it depends on changed.

    The key covers the GStreamer version, which of the rows' elements exist (hardware encoders
    register only where their device is) and the rows themselves, so a new GPU, driver or
    encoder setting probes again. `moonhowl doctor` always probes afresh.
    """
    from moonhowl.media.glib import Gst, init

    init()
    rows = [spec for codec in order for spec in rows_for(codec, order[codec])]
    present = sorted({name for spec in rows for name in spec.elements if Gst.ElementFactory.find(name)})
    key = hashlib.sha256(repr((Gst.version_string(), present, rows, min_fps)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moonhowl" / f"probe-{key}.json"
    by_name = {(spec.codec, spec.name): spec for spec in rows}
    try:
        remembered = json.loads(cache.read_text())
        chosen = {codec: by_name[(codec, name)] for codec, name in remembered.items()}
        log.info("encoders (remembered from %s): %s", cache, remembered)
        return chosen
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    log.info("probing encoders (each one encodes a few frames)...")
    results = probe(order, tuple(order), min_fps=min_fps)
    for codec, tried in results.items():
        for result in tried:
            slow = f" (too slow: under {min_fps:g} fps)" if result.ok and not result.usable(min_fps) else ""
            log.info("encoder %s/%s: %s%s", codec, result.spec.name, result.reason, slow)
    chosen = working(results, min_fps)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({codec: spec.name for codec, spec in chosen.items()}))
    except OSError as exc:
        log.info("cannot remember the probe in %s: %s", cache, exc)
    return chosen


def working(results: dict[str, list[ProbeResult]], min_fps: float = DEFAULT_MIN_FPS) -> dict[str, EncoderSpec]:
    return {codec: next(r.spec for r in rows if r.usable(min_fps)) for codec, rows in results.items()
            if any(r.usable(min_fps) for r in rows)}


if __name__ == "__main__":
    # Child side of try_encode: argv[1] is the row's index in ENCODERS; one JSON line out.
    print(json.dumps(_trial(ENCODERS[int(sys.argv[1])])), flush=True)
