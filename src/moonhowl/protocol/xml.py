"""The XML bodies of GameStream's HTTP(S) API, both directions.

Every reply is ``<root status_code=".." status_message="..">`` with flat ``<key>value</key>``
children, answered with HTTP 200 even for errors: Moonlight clients (moonlight-qt ``nvhttp.cpp``
``verifyResponseStatus``) read ``status_code`` from the root and treat HTTP >= 400 as a transport
failure. Sunshine builds the same shape with boost property trees.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from moonhowl.protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

__all__ = ["MAX_XML_BYTES", "Reply", "XmlError", "applist", "error", "parse", "response"]

MAX_XML_BYTES = 1024 * 1024
_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Characters XML 1.0 cannot carry even escaped (C0 controls other than TAB, LF, CR; surrogates; FFFE/F).
_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTR_ENTITIES = {'"': "&quot;"}


class XmlError(ProtocolError):
    """A GameStream XML body that cannot be used."""


@dataclass(frozen=True)
class Reply:
    """A parsed GameStream reply.

    ``fields`` maps the root's first-level children (except ``App``) to their text; when a tag repeats,
    the first one wins (as moonlight-qt's ``getXmlString`` does). ``apps`` lists ``(ID, AppTitle)``.
    """

    status_code: int
    status_message: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    apps: list[tuple[int, str]] = field(default_factory=list)


def _text(value: str | int) -> str:
    # Drop rather than reject characters XML cannot represent: a host name or app title from a
    # config file must not make /serverinfo or /applist fail.
    return escape(_INVALID_CHARS.sub("", str(value)))


def _attr(value: str | int) -> str:
    return escape(_INVALID_CHARS.sub("", str(value)), _ATTR_ENTITIES)


def _element(tag: str, value: str | int) -> str:
    if not _TAG.fullmatch(tag):
        raise ValueError(f"invalid XML tag name {tag!r}")
    return f"<{tag}>{_text(value)}</{tag}>"


def response(fields: Mapping[str, str | int], status_code: int = 200, status_message: str = "OK") -> bytes:
    """``<root status_code=.. status_message=..><key>value</key>...</root>`` with escaped values."""
    body = "".join(_element(k, v) for k, v in fields.items())
    root = f'<root status_code="{_attr(status_code)}" status_message="{_attr(status_message)}">'
    return f"{_DECLARATION}{root}{body}</root>".encode()


def error(status_code: int, message: str) -> bytes:
    """An error reply; still to be sent with HTTP 200 (see the module docstring)."""
    return response({}, status_code=status_code, status_message=message)


def applist(apps: Iterable[tuple[int, str]]) -> bytes:
    """The ``/applist`` body: one ``<App>`` per ``(id, title)``."""
    parts = [_DECLARATION, '<root status_code="200">']
    for app_id, title in apps:
        parts.append(
            "<App>"
            + _element("AppTitle", title)
            + _element("ID", int(app_id))
            # moonlight-qt reads IsHdrSupported to offer HDR; we never stream HDR.
            + _element("IsHdrSupported", 0)
            + "</App>"
        )
    parts.append("</root>")
    return "".join(parts).encode()


def parse(data: bytes) -> Reply:
    """Parse a reply body (client side). Malformed XML, no ``root`` or no ``status_code`` -> XmlError."""
    if len(data) > MAX_XML_BYTES:
        raise XmlError(f"XML body too large ({len(data)} bytes, limit {MAX_XML_BYTES})")
    # No GameStream reply uses a DTD; refusing one removes entity-expansion tricks entirely.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XmlError("XML with a DTD is not accepted")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise XmlError(f"malformed XML: {exc}") from None
    if root.tag != "root":
        raise XmlError(f"XML root element is <{root.tag}>, expected <root>")
    raw_status = root.get("status_code")
    if raw_status is None:
        raise XmlError("XML root has no status_code")
    try:
        # GFE has been seen sending negative codes (e.g. -1), so accept any integer.
        status_code = int(raw_status.strip())
    except ValueError:
        raise XmlError(f"status_code {raw_status!r} is not an integer") from None

    fields: dict[str, str] = {}
    apps: list[tuple[int, str]] = []
    for child in root:
        if child.tag == "App":
            apps.append(_parse_app(child))
        elif child.tag not in fields:
            fields[child.tag] = child.text or ""
    return Reply(status_code, root.get("status_message", ""), fields, apps)


def _parse_app(app: ET.Element) -> tuple[int, str]:
    raw_id = app.findtext("ID")
    if raw_id is None:
        raise XmlError("<App> without <ID>")
    try:
        app_id = int(raw_id.strip())
    except ValueError:
        raise XmlError(f"<App> ID {raw_id!r} is not an integer") from None
    return app_id, app.findtext("AppTitle") or ""
