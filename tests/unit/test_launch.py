"""/launch query parsing: what moonlight-qt sends, and each malformed case."""

from __future__ import annotations

import pytest

from moonhowl.client.gamestream import launch_params
from moonhowl.protocol.launch import LaunchError, LaunchRequest

pytestmark = pytest.mark.unit

KEY = bytes(range(16))


def query(**changes):
    base = {"appid": "2", "mode": "1920x1080x60", "additionalStates": "1", "sops": "0", "rikey": KEY.hex(),
            "rikeyid": "-5", "localAudioPlayMode": "0", "surroundAudioInfo": str(0x3F0006),
            "remoteControllersBitmap": "1", "gcmap": "1"}
    base.update(changes)
    return [(k, v) for k, v in base.items() if v is not None]


def test_parses_what_moonlight_sends():
    request = LaunchRequest.from_query(query())
    assert (request.app_id, request.width, request.height, request.fps) == (2, 1920, 1080, 60)
    assert request.rikey == KEY
    assert request.rikeyid == 0xFFFFFFFB  # sent signed, used as uint32
    assert request.audio_channels == 6 and request.gamepad_mask == 1 and not request.hdr


def test_round_trip_with_our_own_client():
    params = launch_params(2, 1280, 720, 60, rikey=KEY, rikeyid=7)
    request = LaunchRequest.from_query(list(params.items()) if isinstance(params, dict) else params)
    assert (request.width, request.height, request.fps, request.rikeyid) == (1280, 720, 60, 7)


def test_resume_needs_no_appid():
    assert LaunchRequest.from_query(query(appid=None), resume=True).app_id == 0


@pytest.mark.parametrize("changes, message", [
    ({"appid": None}, "missing field 'appid'"),
    ({"mode": "1920x1080"}, "mode must be WIDTHxHEIGHTxFPS"),
    ({"mode": "99999x99999x60"}, "outside"),
    ({"mode": "1920x1080x0"}, "outside"),
    ({"rikey": "zz" * 16}, "rikey is not hex"),
    ({"rikey": "00" * 8}, "rikey must be 16 bytes"),
    ({"rikeyid": "abc"}, "not a number"),
    ({"rikeyid": str(2**40)}, "does not fit"),
])
def test_malformed_launch_requests(changes, message):
    with pytest.raises(LaunchError, match=message):
        LaunchRequest.from_query(query(**changes))


def test_duplicated_field():
    with pytest.raises(LaunchError, match="appears twice"):
        LaunchRequest.from_query([*query(), ("rikey", KEY.hex())])
