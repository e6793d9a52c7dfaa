"""Shared fixtures: an in-process moonhowl host on free loopback ports, and paired test clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from moonhowl import config as config_mod
from moonhowl.app import Host
from moonhowl.client.gamestream import GameStreamClient
from moonhowl.client.identity import ClientIdentity
from moonhowl.state import HostState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_config(state_dir: Path, config_text: str = "", **server: Any) -> config_mod.Config:
    overrides = {"server": {"bind": "127.0.0.1", "http_port": 0, "https_port": 0,
                            "state_dir": str(state_dir), **server},
                 "pairing": {"pin_timeout": 10}}
    return config_mod.parse(config_text, None, overrides)


HostFactory = Callable[..., Coroutine[Any, Any, Host]]


@pytest.fixture
async def start_host(tmp_path: Path) -> AsyncIterator[HostFactory]:
    """Starts hosts (stopped at the end); the state directory defaults to tmp_path/state."""
    hosts: list[Host] = []

    async def start(state_dir: Path | None = None, encoders: dict | None = None, config_text: str = "",
                    **server: Any) -> Host:
        config = host_config(state_dir or tmp_path / "state", config_text, **server)
        host = Host(config, HostState.open(config.state_dir), encoders=encoders or {})
        await host.start()
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        await host.stop()


def client_for(host: Host, identity: ClientIdentity | None = None,
               server_cert: bytes | None = None) -> GameStreamClient:
    return GameStreamClient("127.0.0.1", http_port=host.ports["http"], https_port=host.ports["https"],
                            identity=identity or ClientIdentity.generate(), server_cert_pem=server_cert)


async def enter_pin_when_asked(host: Host, pin: str) -> None:
    """What a person does: wait until the host shows a pairing waiting, then type the PIN."""
    for _ in range(200):
        if any(not p.pin.done() for p in host.pairing.pending):
            host.pairing.submit_pin(pin)
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no pairing request reached the host")


async def pair(host: Host, client: GameStreamClient, pin: str = "1234") -> None:
    await asyncio.gather(client.pair(pin), enter_pin_when_asked(host, pin))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is marked by its folder (unit / integration / e2e), so `-m unit` selects it."""
    for item in items:
        for kind in ("unit", "integration", "e2e"):
            if f"/tests/{kind}/" in str(item.path):
                item.add_marker(kind)


@pytest.fixture(scope="session")
def h264_encoder() -> dict[str, Any]:
    """The H.264 row that works here (x264 on these machines), probed once per test run."""
    from moonhowl.media import probe

    found = probe.working(probe.probe({"h264": ["x264", "openh264"]}, ("h264",), min_fps=0), min_fps=0)
    if "h264" not in found:
        pytest.skip("no working H.264 encoder")
    return found


@pytest.fixture
async def streaming_host(start_host, h264_encoder) -> Host:
    """A host on free ports for every stream (RTSP slots, control, video, audio), H.264 only."""
    return await start_host(encoders=h264_encoder, rtsp_port=0, control_port=0, video_port=0, audio_port=0)
