"""Per-session server CPU and host processing latency, against the bare encoder pipelines.

For each working codec and each mode, a moonhowl server (its own process) streams "Test pattern"
to moonhowl's client (this process, not decoding, to leave the CPU to the server), and in the
same run `gst-launch-1.0` runs the bare encoders the session runs: `videotestsrc ! <encoder>`
with the same settings, and the test tone's `audiotestsrc ! opusenc` (5 ms CBR stereo, as
every Moonlight session streams audio). CPU is read from /proc over the measurement window. Host latency is capture ->
packetized (what the frame header carries); encoder latency is capture -> encoder output.

Run inside the runtime: ./moonhowl exec python bench/stream.py [--seconds 8] [--modes 1280x720x60,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from moonhowl.client.gamestream import GameStreamClient  # noqa: E402
from moonhowl.client.identity import ClientIdentity  # noqa: E402
from moonhowl.client.stream import StreamSession  # noqa: E402
from moonhowl.media.encoders import ENCODERS  # noqa: E402
from moonhowl.media.pipeline import bare_encoder_description  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS


async def api(sock: Path, method: str, path: str, body: object = None) -> object:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
            s.request(method, f"http://moonhowl{path}", json=body) as reply:
        return await reply.json()


# The session's audio encoder (media/audio.py), with nothing after it.
BARE_AUDIO = ("audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=2 ! "
              "opusenc frame-size=5 bitrate-type=cbr audio-type=restricted-lowdelay bandwidth=fullband "
              "bitrate=96000 ! fakesink")


async def measure_bare(description: str, seconds: float) -> float:
    proc = subprocess.Popen(["gst-launch-1.0", "-q", *shlex.split(description)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(WARMUP_S)
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    await asyncio.sleep(seconds - WARMUP_S)
    cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    proc.terminate()
    proc.wait()
    return cpu * 100


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--modes", default="1280x720x60,1920x1080x60")
    parser.add_argument("--codecs", default="h264,hevc,av1")
    args = parser.parse_args()
    modes = [tuple(int(x) for x in m.split("x")) for m in args.modes.split(",")]
    state = Path(tempfile.mkdtemp(prefix="moonhowl-bench-"))
    http = free_port()
    ports = {"http_port": http, "https_port": free_port(), "rtsp_port": 0, "control_port": 0,
             "video_port": 0, "audio_port": 0}
    server = subprocess.Popen(
        [sys.executable, "-m", "moonhowl", "serve", "--state-dir", str(state), "--set", "server.bind=127.0.0.1",
         *[a for k, v in ports.items() for a in ("--set", f"server.{k}={v}")]],
        stdout=subprocess.DEVNULL, stderr=open(state / "server.log", "w"))  # noqa: SIM115
    sock = state / "api.sock"
    try:
        while not sock.exists():
            if server.poll() is not None:
                raise SystemExit(f"the server exited; see {state / 'server.log'}")
            await asyncio.sleep(0.1)
        status = await api(sock, "GET", "/v1/status")
        assert isinstance(status, dict)
        client = GameStreamClient("127.0.0.1", http_port=http, https_port=ports["https_port"],
                                  identity=ClientIdentity.generate())
        pairing = asyncio.ensure_future(client.pair("1234"))
        while not await api(sock, "GET", "/v1/pairings"):
            await asyncio.sleep(0.05)
        await api(sock, "POST", "/v1/pin", {"pin": "1234"})
        await pairing
        rows = []
        for codec in [c for c in args.codecs.split(",") if c in status["codecs"]]:
            for width, height, fps in modes:
                kbps = 20000 if height >= 1080 else 10000
                session = await StreamSession.start(client, 2, width, height, fps, codec=codec, bitrate_kbps=kbps,
                                                    decode=False)
                await asyncio.sleep(WARMUP_S)
                c0, t0, f0 = cpu_seconds(server.pid), time.monotonic(), session.stats().frames
                await asyncio.sleep(args.seconds - WARMUP_S)
                elapsed = time.monotonic() - t0
                cpu = (cpu_seconds(server.pid) - c0) / elapsed * 100
                fps_out = (session.stats().frames - f0) / elapsed
                info = (await api(sock, "GET", "/v1/status"))["sessions"][0]  # type: ignore[index]
                await session.stop(cancel_app=True)
                spec = next(s for s in ENCODERS if s.codec == codec and s.name == info["encoder"])
                video = bare_encoder_description(width, height, fps, spec, info["bitrate_kbps"])
                bare = await measure_bare(f"{video} {BARE_AUDIO}", args.seconds)
                rows.append((codec, info["encoder"], f"{width}x{height}@{fps}", fps_out, cpu, bare,
                             info["host_latency_ms_p50"], info["host_latency_ms_p99"],
                             info["encoder_latency_ms_p50"], info["encoder_latency_ms_p99"]))
                print(f"... {rows[-1][0]} {rows[-1][2]} done", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(10)
    header = ("codec", "encoder", "mode", "fps", "server CPU %", "bare CPU %", "ratio", "host p50 ms",
              "host p99 ms", "enc p50 ms", "enc p99 ms", "p99 overhead ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for codec, enc, mode, fps_out, cpu, bare, hp50, hp99, ep50, ep99 in rows:
        print(f"| {codec} | {enc} | {mode} | {fps_out:.1f} | {cpu:.0f} | {bare:.0f} | {cpu / bare:.2f} | "
              f"{hp50:.1f} | {hp99:.1f} | {ep50:.1f} | {ep99:.1f} | {hp99 - ep99:+.1f} |")
    print(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count()}), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
