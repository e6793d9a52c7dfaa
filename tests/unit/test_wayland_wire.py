"""Wayland wire format: round trips, every malformed case, and a fuzzed decoder."""

from __future__ import annotations

import contextlib
import os
import random
import struct
from collections import deque
from pathlib import Path

import pytest

from moonhowl.protocol.errors import ProtocolError
from moonhowl.wayland import protocols, wire


def message(object_id: int, opcode: int, body: bytes) -> bytes:
    return struct.pack("=II", object_id, ((8 + len(body)) << 16) | opcode) + body


def roundtrip(signature: str, args: list, fds: list[int] | None = None) -> list:
    data, out_fds = wire.encode(7, 3, signature, args)
    decoder = wire.Decoder()
    decoder.feed(data, fds if fds is not None else out_fds)
    raw = decoder.next_message()
    assert raw is not None and raw.object_id == 7 and raw.opcode == 3
    assert decoder.next_message() is None
    return decoder.decode(signature, raw.body)


# --- round trips -----------------------------------------------------------------------------
def test_numbers_round_trip() -> None:
    assert roundtrip("iuf", [-5, 0xFFFFFFFF, -1.5]) == [-5, 0xFFFFFFFF, -1.5]
    assert roundtrip("ii", [-(2**31), 2**31 - 1]) == [-(2**31), 2**31 - 1]


def test_fixed_is_24_8() -> None:
    data, _ = wire.encode(1, 0, "f", [1.25])
    assert data[8:] == struct.pack("=i", 320)
    assert roundtrip("f", [100.00390625]) == [100.00390625]


@pytest.mark.parametrize("text", ["", "a", "abc", "abcd", "wl_compositor", "ünïcödé ✓"])
def test_strings_round_trip_with_nul_and_padding(text: str) -> None:
    data, _ = wire.encode(1, 0, "s", [text])
    encoded = text.encode() + b"\0"
    assert struct.unpack_from("=I", data, 8)[0] == len(encoded)
    assert len(data) % 4 == 0 and data[12:12 + len(encoded)] == encoded
    assert roundtrip("s", [text]) == [text]


def test_null_string_and_object_when_allowed() -> None:
    assert roundtrip("?s?o", [None, None]) == [None, None]
    data, _ = wire.encode(1, 0, "?s", [None])
    assert data[8:] == b"\0\0\0\0"


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03\x04", bytes(range(9))])
def test_arrays_round_trip(payload: bytes) -> None:
    assert roundtrip("a", [payload]) == [payload]


def test_objects_and_new_ids() -> None:
    assert roundtrip("on", [3, 0xFF000001]) == [3, 0xFF000001]


def test_untyped_new_id_is_interface_version_id() -> None:
    bind = protocols.interface("wl_registry").request("bind")
    assert bind.signature == "usun"
    assert roundtrip(bind.signature, [5, "wl_seat", 7, 12]) == [5, "wl_seat", 7, 12]


def test_fds_travel_out_of_band_in_order() -> None:
    r, w = os.pipe()
    try:
        data, fds = wire.encode(1, 0, "hih", [r, 9, w])
        assert fds == [r, w] and len(data) == 12
        decoder = wire.Decoder()
        decoder.feed(data, [100, 101])
        raw = decoder.next_message()
        assert raw is not None
        assert decoder.decode("hih", raw.body) == [100, 9, 101]
    finally:
        os.close(r)
        os.close(w)


def test_decoder_is_incremental_across_feeds() -> None:
    stream = b"".join(wire.encode(i, i % 3, "us", [i, f"msg{i}"])[0] for i in range(1, 50))
    decoder = wire.Decoder()
    got = []
    for i in range(0, len(stream), 5):
        decoder.feed(stream[i:i + 5])
        for raw in decoder:
            got.append((raw.object_id, decoder.decode("us", raw.body)))
    assert got == [(i, [i, f"msg{i}"]) for i in range(1, 50)]
    decoder.check_eof()


def test_signatures_come_from_the_xml() -> None:
    iface = protocols.interface("wl_surface")
    attach = iface.request("attach")
    assert attach.opcode == 1 and attach.signature == "?oii"
    assert iface.request("offset").since == 5
    assert protocols.interface("wl_callback").event("done").destructor
    assert protocols.interface("xdg_wm_base").enum_value("error", "role") == 0


def test_xml_directories_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wayland_xml = protocols.find_protocol_file("wayland.xml")
    assert wayland_xml is not None
    (tmp_path / "wayland.xml").write_bytes(wayland_xml.read_bytes().replace(b'"wl_seat"', b'"wl_seat_x"'))
    monkeypatch.setenv(protocols.ENV_DIRS, str(tmp_path))
    protocols.registry.cache_clear()
    try:
        assert protocols.has_interface("wl_seat_x")  # the override wins over /usr/share/wayland
    finally:
        monkeypatch.undo()
        protocols.registry.cache_clear()
    assert protocols.has_interface("wl_seat") and not protocols.has_interface("wl_seat_x")


# --- encoder misuse --------------------------------------------------------------------------
def test_encode_rejects_programming_errors() -> None:
    with pytest.raises(ValueError):
        wire.encode(1, 0, "ii", [1])
    with pytest.raises(ValueError):
        wire.encode(1, 0, "u", [-1])
    with pytest.raises(ValueError):
        wire.encode(1, 0, "s", [None])
    with pytest.raises(ValueError):
        wire.encode(1, 0, "o", [None])
    with pytest.raises(wire.OversizedMessage):
        wire.encode(1, 0, "a", [bytes(5000)])


# --- malformed input -------------------------------------------------------------------------
def decode_one(data: bytes, signature: str, fds: list[int] | None = None) -> list:
    decoder = wire.Decoder()
    decoder.feed(data, fds or [])
    raw = decoder.next_message()
    assert raw is not None
    return decoder.decode(signature, raw.body)


@pytest.mark.parametrize("size", [0, 4, 7, 10])
def test_bad_header_size(size: int) -> None:
    decoder = wire.Decoder()
    decoder.feed(struct.pack("=II", 1, size << 16) + bytes(16))
    with pytest.raises(wire.MalformedHeader):
        decoder.next_message()


def test_oversized_message() -> None:
    decoder = wire.Decoder()
    decoder.feed(struct.pack("=II", 1, 4100 << 16))
    with pytest.raises(wire.OversizedMessage):
        decoder.next_message()


def test_truncated_arguments() -> None:
    with pytest.raises(wire.TruncatedMessage):
        decode_one(message(1, 0, struct.pack("=i", 5)), "ii")
    # a string whose length runs past the message
    with pytest.raises(wire.TruncatedMessage):
        decode_one(message(1, 0, struct.pack("=I", 40) + b"abc\0"), "s")
    with pytest.raises(wire.TruncatedMessage):
        decode_one(message(1, 0, struct.pack("=I", 0xFFFFFFFF)), "a")


def test_stream_ending_mid_message() -> None:
    data, _ = wire.encode(1, 0, "uu", [1, 2])
    decoder = wire.Decoder()
    decoder.feed(data[:-3])
    assert decoder.next_message() is None
    with pytest.raises(wire.TruncatedMessage):
        decoder.check_eof()


def test_trailing_bytes() -> None:
    with pytest.raises(wire.TrailingData):
        decode_one(message(1, 0, struct.pack("=ii", 1, 2)), "i")


def test_bad_strings() -> None:
    with pytest.raises(wire.BadString):  # no NUL
        decode_one(message(1, 0, struct.pack("=I", 4) + b"abcd"), "s")
    with pytest.raises(wire.BadString):  # null where not allowed
        decode_one(message(1, 0, struct.pack("=I", 0)), "s")


def test_invalid_utf8_is_tolerated_like_libwayland() -> None:
    assert decode_one(message(1, 0, struct.pack("=I", 4) + b"\xff\xfeA\0"), "s") == ["\ufffd\ufffdA"]


def test_null_objects() -> None:
    with pytest.raises(wire.NullArgument):
        decode_one(message(1, 0, struct.pack("=I", 0)), "o")
    with pytest.raises(wire.NullArgument):  # a new_id is never null
        decode_one(message(1, 0, struct.pack("=I", 0)), "?n")


def test_missing_fd_closes_the_ones_taken() -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(wire.MissingFd):
        decode_one(message(1, 0, b""), "hh", [r])
    with pytest.raises(OSError):
        os.fstat(r)  # closed by the decoder, not leaked


def test_every_wire_error_is_a_protocol_error() -> None:
    for cls in (wire.MalformedHeader, wire.OversizedMessage, wire.TruncatedMessage, wire.TrailingData,
                wire.BadString, wire.NullArgument, wire.MissingFd):
        assert issubclass(cls, ProtocolError)


# --- fuzzing ---------------------------------------------------------------------------------
SIGNATURES = ["", "i", "u", "f", "s", "?s", "o", "?o", "n", "a", "h", "usun", "?oii", "iiii", "sa", "uuh",
              *{m.signature for iface in protocols.registry().values() for m in iface.requests}]


def _fuzz_cases(rng: random.Random) -> list[bytes]:
    valid = [wire.encode(rng.randrange(1, 50), rng.randrange(4), "usa?s",
                         [rng.randrange(2**32), "x" * rng.randrange(20), bytes(rng.randrange(30)), None])[0]
             for _ in range(20)]
    cases = []
    for _ in range(1500):
        kind = rng.randrange(4)
        if kind == 0:
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
        elif kind == 1:
            data = rng.choice(valid)
            cases.append(data[:rng.randrange(len(data) + 1)])
        elif kind == 2:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cases.append(bytes(data))
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40, 4)))
            cases.append(message(rng.randrange(2**32), rng.randrange(2**16), body))
    return cases


def test_fuzzed_input_only_raises_protocol_errors() -> None:
    rng = random.Random(0x600D)
    for data in _fuzz_cases(rng):
        decoder = wire.Decoder()
        r, w = os.pipe()
        os.close(w)
        decoder.feed(data, [r])
        try:
            for raw in decoder:
                args = decoder.decode(rng.choice(SIGNATURES), raw.body)
                for value in args:
                    assert isinstance(value, int | float | str | bytes | type(None))
            decoder.check_eof()
        except ProtocolError:
            pass
        finally:
            decoder.close()
            with contextlib.suppress(OSError):
                os.close(r)


def test_decode_args_never_leaks_fds_on_error() -> None:
    fds: deque[int] = deque()
    r, w = os.pipe()
    fds.extend([r, w])
    with pytest.raises(wire.TruncatedMessage):
        wire.decode_args("hhi", b"", fds)
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
