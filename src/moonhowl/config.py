"""Configuration: one TOML file over embedded defaults.

Every key and its default live in DEFAULTS below (the single source of truth, also what
`moonhowl config` prints). A user's file only overrides; unknown keys are warned about once and
ignored; a wrong type or value stops the server with an error naming the key and its line.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Encoder rows tried per codec, first that works wins (see media/encoders.py for the rows).
DEFAULT_ENCODERS = {
    "h264": ["nvenc", "va", "qsv", "x264", "openh264"],
    "hevc": ["nvenc", "va", "qsv", "x265"],
    # svtav1 is left out: in its low-delay mode (GStreamer 1.26, SVT-AV1 2.3) it emits one frame
    # and hangs, and its random-access mode adds ~1 s of latency. Add it back to try a newer one.
    "av1": ["nvenc", "va", "qsv", "aom"],
}

DEFAULTS: dict[str, Any] = {
    "server": {
        # Shown in the client's host list; empty means this machine's hostname.
        "hostname": "",
        # Address the listeners bind to; "0.0.0.0" serves the whole LAN.
        "bind": "0.0.0.0",
        # The address advertised to clients (LocalIP, sessionUrl0); empty: detected.
        "advertise_ip": "",
        # Ports as in GameStream (clients find http/https by default; the rest is negotiated).
        "http_port": 47989,
        "https_port": 47984,
        "rtsp_port": 48010,
        "control_port": 47999,
        "video_port": 47998,
        "audio_port": 48000,
        # Where certificates and paired clients are kept; empty: $XDG_STATE_HOME/moonhowl.
        "state_dir": "",
        # The management API's unix socket; empty: <state_dir>/api.sock.
        "api_socket": "",
    },
    "pairing": {
        # Seconds a pairing request waits for its PIN before it fails.
        "pin_timeout": 120,
        # Who may use the /pin web page on the HTTP port: "off", "loopback" or "any".
        "pin_page": "loopback",
    },
    "stream": {
        # Share of Reed-Solomon parity per video block, in percent (0 disables FEC).
        "fec_percentage": 20,
        # Sessions allowed at once; further launches are refused with a clear message.
        "max_sessions": 4,
        # Seconds without control traffic after which a session ends.
        "idle_timeout": 10,
        # Desktop video paths, best first, each tried when the one before fails: "dmabuf" (the
        # renderer draws into dma-bufs the encoder chain imports), "system" (read back to system
        # memory), or exact source paths such as "dmabuf:XR24:0x0" and "system:BGRx".
        # Empty: decided per host from the encoder chains that can run (session/video.py).
        "video_paths": [],
    },
    "encoders": {
        **{codec: list(rows) for codec, rows in DEFAULT_ENCODERS.items()},
        # A codec is offered only if an encoder row reaches this many fps at 1280x720 here.
        "min_fps": 60,
        # A gst-launch fragment per codec that replaces the probe's choice ("" = probe).
        "force_h264": "",
        "force_hevc": "",
        "force_av1": "",
    },
    "apps": [
        {
            "title": "Desktop",
            "kind": "desktop",
            "command": ["foot"],
            "env": {},
            "exit_ends_session": False,
        },
        {
            "title": "Test pattern",
            "kind": "test-pattern",
            "command": [],
            "env": {},
            "exit_ends_session": False,
        },
    ],
}

APP_DEFAULTS: dict[str, Any] = {"kind": "desktop", "command": [], "env": {}, "exit_ends_session": True}
APP_KINDS = ("desktop", "test-pattern")


class ConfigError(Exception):
    """The configuration is unusable; the message names the file, the key and its line."""


@dataclass(frozen=True)
class AppConfig:
    id: int
    title: str
    kind: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    exit_ends_session: bool


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]
    apps: tuple[AppConfig, ...]
    source: Path | None = None
    warnings: tuple[str, ...] = field(default=())

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def hostname(self) -> str:
        return str(self.get("server", "hostname")) or socket.gethostname()

    @property
    def state_dir(self) -> Path:
        configured = str(self.get("server", "state_dir"))
        if configured:
            return Path(configured).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "moonhowl"

    @property
    def api_socket(self) -> Path:
        configured = str(self.get("server", "api_socket"))
        return Path(configured).expanduser() if configured else self.state_dir / "api.sock"

    def port(self, name: str) -> int:
        return int(self.get("server", f"{name}_port"))

    def app(self, app_id: int) -> AppConfig | None:
        return next((a for a in self.apps if a.id == app_id), None)

    def to_toml(self) -> str:
        """The effective configuration as TOML (what `moonhowl config` prints)."""
        out: list[str] = []
        for section, table in self.values.items():
            if section == "apps":
                continue
            out.append(f"[{section}]")
            out += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
            out.append("")
        for app in self.apps:
            out.append("[[apps]]")
            out.append(f"title = {_toml_value(app.title)}")
            out.append(f"kind = {_toml_value(app.kind)}")
            out.append(f"command = {_toml_value(list(app.command))}")
            out.append(f"env = {_toml_value(dict(app.env))}")
            out.append(f"exit_ends_session = {_toml_value(app.exit_ends_session)}")
            out.append("")
        return "\n".join(out)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "moonhowl" / "config.toml"


def load(path: Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Loads `path` (or the default location when it exists) over DEFAULTS, then `overrides`."""
    text, source = "", None
    if path is not None or default_config_path().exists():
        source = path or default_config_path()
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the configuration: {exc.strerror}") from None
    return parse(text, source, overrides)


def parse(text: str, source: Path | None = None,
          overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    where = str(source) if source else "<config>"
    try:
        user = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    locate = _KeyLocator(text)
    warnings: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for section, table in DEFAULTS.items():
        if section != "apps":
            values[section] = dict(table)
    for section, table in user.items():
        if section == "apps":
            continue
        if section not in values:
            warnings.append(f"{where}:{locate(section)}: unknown section [{section}] ignored")
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{where}:{locate(section)}: '{section}' must be a table")
        for key, value in table.items():
            if key not in values[section]:
                warnings.append(f"{where}:{locate(section, key)}: unknown key {section}.{key} ignored")
                continue
            _apply(values, section, key, value, f"{where}:{locate(section, key)}: ")
    # Command-line overrides (--set) are checked like the file, but unknown names are errors:
    # a typo on the command line is never what the user meant.
    for section, table in (overrides or {}).items():
        for key, value in table.items():
            if section not in values or key not in values[section]:
                raise ConfigError(f"--set {section}.{key}: no such setting")
            _apply(values, section, key, value, "--set ")
    apps = _parse_apps(user.get("apps", DEFAULTS["apps"]), where, locate, warnings)
    for message in warnings:
        log.warning("%s", message)
    return Config(values=values, apps=apps, source=source, warnings=tuple(warnings))


def _apply(values: dict[str, dict[str, Any]], section: str, key: str, value: Any, prefix: str) -> None:
    problem = _check(key, value, DEFAULTS[section][key])
    if problem:
        raise ConfigError(f"{prefix}{section}.{key} {problem}")
    values[section][key] = value


def _check(key: str, value: Any, default: Any) -> str | None:
    """Returns what is wrong with `value` for this key, or None."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be a whole number, not {value!r}"
        return _RANGES.get(key, lambda v: None)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            return f"must be a string, not {value!r}"
        if key == "pin_page" and value not in ("off", "loopback", "any"):
            return f"must be one of 'off', 'loopback', 'any', not {value!r}"
        return None
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of strings, not {value!r}"
        if key == "video_paths":
            return _video_paths(value)
        return None
    return None


# What moonhowlsrc can produce (media/source.py): a dma-buf path names its DRM fourcc and modifier
# in hex, the system path BGRx (the renderer's readback order).
_VIDEO_PATH = re.compile(r"dmabuf|system|system:BGRx|dmabuf:[A-Z0-9]{2,4}:0x[0-9a-fA-F]{1,16}")


def _video_paths(value: list[str]) -> str | None:
    bad = [v for v in value if not _VIDEO_PATH.fullmatch(v)]
    if bad:
        return (f"has {', '.join(map(repr, bad))}: each entry must be 'dmabuf', 'system', "
                "'system:BGRx' or 'dmabuf:FOURCC:0xMODIFIER'")
    if len(set(value)) != len(value):
        return f"lists a path twice: {value!r}"
    return None


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port number (0-65535), not {value}"


_RANGES: dict[str, Callable[[int], str | None]] = {
    **{f"{name}_port": _port for name in ("http", "https", "rtsp", "control", "video", "audio")},
    "fec_percentage": lambda v: None if 0 <= v <= 255 else f"must be 0-255, not {v}",
    "max_sessions": lambda v: None if v >= 1 else f"must be at least 1, not {v}",
    "idle_timeout": lambda v: None if v >= 1 else f"must be at least 1 second, not {v}",
    "pin_timeout": lambda v: None if v >= 1 else f"must be at least 1 second, not {v}",
    "min_fps": lambda v: None if v >= 0 else f"must be 0 or more, not {v}",
}


def _parse_apps(raw: Any, where: str, locate: _KeyLocator, warnings: list[str]) -> tuple[AppConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}:{locate('apps')}: apps must be a non-empty array of tables ([[apps]])")
    apps: list[AppConfig] = []
    for index, entry in enumerate(raw):
        line = locate.app(index)
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}:{line}: apps[{index}] must be a table")
        for key in entry:
            if key != "title" and key not in APP_DEFAULTS:
                warnings.append(f"{where}:{line}: unknown key apps[{index}].{key} ignored")
        item = {**APP_DEFAULTS, **entry}
        title = item.get("title")
        if not isinstance(title, str) or not title:
            raise ConfigError(f"{where}:{line}: apps[{index}].title must be a non-empty string")
        if item["kind"] not in APP_KINDS:
            raise ConfigError(f"{where}:{line}: apps[{index}].kind must be one of {APP_KINDS}, "
                              f"not {item['kind']!r}")
        command, env = item["command"], item["env"]
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise ConfigError(f"{where}:{line}: apps[{index}].command must be a list of strings")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{where}:{line}: apps[{index}].env must be a table of strings")
        if not isinstance(item["exit_ends_session"], bool):
            raise ConfigError(f"{where}:{line}: apps[{index}].exit_ends_session must be true or false")
        if any(a.title == title for a in apps):
            raise ConfigError(f"{where}:{line}: apps[{index}].title {title!r} is used twice")
        # IDs are positions counted from 1: stable as long as the list is, and never 0 (clients
        # treat currentgame 0 as "nothing running").
        apps.append(AppConfig(index + 1, title, item["kind"], tuple(command), dict(env),
                              item["exit_ends_session"]))
    return tuple(apps)


class _KeyLocator:
    """Finds the line of `[section]` / `key =` in the TOML text, for error messages.

    tomllib reports no positions for valid documents, so this scans the text: good enough to
    point a person at the right line.
    """

    _header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    _array = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
    _key = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def __call__(self, section: str, key: str | None = None) -> str:
        current = None
        for number, line in enumerate(self.lines, 1):
            header = self._header.match(line)
            if header:
                current = header.group(1)
                if key is None and current == section:
                    return f"line {number}"
                continue
            match = self._key.match(line)
            if key is not None and match and current == section and match.group(1) == key:
                return f"line {number}"
        return "?"

    def app(self, index: int) -> str:
        seen = -1
        for number, line in enumerate(self.lines, 1):
            array = self._array.match(line)
            if array and array.group(1) == "apps":
                seen += 1
                if seen == index:
                    return f"line {number}"
        return "?"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
