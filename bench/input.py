"""Input latency: control packet received -> Wayland event written to the app's socket.

An in-process host (free loopback ports, x264) runs a "Desktop" session with weston-eventdemo;
moonhowl's client (same process, not decoding) pairs, streams 640x480@60 and sends a mix of
absolute motion, mouse buttons, wheel scroll and typed keys at a steady rate. Per input packet:

* t_send: the client's StreamSession.send_input was called (before sealing and sendto);
* t0: the host's ENet layer called Session.on_control with the (still sealed) message;
* t_feed: InputRouter.feed got the decrypted payload;
* t_ret: Session.on_control returned (events parsed, routed and queued on the client);
* t1: the wayland Client.flush whose sendmsg wrote the last byte queued for that packet returned.

All wrappers are installed here, on the classes, by monkeypatching: no library code is changed
for the measurement. One clock (perf_counter_ns, CLOCK_MONOTONIC) serves client and host.
Packets that queue no Wayland event (nothing under the pointer, no keyboard focus) are counted
separately, not timed.

Run inside the runtime: ./moonhowl exec python bench/input.py [--events 2000] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from moonhowl import config as config_mod  # noqa: E402
from moonhowl.app import Host  # noqa: E402
from moonhowl.client.gamestream import GameStreamClient  # noqa: E402
from moonhowl.client.identity import ClientIdentity  # noqa: E402
from moonhowl.client.keyboard import type_events  # noqa: E402
from moonhowl.client.stream import StreamSession  # noqa: E402
from moonhowl.input import InputRouter  # noqa: E402
from moonhowl.media import probe  # noqa: E402
from moonhowl.protocol import input as inp  # noqa: E402
from moonhowl.session.session import Session  # noqa: E402
from moonhowl.state import HostState  # noqa: E402
from moonhowl.wayland.server import Client  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 60
# The app's stdout goes nowhere: eventdemo prints a line per event, and forwarding those into the
# host's log would add loop work that no ordinary app causes.
APP = ('[[apps]]\ntitle = "Desktop"\nkind = "desktop"\n'
       'command = ["sh", "-c", "exec weston-eventdemo >/dev/null 2>&1"]\n')
TEXT = "The quick brown fox jumps over the lazy dog. "
# Share of each kind in the mix: pointer motion dominates real use, as it does here.
MIX = (("motion", 50), ("key", 25), ("button", 12), ("scroll", 13))
KINDS = [k for k, _ in MIX]
WARMUP = 100  # packets sent and discarded first: the router, keymap and code paths get warm

now = time.perf_counter_ns


@dataclass
class Sample:
    kind: str
    t_send: int
    t0: int
    t_feed: int
    t_ret: int = 0
    t1: int = 0
    waiting: dict[Client, int] = field(default_factory=dict)  # client -> stream offset to be written


class Probe:
    """The monkeypatched measurement points and what they recorded."""

    def __init__(self) -> None:
        # Sent payload bytes -> (kind, send times): identical payloads (a key's press) travel on
        # one reliable ENet channel, so they arrive in the order they were sent.
        self.sent: dict[bytes, tuple[str, collections.deque[int]]] = {}
        self.samples: list[Sample] = []
        self.silent: collections.Counter[str] = collections.Counter()  # packets that queued nothing
        self._t0: int | None = None
        self._current: Sample | None = None
        self._pending: dict[Client, collections.deque[Sample]] = collections.defaultdict(collections.deque)

    def send(self, session: StreamSession, kind: str, event: Any) -> None:
        payload = bytes(event)
        self.sent.setdefault(payload, (kind, collections.deque()))[1].append(now())
        session.send_input(event)

    def install(self) -> None:
        on_control, feed, send_message, flush = Session.on_control, InputRouter.feed, Client.send_message, Client.flush
        bench = self

        def timed_on_control(self: Session, data: bytes) -> None:
            bench._t0 = now()
            try:
                on_control(self, data)
            finally:
                bench._t0 = None
                sample, bench._current = bench._current, None
                if sample is not None:
                    sample.t_ret = now()
                    if sample.waiting:
                        bench.samples.append(sample)
                        for client in sample.waiting:
                            bench._pending[client].append(sample)
                    else:
                        bench.silent[sample.kind] += 1

        def timed_feed(self: InputRouter, payload: bytes) -> Any:
            t_feed = now()
            entry = bench.sent.get(bytes(payload))
            if bench._t0 is not None and entry is not None and entry[1]:
                bench._current = Sample(entry[0], entry[1].popleft(), bench._t0, t_feed)
            return feed(self, payload)

        def timed_send_message(self: Client, *args: Any) -> None:
            send_message(self, *args)
            if bench._current is not None and not self.closed:
                # Where this packet's bytes end in the client's output stream: written once the
                # stream offset of the unsent buffer passes it.
                bench._current.waiting[self] = self._out_start + len(self._out)

        def timed_flush(self: Client) -> None:
            flush(self)
            t = now()
            queue = bench._pending.get(self)
            while queue and self._out_start >= queue[0].waiting[self]:
                sample = queue.popleft()
                del sample.waiting[self]
                sample.t1 = max(sample.t1, t)

        Session.on_control = timed_on_control  # type: ignore[method-assign]
        InputRouter.feed = timed_feed  # type: ignore[method-assign]
        Client.send_message = timed_send_message  # type: ignore[method-assign]
        Client.flush = timed_flush  # type: ignore[method-assign]

    def reset(self) -> None:
        self.samples.clear()
        self.silent.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(count: int, seed: int) -> list[tuple[str, Any]]:
    """A fixed mix: keys type TEXT (shift around capitals), buttons and keys alternate press and
    release, motion wanders over the middle of the window (not its frame, where a click would
    start a window move), wheel detents go up and down."""
    rng = random.Random(seed)
    keys = cycle(type_events(TEXT))
    out: list[tuple[str, Any]] = []
    button_down = False
    x, y = WIDTH // 2, HEIGHT // 2
    for _ in range(count):
        kind = rng.choices(KINDS, weights=[w for _, w in MIX])[0]
        if kind == "motion":
            x = min(max(x + rng.randint(-20, 20), WIDTH // 4), 3 * WIDTH // 4)
            y = min(max(y + rng.randint(-20, 20), HEIGHT // 4), 3 * HEIGHT // 4)
            out.append((kind, inp.MousePosition(x, y, WIDTH - 1, HEIGHT - 1)))
        elif kind == "key":
            out.append((kind, next(keys)))
        elif kind == "button":
            button_down = not button_down
            out.append((kind, inp.MouseButton(inp.BUTTON_LEFT, button_down)))
        else:
            out.append((kind, inp.Scroll(rng.choice((120, -120)))))
    return out


async def send_paced(bench: Probe, session: StreamSession, batch: list[tuple[str, Any]], rate: float,
                     deadline: float) -> int:
    """Send on an absolute schedule (a late wake-up does not push every later packet back)."""
    start = time.monotonic()
    for i, (kind, event) in enumerate(batch):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() > deadline:
            return i
        bench.send(session, kind, event)
    return len(batch)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> tuple[Probe, dict[str, Any]]:
    encoders = probe.working(probe.probe({"h264": ["x264"]}, ("h264",), min_fps=0), min_fps=0)
    if "h264" not in encoders:
        raise SystemExit("x264 does not work here")
    state = Path(tempfile.mkdtemp(prefix="moonhowl-bench-input-"))
    overrides = {"server": {"bind": "127.0.0.1", "http_port": free_port(), "https_port": free_port(),
                            "rtsp_port": 0, "control_port": 0, "video_port": 0, "audio_port": 0,
                            "state_dir": str(state)},
                 "pairing": {"pin_timeout": 10}}
    config = config_mod.parse(APP, None, overrides)
    host = Host(config, HostState.open(config.state_dir), encoders=encoders)
    await host.start()
    bench = Probe()
    bench.install()
    info: dict[str, Any] = {}
    try:
        client = GameStreamClient("127.0.0.1", http_port=host.ports["http"], https_port=host.ports["https"],
                                  identity=ClientIdentity.generate())
        pairing = asyncio.ensure_future(client.pair("1234"))
        await wait_for(lambda: any(not p.pin.done() for p in host.pairing.pending), 10, "the pairing request")
        host.pairing.submit_pin("1234")
        await pairing
        app_id = next(a.id for a in config.apps if a.title == "Desktop")
        session = await StreamSession.start(client, app_id, WIDTH, HEIGHT, FPS, decode=False)
        try:
            host_session = next(iter(host.sessions.sessions.values()))
            desktop = host_session.desktop
            assert desktop is not None and desktop.compositor is not None
            seat = desktop.compositor.seat
            # The window is mapped and focused once the seat has a keyboard focus.
            await wait_for(lambda: seat.keyboard_focus is not None, 15, "weston-eventdemo's window")
            await wait_for(lambda: session.stats().frames > 10, 10, "video frames")
            batch = events(WARMUP + args.events, args.seed)
            await send_paced(bench, session, batch[:WARMUP], args.rate, time.monotonic() + args.seconds)
            await asyncio.sleep(0.3)
            bench.reset()
            t_start = time.monotonic()
            sent = await send_paced(bench, session, batch[WARMUP:], args.rate, t_start + args.seconds)
            elapsed = time.monotonic() - t_start
            await asyncio.sleep(0.5)  # the last packets arrive and are written
            stats = session.stats()
            info = {"sent": sent, "elapsed": elapsed, "frames": stats.frames, "fps": stats.fps,
                    "renderer": desktop.renderer_name + (" (software GL)" if desktop.software_rendering else ""),
                    "encoder": host_session.encoder_name,
                    "input": host.status()["sessions"][0]["input"]}
        finally:
            await session.stop(cancel_app=True)
    finally:
        await host.stop()
        shutil.rmtree(state, ignore_errors=True)
    return bench, info


def report(bench: Probe, info: dict[str, Any], args: argparse.Namespace) -> None:
    done = [s for s in bench.samples if s.t1]
    unwritten = len(bench.samples) - len(done)
    uname = os.uname()
    print(f"machine: {uname.nodename}, {uname.sysname} {uname.release} {uname.machine}, "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    print(f"session: {WIDTH}x{HEIGHT}@{FPS}, {info['encoder']}, {info['renderer']} renderer, "
          f"video {info['fps']:.0f} fps while measuring; app weston-eventdemo")
    print(f"sent {info['sent']} input packets in {info['elapsed']:.2f} s ({info['sent'] / info['elapsed']:.0f}/s, "
          f"after {WARMUP} warm-up); timed {len(done)}, queued no Wayland event {sum(bench.silent.values())}"
          f"{dict(bench.silent) if bench.silent else ''}, queued but never written {unwritten}")
    print(f"host input stats: {info['input']}")
    print()
    print("latency, ms: host = control packet received (Session.on_control) -> Wayland bytes written (sendmsg);")
    print("             e2e  = client send_input -> Wayland bytes written (same process, same clock)")
    header = ("kind", "n", "host p50", "host p99", "host max", "e2e p50", "e2e p99", "e2e max")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for kind in [*KINDS, "all"]:
        rows = [s for s in done if kind in ("all", s.kind)]
        if not rows:
            continue
        host = [(s.t1 - s.t0) / 1e6 for s in rows]
        e2e = [(s.t1 - s.t_send) / 1e6 for s in rows]
        cells = [f"{f(v):.3f}" for v in (host, e2e) for f in (lambda v: pct(v, 50), lambda v: pct(v, 99), max)]
        print(f"| {kind} | {len(rows)} | " + " | ".join(cells) + " |")
    print()
    print("where the time goes (all kinds), ms")
    stages = (("client send -> on_control (seal, UDP, ENet, loop)", lambda s: s.t0 - s.t_send),
              ("on_control -> feed (AES-GCM open)", lambda s: s.t_feed - s.t0),
              ("feed -> on_control returns (parse, route, queue)", lambda s: s.t_ret - s.t_feed),
              ("returns -> written (wait for flush, sendmsg)", lambda s: s.t1 - s.t_ret))
    print("| stage | p50 | p99 | max |")
    print("|---|---|---|---|")
    for name, f in stages:
        values = [f(s) / 1e6 for s in done]
        print(f"| {name} | {pct(values, 50):.3f} | {pct(values, 99):.3f} | {max(values):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="input packets measured (default 2000)")
    parser.add_argument("--rate", type=float, default=500.0, help="packets per second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("weston-eventdemo") is None:
        raise SystemExit("weston-eventdemo is not installed (run inside the runtime: ./moonhowl exec ...)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bench, info = asyncio.run(run(args))
    if not bench.samples:
        raise SystemExit("no input packet produced a Wayland event")
    report(bench, info, args)


if __name__ == "__main__":
    main()
