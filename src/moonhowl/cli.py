"""`moonhowl` command line: the server, its management commands and the test client."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from moonhowl import config as config_mod

log = logging.getLogger("moonhowl")

EPILOG = """\
examples:
  moonhowl serve                       run the server with the default configuration
  moonhowl pin 1234                    enter the PIN a Moonlight client shows while pairing
  moonhowl clients                     list paired clients; `clients remove ID` unpairs one
  moonhowl config                      print the effective configuration (TOML)
  moonhowl doctor                      what this machine offers: GStreamer, encoders, EGL, audio
  moonhowl client pair HOST --pin 1234 pair moonhowl's own test client with a host
  moonhowl test                        lint, type-check and run the test suite
"""


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """--set section.key=value (the value parsed as TOML, falling back to a plain string)."""
    import tomllib

    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot:
            raise config_mod.ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        overrides.setdefault(section, {})[key] = value
    return overrides


def load_config(args: argparse.Namespace) -> config_mod.Config:
    overrides = _parse_set(getattr(args, "set", None) or [])
    if getattr(args, "state_dir", None):
        overrides.setdefault("server", {})["state_dir"] = str(args.state_dir)
    return config_mod.load(args.config, overrides)


# --- commands -------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from moonhowl.app import Host
    from moonhowl.state import HostState

    config = load_config(args)
    state = HostState.open(config.state_dir)
    host = Host(config, state)
    asyncio.run(host.run_forever())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args)
    source = config.source or f"built-in defaults ({config_mod.default_config_path()} not found)"
    print(f"# effective configuration; from {source}")
    print(config.to_toml())
    return 0


async def _api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import aiohttp

    socket_path = load_config(args).api_socket
    if not socket_path.exists():
        raise SystemExit(f"moonhowl: no server is running (no API socket at {socket_path}); "
                         f"start one with `moonhowl serve`")
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.request(method, f"http://moonhowl{path}", json=body) as reply:
            return reply.status, await reply.json()
    except aiohttp.ClientConnectionError as exc:
        raise SystemExit(f"moonhowl: cannot reach the server at {socket_path}: {exc}") from None


def cmd_pin(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"pin": args.pin, "wait": not args.no_wait}
    if args.pairing:
        body["pairing"] = args.pairing
    print("PIN sent; waiting for the client to finish pairing..." if not args.no_wait else "PIN sent.",
          file=sys.stderr)
    status, reply = asyncio.run(_api(args, "POST", "/v1/pin", body))
    if status >= 300:
        print(f"moonhowl: {reply.get('error', reply)}", file=sys.stderr)
        return 1
    client = reply.get("client")
    print(f"paired: {client['name']} (id {client['id']})" if client else f"pairing {reply['pairing']}: "
          f"{reply['state']}")
    return 0


def cmd_clients(args: argparse.Namespace) -> int:
    if args.action == "remove":
        if not args.id:
            print("moonhowl: clients remove needs the client's ID (see `moonhowl clients`)", file=sys.stderr)
            return 2
        status, reply = asyncio.run(_api(args, "DELETE", f"/v1/clients/{args.id}"))
        if status >= 300:
            print(f"moonhowl: {reply['error']}", file=sys.stderr)
            return 1
        print(f"unpaired {reply['name']} (id {reply['id']})")
        return 0
    status, clients = asyncio.run(_api(args, "GET", "/v1/clients"))
    if not clients:
        print("no paired clients")
    for c in clients:
        print(f"{c['id']}  {c['name']:<24} paired {c['paired_at']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, status = asyncio.run(_api(args, "GET", "/v1/status"))
    print(json.dumps(status, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from moonhowl import doctor

    return doctor.run()


def cmd_test(args: argparse.Namespace) -> int:
    root = Path(os.environ.get("MOONHOWL_SRC_ROOT") or Path(__file__).resolve().parents[2])
    steps = [
        ("ruff", [sys.executable, "-m", "ruff", "check", "src", "tests", "bench"]),
        ("mypy (strict on protocol/)", [sys.executable, "-m", "mypy", "src/moonhowl/protocol"]),
        ("pytest", [sys.executable, "-m", "pytest", *args.pytest_args]),
    ]
    for name, command in steps:
        if args.only and args.only != name.split()[0]:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=root, check=False)
        if result.returncode != 0:
            print(f"moonhowl test: {name} failed (exit {result.returncode})", file=sys.stderr)
            return result.returncode
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from moonhowl.client import cli as client_cli

    return client_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moonhowl", description="A Moonlight (GameStream) host: every client gets its own "
        "virtual Wayland desktop.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help=f"TOML configuration (default: "
                        f"{config_mod.default_config_path()} when it exists)")
    common.add_argument("--state-dir", type=Path, help="certificates and paired clients "
                        "(default: $XDG_STATE_HOME/moonhowl)")
    common.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one configuration value, e.g. --set server.http_port=48989")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("serve", parents=[common], help="run the server").set_defaults(func=cmd_serve)
    sub.add_parser("config", parents=[common], help="print the effective configuration").set_defaults(
        func=cmd_config)
    pin = sub.add_parser("pin", parents=[common], help="enter the PIN a client shows while pairing")
    pin.add_argument("pin", help="the 4 digits the Moonlight client shows")
    pin.add_argument("--pairing", help="which pairing, when several clients wait (see `moonhowl status`)")
    pin.add_argument("--no-wait", action="store_true", help="do not wait for the pairing's outcome")
    pin.set_defaults(func=cmd_pin)
    clients = sub.add_parser("clients", parents=[common], help="list or remove paired clients")
    clients.add_argument("action", nargs="?", choices=["list", "remove"], default="list")
    clients.add_argument("id", nargs="?", help="the client's ID (for remove)")
    clients.set_defaults(func=cmd_clients)
    sub.add_parser("status", parents=[common], help="the running server's status (JSON)").set_defaults(
        func=cmd_status)
    sub.add_parser("doctor", help="report GStreamer, encoders, EGL, render nodes, uinput, audio").set_defaults(
        func=cmd_doctor)
    test = sub.add_parser("test", help="run ruff, mypy and the test suite (extra args go to pytest)")
    test.add_argument("--only", choices=["ruff", "mypy", "pytest"], help="run one step")
    test.add_argument("pytest_args", nargs="*", help="arguments for pytest, e.g. -m unit -x")
    test.set_defaults(func=cmd_test)

    from moonhowl.client import cli as client_cli

    client_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    passthrough: list[str] = []
    if argv[:1] == ["test"]:
        # Everything after `test` (but --only X) goes to pytest verbatim, in order.
        rest = argv[1:]
        keep = rest[:2] if rest[:1] == ["--only"] else []
        passthrough = rest[len(keep):] if "-h" not in rest and "--help" not in rest else []
        argv = ["test", *keep] if passthrough or not rest else argv
    args = parser.parse_args(argv)
    if args.command == "test":
        args.pytest_args = passthrough
    _setup_logging(args.verbose)
    from moonhowl.app import StartupError
    from moonhowl.state import StateError

    try:
        return int(args.func(args))
    except (config_mod.ConfigError, StateError, StartupError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
