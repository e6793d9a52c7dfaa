"""App processes: started with the session's environment, logged, and stopped with their children."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from moonhowl.session import apps
from moonhowl.session.apps import AppError, AppProcess

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] != "Z"


async def test_output_goes_to_the_log_and_env_is_passed(caplog):
    caplog.set_level(logging.INFO)
    app = AppProcess("app[test]", ["sh", "-c", 'echo "display=$WAYLAND_DISPLAY"'],
                     {**os.environ, "WAYLAND_DISPLAY": "wayland-7"})
    await app.start()
    assert await app.wait() == 0
    assert any("app[test]: display=wayland-7" in r.message for r in caplog.records)


async def test_stop_takes_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child"
    app = AppProcess("app", ["sh", "-c", f"sleep 100 & echo $! > {pidfile}; wait"], dict(os.environ))
    await app.start()
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.01)
    child = int(pidfile.read_text())
    await app.stop()
    await asyncio.sleep(0.1)
    assert not app.running
    assert not alive(child)


async def test_an_app_ignoring_sigterm_is_killed(monkeypatch):
    monkeypatch.setattr(apps, "TERMINATE_GRACE_S", 0.3)
    app = AppProcess("stubborn", ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"], dict(os.environ))
    await app.start()
    await asyncio.sleep(0.2)
    await app.stop()
    assert not app.running


async def test_a_missing_command_is_a_clear_error():
    with pytest.raises(AppError, match="cannot start 'no-such-terminal'"):
        await AppProcess("app", ["no-such-terminal"], dict(os.environ)).start()
