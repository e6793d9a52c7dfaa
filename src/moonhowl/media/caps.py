"""DMA_DRM caps for the compositor source: what it offers, and which offer to take.

The source offers, in this order of preference (issue 5):

    video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format={ "XR24:0x0100000000000002", "XR24", ... }
    video/x-raw(memory:GLMemory), format=RGBA, texture-target=2D
    video/x-raw, format={ BGRx, RGBx }

all with width, height and framerate fixed to the session's mode. The drm-format list comes from
EGL (eglQueryDmaBufFormatsEXT / eglQueryDmaBufModifiersEXT through render/egl.py): formats the
renderer can draw into, modifiers EGL can render to (external-only ones can only be sampled, never
rendered to) and never DRM_FORMAT_MOD_INVALID (it means "implicit modifier", which a DMA_DRM caps
string cannot carry). GStreamer writes LINEAR as the bare fourcc ("XR24"), any other modifier as
"XR24:0x%016x" (gst_video_dma_drm_fourcc_to_string); the caps here follow it, so they intersect
with what glupload, vapostproc and waylandsink advertise.

`choose()` takes the intersection with downstream and picks one path: DMA_DRM with a non-linear
modifier (tiled/compressed: what a GPU renders and encodes fastest), then linear DMA_DRM, then GL
memory, then system memory. Ties go to the order EGL listed the formats, so the same machine and
the same downstream always give the same caps. Everything here is a pure function of Gst.Caps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from moonhowl.media.glib import Gst, GstVideo, init

log = logging.getLogger(__name__)

__all__ = [
    "DRM_FORMAT_MOD_INVALID",
    "DRM_FORMAT_MOD_LINEAR",
    "RENDERABLE_FOURCCS",
    "SYSTEM_FORMATS",
    "Choice",
    "NoCommonFormat",
    "candidates",
    "choose",
    "drm_format_string",
    "egl_formats",
    "fixate",
    "fourcc_str",
    "parse_drm_format",
    "prefer",
    "source_caps",
]

DRM_FORMAT_MOD_LINEAR = 0
# drm_fourcc.h: fourcc_mod_code(NONE, (1ULL << 56) - 1): "no explicit modifier".
DRM_FORMAT_MOD_INVALID = 0x00FFFFFFFFFFFFFF

# The single-plane 8-bit RGB formats the renderer draws into (render/allocators.py can allocate
# them and GLES renders to them on every driver we know of). 10-bit formats (XR30...) would make
# the encoder side convert from 10 bits for no visible gain on an SDR desktop.
RENDERABLE_FOURCCS = ("XR24", "AR24", "XB24", "AB24")

# What render_bytes() delivers: the renderer's readback in the byte order of XR24 (B,G,R,X in
# memory, GStreamer's BGRx) or XB24 (RGBx). glReadPixels gives RGBA natively; BGRx first because
# videoconvert's fastest paths and most encoders' converters start from it.
SYSTEM_FORMATS = ("BGRx", "RGBx")

# GL memory is offered as RGBA in a 2D texture: the EGLImage of an AB24 (R,G,B,A in memory)
# buffer bound to GL_TEXTURE_2D, which every GL element downstream samples without a swizzle.
GL_FORMAT = "RGBA"

Kind = Literal["dmabuf", "gl", "system"]
KINDS: tuple[Kind, ...] = ("dmabuf", "gl", "system")

_DMABUF_FEATURE = "memory:DMABuf"
_GL_FEATURE = "memory:GLMemory"
_SYSTEM_FEATURE = "memory:SystemMemory"

FormatList = Iterable[tuple[str | int, int]]


class NoCommonFormat(ValueError):
    """Nothing the source offers is accepted downstream; the message says both sides."""


def fourcc_str(code: str | int) -> str:
    """'XR24' for 0x34325258 (DRM fourccs are little-endian ASCII); strings pass through."""
    if isinstance(code, str):
        return code
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


def drm_format_string(fourcc: str | int, modifier: int) -> str:
    """GStreamer's drm-format notation: "XR24" for LINEAR, "XR24:0x0100000000000002" otherwise."""
    name = fourcc_str(fourcc)
    if modifier == DRM_FORMAT_MOD_LINEAR:
        return name
    return f"{name}:0x{modifier:016x}"


def parse_drm_format(text: str) -> tuple[str, int] | None:
    """("XR24", modifier) for a drm-format string; None when GStreamer cannot read it."""
    init()
    code, modifier = GstVideo.video_dma_drm_fourcc_from_string(text)
    if code == 0:  # DRM_FORMAT_INVALID: not a fourcc[:modifier] string
        return None
    return GstVideo.video_dma_drm_fourcc_to_string(code, 0), int(modifier)


def egl_formats(dmabuf_formats: Mapping[str, Sequence[tuple[int, bool]]],
                renderable: Sequence[str] = RENDERABLE_FOURCCS) -> list[tuple[str, int]]:
    """(fourcc, modifier) pairs the renderer can draw into, in EGL's order.

    `dmabuf_formats` is EglInfo.dmabuf_formats: fourcc -> [(modifier, external_only)].
    External-only modifiers are left out (EGL can sample them through GL_TEXTURE_EXTERNAL_OES but
    not render to them), and so is DRM_FORMAT_MOD_INVALID.
    """
    pairs: list[tuple[str, int]] = []
    for name, modifiers in dmabuf_formats.items():
        if name.strip() not in renderable:
            continue
        for modifier, external_only in modifiers:
            if external_only or modifier == DRM_FORMAT_MOD_INVALID:
                continue
            pairs.append((name.strip(), int(modifier)))
    return pairs


def prefer(formats: FormatList, fourccs: Sequence[str] = ("XR24",)) -> list[tuple[str, int]]:
    """`formats` with these fourccs moved to the front, each group keeping its order (stable).

    EGL's order is arbitrary (Mesa lists AR24 first); a producer whose renderer has a fast path
    for one format puts it first, because equal choices go to the first format listed. Measured
    on llvmpipe at 1080p: GlRenderer fills an XR24 target with a plain copy of a fullscreen opaque
    client in 0.25 ms, while AR24/XB24/AB24 targets take its draw path at 12-15 ms.
    """
    pairs = [(fourcc_str(f), m) for f, m in formats]
    return sorted(pairs, key=lambda pair: fourccs.index(pair[0]) if pair[0] in fourccs else len(fourccs))


def _drm_list(formats: FormatList) -> list[str]:
    seen: dict[str, None] = {}
    for fourcc, modifier in formats:
        if modifier == DRM_FORMAT_MOD_INVALID:
            continue
        seen.setdefault(drm_format_string(fourcc, modifier), None)
    return list(seen)


def _quoted_list(values: Sequence[str]) -> str:
    return "{ " + ", ".join(f'"{v}"' for v in values) + " }"


def source_caps(formats: FormatList, width: int, height: int, fps: int, *,
                kinds: Sequence[str] = KINDS,
                system_formats: Sequence[str] = SYSTEM_FORMATS) -> Gst.Caps:
    """The source's caps for the session's mode, best kind first; `kinds` leaves paths out.

    A kind with nothing to offer (no DMA_DRM format) is left out rather than offered empty.
    """
    init()
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"bad video mode {width}x{height}@{fps}")
    mode = f"width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1"
    parts: list[str] = []
    drm = _drm_list(formats)
    if "dmabuf" in kinds and drm:
        parts.append(f"video/x-raw({_DMABUF_FEATURE}), format=(string)DMA_DRM, "
                     f"drm-format=(string){_quoted_list(drm)}, {mode}")
    if "gl" in kinds:
        parts.append(f"video/x-raw({_GL_FEATURE}), format=(string){GL_FORMAT}, texture-target=(string)2D, {mode}")
    if "system" in kinds and system_formats:
        parts.append(f"video/x-raw, format=(string){_quoted_list(list(system_formats))}, {mode}")
    if not parts:
        return Gst.Caps.new_empty()
    caps = Gst.Caps.from_string("; ".join(parts))
    if caps is None:  # only a bug in the strings above gets here
        raise ValueError(f"unparsable source caps: {'; '.join(parts)}")
    return caps


@dataclass(frozen=True)
class Choice:
    kind: Kind
    format: str  # the caps' format field: "DMA_DRM", "RGBA", "BGRx", ...
    drm_fourcc: str | None = None  # dmabuf only: "XR24"
    modifier: int | None = None  # dmabuf only

    @property
    def path(self) -> str:
        """Short, log- and stats-friendly: "dmabuf:XR24:0x0", "gl", "system:BGRx"."""
        if self.kind == "dmabuf":
            return f"dmabuf:{self.drm_fourcc}:0x{self.modifier or 0:x}"
        if self.kind == "gl":
            return "gl"
        return f"system:{self.format}"

    @property
    def linear(self) -> bool:
        return self.modifier in (None, DRM_FORMAT_MOD_LINEAR)

    @property
    def drm_format(self) -> str | None:
        if self.kind != "dmabuf" or self.drm_fourcc is None:
            return None
        return drm_format_string(self.drm_fourcc, self.modifier or 0)

    def caps_string(self) -> str:
        """The fields that pin this choice down (intersected with the allowed caps to fixate)."""
        if self.kind == "dmabuf":
            return f'video/x-raw({_DMABUF_FEATURE}), format=(string)DMA_DRM, drm-format=(string)"{self.drm_format}"'
        if self.kind == "gl":
            return f"video/x-raw({_GL_FEATURE}), format=(string){self.format}"
        return f"video/x-raw, format=(string){self.format}"


def parse_path(path: str) -> Choice:
    """The inverse of Choice.path."""
    kind, _, rest = path.partition(":")
    if kind == "gl" and not rest:
        return Choice("gl", GL_FORMAT)
    if kind == "system" and rest:
        return Choice("system", rest)
    if kind == "dmabuf":
        fourcc, _, modifier = rest.partition(":")
        try:
            return Choice("dmabuf", "DMA_DRM", fourcc, int(modifier, 16))
        except ValueError:
            pass
    raise ValueError(f"not a source path: {path!r} (expected dmabuf:FOURCC:0xMOD, gl or system:FORMAT)")


def _values(structure: Gst.Structure, field: str) -> list[str] | None:
    """A string field as a list (a single string, a list or an array); None when absent."""
    if not structure.has_field(field):
        return None
    value = structure.get_value(field)
    if isinstance(value, str):
        return [value]
    try:
        return [str(v) for v in value]
    except TypeError:
        log.debug("field %s of unexpected type %s", field, type(value).__name__)
        return []


def _kind_of(caps: Gst.Caps, index: int) -> Kind | None:
    features = caps.get_features(index)
    if features is None or features.is_any():
        return None  # ANY memory is not an offer we can fill deterministically
    if features.contains(_DMABUF_FEATURE):
        return "dmabuf"
    if features.contains(_GL_FEATURE):
        return "gl"
    if features.get_size() == 0 or (features.get_size() == 1 and features.contains(_SYSTEM_FEATURE)):
        return "system"
    return None  # another memory (VAMemory, CUDAMemory...): not something this source makes


def candidates(allowed: Gst.Caps, formats: FormatList | None = None,
               system_formats: Sequence[str] = SYSTEM_FORMATS) -> list[Choice]:
    """Every choice `allowed` permits, best first, without duplicates.

    `formats` is the EGL order of (fourcc, modifier); it ranks DMA_DRM choices within a tier and,
    when a DMA_DRM structure has no drm-format field (downstream takes any), says what to offer.
    Without it the order of appearance in `allowed` ranks them.
    """
    init()
    egl_order = _drm_list(formats) if formats is not None else []
    found: dict[Choice, tuple[int, int, int]] = {}
    appearance = 0

    def add(choice: Choice, tier: int, rank: int) -> None:
        nonlocal appearance
        appearance += 1
        key = (tier, rank, appearance)
        if choice not in found or key < found[choice]:
            found[choice] = key

    for i in range(allowed.get_size()):
        kind = _kind_of(allowed, i)
        if kind is None:
            continue
        with allowed.get_structure(i) as structure:
            if structure.get_name() != "video/x-raw":
                continue
            formats_here = _values(structure, "format")
            drm_here = _values(structure, "drm-format")
        if kind == "dmabuf":
            if formats_here is not None and "DMA_DRM" not in formats_here:
                continue
            for text in (drm_here if drm_here is not None else egl_order):
                parsed = parse_drm_format(text)
                if parsed is None or parsed[1] == DRM_FORMAT_MOD_INVALID:
                    continue
                fourcc, modifier = parsed
                canonical = drm_format_string(fourcc, modifier)
                if egl_order and canonical not in egl_order:
                    continue  # downstream takes it, but EGL cannot render it
                rank = egl_order.index(canonical) if egl_order else 0
                tier = 1 if modifier == DRM_FORMAT_MOD_LINEAR else 0
                add(Choice("dmabuf", "DMA_DRM", fourcc, modifier), tier, rank)
        elif kind == "gl":
            if formats_here is None or GL_FORMAT in formats_here:
                add(Choice("gl", GL_FORMAT), 2, 0)
        else:
            for name in (formats_here if formats_here is not None else list(system_formats)):
                if name in system_formats:
                    add(Choice("system", name), 3, system_formats.index(name))
    return sorted(found, key=found.__getitem__)


def choose(allowed: Gst.Caps, formats: FormatList | None = None,
           system_formats: Sequence[str] = SYSTEM_FORMATS) -> Choice:
    """The best path in `allowed` (the source's caps intersected with downstream's)."""
    ranked = candidates(allowed, formats, system_formats)
    if not ranked:
        raise NoCommonFormat("no format the source can produce is accepted downstream "
                             f"(allowed: {allowed.to_string()})")
    return ranked[0]


def fixate(allowed: Gst.Caps, choice: Choice) -> Gst.Caps:
    """Fixed caps for `choice`: the first allowed structure it fits, narrowed to it, then fixated.

    Narrowing by intersection (not by writing the caps from scratch) keeps fields downstream asked
    for (colorimetry, pixel-aspect-ratio, texture-target), and Gst.Caps.fixate() settles what is
    left the same way every time.
    """
    init()
    narrowed = allowed.intersect_full(Gst.Caps.from_string(choice.caps_string()), Gst.CapsIntersectMode.FIRST)
    if narrowed.is_empty():
        raise NoCommonFormat(f"{choice.path} is not in the allowed caps ({allowed.to_string()})")
    return narrowed.fixate()
