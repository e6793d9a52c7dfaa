"""Sans-IO protocol cores: bytes in, events and bytes out. No asyncio, sockets or GStreamer here."""
