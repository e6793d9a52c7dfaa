"""moonhowl's micro Wayland compositor: one headless desktop per streaming session.

Pure Python: the wire format is marshalled from tables read out of the protocol XML files Debian
ships (`protocols`, `wire`), an asyncio unix socket carries it with fd passing (`server`), one
small `Resource` object per Wayland object implements each protocol family (`compositor`, `shm`,
`xdg_shell`, `seat`, ...), and `display.Compositor` is what a session uses: start, snapshot the
scene, tell it a frame was presented, feed input into its seat.
"""
