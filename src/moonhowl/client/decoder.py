"""The client's video decoder: access units in, pictures out (GStreamer, inside the runtime).

    appsrc (AU-aligned byte stream / OBU temporal units) ! parser ! decoder ! appsink

Pictures stay in the decoder's format; last_frame() converts the newest one to RGB on demand.
A load-generating client decodes every frame but only tests look at pixels, and converting each
1080p frame to RGB would cost as much CPU as decoding it on a 2-core machine.

Threads: decode() may be called from any one thread (the client's asyncio loop) and never blocks
on the decoder; the appsink callback runs on GStreamer's streaming thread, bus messages on the
GLib loop thread (moonhowl.media.glib). Counters are guarded by one condition variable.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from moonhowl.media.glib import GLib, Gst, GstApp, GstVideo, get_loop_thread, init

log = logging.getLogger(__name__)

DecoderCodec = Literal["h264", "hevc", "av1"]

# What the host sends (FACTS §1: one access unit / temporal unit per frame, Annex-B start codes).
_CAPS: dict[str, str] = {
    "h264": "video/x-h264,stream-format=byte-stream,alignment=au",
    "hevc": "video/x-h265,stream-format=byte-stream,alignment=au",
    "av1": "video/x-av1,stream-format=obu-stream,alignment=tu",
}
_PARSERS = {"h264": "h264parse", "hevc": "h265parse", "av1": "av1parse"}
# Decoders by preference. avdec_* get slice threading: libav's default frame threading holds back
# one frame per thread, which a low-latency client (Moonlight asks for low delay) does not want.
_DECODERS: dict[str, tuple[tuple[str, str], ...]] = {
    "h264": (("avdec_h264", "thread-type=slice"),),
    "hevc": (("avdec_h265", "thread-type=slice"),),
    "av1": (("dav1ddec", ""), ("av1dec", ""), ("avdec_av1", "")),
}
# Without real timestamps (pts_ns=None) frames get these, 60 fps apart: decoders want monotonic PTS.
_DEFAULT_FRAME_NS = 1_000_000_000 // 60


class DecoderError(RuntimeError):
    """No decoder for the codec here, or the pipeline cannot be built."""


def decoder_element(codec: str) -> tuple[str, str]:
    """The (element, properties) that decodes codec here."""
    init()
    try:
        candidates = _DECODERS[codec]
    except KeyError:
        raise DecoderError(f"unknown codec {codec!r} (known: {', '.join(_DECODERS)})") from None
    for name, props in candidates:
        if Gst.ElementFactory.find(name) is not None:
            return name, props
    raise DecoderError(f"no {codec} decoder here (tried {', '.join(n for n, _ in candidates)})")


class VideoDecoder:
    def __init__(self, codec: DecoderCodec | str, width: int | None = None, height: int | None = None) -> None:
        init()
        self.codec = codec
        element, props = decoder_element(codec)
        caps = _CAPS[codec]
        if width is not None and height is not None:
            caps += f",width={width},height={height}"
        # format=time + is-live: buffers carry the PTS we give; block=false and no byte limit so
        # decode() never stalls the caller's event loop (the decoder keeps up or the queue grows,
        # which frames_decoded against frames pushed shows).
        self.description = (
            f'appsrc name=src format=time is-live=true block=false max-bytes=0 caps="{caps}" '
            f"! {_PARSERS[codec]} ! {element} name=dec {props} "
            f"! appsink name=sink emit-signals=true sync=false max-buffers=4 drop=false")
        try:
            self._pipeline: Gst.Pipeline = Gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise DecoderError(f"the {codec} decoder does not build: {exc.message}") from exc
        self._src: GstApp.AppSrc = self._pipeline.get_by_name("src")
        sink: GstApp.AppSink = self._pipeline.get_by_name("sink")
        decoder = self._pipeline.get_by_name("dec")
        if decoder.find_property("max-errors") is not None:
            # One corrupt AU (lost packets) must cost a picture, not the stream: the decoder then
            # posts a WARNING and carries on instead of failing the flow.
            decoder.set_property("max-errors", -1)

        self._cond = threading.Condition()
        self._pushed = 0
        self._decoded = 0
        self._errors = 0
        self._last_pushed_pts = -1
        self._last_out_pts = -1
        self._next_pts = 0
        self._last_sample: Gst.Sample | None = None
        self._closed = False
        self._needs_restart = False

        sink.connect("new-sample", self._on_new_sample)
        get_loop_thread().add_bus_watch(self._pipeline.get_bus(), self._on_bus_message)
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.close()
            raise DecoderError(f"the {codec} decoder failed to start")

    # --- API -------------------------------------------------------------------------------------

    @property
    def frames_decoded(self) -> int:
        with self._cond:
            return self._decoded

    @property
    def frames_pushed(self) -> int:
        with self._cond:
            return self._pushed

    @property
    def errors(self) -> int:
        """Decode errors and warnings: corrupt AUs, and pipeline failures the decoder recovered from."""
        with self._cond:
            return self._errors

    def decode(self, access_unit: bytes, pts_ns: int | None = None) -> None:
        """Queues one access unit; the picture comes out later on GStreamer's thread."""
        if self._closed:
            raise DecoderError("the decoder is closed")
        if self._needs_restart:
            self._restart()
        with self._cond:
            if pts_ns is None:
                pts_ns = self._next_pts
            self._next_pts = pts_ns + _DEFAULT_FRAME_NS
            self._pushed += 1
            self._last_pushed_pts = pts_ns
        buffer = Gst.Buffer.new_wrapped(access_unit)
        buffer.pts = pts_ns
        result = self._src.push_buffer(buffer)
        if result != Gst.FlowReturn.OK:
            # FLUSHING while restarting or closing; an ERROR has been posted on the bus as well.
            log.debug("appsrc refused an access unit: %s", result.value_nick)

    def flush(self, timeout: float = 2.0) -> bool:
        """Waits until every pushed AU has come out (or been counted as an error); False on timeout.

        A decoder may silently drop a frame it cannot use (a P frame before any IDR): the newest
        picture being the last one pushed also counts as done.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._drained_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.debug("flush timed out: %d pushed, %d decoded, %d errors",
                              self._pushed, self._decoded, self._errors)
                    return False
                self._cond.wait(left)
            return True

    def last_frame(self) -> tuple[int, int, bytes] | None:
        """(width, height, RGB bytes, rows packed without padding) of the newest picture."""
        with self._cond:
            sample = self._last_sample
        if sample is None:
            return None
        rgb = GstVideo.video_convert_sample(sample, Gst.Caps.from_string("video/x-raw,format=RGB"),
                                            5 * Gst.SECOND)
        info = GstVideo.VideoInfo.new_from_caps(rgb.get_caps())
        width, height, stride = info.width, info.height, info.stride[0]
        buffer = rgb.get_buffer()
        data = buffer.extract_dup(0, buffer.get_size())
        row = width * 3
        if stride != row:  # GStreamer pads RGB rows to 4 bytes
            data = b"".join(data[y * stride:y * stride + row] for y in range(height))
        return width, height, data

    def close(self) -> None:
        """Idempotent; waits for the pipeline to stop."""
        if self._closed:
            return
        self._closed = True
        get_loop_thread().remove_bus_watch(self._pipeline.get_bus())
        self._pipeline.set_state(Gst.State.NULL)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------------

    def _drained_locked(self) -> bool:
        if self._decoded + self._errors >= self._pushed:
            return True
        return self._last_pushed_pts >= 0 and self._last_out_pts >= self._last_pushed_pts

    def _restart(self) -> None:
        """After a pipeline ERROR (a parser or decoder gave up): start over; the next IDR recovers."""
        log.warning("restarting the %s decoder after an error", self.codec)
        self._needs_restart = False
        self._pipeline.set_state(Gst.State.NULL)
        self._pipeline.set_state(Gst.State.PLAYING)

    def _on_new_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        """Streaming thread: count the picture and keep it as the newest."""
        try:
            sample = sink.pull_sample()
            if sample is None:
                return Gst.FlowReturn.FLUSHING
            pts = sample.get_buffer().pts
            with self._cond:
                self._decoded += 1
                self._last_sample = sample
                if pts != Gst.CLOCK_TIME_NONE:
                    self._last_out_pts = pts
                self._cond.notify_all()
            return Gst.FlowReturn.OK
        except Exception:  # never unwind into GStreamer's C streaming thread
            log.exception("decoder appsink callback failed")
            return Gst.FlowReturn.ERROR

    def _on_bus_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        """GLib loop thread."""
        if message.type == Gst.MessageType.WARNING:
            warning, debug = message.parse_warning()
            log.debug("decoder warning: %s (%s)", warning.message, debug)
            with self._cond:
                self._errors += 1
                self._cond.notify_all()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            log.warning("decoder error: %s (%s)", error.message, debug)
            with self._cond:
                self._errors += 1
                self._cond.notify_all()
            # The streaming thread stopped; restarting from this thread would race decode(),
            # so the next decode() call does it.
            self._needs_restart = True
