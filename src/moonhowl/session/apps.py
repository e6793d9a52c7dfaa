"""The processes an app entry starts inside a session.

Each runs in its own process group (so a terminal's children go with it), with the session's
WAYLAND_DISPLAY / XDG_RUNTIME_DIR (and later PULSE_SINK) in its environment and its output in the
session log. Ending it is SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

TERMINATE_GRACE_S = 3.0
MAX_LOG_LINE = 500


class AppError(Exception):
    """The app could not be started; the message names the command and why."""


class AppProcess:
    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.command:
            raise AppError(f"{self.name}: no command configured")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise AppError(f"{self.name}: cannot start {self.command[0]!r}: {exc.strerror}") from None
        log.info("%s: started %s (pid %d)", self.name, " ".join(self.command), self.process.pid)
        self._reader = asyncio.ensure_future(self._forward_output())

    async def _forward_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            log.info("%s: %s", self.name, line.decode(errors="replace").rstrip()[:MAX_LOG_LINE])

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after TERMINATE_GRACE_S."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                await asyncio.wait_for(process.wait(), TERMINATE_GRACE_S)
                break
            except TimeoutError:
                log.warning("%s: still running %g s after SIGTERM; killing it", self.name, TERMINATE_GRACE_S)
        # The group may outlive its leader (a daemonized child): take it down too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()
        log.info("%s: stopped (exit %s)", self.name, process.returncode)
