"""Encoders as data: one EncoderSpec row per (codec, implementation), tried in order.

A row names the elements it needs and a gst-launch fragment that turns raw video in system
memory into a low-latency byte stream: no B-frames, one reference frame, an effectively
infinite GOP (keyframes only when a client asks, via GstForceKeyUnit), parameter sets repeated
with every keyframe (the parser's config-interval=-1) so that a client can start on any IDR.
The probe (probe.py) keeps, per codec, the first row whose elements exist and which really
encodes a frame. Adding an encoder means adding a row, not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass

# x264's X264_KEYINT_MAX_INFINITE: keyframes only on request.
INFINITE_GOP = 1 << 30


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # what the configuration calls it: encoders.h264 = ["x264", ...]
    codec: str  # "h264" | "hevc" | "av1"
    elements: tuple[str, ...]  # every element the fragment uses that may be missing
    encoder: str  # gst-launch fragment; {kbps} is the bitrate, the encoder element is named "enc"
    hardware: bool = False

    @property
    def parser(self) -> str:
        return PARSERS[self.codec]

    def fragment(self, kbps: int) -> str:
        """Raw video in -> encoded Annex-B / OBU access units out."""
        return f"{self.encoder.format(kbps=kbps, bps=kbps * 1000, gop=INFINITE_GOP)} ! {self.parser}"


PARSERS = {
    "h264": "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au",
    "hevc": "h265parse config-interval=-1 ! video/x-h265,stream-format=byte-stream,alignment=au",
    "av1": "av1parse ! video/x-av1,stream-format=obu-stream,alignment=tu",
}

_X264 = ("videoconvert ! video/x-raw,format=I420 ! x264enc name=enc tune=zerolatency speed-preset=ultrafast "
         "bitrate={kbps} vbv-buf-capacity=100 key-int-max={gop} bframes=0 ref=1 sliced-threads=true "
         "byte-stream=true")
_X265 = ("videoconvert ! video/x-raw,format=I420 ! x265enc name=enc tune=zerolatency speed-preset=ultrafast "
         "bitrate={kbps} key-int-max={gop} option-string=\"bframes=0:ref=1:repeat-headers=1\"")

ENCODERS: tuple[EncoderSpec, ...] = (
    # --- H.264
    EncoderSpec("nvenc", "h264", ("cudaupload", "nvh264enc"),
                "cudaupload ! nvh264enc name=enc preset=low-latency-hq rc-mode=cbr bitrate={kbps} "
                "gop-size=-1 bframes=0 zerolatency=true", hardware=True),
    EncoderSpec("va", "h264", ("vapostproc", "vah264enc"),
                "vapostproc ! video/x-raw(memory:VAMemory),format=NV12 ! vah264enc name=enc "
                "rate-control=cbr bitrate={kbps} key-int-max=0 b-frames=0 ref-frames=1 target-usage=7",
                hardware=True),
    EncoderSpec("qsv", "h264", ("qsvh264enc",),
                "videoconvert ! video/x-raw,format=NV12 ! qsvh264enc name=enc rate-control=cbr "
                "bitrate={kbps} gop-size=0 b-frames=0 ref-frames=1 target-usage=7", hardware=True),
    EncoderSpec("x264", "h264", ("x264enc",), _X264),
    EncoderSpec("openh264", "h264", ("openh264enc",),
                "videoconvert ! video/x-raw,format=I420 ! openh264enc name=enc complexity=low "
                "rate-control=bitrate bitrate={bps} gop-size={gop} multi-thread=2 slice-mode=auto"),
    # --- HEVC
    EncoderSpec("nvenc", "hevc", ("cudaupload", "nvh265enc"),
                "cudaupload ! nvh265enc name=enc preset=low-latency-hq rc-mode=cbr bitrate={kbps} "
                "gop-size=-1 bframes=0 zerolatency=true", hardware=True),
    EncoderSpec("va", "hevc", ("vapostproc", "vah265enc"),
                "vapostproc ! video/x-raw(memory:VAMemory),format=NV12 ! vah265enc name=enc "
                "rate-control=cbr bitrate={kbps} key-int-max=0 b-frames=0 ref-frames=1 target-usage=7",
                hardware=True),
    EncoderSpec("qsv", "hevc", ("qsvh265enc",),
                "videoconvert ! video/x-raw,format=NV12 ! qsvh265enc name=enc rate-control=cbr "
                "bitrate={kbps} gop-size=0 b-frames=0 ref-frames=1 target-usage=7", hardware=True),
    EncoderSpec("x265", "hevc", ("x265enc",), _X265),
    # --- AV1
    EncoderSpec("nvenc", "av1", ("cudaupload", "nvav1enc"),
                "cudaupload ! nvav1enc name=enc preset=p1 tune=ultra-low-latency rc-mode=cbr "
                "bitrate={kbps} gop-size=-1", hardware=True),
    EncoderSpec("va", "av1", ("vapostproc", "vaav1enc"),
                "vapostproc ! video/x-raw(memory:VAMemory),format=NV12 ! vaav1enc name=enc "
                "rate-control=cbr bitrate={kbps} key-int-max=0 target-usage=7", hardware=True),
    EncoderSpec("qsv", "av1", ("qsvav1enc",),
                "videoconvert ! video/x-raw,format=NV12 ! qsvav1enc name=enc rate-control=cbr "
                "bitrate={kbps} gop-size=0 target-usage=7", hardware=True),
    EncoderSpec("svtav1", "av1", ("svtav1enc",),
                "videoconvert ! video/x-raw,format=I420 ! svtav1enc name=enc preset=12 target-bitrate={kbps} "
                "intra-period-length=-1 parameters-string=\"pred-struct=1:rc=2\""),
    EncoderSpec("aom", "av1", ("av1enc",),
                "videoconvert ! video/x-raw,format=I420 ! av1enc name=enc usage-profile=realtime cpu-used=10 "
                "end-usage=cbr target-bitrate={kbps} keyframe-max-dist={gop} lag-in-frames=0"),
)

CODECS = ("h264", "hevc", "av1")


def rows_for(codec: str, order: list[str] | None = None) -> list[EncoderSpec]:
    """The rows for `codec`, in the configured order (rows not named there are left out)."""
    rows = [row for row in ENCODERS if row.codec == codec]
    if order is None:
        return rows
    by_name = {row.name: row for row in rows}
    return [by_name[name] for name in order if name in by_name]
