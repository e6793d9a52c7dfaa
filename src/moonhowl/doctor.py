"""`moonhowl doctor`: what this machine offers a streaming host, in one report."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess


def _line(label: str, value: str) -> None:
    print(f"{label:<22} {value}")


def run() -> int:
    problems = 0
    try:
        from moonhowl.media import probe
        from moonhowl.media.glib import Gst, init

        init()
        version = Gst.version()
        gst_ok = (version.major, version.minor) >= (1, 24)
        _line("GStreamer", f"{Gst.version_string()}" + ("" if gst_ok else "  (too old: DMA_DRM caps need 1.24)"))
        problems += not gst_ok
        min_fps = probe.DEFAULT_MIN_FPS
        print(f"encoders (the first row reaching {min_fps:g} fps at 720p is used; this takes a while):")
        for codec, results in probe.probe(everything=True).items():
            for r in results:
                mark = "ok " if r.usable(min_fps) else "slow " if r.ok else "-- "
                print(f"  {mark:<5}{codec:<5} {r.spec.name:<9} {r.reason}")
            if not any(r.usable(min_fps) for r in results):
                print(f"  !!   {codec}: no encoder fast enough; not offered to clients")
    except ImportError as exc:
        _line("GStreamer", f"unavailable ({exc})")
        problems += 1
    try:
        from moonhowl.render.egl import Egl, EglError

        egl = Egl()
        info = egl.info()
        egl.close()
        _line("EGL", f"{info.vendor} {info.version} ({info.platform} platform)")
        importable = {f: [m for m, ext in mods if not ext] for f, mods in info.dmabuf_formats.items()}
        usable = {f: m for f, m in importable.items() if m}
        _line("dma-buf import", f"{len(info.dmabuf_formats)} formats, {len(usable)} renderable "
              f"(e.g. {', '.join(sorted(usable)[:6])})" if info.dmabuf_formats else "not supported")
        modifiers = sorted({m for mods in usable.values() for m in mods})
        _line("dma-buf modifiers", ", ".join(f"0x{m:016x}" for m in modifiers[:6]) or "none")
    except (ImportError, EglError) as exc:
        _line("EGL", f"unavailable ({exc})")
        problems += 1
    nodes = sorted(glob.glob("/dev/dri/renderD*"))
    _line("render nodes", ", ".join(nodes) or "none (no GPU: software rendering, memfd buffers)")
    uinput = os.path.exists("/dev/uinput") and os.access("/dev/uinput", os.W_OK)
    _line("uinput", "/dev/uinput writable" if uinput else "absent (virtual gamepads unavailable)")
    _line("audio server", _audio_server())
    return 1 if problems else 0


def _audio_server() -> str:
    if shutil.which("pactl") is None:
        return "pactl not found"
    try:
        out = subprocess.run(["pactl", "info"], capture_output=True, text=True, timeout=3, check=False)
    except subprocess.TimeoutExpired:
        return "pactl timed out"
    for line in out.stdout.splitlines():
        if line.startswith("Server Name:"):
            return line.split(":", 1)[1].strip()
    return "none running (moonhowl starts one per host when streaming audio)"
