"""Interface tables read from the Wayland protocol XML files (libwayland-dev, wayland-protocols).

The XML is the single source of truth for opcodes, argument types, nullability and versions;
nothing here is hand-written per message. Files are found at run time (MOONHOWL_WAYLAND_XML_DIRS,
then the Debian locations), parsed once, and merged into one name -> Interface table. A protocol
file that is missing only removes its interfaces: the compositor then does not advertise them.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

ENV_DIRS = "MOONHOWL_WAYLAND_XML_DIRS"
DEFAULT_DIRS = ("/usr/share/wayland", "/usr/share/wayland-protocols")

# Relative to one of the XML directories. A flat override directory may hold just the basenames.
PROTOCOL_FILES = (
    "wayland.xml",
    "stable/xdg-shell/xdg-shell.xml",
    "stable/viewporter/viewporter.xml",
    "stable/presentation-time/presentation-time.xml",
    "stable/linux-dmabuf/linux-dmabuf-v1.xml",
    "unstable/xdg-decoration/xdg-decoration-unstable-v1.xml",
    "unstable/xdg-output/xdg-output-unstable-v1.xml",
    "unstable/relative-pointer/relative-pointer-unstable-v1.xml",
    "unstable/pointer-constraints/pointer-constraints-unstable-v1.xml",
    "staging/single-pixel-buffer/single-pixel-buffer-v1.xml",
    "staging/fractional-scale/fractional-scale-v1.xml",
    "staging/xdg-activation/xdg-activation-v1.xml",
)

# libwayland's signature letters (wayland-util.h, wl_message.signature).
TYPE_CODES = {
    "int": "i", "uint": "u", "fixed": "f", "string": "s", "object": "o",
    "new_id": "n", "array": "a", "fd": "h",
}


class ProtocolFileError(RuntimeError):
    """A protocol XML file is unreadable or does not follow wayland.dtd."""


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    type: str  # one of TYPE_CODES' keys
    interface: str | None = None
    allow_null: bool = False
    enum: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    name: str
    opcode: int
    args: tuple[Arg, ...]
    since: int = 1
    destructor: bool = False
    # wire.py's compact form: one letter per wire argument, "?" before nullable ones. An untyped
    # new_id (wl_registry.bind) is three wire arguments: string interface, uint version, id ("sun").
    signature: str = ""


@dataclass(frozen=True, slots=True)
class Enum:
    name: str
    entries: dict[str, int]
    bitfield: bool = False


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    version: int
    requests: tuple[Message, ...]
    events: tuple[Message, ...]
    enums: dict[str, Enum] = field(default_factory=dict)
    protocol: str = ""
    _by_name: dict[tuple[bool, str], Message] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for message in self.requests:
            self._by_name[(False, message.name)] = message
        for message in self.events:
            self._by_name[(True, message.name)] = message

    def request(self, name: str) -> Message:
        try:
            return self._by_name[(False, name)]
        except KeyError:
            raise KeyError(f"{self.name} has no request {name!r}") from None

    def event(self, name: str) -> Message:
        try:
            return self._by_name[(True, name)]
        except KeyError:
            raise KeyError(f"{self.name} has no event {name!r}") from None

    def enum_value(self, enum: str, entry: str) -> int:
        return self.enums[enum].entries[entry]


def signature_of(args: tuple[Arg, ...]) -> str:
    parts = []
    for arg in args:
        if arg.type == "new_id" and arg.interface is None:
            parts.append("sun")
            continue
        parts.append(("?" if arg.allow_null else "") + TYPE_CODES[arg.type])
    return "".join(parts)


def _int(text: str) -> int:
    return int(text, 0)


def _messages(element: ET.Element, tag: str, interface: str) -> tuple[Message, ...]:
    messages = []
    for opcode, node in enumerate(element.findall(tag)):
        args = []
        for a in node.findall("arg"):
            kind = a.get("type", "")
            if kind not in TYPE_CODES:
                raise ProtocolFileError(f"{interface}.{node.get('name')}: unknown arg type {kind!r}")
            args.append(Arg(name=a.get("name", ""), type=kind, interface=a.get("interface"),
                            allow_null=a.get("allow-null") == "true", enum=a.get("enum")))
        targs = tuple(args)
        messages.append(Message(name=node.get("name", ""), opcode=opcode, args=targs,
                                since=_int(node.get("since", "1")),
                                destructor=node.get("type") == "destructor",
                                signature=signature_of(targs)))
    return tuple(messages)


def parse_protocol(path: Path) -> list[Interface]:
    """Every interface of one protocol XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ProtocolFileError(f"{path}: {exc}") from None
    if root.tag != "protocol":
        raise ProtocolFileError(f"{path}: root element is <{root.tag}>, not <protocol>")
    interfaces = []
    for node in root.findall("interface"):
        name = node.get("name", "")
        enums = {}
        for e in node.findall("enum"):
            entries = {entry.get("name", ""): _int(entry.get("value", "0")) for entry in e.findall("entry")}
            enums[e.get("name", "")] = Enum(e.get("name", ""), entries, e.get("bitfield") == "true")
        interfaces.append(Interface(name=name, version=_int(node.get("version", "1")),
                                    requests=_messages(node, "request", name),
                                    events=_messages(node, "event", name),
                                    enums=enums, protocol=root.get("name", path.stem)))
    return interfaces


def xml_dirs() -> list[Path]:
    """Where protocol XML files are looked for, in order: the env override, then Debian's."""
    dirs = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return dirs + [Path(p) for p in DEFAULT_DIRS]


def find_protocol_file(relative: str, dirs: list[Path] | None = None) -> Path | None:
    for d in dirs if dirs is not None else xml_dirs():
        for candidate in (d / relative, d / Path(relative).name):
            if candidate.is_file():
                return candidate
    return None


def _load(dirs: tuple[Path, ...]) -> dict[str, Interface]:
    table: dict[str, Interface] = {}
    for relative in PROTOCOL_FILES:
        path = find_protocol_file(relative, list(dirs))
        if path is None:
            log.warning("wayland protocol file %s not found in %s; its interfaces are not offered",
                        relative, ", ".join(map(str, dirs)))
            continue
        for iface in parse_protocol(path):
            if iface.name in table:
                raise ProtocolFileError(f"{path}: interface {iface.name} is also defined in "
                                        f"{table[iface.name].protocol}")
            table[iface.name] = iface
    if "wl_display" not in table:
        raise ProtocolFileError(f"wayland.xml not found in {', '.join(map(str, dirs))} "
                                f"(install libwayland-dev or set {ENV_DIRS})")
    return table


@lru_cache(maxsize=1)
def registry() -> dict[str, Interface]:
    """name -> Interface for every interface of PROTOCOL_FILES found; read once per process
    (registry.cache_clear() makes the next call look at MOONHOWL_WAYLAND_XML_DIRS again)."""
    return _load(tuple(xml_dirs()))


def interface(name: str) -> Interface:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"wayland interface {name!r} is not loaded (protocol XML missing?)") from None


def has_interface(name: str) -> bool:
    return name in registry()
