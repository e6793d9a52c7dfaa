"""GStreamer and GLib, imported and initialized in one place."""

from __future__ import annotations

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstApp, GstVideo  # noqa: E402

__all__ = ["GLib", "Gst", "GstApp", "GstVideo", "init"]


def init() -> None:
    if not Gst.is_initialized():
        Gst.init(None)
