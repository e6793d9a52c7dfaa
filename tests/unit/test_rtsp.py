"""RTSP messages, the incremental reader and the host's handshake, driven like moonlight-common-c."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.rtsp import (
    BadContentLengthError,
    BadHeaderLineError,
    BadStatusLineError,
    BadVersionError,
    BodyTooLargeError,
    Headers,
    HeadersTooLargeError,
    NegativeContentLengthError,
    NoRequestLineError,
    RtspReader,
    RtspRequest,
    RtspResponse,
    RtspServerSession,
    TrailingDataError,
    TruncatedBodyError,
    TruncatedMessageError,
)
from moonhowl.protocol.sdp import (
    SS_ENC_AUDIO,
    SS_ENC_CONTROL_V2,
    SS_ENC_VIDEO,
    StreamConfig,
    StreamOffer,
    announce_sdp,
)

pytestmark = pytest.mark.unit

ADDR = "192.168.1.10"
URL = f"rtsp://{ADDR}:48010"
IMS = "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def moonlight_parse(data: bytes) -> tuple[int, dict[str, str], bytes | None]:
    """RtspParser.c parseRtspMessage() for a response, transcribed with its strtok semantics."""
    buf = bytearray(data) + b"\0"
    pos = 0

    def strtok(delims: bytes) -> int | None:
        nonlocal pos
        while buf[pos] != 0 and buf[pos] in delims:
            pos += 1
        if buf[pos] == 0:
            return None
        start = pos
        while buf[pos] != 0 and buf[pos] not in delims:
            pos += 1
        if buf[pos] != 0:
            buf[pos] = 0
            pos += 1
        return start

    def cstr(at: int) -> str:
        return bytes(buf[at : buf.index(0, at)]).decode("latin-1")

    protocol = strtok(b" \r\n")
    assert protocol is not None and cstr(protocol).startswith("RTSP")
    code = strtok(b" \r\n")
    assert code is not None and strtok(b"\r\n") is not None
    assert cstr(protocol) == "RTSP/1.0"
    options: dict[str, str] = {}
    opt = ""
    option_turn = True
    while True:
        token = strtok(b" :\r\n" if option_turn else b"\r\n")
        if token is None:
            raise AssertionError("client would reject: no end of headers")
        if option_turn:
            opt = cstr(token)
        else:
            options[opt] = cstr(token + 1)  # "Skip the protocol defined blank space"
            end = token + len(cstr(token)) + 1
            if buf[end : end + 1] == b"\n" and buf[end + 1] == 0:
                return int(cstr(code)), options, None
            if buf[end : end + 3] == b"\n\r\n":
                rest = bytes(buf[end + 3 : -1])
                return int(cstr(code)), options, rest or None
        option_turn = not option_turn


def moonlight_request(method: str, target: str, cseq: int, extra: str = "", body: str = "") -> bytes:
    # initializeRtspRequest() + serializeRtspMessage(): CSeq, X-GS-ClientVersion, Host first.
    head = (
        f"{method} {target} RTSP/1.0\r\nCSeq: {cseq}\r\nX-GS-ClientVersion: 14\r\nHost: {ADDR}\r\n{extra}\r\n"
    )
    return (head + body).encode()


def make_offer(**kw: object) -> StreamOffer:
    base: dict[str, object] = dict(
        session_id="MH0123abcd",
        video_port=47998,
        audio_port=48000,
        control_port=47999,
        video_ping_payload="0123456789ABCDEF",
        audio_ping_payload="FEDCBA9876543210",
        control_connect_data=3735928559,
        hevc=True,
    )
    base.update(kw)
    return StreamOffer(**base)  # type: ignore[arg-type]


def announce_body(**kw: object) -> str:
    cfg = replace(
        StreamConfig(codec="hevc", encrypt_audio=True, max_reference_frames=1, client_refresh_rate_x100=6000),
        **kw,
    )  # type: ignore[arg-type]
    return announce_sdp(
        cfg, url_addr=ADDR, video_port=47998, encryption_enabled=SS_ENC_CONTROL_V2 | SS_ENC_AUDIO
    )


def handshake_requests(session_id: str, sdp: str) -> list[bytes]:
    """The seven requests RtspConnection.c sends to a 7.1.431 host, byte for byte."""
    transport = "Transport: unicast;X-GS-ClientPort=50000-50001\r\n"
    sess = f"Session: {session_id}\r\n"
    return [
        moonlight_request("OPTIONS", URL, 1),
        moonlight_request("DESCRIBE", URL, 2, "Accept: application/sdp\r\n" + IMS),
        moonlight_request("SETUP", "streamid=audio/0/0", 3, transport + IMS),
        moonlight_request("SETUP", "streamid=video/0/0", 4, sess + transport + IMS),
        moonlight_request("SETUP", "streamid=control/13/0", 5, sess + transport + IMS),
        moonlight_request(
            "ANNOUNCE",
            "streamid=control/13/0",
            6,
            sess + f"Content-type: application/sdp\r\nContent-length: {len(sdp)}\r\n",
            sdp,
        ),
        moonlight_request("PLAY", "/", 7, sess),
    ]


Parsed = tuple[int, dict[str, str], bytes | None]


def exchange(session: RtspServerSession, raw: bytes, rng: random.Random) -> Parsed:
    # sendMtuSafe() splits requests; feed random chunk sizes as TCP would deliver them.
    reader = RtspReader(RtspRequest)
    got: list[RtspRequest] = []
    i = 0
    while i < len(raw):
        n = rng.randint(1, 40)
        got += reader.feed(raw[i : i + n])
        i += n
    assert len(got) == 1 and reader.buffered == 0
    return moonlight_parse(bytes(session.handle(got[0])))


# --- messages ------------------------------------------------------------------------------


def test_headers_case_insensitive_and_ordered() -> None:
    h = Headers([("CSeq", "1"), ("Content-length", "5"), ("X-A", "1"), ("x-a", "2")])
    assert h.get("cseq") == "1" and h["CONTENT-LENGTH"] == "5" and "content-length" in h
    assert h.get_all("X-A") == ["1", "2"] and len(h) == 4
    assert [n for n, _ in h] == ["CSeq", "Content-length", "X-A", "x-a"]
    assert h.replace("x-A", "3").items()[-1] == ("x-A", "3") and len(h.replace("x-a", "3")) == 3
    assert h.get("missing") is None and Headers({"A": "b"}) == Headers([("A", "b")])
    with pytest.raises(KeyError):
        h["missing"]
    for bad in ([("Bad Name", "x")], [("A", "line\r\nbreak")], [("", "x")]):
        with pytest.raises(ValueError):
            Headers(bad)


def test_request_round_trip() -> None:
    req = RtspRequest(
        "ANNOUNCE", "streamid=control/13/0", Headers([("CSeq", "6"), ("Content-length", "3")]), b"a=b"
    )
    raw = bytes(req)
    assert raw == b"ANNOUNCE streamid=control/13/0 RTSP/1.0\r\nCSeq: 6\r\nContent-length: 3\r\n\r\na=b"
    assert RtspRequest.parse(raw) == req and req.cseq == "6"


def test_response_round_trip_and_body_to_eof() -> None:
    resp = RtspResponse(200, "OK", Headers([("CSeq", "2"), ("Content-Length", "4")]), b"v=0\n")
    assert RtspResponse.parse(bytes(resp)) == resp
    # Sunshine sends no Content-Length; the client takes everything up to the close as payload.
    bare = RtspResponse.parse(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\r\nv=0\r\na=x:1\r\n")
    assert bare.body == b"v=0\r\na=x:1\r\n" and bare.reason == "OK" and bare.cseq == "2"
    assert RtspResponse.parse(b"RTSP/1.0 455 Method Not Valid in This State\r\n\r\n").reason == (
        "Method Not Valid in This State"
    )


def test_header_values_trimmed_and_lf_only_lines() -> None:
    req = RtspRequest.parse(b"OPTIONS * RTSP/1.0\nCSeq:   9  \nX-Empty:\n\n")
    assert req.cseq == "9" and req.headers["X-Empty"] == ""


def test_reader_byte_by_byte_and_pipelined() -> None:
    raw = handshake_requests("S", announce_body())[5]
    reader = RtspReader(RtspRequest)
    out = [m for b in raw for m in reader.feed(bytes([b]))]
    assert len(out) == 1 and out[0].method == "ANNOUNCE"
    assert len(out[0].body) == int(out[0].headers["content-length"])
    two = reader.feed(raw[:-1] + raw[-1:] + handshake_requests("S", "")[0])
    assert [m.method for m in two] == ["ANNOUNCE", "OPTIONS"] and reader.feed_eof() == []


def test_reader_response_until_eof() -> None:
    reader = RtspReader(RtspResponse)
    assert reader.feed(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\r\nv=0") == []
    assert reader.feed(b"\r\n") == []
    (resp,) = reader.feed_eof()
    assert resp.body == b"v=0\r\n"


BAD_REQUESTS: list[tuple[bytes, type[ProtocolError]]] = [
    (b"\r\n\r\n", NoRequestLineError),
    (b"OPTIONS\r\nCSeq: 1\r\n\r\n", NoRequestLineError),
    (b"OPTIONS * RTSP/1.0 extra\r\n\r\n", NoRequestLineError),
    (b"OPT(IONS * RTSP/1.0\r\n\r\n", NoRequestLineError),
    (b"OPTIONS * HTTP/1.1\r\nCSeq: 1\r\n\r\n", BadVersionError),
    (b"OPTIONS * RTSP/2.0\r\n\r\n", BadVersionError),
    (b"OPTIONS * RTSP/1.0\r\nNoColonHere\r\n\r\n", BadHeaderLineError),
    (b"OPTIONS * RTSP/1.0\r\nBad Name: x\r\n\r\n", BadHeaderLineError),
    (b"OPTIONS * RTSP/1.0\r\nA: b\r\n folded\r\n\r\n", BadHeaderLineError),
    (b"OPTIONS * RTSP/1.0\r\n: x\r\n\r\n", BadHeaderLineError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: abc\r\n\r\n", BadContentLengthError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 1.5\r\n\r\n", BadContentLengthError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\nab", BadContentLengthError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: -1\r\n\r\n", NegativeContentLengthError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 65537\r\n\r\n", BodyTooLargeError),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 10\r\n\r\nabc", TruncatedBodyError),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n", TruncatedMessageError),
    (b"OPTIONS * RTSP/1.0\r\n\r\nOPTIONS * RTSP/1.0\r\n\r\n", TrailingDataError),
    (b"OPTIONS * RTSP/1.0\r\n\r\nstray body", TrailingDataError),
]


@pytest.mark.parametrize(("raw", "error"), BAD_REQUESTS)
def test_malformed_requests(raw: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as info:
        RtspRequest.parse(raw)
    assert type(info.value) is error and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"HTTP/1.0 200 OK\r\nCSeq: 1\r\n\r\n", BadStatusLineError),
        (b"RTSP/1.0 2x0 OK\r\nCSeq: 1\r\n\r\n", BadStatusLineError),
        (b"RTSP/1.1 200 OK\r\nCSeq: 1\r\n\r\n", BadVersionError),
        (b"", BadStatusLineError),
        (b"RTSP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nab", TruncatedBodyError),
    ],
)
def test_malformed_responses(raw: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        RtspResponse.parse(raw)


def test_size_limits() -> None:
    reader = RtspReader(RtspRequest)
    reader.feed(b"OPTIONS * RTSP/1.0\r\nX: ")
    with pytest.raises(HeadersTooLargeError):
        for _ in range(20):
            reader.feed(b"a" * 1024)
    with pytest.raises(HeadersTooLargeError):
        RtspRequest.parse(b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 17000 + b"\r\n\r\n")
    assert RtspRequest.parse(b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536).body
    eof_reader = RtspReader(RtspResponse, max_body_bytes=10)
    eof_reader.feed(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")
    with pytest.raises(BodyTooLargeError):
        eof_reader.feed(b"x" * 11)
    assert BodyTooLargeError("x").status_code == 413 and BadVersionError("x").status_code == 505


# --- server session ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_moonlight_exchange(seed: int) -> None:
    rng = random.Random(seed)
    offer = make_offer()
    session = RtspServerSession(offer)
    sdp = announce_body()
    replies = [exchange(session, raw, rng) for raw in handshake_requests(offer.session_id, sdp)]
    for cseq, (status, options, _) in enumerate(replies, start=1):
        assert status == 200 and options["CSeq"] == str(cseq)
    assert "DESCRIBE" in replies[0][1]["Public"]
    describe = replies[1][2]
    assert describe is not None and b"sprop-parameter-sets=AAAAAU" in describe
    assert b"AV1/90000" not in describe and b"a=x-ss-general.encryptionRequested:1" in describe
    audio, video, control = (r[1] for r in replies[2:5])
    # RtspConnection.c: strtok(Session, ";"), strstr("server_port="), strlen(payload) == 16.
    assert audio["Session"] == "MH0123abcd;timeout = 90"
    assert audio["Session"].split(";")[0] == offer.session_id
    assert audio["Transport"] == "server_port=48000"
    assert audio["X-SS-Ping-Payload"] == offer.audio_ping_payload
    assert video["Transport"] == "server_port=47998"
    assert video["X-SS-Ping-Payload"] == offer.video_ping_payload
    assert control["Transport"] == "server_port=47999" and control["X-SS-Connect-Data"] == "3735928559"
    assert session.setup_streams == {"audio", "video", "control"} and session.playing
    cfg = session.config
    assert cfg is not None and cfg.codec == "hevc" and cfg.encrypt_audio and cfg.encrypt_control
    assert cfg.audio_high_quality  # Host is a real address, not 0.0.0.0


@pytest.mark.parametrize(("hevc", "av1"), [(False, False), (True, False), (False, True), (True, True)])
def test_describe_follows_offer(hevc: bool, av1: bool) -> None:
    session = RtspServerSession(make_offer(hevc=hevc, av1=av1))
    raw = handshake_requests("x", "")[1]
    status, options, body = moonlight_parse(session.handle_bytes(raw))
    assert status == 200 and body is not None and options["Content-Length"] == str(len(body))
    assert (b"sprop-parameter-sets=AAAAAU" in body, b"AV1/90000" in body) == (hevc, av1)


def drive(
    session: RtspServerSession, method: str, target: str, extra: str = "", body: str = "", cseq: int = 9
) -> int:
    raw = moonlight_request(method, target, cseq, extra, body)
    status, options, _ = moonlight_parse(session.handle_bytes(raw))
    assert options["CSeq"] == str(cseq)
    return status


def setup_all(session: RtspServerSession) -> None:
    for target in ("streamid=audio/0/0", "streamid=video/0/0", "streamid=control/13/0"):
        assert drive(session, "SETUP", target) == 200


def announce(session: RtspServerSession, sdp: str, sid: str = "MH0123abcd") -> int:
    extra = f"Session: {sid}\r\nContent-type: application/sdp\r\nContent-length: {len(sdp)}\r\n"
    return drive(session, "ANNOUNCE", "streamid=control/13/0", extra, sdp)


def test_out_of_order_requests_are_refused_without_harm() -> None:
    session = RtspServerSession(make_offer())
    assert drive(session, "PLAY", "/") == 455
    assert announce(session, announce_body()) == 455 and session.config is None
    assert drive(session, "SETUP", "streamid=bogus/0/0") == 404
    assert drive(session, "SETUP", "nonsense") == 404 and session.setup_streams == set()
    assert drive(session, "TEARDOWN", "/") == 501
    assert drive(session, "OPTIONS", URL, "Session: someone-else\r\n") == 454
    setup_all(session)
    setup_all(session)  # a repeated SETUP is harmless
    assert drive(session, "PLAY", "/") == 455
    assert announce(session, announce_body(), sid="stale") == 454 and session.config is None
    assert announce(session, announce_body()) == 200
    assert drive(session, "PLAY", "/", "Session: MH0123abcd\r\n") == 200 and session.playing
    assert announce(session, announce_body(width=640)) == 455 and session.config is not None
    assert session.config.width == 1920


@pytest.mark.parametrize(
    ("offer_kw", "sdp_kw", "status"),
    [
        ({"hevc": False}, {}, 400),
        ({"av1": False}, {"codec": "av1"}, 400),
        ({"audio_channels": (2,)}, {"audio_channels": 6, "audio_channel_mask": 0x3F}, 400),
        ({"surround_high_quality": False}, {"audio_channels": 6, "audio_high_quality": True}, 400),
        ({"encryption_requested": SS_ENC_CONTROL_V2 | SS_ENC_VIDEO}, {}, 403),
        ({"encryption_requested": SS_ENC_AUDIO}, {}, 200),
        ({"h264": False}, {"codec": "h264"}, 400),
    ],
)
def test_announce_checks_against_offer(
    offer_kw: dict[str, object], sdp_kw: dict[str, object], status: int
) -> None:
    session = RtspServerSession(make_offer(**offer_kw))
    setup_all(session)
    assert announce(session, announce_body(**sdp_kw)) == status
    assert (session.config is not None) == (status == 200)


def test_announce_with_bad_sdp_gets_400() -> None:
    session = RtspServerSession(make_offer())
    setup_all(session)
    assert announce(session, "a=x-nv-video[0].maxFPS:sixty \r\n") == 400
    assert announce(session, "a=x-nv-vqos[0].bitStreamFormat:7 \r\n") == 400
    assert session.config is None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"garbage\r\nCSeq: 4\r\n\r\n", 400),
        (b"ANNOUNCE * RTSP/1.0\r\nCSeq: 4\r\nContent-Length: -3\r\n\r\n", 400),
        (b"ANNOUNCE * RTSP/1.0\r\nCSeq: 4\r\nContent-Length: 999999\r\n\r\n", 413),
        (b"OPTIONS * RTSP/2.0\r\nCSeq: 4\r\n\r\n", 505),
    ],
)
def test_handle_bytes_error_replies(raw: bytes, status: int) -> None:
    status_got, options, _ = moonlight_parse(RtspServerSession(make_offer()).handle_bytes(raw))
    assert (status_got, options["CSeq"]) == (status, "4")


def test_error_reply_without_cseq_is_still_a_message() -> None:
    data = RtspServerSession(make_offer()).handle_bytes(b"\x00\x01")
    resp = RtspResponse.parse(data)
    assert resp.status == 400 and resp.cseq is None
