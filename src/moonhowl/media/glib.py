"""GStreamer and GLib, imported and initialized in one place, and the process's GLib loop thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstApp, GstVideo  # noqa: E402

__all__ = ["GLib", "Gst", "GstApp", "GstVideo", "MainLoopThread", "get_loop_thread", "init"]

log = logging.getLogger(__name__)

BusCallback = Callable[[Gst.Bus, Gst.Message], None]


def init() -> None:
    if not Gst.is_initialized():
        Gst.init(None)


class MainLoopThread:
    """One GLib.MainLoop on a daemon thread, for bus watches of every pipeline in the process.

    It runs its own GMainContext rather than the global default one, so that nothing else in the
    process (a library that iterates the default context, or asyncio's thread) ever dispatches our
    bus messages, and a watch never depends on which thread happened to add it.
    """

    def __init__(self) -> None:
        self.context = GLib.MainContext.new()
        self.loop = GLib.MainLoop.new(self.context, False)
        self._thread = threading.Thread(target=self._run, name="moonhowl-glib", daemon=True)
        self._running = threading.Event()

    def start(self) -> None:
        self._thread.start()
        # Watches added before the loop runs would work anyway (they sit in the context), but
        # waiting makes `is_running` truthful for callers and tests.
        self._running.wait(5.0)

    def _run(self) -> None:
        # The loop's own thread is where the context is "thread default", which is what
        # gst_bus_add_watch attaches to (see add_bus_watch).
        self.context.push_thread_default()
        try:
            idle = GLib.idle_source_new()
            idle.set_callback(self._mark_running)
            idle.attach(self.context)
            self.loop.run()
        finally:
            self.context.pop_thread_default()

    def _mark_running(self, *_args: object) -> bool:
        self._running.set()
        return False  # GLib.SOURCE_REMOVE

    @property
    def is_running(self) -> bool:
        return self._running.is_set() and self.loop.is_running()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def invoke(self, func: Callable[[], None]) -> None:
        """Runs func once on the loop thread (from any thread; at once when already on it)."""
        def once(*_args: object) -> bool:
            try:
                func()
            except Exception:  # an exception must not escape into GLib's C dispatcher
                log.exception("callback on the GLib loop thread failed")
            return False  # GLib.SOURCE_REMOVE

        self.context.invoke_full(GLib.PRIORITY_DEFAULT, once)

    def call(self, func: Callable[[], None], timeout: float = 5.0) -> bool:
        """Runs func on the loop thread and waits for it; False when it did not run in time."""
        if threading.current_thread() is self._thread:
            func()
            return True
        done = threading.Event()

        def run_and_signal() -> None:
            try:
                func()
            finally:
                done.set()

        self.invoke(run_and_signal)
        return done.wait(timeout)

    def add_bus_watch(self, bus: Gst.Bus, callback: BusCallback) -> None:
        """Dispatches every message posted on bus to callback(bus, message) on the loop thread.

        A bus holds at most one watch; remove it with remove_bus_watch (or it goes with the bus).
        """
        def on_message(bus_: Gst.Bus, message: Gst.Message) -> bool:
            try:
                callback(bus_, message)
            except Exception:  # never let a Python error unwind through GstBus's C dispatch
                log.exception("bus watch callback failed on %s", message.type)
            return True  # GLib.SOURCE_CONTINUE: keep the watch

        # gst_bus_add_watch attaches to the calling thread's thread-default context, and only
        # the loop thread (which owns our context) may make it the default: add it from there.
        if not self.call(lambda: bus.add_watch(GLib.PRIORITY_DEFAULT, on_message)):
            log.error("the GLib loop thread did not add a bus watch within 5 s")

    @staticmethod
    def remove_bus_watch(bus: Gst.Bus) -> bool:
        """Idempotent: False when the bus had no watch (already removed)."""
        return bool(bus.remove_watch())


_loop_thread: MainLoopThread | None = None
_loop_lock = threading.Lock()


def get_loop_thread() -> MainLoopThread:
    """The process's one MainLoopThread, started on first use."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None:
            init()
            _loop_thread = MainLoopThread()
            _loop_thread.start()
        return _loop_thread


def bus_problem(message: Gst.Message, what: str) -> tuple[str, str | None] | None:
    """A pipeline's bus message as (problem, debug) when it ends the stream (ERROR, EOS);
    warnings are logged here and give None. `what` names the pipeline in the log."""
    origin = message.src.get_name() if message.src is not None else "?"
    if message.type == Gst.MessageType.ERROR:
        error, debug = message.parse_error()
        return f"{origin}: {error.message}", debug
    if message.type == Gst.MessageType.WARNING:
        warning, debug = message.parse_warning()
        log.warning("%s warning from %s: %s (%s)", what, origin, warning.message, debug)
    elif message.type == Gst.MessageType.EOS:
        # Live sources never end by themselves: the stream is over as far as the client goes.
        return f"the {what} source ended", None
    return None


class ReportsErrorOnce:
    """For pipeline owners: the first fatal bus problem goes to `_on_error` once, later ones and
    those after stop() are dropped. Subclasses set _lock, _stopped, _error_reported, _on_error and
    _error_label (how the log names the pipeline)."""

    _lock: threading.Lock
    _stopped: bool
    _error_reported: bool
    _on_error: Callable[[str], None] | None
    _error_label: str

    def _on_bus_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        """GLib loop thread."""
        problem = bus_problem(message, self._error_label)
        if problem is not None:
            self._report_error(*problem)

    def _report_error(self, text: str, debug: str | None) -> None:
        with self._lock:
            if self._error_reported or self._stopped:
                return
            self._error_reported = True
        log.error("%s error: %s (%s)", self._error_label, text, debug)
        if self._on_error is not None:
            try:
                self._on_error(text)
            except Exception:
                log.exception("on_error failed")
