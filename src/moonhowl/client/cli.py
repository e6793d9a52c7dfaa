"""`moonhowl client ...`: moonhowl's own Moonlight client on the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the main CLI imports this module at startup: keep the stream code out of it
    from moonhowl.client.gamestream import GameStreamClient
    from moonhowl.client.stream import StreamStats


def default_identity_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "moonhowl" / "client"


def add_parser(sub: Any) -> None:
    client = sub.add_parser("client", help="moonhowl's own Moonlight client: pair, list apps, stream (tests, load)")
    client.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("host", help="the host's name or address")
    common.add_argument("--port", type=int, default=47989, help="the host's HTTP port (default 47989)")
    common.add_argument("--identity", type=Path, default=None,
                        help=f"where the client keeps its certificate (default {default_identity_dir()})")
    csub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    pair = csub.add_parser("pair", parents=[common], help="pair with a host (enter the PIN on the host)")
    pair.add_argument("--pin", help="the PIN to use (default: a random one, printed)")
    pair.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the PIN")
    csub.add_parser("list", parents=[common], help="list the host's apps (needs pairing)")
    csub.add_parser("info", parents=[common], help="print the host's serverinfo")
    csub.add_parser("unpair", parents=[common], help="unpair from the host")
    stream = csub.add_parser("stream", parents=[common],
                             help="stream an app; print frames, FPS, loss, FEC repairs, latency (needs pairing)")
    which = stream.add_mutually_exclusive_group()
    which.add_argument("--app", metavar="TITLE", help="the app's title (default: the host's first app)")
    which.add_argument("--app-id", type=int, metavar="N", help="the app's ID (see `moonhowl client list`)")
    stream.add_argument("--mode", type=parse_mode, default=(1280, 720, 60), metavar="WxHxFPS",
                        help="resolution and frame rate (default 1280x720x60)")
    stream.add_argument("--codec", choices=("h264", "hevc", "av1"), default="h264",
                        help="preferred codec; H.264 when the host lacks it (default h264)")
    stream.add_argument("--bitrate", type=int, default=10000, metavar="KBPS", help="video bitrate (default 10000)")
    stream.add_argument("--seconds", type=float, default=10.0, help="how long to stream (default 10)")
    stream.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                        help="drop this share of received video packets on purpose, to exercise FEC")
    stream.add_argument("--seed", type=int, default=0, help="seed of the --loss random generator")
    stream.add_argument("--no-decode", action="store_true",
                        help="only count frames (no GStreamer decoder; works outside the runtime)")
    stream.add_argument("--keep-app", action="store_true", help="leave the app running afterwards")
    stream.add_argument("--wav", type=Path, metavar="FILE", help="write the decoded audio to a WAV file")


def parse_mode(text: str) -> tuple[int, int, int]:
    """``1280x720x60`` -> (1280, 720, 60), the /launch ``mode`` format."""
    match = re.fullmatch(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})x([1-9][0-9]{0,3})", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHTxFPS such as 1920x1080x60, got {text!r}")
    width, height, fps = (int(g) for g in match.groups())
    return width, height, fps


def _server_cert_path(identity_dir: Path, host: str, port: int) -> Path:
    return identity_dir / "hosts" / f"{host}_{port}.pem"


async def _run(args: argparse.Namespace) -> int:
    from moonhowl.client.gamestream import GameStreamClient
    from moonhowl.client.identity import ClientIdentity

    identity_dir = args.identity or default_identity_dir()
    identity = ClientIdentity.load_or_create(identity_dir)
    pinned = _server_cert_path(identity_dir, args.host, args.port)
    server_cert = pinned.read_bytes() if pinned.exists() else None
    client = GameStreamClient(args.host, http_port=args.port, identity=identity, server_cert_pem=server_cert)
    info = await client.serverinfo(https=False)
    client.https_port = int(info.get("HttpsPort", "47984"))
    action = args.client_command
    if action == "info":
        if server_cert is not None:
            info = await client.serverinfo(https=True)
        for key, value in info.items():
            print(f"{key}: {value}")
        return 0
    if action == "pair":
        pin = args.pin or f"{secrets.randbelow(10000):04d}"
        print(f"Pairing with {info.get('hostname', args.host)}: enter PIN {pin} on the host "
              f"(`moonhowl pin {pin}` or its /pin page)", file=sys.stderr, flush=True)
        cert = await client.pair(pin, timeout=args.timeout)
        pinned.parent.mkdir(parents=True, exist_ok=True)
        pinned.write_bytes(cert)
        print(f"paired with {info.get('hostname', args.host)}")
        return 0
    if server_cert is None:
        print(f"moonhowl client: not paired with {args.host}:{args.port}; run `moonhowl client pair "
              f"{args.host}` first", file=sys.stderr)
        return 1
    if action == "list":
        for app_id, title in await client.applist():
            print(f"{app_id:>4}  {title}")
        return 0
    if action == "stream":
        return await _stream(client, args)
    if action == "unpair":
        await client.unpair()
        pinned.unlink()
        print(f"unpaired from {args.host}")
        return 0
    raise AssertionError(action)


async def _stream(client: GameStreamClient, args: argparse.Namespace) -> int:
    from moonhowl.client.stream import StreamSession

    apps = await client.applist()
    if args.app_id is not None:
        app = next(((i, t) for i, t in apps if i == args.app_id), (args.app_id, f"app {args.app_id}"))
    elif args.app is not None:
        found = [(i, t) for i, t in apps if t == args.app] or [(i, t) for i, t in apps if t.lower() == args.app.lower()]
        if not found:
            titles = ", ".join(repr(t) for _, t in apps) or "none"
            print(f"moonhowl client: no app titled {args.app!r} on {args.host} (apps: {titles})", file=sys.stderr)
            return 1
        app = found[0]
    elif apps:
        app = apps[0]
    else:
        print(f"moonhowl client: {args.host} lists no apps", file=sys.stderr)
        return 1
    if not 0 <= args.loss < 100:
        print("moonhowl client: --loss must be in [0, 100)", file=sys.stderr)
        return 2
    width, height, fps = args.mode
    print(f"streaming {app[1]!r} (ID {app[0]}) from {args.host}: {width}x{height}@{fps}, {args.codec}, "
          f"{args.bitrate} kbps" + (f", dropping {args.loss:g}% of video packets" if args.loss else ""),
          flush=True)
    session = await StreamSession.start(
        client, app[0], width, height, fps, codec=args.codec, bitrate_kbps=args.bitrate,
        loss_percent=args.loss, seed=args.seed, decode=not args.no_decode)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        while (elapsed := loop.time() - began) < args.seconds:
            ended = await session.wait(min(1.0, args.seconds - elapsed))
            print(progress_line(loop.time() - began, session.stats()), flush=True)
            if ended:
                break
    finally:
        await session.stop(cancel_app=not args.keep_app)
    stats = session.stats()
    print(final_table(stats))
    if args.wav is not None:
        if session.audio is None:
            print("moonhowl client: no decoded audio to write (--no-decode?)", file=sys.stderr)
        else:
            session.audio.write_wav(args.wav)
            print(f"audio written to {args.wav}")
    return 0 if stats.frames > 0 and stats.error is None else 1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def progress_line(elapsed: float, st: StreamStats) -> str:
    return (f"{elapsed:5.1f} s  frames {st.frames:6d}  fps {st.fps:5.1f}  lost {st.lost_frames}  "
            f"fec {st.fec_repaired_shards}  idr {st.idr_requests}  latency {_ms(st.host_latency_p50_ms)}  "
            f"{st.bitrate_kbps:7.0f} kbps  audio {st.audio_packets}")


def final_table(st: StreamStats) -> str:
    if st.error is not None:
        ending = f"error: {st.error}"
    elif st.termination_reason is not None:
        ending = f"host ended it ({st.termination_reason:#010x})"
    else:
        ending = "stopped by us"
    rows = [
        ("codec", f"{st.codec} {st.width}x{st.height}"),
        ("frames", f"{st.frames} ({st.idr_frames} IDR) in {st.duration_s:.1f} s"),
        ("fps", f"{st.fps:.1f}"),
        ("lost frames", f"{st.lost_frames} in {st.frame_gaps} gaps, {st.dropped_frames} dropped waiting for IDR"),
        ("FEC repairs", f"{st.fec_repaired_shards} shards, {st.unrecoverable_blocks} blocks unrecoverable"),
        ("IDR requests", str(st.idr_requests)),
        ("host latency", f"p50 {_ms(st.host_latency_p50_ms)}, p99 {_ms(st.host_latency_p99_ms)}"),
        ("bitrate", f"{st.bitrate_kbps:.0f} kbps ({st.video_packets} packets, "
                    f"{st.dropped_on_purpose} dropped on purpose)"),
        ("decoded", f"{st.decoded_frames} frames, {st.decode_errors} errors"),
        ("audio", f"{st.audio_packets} packets, {st.audio_repaired} repaired, {st.audio_lost} lost, "
                  f"{st.audio_decoded_ms / 1000:.1f} s decoded"),
        ("ended", ending),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    from moonhowl.client.gamestream import GameStreamError
    from moonhowl.client.stream import StreamError
    from moonhowl.protocol.errors import ProtocolError

    try:
        return asyncio.run(_run(args))
    except GameStreamError as exc:
        print(f"moonhowl client: the host answered {exc}", file=sys.stderr)
        return 1
    except (StreamError, ProtocolError) as exc:
        print(f"moonhowl client: streaming failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"moonhowl client: cannot reach {args.host}: {exc}", file=sys.stderr)
        return 1
