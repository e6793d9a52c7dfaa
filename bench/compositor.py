"""Compositor render cost per frame (ms): GlRenderer on this machine's EGL, and the CPU renderer.

Run: ./moonhowl exec python bench/compositor.py [--sizes 1080p,4k] [--frames 30]

The scene is a desktop with one fullscreen XRGB8888 shm client and a 24x24 ARGB cursor. An opaque
surface shown 1:1 is copied (a blit, or on software renderers an upload straight into the output)
instead of drawn; the "translucent" rows show the general case, a blended textured draw:
* "client changes every frame": the client commits a new buffer each frame (two buffers used in
  turn, a new buffer_key per commit), so each frame uploads, draws and reads back;
* "unchanged scene, redrawn": the same keys with damaged=True: draw + readback, no upload;
* "unchanged scene, not damaged": damaged=False: render() hands back the previous frame;
* render_to rows draw into a memfd dma-buf (the zero-copy path's output) instead of reading back;
* "CPU renderer" rows: moonhowl.render.cpu on the same scenes (it copies, never blends).
Medians over --frames frames after warm-up; the machine, renderer and core count are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from moonhowl.render.allocators import MemfdAllocator, ShmAllocator
from moonhowl.render.cpu import CpuRenderer
from moonhowl.render.gl import fourcc
from moonhowl.render.renderer import GlRenderer
from moonhowl.wayland.scene import Drawable, Scene, ShmContent, SolidContent

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440), "4k": (3840, 2160)}
WL_SHM_ARGB8888, WL_SHM_XRGB8888 = 0, 1

class Desktop:
    """One fullscreen shm client drawing into two buffers in turn, a background and a cursor."""

    def __init__(self, width: int, height: int, translucent: bool = False) -> None:
        self.width, self.height = width, height
        # Translucent: an ARGB8888 client without an opaque region (client-side shadows, as GTK
        # draws them), which must be blended; otherwise an opaque XRGB8888 one, copied 1:1.
        self.format, self.opaque = (WL_SHM_ARGB8888, False) if translucent else (WL_SHM_XRGB8888, True)
        stride = width * 4
        row = bytes((x * 7) & 0xFF for x in range(stride))
        self.buffers = [memoryview(bytearray(row * height)), memoryview(bytearray(row[::-1] * height))]
        self.cursor = Drawable(content=ShmContent(data=memoryview(bytearray(b"\x80\x80\x80\x80" * 24 * 24)), offset=0,
                                                  width=24, height=24, stride=96, format=WL_SHM_ARGB8888),
                               x=width // 2, y=height // 2, width=24, height=24, src=None, buffer_key="cursor",
                               opaque=False)
        self.background = Drawable(content=SolidContent(r=0.1, g=0.2, b=0.3, a=1.0), x=0, y=0, width=width,
                                   height=height, src=None, buffer_key="background", opaque=True)
        self.commit = 0

    def scene(self, changed: bool, damaged: bool = True) -> Any:
        if changed:
            self.commit += 1
        buffer = self.buffers[self.commit % 2]
        client = Drawable(content=ShmContent(data=buffer, offset=0, width=self.width, height=self.height,
                                             stride=self.width * 4, format=self.format),
                          x=0, y=0, width=self.width, height=self.height, src=None,
                          buffer_key=("client", self.commit), opaque=self.opaque)
        return Scene(width=self.width, height=self.height, drawables=(self.background, client), cursor=self.cursor,
                     damaged=damaged)


def median_ms(fn: Callable[[], object], frames: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    # The median is robust against scheduler hiccups on a shared machine.
    return statistics.median(times) * 1e3


def bench_size(width: int, height: int, frames: int) -> dict[str, float | None]:
    desktop = Desktop(width, height)
    results: dict[str, float | None] = {}
    renderer = GlRenderer(width, height)
    try:
        results["render(): opaque client changes every frame (upload+copy+readback)"] = median_ms(
            lambda: renderer.render(desktop.scene(changed=True)), frames)
        uploads = renderer.stats.uploads
        results["render(): unchanged scene, redrawn (copy+readback)"] = median_ms(
            lambda: renderer.render(desktop.scene(changed=False)), frames)
        assert renderer.stats.uploads == uploads, "an unchanged scene must not upload"
        results["render(): unchanged scene, not damaged (cached frame)"] = median_ms(
            lambda: renderer.render(desktop.scene(changed=False, damaged=False)), frames)
        output = MemfdAllocator().allocate(width, height, fourcc("XR24"))
        try:
            results["render_to(memfd): opaque client changes (copy into output+fence)"] = median_ms(
                lambda: renderer.render_to(desktop.scene(changed=True), output), frames)
            results["render_to(memfd): unchanged scene, redrawn (copy+fence)"] = median_ms(
                lambda: renderer.render_to(desktop.scene(changed=False), output), frames)
            if renderer.target_failures:
                print(f"note: render_to fell back to readback: {renderer.target_failures}")
            memory = ShmAllocator().allocate(width, height, fourcc("XR24"))
            results["render_to(system memory): opaque client changes (copy+readback)"] = median_ms(
                lambda: renderer.render_to(desktop.scene(changed=True), memory), frames)
            # The general case: a surface that must be blended is drawn, not copied.
            glass = Desktop(width, height, translucent=True)
            results["render(): translucent client changes (upload+blended draw+readback)"] = median_ms(
                lambda: renderer.render(glass.scene(changed=True)), frames)
            results["render_to(memfd): translucent client changes (upload+blended draw+fence)"] = median_ms(
                lambda: renderer.render_to(glass.scene(changed=True), output), frames)
        finally:
            output.release()
    finally:
        renderer.close()
    cpu = CpuRenderer(width, height)
    results["CPU renderer: opaque client changes every frame"] = median_ms(
        lambda: cpu.render(desktop.scene(changed=True)), max(frames // 3, 3), warmup=1)
    results["CPU renderer: unchanged scene"] = median_ms(
        lambda: cpu.render(desktop.scene(changed=False)), max(frames // 3, 3), warmup=1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1080p,4k", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--frames", type=int, default=30)
    args = parser.parse_args()
    sizes = [s.strip().lower() for s in args.sizes.split(",")]
    probe = GlRenderer(16, 16)
    probe.render(Scene(width=16, height=16, drawables=(), cursor=None, damaged=True))
    from moonhowl.render import gl as G

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; GL: {probe.gl.string(G.GL_RENDERER)}, "
          f"GLES {probe.ctx.version}, EGL platform {probe.ctx.egl.platform}")
    probe.close()
    table = {size: bench_size(*SIZES[size], args.frames) for size in sizes}
    cases = list(next(iter(table.values())))
    width = max(len(c) for c in cases)
    print(f"{'ms per frame (median)':<{width}}  " + "  ".join(f"{s:>14}" for s in sizes))
    for case in cases:
        cells = []
        for size in sizes:
            ms = table[size][case]
            if ms is None:
                cells.append(f"{'n/a':>14}")
            else:  # frames per second only where it means something (not for a cached frame)
                cells.append(f"{ms:7.2f} ({1e3 / ms:4.0f}/s)" if ms >= 0.1 else f"{ms:7.2f}{'':7}")
        print(f"{case:<{width}}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
