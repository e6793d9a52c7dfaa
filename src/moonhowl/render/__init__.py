"""Rendering: EGL display and context, dma-buf import/export, GLES composition."""
