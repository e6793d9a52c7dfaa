"""Encoder chains per input memory kind, as data: from the source's output to encoded access units.

The source (media/source.py) hands out DMA_DRM dma-bufs or system memory; which encoder can
take which memory without a CPU copy differs per vendor, so the element chain between them is a
table row, chosen by (memory kind, EncoderSpec), never an if/elif:

    dmabuf -> vapostproc -> va encoders                     Intel/AMD: VA imports the dma-buf
    dmabuf -> glupload -> cudaupload -> cudaconvertscale -> nv encoders   (GL/CUDA interop on the GPU)
    gl     -> cudaupload -> cudaconvertscale -> nv encoders
    cuda   -> cudaconvertscale -> nv encoders
    dmabuf -> glupload -> glcolorconvert -> gldownload -> software encoder   (no hardware encoder)
    gl     -> glcolorconvert -> gldownload -> software encoder
    system -> the EncoderSpec's own fragment (videoconvert -> software encoder, or its upload)

`chain_for(kind, spec)` gives the gst-launch fragment (None: no row for that pair), `copies(kind,
spec)` how many CPU-side copies of the frame happen between the compositor's render and the
encoder's input on that chain, and `copy_steps()` which ones, each explained in COPY_REASONS.
A "copy" here is a pass on the CPU that reads a whole frame and writes it elsewhere (memcpy,
readback, format conversion): GPU-side blits and imports are not counted, they cost no CPU.

The "gl" and "cuda" rows take GL/CUDA memory as input. moonhowlsrc does not produce either itself
(see source.py: glupload already wraps its dma-bufs as GL memory without a copy), so on today's
hosts a GL-memory encoder is reached through a "dmabuf" row that starts with glupload; the rows
stay for a source that renders into GL textures or CUDA memory directly.

Only this module knows element names of converters; the probe (`runnable`) decides which rows
can run here from the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from moonhowl.media.encoders import INFINITE_GOP, EncoderSpec

log = logging.getLogger(__name__)

__all__ = [
    "CHAINS",
    "COPY_REASONS",
    "MEMORY_KINDS",
    "SOFTWARE",
    "Chain",
    "chain_for",
    "copies",
    "copy_steps",
    "encoder_part",
    "find_chain",
    "kinds_for",
    "missing_elements",
    "raw_format",
]

# In order of preference: GPU memory all the way, then system memory.
MEMORY_KINDS = ("dmabuf", "gl", "cuda", "system")
SOFTWARE = "*software*"  # a Chain.encoders entry: every row with hardware=False
ANY = "*any*"  # a Chain.encoders entry: every row

COPY_REASONS: dict[str, str] = {
    "readback": "the renderer reads the finished frame back from GPU memory into a CPU buffer "
                "(glReadPixels) because the source must hand out system memory",
    "wrap": "render_bytes() returns a Python bytes object; the source copies it into a pooled GstBuffer "
            "(GStreamer cannot adopt Python memory without a copy)",
    "videoconvert": "videoconvert turns the RGB frame into the encoder's YUV on the CPU, reading one "
                    "frame and writing another",
    "gldownload": "the software encoder reads system memory, so gldownload reads the GPU-converted YUV "
                  "frame back into a CPU buffer",
    "upload": "the hardware encoder's first element (cudaupload, vapostproc, the QSV encoder) copies "
              "the system-memory frame into GPU memory",
}

# Elements whose presence in a system-memory fragment means one of the copies above.
_SYSTEM_COPYING_ELEMENTS: dict[str, str] = {
    "videoconvert": "videoconvert",
    "cudaupload": "upload",
    "vapostproc": "upload",
    "qsvh264enc": "upload",
    "qsvh265enc": "upload",
    "qsvav1enc": "upload",
}

# CPU copies the source itself makes before the chain starts, per memory kind.
_SOURCE_COPIES: dict[str, tuple[str, ...]] = {
    "dmabuf": (),  # rendered straight into the dma-buf the encoder side imports
    "gl": (),
    "cuda": (),
    "system": ("readback", "wrap"),
}


@dataclass(frozen=True)
class Chain:
    memory: str  # the source's output memory: one of MEMORY_KINDS
    encoders: tuple[str, ...]  # EncoderSpec.name values it fits, or SOFTWARE / ANY
    template: str  # {encoder}: the spec's encoder element(s); {raw}: its raw input format;
    #                {fragment}: the spec's whole fragment (system memory)
    elements: tuple[str, ...]  # elements the template adds (the spec's own are checked too)
    copies: tuple[str, ...]  # COPY_REASONS keys along the chain: () is zero-copy
    note: str = ""  # where it was verified, or why not
    # It does its conversion in GL. On a software GL (Mesa llvmpipe: no GPU) that work runs on
    # the CPU and costs more than the copies it saves: measured at 1080p60 with x264 on 2 cores,
    # DMA_DRM -> glupload -> glcolorconvert -> gldownload reached 24 fps at 70 CPU ms a frame,
    # the system-memory chain 60 fps at 15 ms (bench/zero_copy.py).
    gl: bool = False

    def fits(self, spec: EncoderSpec) -> bool:
        return ANY in self.encoders or spec.name in self.encoders or (SOFTWARE in self.encoders and not spec.hardware)


CHAINS: tuple[Chain, ...] = (
    # --- DMA_DRM dma-bufs
    Chain("dmabuf", ("va",),
          "vapostproc ! video/x-raw(memory:VAMemory),format=NV12 ! {encoder}",
          ("vapostproc",), (),
          "VA imports the dma-buf (vapostproc accepts DMA_DRM caps since GStreamer 1.24) and converts on "
          "the GPU; not run here: no VA device on these machines"),
    Chain("dmabuf", ("nvenc",),
          "glupload ! cudaupload ! cudaconvertscale ! video/x-raw(memory:CUDAMemory),format=NV12 ! {encoder}",
          ("glupload", "cudaupload", "cudaconvertscale"), (),
          "glupload imports the dma-buf as an EGLImage texture, cudaupload maps it through CUDA-GL interop "
          "(a GPU copy); not run: the GPU machine has no NVENC and no GStreamer", gl=True),
    Chain("dmabuf", (SOFTWARE,),
          "glupload ! glcolorconvert ! gldownload ! video/x-raw,format={raw} ! {encoder}",
          ("glupload", "glcolorconvert", "gldownload"), ("gldownload",),
          "run here (llvmpipe): the memfd dma-buf is imported, converted to YUV in GL, read back once",
          gl=True),
    # --- GL memory (a source rendering into GL textures)
    Chain("gl", ("nvenc",),
          "cudaupload ! cudaconvertscale ! video/x-raw(memory:CUDAMemory),format=NV12 ! {encoder}",
          ("cudaupload", "cudaconvertscale"), ()),
    Chain("gl", (SOFTWARE,),
          "glcolorconvert ! gldownload ! video/x-raw,format={raw} ! {encoder}",
          ("glcolorconvert", "gldownload"), ("gldownload",), gl=True),
    # --- CUDA memory
    Chain("cuda", ("nvenc",),
          "cudaconvertscale ! video/x-raw(memory:CUDAMemory),format=NV12 ! {encoder}",
          ("cudaconvertscale",), ()),
    # --- system memory: the EncoderSpec's own fragment, whatever the encoder
    Chain("system", (ANY,), "{fragment}", (), ()),
)


def _split(fragment: str) -> list[str]:
    # gst-launch separates elements with " ! "; no fragment of ours has "!" inside a quoted value.
    return [part.strip() for part in fragment.split("!")]


def encoder_part(spec: EncoderSpec) -> str:
    """The spec's encoder element(s) without its own converter: from the element named "enc" on."""
    parts = _split(spec.encoder)
    for i, part in enumerate(parts):
        if "name=enc" in part.split():
            return " ! ".join(parts[i:])
    raise ValueError(f"{spec.codec}/{spec.name}: no element named enc in {spec.encoder!r}")


def raw_format(spec: EncoderSpec, default: str = "I420") -> str:
    """The raw format the spec feeds its encoder (the caps just before it), e.g. I420."""
    parts = _split(spec.encoder)
    for i, part in enumerate(parts):
        if "name=enc" in part.split() and i > 0 and parts[i - 1].startswith("video/x-raw"):
            for field in parts[i - 1].split(","):
                key, _, value = field.partition("=")
                if key.strip() == "format":
                    return value.strip()
    return default


def find_chain(memory_kind: str, spec: EncoderSpec) -> Chain | None:
    return next((c for c in CHAINS if c.memory == memory_kind and c.fits(spec)), None)


def chain_for(memory_kind: str, spec: EncoderSpec, kbps: int = 10_000) -> str | None:
    """gst-launch fragment from the source's output (of that memory) to parsed access units."""
    chain = find_chain(memory_kind, spec)
    if chain is None:
        return None
    if chain.template == "{fragment}":
        return spec.fragment(kbps)
    encoder = encoder_part(spec).format(kbps=kbps, bps=kbps * 1000, gop=INFINITE_GOP)
    return f"{chain.template.format(encoder=encoder, raw=raw_format(spec))} ! {spec.parser}"


def copy_steps(memory_kind: str, spec: EncoderSpec) -> list[str]:
    """COPY_REASONS keys, in order, for the frame's way from the renderer to the encoder input."""
    chain = find_chain(memory_kind, spec)
    if chain is None:
        raise ValueError(f"no chain takes {memory_kind} memory to {spec.codec}/{spec.name}")
    steps = list(_SOURCE_COPIES.get(memory_kind, ()))
    if chain.template == "{fragment}":
        for part in _split(spec.encoder):
            element = part.split()[0] if part else ""
            if element in _SYSTEM_COPYING_ELEMENTS:
                steps.append(_SYSTEM_COPYING_ELEMENTS[element])
    else:
        steps.extend(chain.copies)
    return steps


def copies(memory_kind: str, spec: EncoderSpec) -> int:
    """CPU-side copies of frame data between compositor and encoder input on that chain."""
    return len(copy_steps(memory_kind, spec))


def missing_elements(memory_kind: str, spec: EncoderSpec, has_element: Callable[[str], bool]) -> list[str] | None:
    """Elements the chain needs that this machine lacks ([] = runnable); None = no such chain."""
    chain = find_chain(memory_kind, spec)
    if chain is None:
        return None
    needed = dict.fromkeys((*chain.elements, *spec.elements))
    if chain.template == "{fragment}":
        needed.update(dict.fromkeys(p.split()[0] for p in _split(spec.encoder) if p and not p.startswith("video/")))
    return [name for name in needed if not has_element(name)]


def kinds_for(spec: EncoderSpec, has_element: Callable[[str], bool],
              produced: tuple[str, ...] = ("dmabuf", "system"), software_gl: bool = False) -> list[str]:
    """Memory kinds, best first, whose chain to `spec` can run here and the source can produce.

    This is the session's fallback order (source.FallbackController(kinds_for(...))). With
    `software_gl` (the GL renderer is llvmpipe or another CPU implementation) chains that convert
    in GL go after system memory: they still work, as a fallback, but cost more CPU there.
    """
    kinds = []
    order = sorted(MEMORY_KINDS, key=lambda k: bool(software_gl and (c := find_chain(k, spec)) and c.gl))
    for kind in order:
        if kind not in produced:
            continue
        missing = missing_elements(kind, spec, has_element)
        if missing is None:
            continue
        if missing:
            log.debug("%s chain to %s/%s cannot run here: missing %s", kind, spec.codec, spec.name, ", ".join(missing))
            continue
        kinds.append(kind)
    return kinds
