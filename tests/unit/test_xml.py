"""moonhowl.protocol.xml: building and parsing GameStream XML bodies."""

from __future__ import annotations

import pytest

from moonhowl.protocol import xml
from moonhowl.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit

DECL = b'<?xml version="1.0" encoding="utf-8"?>'


def test_response_exact_bytes() -> None:
    body = xml.response({"hostname": "box", "HttpsPort": 47984})
    assert body == (
        DECL + b'<root status_code="200" status_message="OK">'
        b"<hostname>box</hostname><HttpsPort>47984</HttpsPort></root>"
    )


def test_response_escapes_text_and_attributes() -> None:
    body = xml.response({"hostname": "a<b>&'\"c"}, status_code=400, status_message='bad "x" <&>')
    assert b"<hostname>a&lt;b&gt;&amp;'\"c</hostname>" in body
    assert b'status_message="bad &quot;x&quot; &lt;&amp;&gt;"' in body
    reply = xml.parse(body)
    assert reply.fields == {"hostname": "a<b>&'\"c"}
    assert reply.status_code == 400
    assert reply.status_message == 'bad "x" <&>'


def test_response_round_trip_unicode_and_ints() -> None:
    fields = {"hostname": "Wohnzimmer-PC \u00e9\u4e2d", "PairStatus": 1, "currentgame": 0, "empty": ""}
    reply = xml.parse(xml.response(fields))
    assert reply == xml.Reply(200, "OK", {k: str(v) for k, v in fields.items()}, [])


def test_response_drops_characters_xml_cannot_carry() -> None:
    body = xml.response({"hostname": "a\x00b\x1bc\td"})
    assert xml.parse(body).fields["hostname"] == "abc\td"


@pytest.mark.parametrize("tag", ["", "1abc", "a b", "a<b", "x/y"])
def test_response_rejects_invalid_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="invalid XML tag"):
        xml.response({tag: "v"})


def test_error_reply() -> None:
    body = xml.error(401, "The client is not authorized")
    assert body == DECL + b'<root status_code="401" status_message="The client is not authorized"></root>'
    reply = xml.parse(body)
    assert (reply.status_code, reply.status_message, reply.fields, reply.apps) == (
        401,
        "The client is not authorized",
        {},
        [],
    )


def test_applist_exact_bytes() -> None:
    assert xml.applist([(1, "Desktop")]) == (
        DECL + b'<root status_code="200"><App><AppTitle>Desktop</AppTitle><ID>1</ID>'
        b"<IsHdrSupported>0</IsHdrSupported></App></root>"
    )


def test_applist_round_trip_with_escaping() -> None:
    apps = [(1, "Desktop"), (881448767, 'Steam <Big> & "Picture"'), (3, "")]
    reply = xml.parse(xml.applist(apps))
    assert reply.status_code == 200
    assert reply.status_message == ""
    assert reply.apps == apps
    assert reply.fields == {}


def test_applist_empty() -> None:
    assert xml.parse(xml.applist([])).apps == []


def test_parse_sunshine_style_reply() -> None:
    data = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<root status_code="200">\n'
        b"  <paired>1</paired>\n  <plaincert>AB</plaincert>\n  <paired>0</paired>\n  <empty/>\n</root>\n"
    )
    reply = xml.parse(data)
    assert reply.status_message == ""
    # The first of a repeated tag wins, as in moonlight-qt's getXmlString.
    assert reply.fields == {"paired": "1", "plaincert": "AB", "empty": ""}


def test_parse_negative_status_code() -> None:
    assert xml.parse(b'<root status_code="-1" status_message="x"/>').status_code == -1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "malformed"),
        (b"<root status_code='200'>", "malformed"),
        (b"not xml at all", "malformed"),
        (b"<root status_code='200'><a></b></root>", "malformed"),
        (b"<other status_code='200'/>", "expected <root>"),
        (b"<root status_message='OK'/>", "no status_code"),
        (b"<root status_code='OK'/>", "not an integer"),
        (b"<root status_code=''/>", "not an integer"),
        (b"<root status_code='200'><App><AppTitle>x</AppTitle></App></root>", "without <ID>"),
        (b"<root status_code='200'><App><ID>one</ID></App></root>", "not an integer"),
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(xml.XmlError, match=message) as info:
        xml.parse(data)
    assert isinstance(info.value, ProtocolError)


def test_parse_rejects_huge_input() -> None:
    data = b"<root status_code='200'><a>" + b"x" * xml.MAX_XML_BYTES + b"</a></root>"
    with pytest.raises(xml.XmlError, match="too large"):
        xml.parse(data)


def test_parse_accepts_input_just_under_limit() -> None:
    head, tail = b"<root status_code='200'><a>", b"</a></root>"
    data = head + b"x" * (xml.MAX_XML_BYTES - len(head) - len(tail)) + tail
    assert len(xml.parse(data).fields["a"]) == xml.MAX_XML_BYTES - len(head) - len(tail)


def test_parse_rejects_entity_expansion() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE root [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><root status_code="200"><x>&b;</x></root>'
    )
    with pytest.raises(xml.XmlError, match="DTD"):
        xml.parse(data)
