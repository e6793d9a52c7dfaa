"""The pure parts of moonhowl's streaming client, and its packet paths driven without sockets."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moonhowl.client import cli as client_cli
from moonhowl.client.gamestream import GameStreamClient, launch_params
from moonhowl.client.identity import ClientIdentity
from moonhowl.client.rtsp import HandshakeResult
from moonhowl.client.stream import (
    FecStatusTracker,
    IdrPolicy,
    StreamError,
    StreamSession,
    decrypt_video_packet,
    new_rikey,
    percentile,
    ping_packet,
    rtsp_port_from_url,
)
from moonhowl.protocol import control
from moonhowl.protocol.enet import Disconnected, Received
from moonhowl.protocol.sdp import SS_ENC_AUDIO, SS_ENC_CONTROL_V2, DescribeInfo, StreamConfig
from moonhowl.protocol.video import Packetizer

pytestmark = pytest.mark.unit

KEY = bytes(range(16))


# ------------------------------------------------------------------------------------------- /launch
def test_launch_params_match_moonlight_qt_order_and_values() -> None:
    params = launch_params(7, 1920, 1080, 120, rikey=KEY, rikeyid=-5)
    assert list(params) == ["appid", "mode", "additionalStates", "sops", "rikey", "rikeyid",
                            "localAudioPlayMode", "surroundAudioInfo", "remoteControllersBitmap", "gcmap",
                            "gcpersist", "corever"]
    assert params["mode"] == "1920x1080x120"  # > 60 fps is only clamped for GFE
    assert params["rikey"] == "000102030405060708090a0b0c0d0e0f"
    assert params["rikeyid"] == "-5"  # QString::number(int): signed decimal
    assert params["surroundAudioInfo"] == "196610"  # stereo: 0x3 << 16 | 2
    assert (params["sops"], params["localAudioPlayMode"], params["corever"]) == ("0", "0", "1")
    hdr = launch_params(1, 1280, 720, 60, rikey=KEY, rikeyid=0, hdr=True, gamepad_mask=3, corever=None)
    assert hdr["hdrMode"] == "1" and hdr["clientHdrCapMetaDataId"] == "NV_STATIC_METADATA_TYPE_1"
    assert list(hdr).index("hdrMode") == list(hdr).index("rikeyid") + 1
    assert hdr["gcmap"] == hdr["remoteControllersBitmap"] == "3" and "corever" not in hdr


@pytest.mark.parametrize("kwargs", [
    {"rikey": b"short", "rikeyid": 0}, {"rikey": KEY, "rikeyid": 1 << 31}, {"rikey": KEY, "rikeyid": 0, "fps": 0},
])
def test_launch_params_refuse_bad_values(kwargs: dict[str, Any]) -> None:
    args = {"width": 1280, "height": 720, "fps": 60, **kwargs}
    with pytest.raises(ValueError):
        launch_params(1, args.pop("width"), args.pop("height"), args.pop("fps"), **args)


def test_new_rikey_is_random_and_fits_a_signed_int() -> None:
    (k1, i1), (k2, _) = new_rikey(), new_rikey()
    assert len(k1) == 16 and k1 != k2 and -(1 << 31) <= i1 < (1 << 31)


# ------------------------------------------------------------------------------------------- RTSP URL
@pytest.mark.parametrize(("url", "port"), [
    ("rtsp://192.168.1.5:48010", 48010), ("rtsp://[fe80::1]:5555", 5555), ("rtsp://host:1234/", 1234),
    ("rtsp://host", 48010), ("rtsp://host:0", 48010), ("rtsp://host:70000", 48010), ("", 48010),
])
def test_rtsp_port_comes_from_the_last_colon(url: str, port: int) -> None:
    assert rtsp_port_from_url(url) == port


def test_encrypted_rtsp_is_refused_clearly() -> None:
    with pytest.raises(StreamError, match="encrypted RTSP"):
        rtsp_port_from_url("rtspenc://10.0.0.1:48010")


# ------------------------------------------------------------------------------------------- small helpers
def test_ping_packet_is_payload_then_be32_count() -> None:
    assert ping_packet("0123456789ABCDEF", 1) == b"0123456789ABCDEF\x00\x00\x00\x01"
    assert ping_packet("0123456789ABCDEF", 0x1_0000_0002)[-4:] == b"\x00\x00\x00\x02"
    with pytest.raises(ValueError):
        ping_packet("short", 1)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0 and percentile([1.0, 2.0], 0) == 1.0


def test_video_decryption_round_trip_and_tampering() -> None:
    aead = AESGCM(KEY)
    packet = os.urandom(200)
    iv = os.urandom(12)
    sealed = aead.encrypt(iv, packet, None)
    datagram = iv + struct.pack("<I", 9) + sealed[-16:] + sealed[:-16]
    assert decrypt_video_packet(aead, datagram) == packet
    assert decrypt_video_packet(aead, datagram[:-1] + bytes([datagram[-1] ^ 1])) is None
    assert decrypt_video_packet(aead, datagram[:32]) is None


def test_idr_policy_once_per_loss_rate_limited_and_retried() -> None:
    policy = IdrPolicy(min_interval=0.1, retry=1.0)
    assert not policy.due(0.0, needs_idr=False, lost_frames=0)
    assert policy.due(1.0, needs_idr=True, lost_frames=1)
    assert not policy.due(1.05, needs_idr=True, lost_frames=2)  # too soon after the last one
    assert policy.due(1.2, needs_idr=True, lost_frames=2)  # a new loss
    assert not policy.due(1.5, needs_idr=True, lost_frames=2)  # same loss, still waiting
    assert policy.due(2.25, needs_idr=True, lost_frames=2)  # the IDR frame may have been lost: retry
    assert policy.sent == 3


def test_fec_status_reports_each_block_when_the_next_one_starts() -> None:
    packetizer = Packetizer(packet_size=1024, fec_percentage=20, min_required_fec_packets=2)
    first = packetizer.packetize(os.urandom(9000), 1, 0, True, 1.0)  # 9 data + 2 parity
    second = packetizer.packetize(os.urandom(500), 2, 1500, False, 1.0)
    tracker = FecStatusTracker()
    kept = [d for i, d in enumerate(first) if i not in (2, 9)]  # lose data shard 2 and parity shard 0
    assert [tracker.feed(d) for d in kept] == [None] * len(kept)
    assert tracker.feed(first[2]) is None  # late, out of order: still the same block
    status = tracker.feed(second[0])
    assert status == control.FrameFecStatus(
        frame_index=1, highest_received_seq=10, next_contiguous_seq=9, missing_before_highest=1,
        total_data_packets=9, total_parity_packets=2, received_data_packets=9, received_parity_packets=1,
        fec_percentage=20, block_index=0, block_count=1)
    assert tracker.feed(first[0]) is None  # a block already reported is not counted again
    assert len(bytes(status)) == 21


# ------------------------------------------------------------------------------------------- the session
class FakeEndpoint:
    """Stands in for the ENet endpoint: records what the session sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, bool, bool]] = []
        self.closed = False

    def send(self, peer: object, channel: int, data: bytes, reliable: bool = True, *,
             unsequenced: bool = False) -> bool:
        self.sent.append((channel, data, reliable, unsequenced))
        return True

    def close(self) -> None:
        self.closed = True


def make_session(enabled: int = SS_ENC_CONTROL_V2 | SS_ENC_AUDIO,
                 **kwargs: Any) -> tuple[StreamSession, FakeEndpoint, control.ControlCipher]:
    describe = DescribeInfo(hevc=False, av1=False, reference_frame_invalidation=False, feature_flags=0,
                            encryption_supported=SS_ENC_CONTROL_V2 | SS_ENC_AUDIO,
                            encryption_requested=SS_ENC_CONTROL_V2, text="v=0")
    config = StreamConfig(width=640, height=480, fps=60, packet_size=1024, encrypt_control=True,
                          encrypt_audio=True, raw={"x-ss-general.encryptionEnabled": str(enabled)})
    handshake = HandshakeResult(
        session_id="S", audio_port=48000, video_port=47998, control_port=47999,
        audio_ping_payload="a" * 16, video_ping_payload="v" * 16, control_connect_data=1,
        describe=describe, config=config, announce_sdp="")
    client = GameStreamClient("127.0.0.1", identity=ClientIdentity(b"", b""))
    session = StreamSession(client, 1, KEY, 5, handshake, sunshine=True, **kwargs)
    endpoint = FakeEndpoint()
    session._endpoint, session._peer = endpoint, object()  # type: ignore[assignment]
    return session, endpoint, control.ControlCipher(KEY, is_host=True, v2=bool(enabled & SS_ENC_CONTROL_V2))


def opened(host: control.ControlCipher, sent: list[tuple[int, bytes, bool, bool]]) -> list[tuple[int, int]]:
    return [(channel, host.open(data)[0]) for channel, data, _, _ in sent]


async def test_fec_repairs_on_purpose_loss_and_stats_add_up() -> None:
    session, endpoint, _ = make_session(loss_percent=10.0, seed=3)
    packetizer = Packetizer(packet_size=1024, fec_percentage=50)
    for index in range(1, 61):
        for datagram in packetizer.packetize(os.urandom(12000), index, index * 1500, index == 1, 2.5):
            session._on_video(datagram)
    st = session.stats()
    assert st.dropped_on_purpose > 0 and st.fec_repaired_shards > 0
    assert st.frames >= 57 and st.lost_frames == 0 and st.idr_requests == 0
    assert st.video_packets == st.dropped_on_purpose + session._depacketizer.stats.packets
    assert st.host_latency_p50_ms == st.host_latency_p99_ms == 2.5
    assert st.idr_frames == 1 and st.error is None
    again, _, _ = make_session(loss_percent=10.0, seed=3)
    packetizer = Packetizer(packet_size=1024, fec_percentage=50)
    for index in range(1, 61):
        for datagram in packetizer.packetize(os.urandom(12000), index, index * 1500, index == 1, 2.5):
            again._on_video(datagram)
    assert again.stats().dropped_on_purpose == st.dropped_on_purpose  # seeded: the same losses
    assert len(session._fec_queue) == 8  # bounded like frameFecStatusQueue until the next ping
    assert endpoint.sent == []


async def test_unrecoverable_frame_requests_one_idr_on_the_urgent_channel() -> None:
    session, endpoint, host = make_session()
    packetizer = Packetizer(packet_size=1024, fec_percentage=20)
    for index in range(1, 8):
        datagrams = packetizer.packetize(os.urandom(8000), index, index * 1500, index == 1, 1.0)
        if index == 3:
            datagrams = datagrams[3:]  # 3 data shards gone, only 2 parity: beyond repair
        for datagram in datagrams:
            session._on_video(datagram)
    st = session.stats()
    assert st.lost_frames == 1 and st.frame_gaps == 1 and st.idr_requests == 1
    assert st.frames == 2 and st.dropped_frames == 4  # complete frames 4..7 are useless without an IDR
    assert opened(host, endpoint.sent) == [(control.CHANNEL_URGENT, control.REQUEST_IDR_FRAME)]
    assert host.open(endpoint.sent[0][1])[1] == b"\x00\x00" and endpoint.sent[0][2]  # reliable
    for datagram in packetizer.packetize(os.urandom(8000), 8, 8 * 1500, True, 1.0):
        session._on_video(datagram)
    assert session.stats().idr_frames == 2 and not session._depacketizer.needs_idr


async def test_termination_ends_the_session_and_drops_the_peer() -> None:
    session, endpoint, host = make_session()
    for datagram in Packetizer(1024, 0).packetize(b"\0\0\0\1" + os.urandom(100), 1, 0, True, 1.0):
        session._on_video(datagram)
    term = host.seal(control.TERMINATION, bytes(control.Termination(control.TERMINATION_GRACEFUL)))
    session._on_control_event(Received(object(), 0, term))  # type: ignore[arg-type]
    assert session.ended.is_set() and session.error is None
    assert session.termination_reason == control.TERMINATION_GRACEFUL
    await asyncio.sleep(0)
    assert endpoint.closed
    # The Disconnected that follows our own disconnect_now is not an error.
    session._on_control_event(Disconnected(object(), "local"))  # type: ignore[arg-type]
    assert session.error is None and session.stats().termination_reason == control.TERMINATION_GRACEFUL

    other, _, host2 = make_session()
    other._on_control_event(Received(object(), 0, host2.seal(control.TERMINATION, b"\x80\x0e\x94\x03")))  # type: ignore[arg-type]
    assert other.error is not None and "0x800e9403" in other.error
    early, _, host3 = make_session()
    early._on_control_event(Received(object(), 0, host3.seal(control.TERMINATION, b"\x80\x03\x00\x23")))  # type: ignore[arg-type]
    assert early.error is not None and "before any video frame" in early.error


async def test_control_iv_form_follows_the_announced_encryption() -> None:
    # Without SS_ENC_CONTROL_V2 the stream is still encrypted (7.1.431+), with NVIDIA's 16-byte IV.
    session, endpoint, host = make_session(enabled=0)
    assert not session._cipher.v2 and make_session()[0]._cipher.v2
    session._send(control.START_B, b"\0", control.CHANNEL_GENERIC)
    assert host.open(endpoint.sent[0][1]) == (control.START_B, b"\0")
    with pytest.raises(control.ControlAuthError):
        control.ControlCipher(KEY, is_host=True, v2=True).open(endpoint.sent[0][1])


async def test_garbage_control_packets_are_dropped_not_fatal() -> None:
    session, _, _ = make_session()
    session._on_control_event(Received(object(), 0, b"\x01\x00garbage"))  # type: ignore[arg-type]
    wrong_key = control.ControlCipher(bytes(16), is_host=True).seal(control.TERMINATION, b"\0\0\0\0")
    session._on_control_event(Received(object(), 0, wrong_key))  # type: ignore[arg-type]
    assert not session.ended.is_set() and session.stats().control_messages == 0


async def test_stall_detection() -> None:
    session, _, _ = make_session(stall_timeout=0.5)
    now = session._loop.time()
    session._check_stall(now + 0.4)
    assert not session.ended.is_set()
    session._check_stall(now + 0.6)
    assert session.error is not None and "no video packet" in session.error
    late, _, _ = make_session(stall_timeout=0.5)
    for datagram in Packetizer(1024, 0).packetize(os.urandom(100), 1, 0, True, 1.0):
        late._on_video(datagram)
    late._check_stall(late._loop.time() + 0.6)
    assert late.error is not None and "stopped sending" in late.error


async def test_decoder_gets_every_frame_with_its_pts() -> None:
    class Recorder:
        frames_decoded = 0
        errors = 0

        def __init__(self) -> None:
            self.units: list[tuple[bytes, int | None]] = []

        def decode(self, access_unit: bytes, pts_ns: int | None = None) -> None:
            self.units.append((access_unit, pts_ns))
            self.frames_decoded += 1

        def flush(self, timeout: float) -> None: ...
        def close(self) -> None: ...

    recorder = Recorder()
    session, _, _ = make_session(decoder=recorder)
    payloads = [os.urandom(3000) for _ in range(3)]
    packetizer = Packetizer(1024, 20)
    for index, payload in enumerate(payloads, 1):
        for datagram in packetizer.packetize(payload, index, index * 90000, index == 1, 1.0):
            session._on_video(datagram)
    assert recorder.units == [(payload, index * 1_000_000_000) for index, payload in enumerate(payloads, 1)]
    assert session.stats().decoded_frames == 3


# ------------------------------------------------------------------------------------------- CLI
async def test_cli_mode_parsing_and_report() -> None:
    assert client_cli.parse_mode("1920x1080x120") == (1920, 1080, 120)
    for bad in ("1920x1080", "0x720x60", "axbxc", "1280x720x60x1"):
        with pytest.raises(Exception, match="WIDTHxHEIGHTxFPS"):
            client_cli.parse_mode(bad)
    session, _, _ = make_session()
    for datagram in Packetizer(1024, 0).packetize(os.urandom(100), 1, 0, True, 4.0):
        session._on_video(datagram)
    st = session.stats()
    line = client_cli.progress_line(1.0, st)
    assert "frames      1" in line and "latency 4.0 ms" in line
    table = client_cli.final_table(st)
    assert "host latency  p50 4.0 ms, p99 4.0 ms" in table and "IDR requests" in table
    assert table.splitlines()[-1].endswith("stopped by us")
