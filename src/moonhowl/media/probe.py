"""Which encoder rows work here: their elements exist and they really encode a frame.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from moonhowl.media.encoders import CODECS, ENCODERS, EncoderSpec, rows_for

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ProbeResult:
    spec: EncoderSpec
    ok: bool
    reason: str
    seconds: float


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
    ok, reason = json.loads(lines[-1])
    return ProbeResult(spec, bool(ok), str(reason), time.monotonic() - t0)


def _trial(spec: EncoderSpec) -> tuple[bool, str]:
    """In the child: encode a few small frames with the row's fragment."""
    from moonhowl.media.glib import Gst

    missing = missing_elements(spec)
    if missing:
        return False, f"missing element(s): {', '.join(missing)}"
    description = (f"videotestsrc num-buffers=10 ! video/x-raw,width=320,height=240,framerate=30/1 ! "
                   f"{spec.fragment(2000)} ! fakesink name=sink signal-handoffs=true")
    try:
        pipeline = Gst.parse_launch(description)
    except Exception as exc:  # GLib.Error from the parser: the fragment does not fit this element
        return False, f"pipeline does not build: {exc}"
    frames: list[int] = []
    pipeline.get_by_name("sink").connect("handoff", lambda _sink, buf, _pad: frames.append(buf.get_size()))
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(
        int(PROBE_TIMEOUT_S * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
    if message is None:
        return False, f"no result within {PROBE_TIMEOUT_S:g} s"
    pipeline.set_state(Gst.State.NULL)
    if message.type == Gst.MessageType.ERROR:
        error, _debug = message.parse_error()
        return False, f"encoding failed: {error.message}"
    if not frames:
        return False, "no encoded frame came out"
    return True, f"{len(frames)} frames encoded"


def probe(order: dict[str, list[str]] | None = None, codecs: tuple[str, ...] = CODECS,
          everything: bool = False) -> dict[str, list[ProbeResult]]:
    """Per codec, the rows tried in order up to the first that works (all of them if everything)."""
    def one_codec(codec: str) -> list[ProbeResult]:
        tried = []
        for spec in rows_for(codec, (order or {}).get(codec)):
            result = try_encode(spec)
            tried.append(result)
            log.debug("encoder %s/%s: %s", codec, spec.name, result.reason)
            if result.ok and not everything:
                break
        return tried

    # Codecs in parallel: each trial is a child process, so this is wall time, not CPU.
    with ThreadPoolExecutor(max_workers=len(codecs) or 1) as pool:
        return dict(zip(codecs, pool.map(one_codec, codecs), strict=True))


def cached_working(order: dict[str, list[str]]) -> dict[str, EncoderSpec]:
    """probe() + working(), remembered across starts while nothing it depends on changed.

    The key covers the GStreamer version, which of the rows' elements exist (hardware encoders
    register only where their device is) and the rows themselves, so a new GPU, driver or
    encoder setting probes again. `moonhowl doctor` always probes afresh.
    """
    from moonhowl.media.glib import Gst, init

    init()
    rows = [spec for codec in order for spec in rows_for(codec, order[codec])]
    present = sorted({name for spec in rows for name in spec.elements if Gst.ElementFactory.find(name)})
    key = hashlib.sha256(repr((Gst.version_string(), present, rows)).encode()).hexdigest()[:16]
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
    results = probe(order, tuple(order))
    for codec, tried in results.items():
        for result in tried:
            log.info("encoder %s/%s: %s", codec, result.spec.name, result.reason)
    chosen = working(results)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({codec: spec.name for codec, spec in chosen.items()}))
    except OSError as exc:
        log.info("cannot remember the probe in %s: %s", cache, exc)
    return chosen


def working(results: dict[str, list[ProbeResult]]) -> dict[str, EncoderSpec]:
    return {codec: next(r.spec for r in rows if r.ok) for codec, rows in results.items()
            if any(r.ok for r in rows)}


if __name__ == "__main__":
    # Child side of try_encode: argv[1] is the row's index in ENCODERS; one JSON line out.
    print(json.dumps(_trial(ENCODERS[int(sys.argv[1])])), flush=True)
