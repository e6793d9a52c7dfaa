"""`moonhowl client ...`: moonhowl's own Moonlight client on the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any


def default_identity_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "moonhowl" / "client"


def add_parser(sub: Any) -> None:
    client = sub.add_parser("client", help="moonhowl's own Moonlight client: pair, list apps (tests, load)")
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
    if action == "unpair":
        await client.unpair()
        pinned.unlink()
        print(f"unpaired from {args.host}")
        return 0
    raise AssertionError(action)


def run(args: argparse.Namespace) -> int:
    from moonhowl.client.gamestream import GameStreamError

    try:
        return asyncio.run(_run(args))
    except GameStreamError as exc:
        print(f"moonhowl client: the host answered {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"moonhowl client: cannot reach {args.host}: {exc}", file=sys.stderr)
        return 1
