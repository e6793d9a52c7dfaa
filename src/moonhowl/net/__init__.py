"""asyncio adapters: the only code that owns sockets."""
