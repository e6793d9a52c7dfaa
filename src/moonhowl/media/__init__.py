"""GStreamer: the only package that imports Gst."""
