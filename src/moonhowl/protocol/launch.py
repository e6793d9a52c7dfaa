"""/launch and /resume query parameters, as moonlight-qt (nvhttp.cpp startApp) sends them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from moonhowl.protocol.errors import ProtocolError


class LaunchError(ProtocolError):
    """A /launch or /resume request that cannot start a stream; the message says which field."""


_MODE = re.compile(r"^(\d{2,5})x(\d{2,5})x(\d{1,3})$")
MAX_PIXELS = 7680 * 4320  # 8K: the largest mode a client may ask for


@dataclass(frozen=True)
class LaunchRequest:
    app_id: int
    width: int
    height: int
    fps: int
    rikey: bytes  # AES-128 key for control, video and audio
    rikeyid: int  # the audio IV seed; sent signed, used as uint32
    surround_info: int  # (channel mask << 16) | channel count
    local_audio: bool  # also play sound on the host
    gamepad_mask: int
    hdr: bool

    @property
    def audio_channels(self) -> int:
        return self.surround_info & 0xFFFF or 2

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]], *, resume: bool = False) -> LaunchRequest:
        query: dict[str, str] = {}
        for key, value in items:
            if key in query:
                raise LaunchError(f"field {key!r} appears twice")
            query[key] = value

        def need(name: str) -> str:
            if name not in query:
                raise LaunchError(f"missing field {name!r}")
            return query[name]

        def number(name: str, default: int | None = None) -> int:
            if name not in query and default is not None:
                return default
            text = need(name)
            try:
                return int(text)
            except ValueError:
                raise LaunchError(f"field {name!r} is not a number: {text!r}") from None

        # /resume carries no appid: the running app continues.
        app_id = number("appid", 0 if resume else None)
        match = _MODE.match(need("mode"))
        if not match:
            raise LaunchError(f"mode must be WIDTHxHEIGHTxFPS, not {query['mode']!r}")
        width, height, fps = (int(g) for g in match.groups())
        if not (min(width, height) >= 16 and width * height <= MAX_PIXELS and 1 <= fps <= 240):
            raise LaunchError(f"mode {query['mode']!r} is outside 16x16 .. 8K at 1-240 fps")
        try:
            rikey = bytes.fromhex(need("rikey"))
        except ValueError:
            raise LaunchError("rikey is not hex") from None
        if len(rikey) != 16:
            raise LaunchError(f"rikey must be 16 bytes, not {len(rikey)}")
        rikeyid = number("rikeyid")
        if not -(2**31) <= rikeyid < 2**32:
            raise LaunchError(f"rikeyid {rikeyid} does not fit 32 bits")
        return cls(app_id=app_id, width=width, height=height, fps=fps, rikey=rikey,
                   rikeyid=rikeyid & 0xFFFFFFFF, surround_info=number("surroundAudioInfo", 0x30002),
                   local_audio=query.get("localAudioPlayMode", "0") == "1",
                   gamepad_mask=number("remoteControllersBitmap", 0), hdr=query.get("hdrMode", "0") == "1")
