"""A PulseAudio-compatible sound server for the sessions, and one virtual sink per session.

:class:`AudioServer` uses the server that ``pactl info`` reaches (``PULSE_SERVER`` or libpulse's
default: a desktop's PipeWire-pulse or PulseAudio) when there is one. Otherwise it starts its own
``pulseaudio`` with a private runtime directory and supervises it: a crash is logged once, the
daemon restarted (at most ``max_restarts`` times per ``restart_window_s``) and the session sinks
loaded again under the same names, so that a session can rebuild its capture pipeline.

The private daemon, as it runs in moonhowl's runtime (Debian 13 pulseaudio 17, as root in a chroot,
without D-Bus, systemd or a login session):

* ``--system`` is not needed as root: the daemon only warns ("not intended to be run as root"),
  while system mode would refuse module loading by clients, which the per-session sinks need;
* ``-n`` skips default.pa (it probes ALSA/udev/bluetooth, none of which exist here) and the only
  module loaded is the native protocol on ``<runtime dir>/native``; ``auth-anonymous=1`` because
  the socket lives in a 0700 directory owned by moonhowl, which is the access control;
* HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME point into the runtime directory, so the daemon's
  cookie, state and pid file stay out of the user's (or root's) real directories;
* ``module-suspend-on-idle timeout=0``: a null sink that nobody uses renders silence in blocks of
  its maximum latency (2 s) and only learns a new reader's 5 ms latency after the current block,
  so pulsesrc's first buffer came 1.5-2 s late (0.7 s with an app playing). A suspended sink
  restarts its clock when the capture attaches: the first buffer then comes after ~15 ms
  (~85 ms with an app already playing), measured on this runtime;
* ``setpriv --pdeathsig TERM`` makes the daemon die with moonhowl: with ``--exit-idle-time=-1`` it
  would otherwise run forever after a moonhowl crash.

Each session gets ``module-null-sink`` named ``moonhowl_s<session>``; its apps get
``PULSE_SERVER``/``PULSE_SINK`` (:attr:`Sink.env`) and the capture pipeline reads
``<name>.monitor``. Every pactl call runs as an asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["AudioServer", "AudioServerError", "Sink", "pulse_channel_map"]

PACTL_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
SAMPLE_RATE = 48000  # GameStream audio is always 48 kHz Opus: a 48 kHz sink needs no resampling

# PulseAudio channel names in Moonlight's channel order (FL FR C LFE BL BR SL SR: Limelight.h
# AUDIO_CONFIGURATION_* masks 0x3 / 0x3F / 0x63F, which is also GStreamer's order for these masks).
_CHANNEL_NAMES = ("front-left", "front-right", "front-center", "lfe", "rear-left", "rear-right",
                  "side-left", "side-right")
_SINK_NAME_RE = re.compile(r"[^A-Za-z0-9_]")

Listener = Callable[[str], None]


class AudioServerError(RuntimeError):
    """No sound server is reachable, or a pactl command failed."""


def pulse_channel_map(channels: int) -> tuple[str, ...]:
    """PulseAudio's names for Moonlight's 2/6/8-channel layouts."""
    if channels not in (2, 6, 8):
        raise ValueError(f"GameStream audio has 2, 6 or 8 channels, not {channels}")
    return _CHANNEL_NAMES[:channels]


@dataclass(frozen=True)
class Sink:
    """One session's virtual sink; hand :attr:`env` to the session's apps."""

    name: str
    monitor_source: str  # what the capture pipeline reads (pulsesrc device=)
    env: Mapping[str, str]  # PULSE_SERVER and PULSE_SINK
    channels: int
    channel_map: tuple[str, ...]
    server: AudioServer = field(repr=False, compare=False)

    @property
    def pulse_server(self) -> str:
        return self.env["PULSE_SERVER"]

    async def remove(self) -> None:
        """Unloads the sink (idempotent); apps still playing into it are moved or cut off by the server."""
        await self.server.remove_sink(self.name)


@dataclass
class _SinkEntry:
    channels: int
    channel_map: tuple[str, ...]
    description: str
    module_index: int | None = None


class AudioServer:
    """Finds or runs the sound server; creates and removes session sinks. Use from one asyncio loop."""

    def __init__(self, runtime_dir: Path | None = None, *, use_existing: bool = True, max_restarts: int = 5,
                 restart_window_s: float = 60.0, pulseaudio: str = "pulseaudio", pactl: str = "pactl") -> None:
        self.use_existing = use_existing
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self._pulseaudio = pulseaudio
        self._pactl = pactl
        self._runtime_dir = runtime_dir
        self._own_runtime_dir = False
        self._server: str | None = None
        self._owned = False
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stopping = False
        self._failed = False
        self._restarts: list[float] = []
        self._deaths = 0
        self._sinks: dict[str, _SinkEntry] = {}
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()

    # --- properties ----------------------------------------------------------------------------------
    @property
    def server(self) -> str:
        """The PULSE_SERVER string apps and pulsesrc/pulsesink use."""
        if self._server is None:
            raise AudioServerError("the audio server has not been started")
        return self._server

    @property
    def owned(self) -> bool:
        """True when moonhowl runs the daemon itself."""
        return self._owned

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def available(self) -> bool:
        return self._server is not None and not self._failed

    @property
    def restarts(self) -> int:
        return len(self._restarts)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self._sinks)

    def add_listener(self, listener: Listener) -> None:
        """listener(event) on the asyncio loop: "died", "restarted" (sinks are back) or "failed"."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Uses a reachable server or starts our own; raises AudioServerError when neither works."""
        if self._server is not None:
            return
        self._stopping = False
        if self.use_existing:
            info = await self._probe(os.environ.get("PULSE_SERVER"))
            if info is not None:
                self._server = info
                log.info("using the sound server at %s", info)
                return
            log.info("no sound server reachable (PULSE_SERVER=%s): starting our own pulseaudio",
                     os.environ.get("PULSE_SERVER", "unset"))
        if shutil.which(self._pulseaudio) is None:
            raise AudioServerError(f"no sound server reachable and {self._pulseaudio!r} is not installed")
        if self._runtime_dir is None:
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="moonhowl-pulse-"))
            self._own_runtime_dir = True
        self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._runtime_dir.chmod(0o700)
        self._owned = True
        self._server = f"unix:{self._runtime_dir / 'native'}"
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="moonhowl-pulse-supervisor")

    async def stop(self) -> None:
        """Removes the sinks and, if we run the daemon, stops it. Idempotent."""
        self._stopping = True
        if self._server is not None and not self._failed:
            for name in list(self._sinks):
                with contextlib.suppress(AudioServerError):
                    await self.remove_sink(name)
        self._sinks.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()
        if self._own_runtime_dir and self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
        self._server = None

    # --- sinks ------------------------------------------------------------------------------------------
    async def create_sink(self, session_id: str | int, channels: int,
                          channel_map: Sequence[str] | None = None) -> Sink:
        """A 48 kHz null sink named ``moonhowl_s<session_id>`` with ``channels`` channels."""
        names = tuple(channel_map) if channel_map is not None else pulse_channel_map(channels)
        if len(names) != channels:
            raise ValueError(f"channel map {names} does not have {channels} channels")
        name = "moonhowl_s" + _SINK_NAME_RE.sub("_", str(session_id))
        entry = _SinkEntry(channels, names, f"moonhowl_session_{_SINK_NAME_RE.sub('_', str(session_id))}")
        async with self._lock:
            self._check_available()
            if name in self._sinks:
                raise AudioServerError(f"sink {name} already exists")
            # A sink of that name left by a previous moonhowl on a shared server would make the
            # server rename ours (name.2), and the apps' PULSE_SINK would miss it.
            await self._unload_stale(name)
            await self._load(name, entry)
            self._sinks[name] = entry
        log.info("sink %s (%d channels) on %s", name, channels, self.server)
        return Sink(name, f"{name}.monitor", {"PULSE_SERVER": self.server, "PULSE_SINK": name}, channels, names, self)

    async def remove_sink(self, name: str) -> None:
        async with self._lock:
            entry = self._sinks.pop(name, None)
            if entry is None or entry.module_index is None or not self.available:
                return
            try:
                await self.pactl("unload-module", str(entry.module_index))
            except AudioServerError as exc:
                log.warning("could not unload sink %s: %s", name, exc)
                return
        log.info("sink %s removed", name)

    async def pactl(self, *args: str) -> str:
        """Runs pactl against the server; its stdout, or AudioServerError."""
        return await self._run_pactl(self.server, *args)

    # --- internals --------------------------------------------------------------------------------------
    def _check_available(self) -> None:
        if self._server is None:
            raise AudioServerError("the audio server has not been started")
        if self._failed:
            raise AudioServerError("the audio server failed and was not restarted")

    async def _load(self, name: str, entry: _SinkEntry) -> None:
        out = await self.pactl(
            "load-module", "module-null-sink", f"sink_name={name}", f"rate={SAMPLE_RATE}", "format=s16le",
            f"channels={entry.channels}", "channel_map=" + ",".join(entry.channel_map),
            f"sink_properties=device.description={entry.description}")
        try:
            entry.module_index = int(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise AudioServerError(f"pactl load-module printed no module index: {out!r}") from exc

    async def _unload_stale(self, name: str) -> None:
        modules = await self.pactl("list", "short", "modules")
        for line in modules.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "module-null-sink" and f"sink_name={name} " in parts[2] + " ":
                log.warning("unloading a stale sink %s (module %s) left on %s", name, parts[0], self.server)
                await self.pactl("unload-module", parts[0])

    async def _run_pactl(self, server: str | None, *args: str) -> str:
        env = dict(os.environ, LC_ALL="C")
        if server is not None:
            env["PULSE_SERVER"] = server
        try:
            proc = await asyncio.create_subprocess_exec(
                self._pactl, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise AudioServerError(f"cannot run {self._pactl}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PACTL_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise AudioServerError(f"pactl {' '.join(args)} timed out after {PACTL_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise AudioServerError(f"pactl {' '.join(args)} failed ({proc.returncode}): {text}")
        return out.decode(errors="replace")

    async def _probe(self, server: str | None) -> str | None:
        """The server string ``pactl info`` reports, or None when nothing answers."""
        try:
            info = await self._run_pactl(server, "info")
        except AudioServerError as exc:
            log.debug("pactl info: %s", exc)
            return None
        match = re.search(r"^Server String: (.+)$", info, re.MULTILINE)
        if match is not None:
            return match.group(1).strip()
        return server

    def _command(self) -> list[str]:
        assert self._runtime_dir is not None
        socket = self._runtime_dir / "native"
        cmd = [
            self._pulseaudio, "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n",
            # memfd off: with it, clients' blocks made PulseAudio 17 log errors (pstream.c, its
            # issue 824) before falling back to copying anyway.
            "--use-pid-file=no", "--enable-memfd=no",
            "--log-target=stderr", "--log-level=info", "--log-meta=no", "--log-time=no",
            f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
            # See the module doc: without it a capture starts up to 2 s late.
            "--load=module-suspend-on-idle timeout=0",
        ]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        return cmd

    async def _spawn(self) -> None:
        assert self._runtime_dir is not None
        with contextlib.suppress(FileNotFoundError):
            (self._runtime_dir / "native").unlink()  # a dead daemon's socket
        env = dict(os.environ, HOME=str(self._runtime_dir), XDG_RUNTIME_DIR=str(self._runtime_dir),
                   XDG_CONFIG_HOME=str(self._runtime_dir / "config"), LC_ALL="C")
        env.pop("PULSE_SERVER", None)
        self._ready = asyncio.Event()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise AudioServerError(f"cannot start pulseaudio: {exc}") from exc
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr(self._proc, self._ready))
        waiter = asyncio.ensure_future(self._ready.wait())
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            done, _ = await asyncio.wait({waiter, exited}, timeout=START_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            exited.cancel()
        if waiter not in done:
            code = self._proc.returncode
            await self._terminate()
            why = f"exited with code {code}" if code is not None else f"not ready within {START_TIMEOUT_S} s"
            raise AudioServerError(f"pulseaudio {why} (see the debug log for its output)")
        # "Daemon startup complete" is logged before the socket accepts clients only in theory;
        # one pactl round trip makes readiness certain.
        if await self._probe(self._server) is None:
            await self._terminate()
            raise AudioServerError(f"pulseaudio started but {self._server} does not answer")
        log.info("pulseaudio %d running at %s", self._proc.pid, self._server)

    @staticmethod
    async def _read_stderr(proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if "Daemon startup complete" in text:
                ready.set()
            if text.startswith("E:"):
                log.warning("pulseaudio: %s", text)
            else:
                log.debug("pulseaudio: %s", text)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._stderr_task, 1.0)
            self._stderr_task = None

    def _notify(self, event: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("audio server listener failed on %r", event)

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            self._deaths += 1
            # Logged once at warning level; later deaths of a flapping daemon go to debug.
            (log.warning if self._deaths == 1 else log.debug)(
                "pulseaudio %d exited with code %s; restarting it", proc.pid, code)
            self._notify("died")
            if not await self._restart():
                return

    async def _restart(self) -> bool:
        delay = 0.2
        while not self._stopping:
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < self.restart_window_s]
            if len(self._restarts) >= self.max_restarts:
                self._failed = True
                log.error("pulseaudio died %d times within %.0f s: giving up; sessions have no audio",
                          len(self._restarts), self.restart_window_s)
                self._notify("failed")
                return False
            self._restarts.append(now)
            try:
                async with self._lock:
                    await self._spawn()
                    for name, entry in self._sinks.items():
                        await self._load(name, entry)
            except AudioServerError as exc:
                log.debug("pulseaudio restart failed: %s", exc)
                await self._terminate()
                await asyncio.sleep(delay)  # back off before the next bounded attempt
                delay = min(delay * 2, 5.0)
                continue
            log.info("pulseaudio restarted (%d sink(s) restored)", len(self._sinks))
            self._notify("restarted")
            return True
        return False
