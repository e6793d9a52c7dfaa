"""Pairing and the GameStream HTTP(S) endpoints, with moonhowl's client over real TLS."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat

import aiohttp
import pytest

from moonhowl.client.gamestream import GameStreamError, PairingFailed
from moonhowl.client.identity import ClientIdentity
from moonhowl.protocol import xml
from tests.conftest import client_for, enter_pin_when_asked, pair

pytestmark = pytest.mark.integration


async def test_pairing_end_to_end_then_https(start_host):
    host = await start_host()
    client = client_for(host)
    await pair(host, client)
    assert [c.name for c in host.state.clients] == ["roth"]  # moonlight's devicename

    assert (await client.serverinfo(https=False))["PairStatus"] == "0"  # HTTP proves nothing
    info = await client.serverinfo(https=True)
    assert info["PairStatus"] == "1"
    assert info["uniqueid"] == host.state.unique_id
    assert info["HttpsPort"] == str(host.ports["https"])
    assert info["appversion"] == "7.1.431.-1"
    assert int(info["ServerCodecModeSupport"]) & 0x1
    assert info["state"].endswith("_SERVER_FREE")

    assert await client.applist() == [(1, "Desktop"), (2, "Test pattern")]
    png = await client.appasset(2)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


async def test_wrong_pin_fails_cleanly_and_stores_nothing(start_host, tmp_path):
    host = await start_host()
    client = client_for(host)
    with pytest.raises(PairingFailed):
        await asyncio.gather(client.pair("1234"), enter_pin_when_asked(host, "4321"))
    assert host.state.clients == []
    assert not (tmp_path / "state" / "clients.json").exists()
    assert host.pairing.pending == []  # the failed attempt does not block the next one
    await pair(host, client, "5678")
    assert len(host.state.clients) == 1


async def test_pin_timeout_answers_with_an_error(start_host):
    host = await start_host()
    host.pairing.pin_timeout = 0.2
    with pytest.raises(GameStreamError, match="no PIN"):
        await client_for(host).pair("1234")
    assert host.pairing.pending == [] and host.state.clients == []


async def test_two_clients_with_identical_subjects_are_both_recognised(start_host):
    host = await start_host()
    # moonlight-embedded's certificates all have CN "NVIDIA GameStream Client" and serial 0.
    first = client_for(host, ClientIdentity.generate(serial_zero=True))
    second = client_for(host, ClientIdentity.generate(serial_zero=True))
    await pair(host, first, "1111")
    await pair(host, second, "2222")
    assert len(host.state.clients) == 2
    assert (await first.serverinfo(https=True))["PairStatus"] == "1"
    assert (await second.serverinfo(https=True))["PairStatus"] == "1"

    # Unpairing one leaves the other paired.
    await first.unpair()
    assert len(host.state.clients) == 1
    assert await second.applist()
    with pytest.raises((GameStreamError, aiohttp.ClientError, ssl.SSLError)):
        await first.applist()


async def test_unpaired_certificate_cannot_use_https(start_host):
    host = await start_host()
    await pair(host, client_for(host))
    stranger = client_for(host, server_cert=host.state.cert_pem)
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await stranger.applist()


async def test_state_survives_a_restart(start_host, tmp_path):
    host = await start_host()
    client = client_for(host)
    await pair(host, client)
    unique_id, cert = host.state.unique_id, host.state.cert_pem
    await host.stop()

    again = await start_host()
    assert again.state.unique_id == unique_id
    assert again.state.cert_pem == cert
    key = tmp_path / "state" / "server.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    restarted = client_for(again, client.identity, client.server_cert_pem)
    assert (await restarted.serverinfo(https=True))["PairStatus"] == "1"
    assert await restarted.applist()


async def raw_get(host, path: str) -> xml.Reply:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{host.ports['http']}{path}") as reply:
        assert reply.status == 200  # clients treat >= 400 as a transport failure
        return xml.parse(await reply.read())


CERT_HEX = ClientIdentity.generate().cert_pem.hex()
BAD_PAIR_REQUESTS = {
    "bad hex salt": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&salt=zz{'0' * 30}"
                    f"&clientcert={CERT_HEX}",
    "short salt": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&salt=00&clientcert={CERT_HEX}",
    "missing uniqueid": f"/pair?phrase=getservercert&salt={'00' * 16}&clientcert={CERT_HEX}",
    "duplicated salt": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&salt={'00' * 16}"
                       f"&salt={'11' * 16}&clientcert={CERT_HEX}",
    "truncated certificate": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&salt={'00' * 16}"
                             f"&clientcert={CERT_HEX[: len(CERT_HEX) // 2]}",
    "garbage certificate": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&salt={'00' * 16}"
                           f"&clientcert={b'-----BEGIN CERTIFICATE-----garbage'.hex()}",
    "missing phrase": "/pair?uniqueid=0123456789ABCDEF",
    "unknown phrase": "/pair?uniqueid=0123456789ABCDEF&phrase=hack",
    "challenge out of order": f"/pair?uniqueid=0123456789ABCDEF&clientchallenge={'00' * 16}",
    "secret out of order": f"/pair?uniqueid=0123456789ABCDEF&clientpairingsecret={'00' * 272}",
    "oversized": f"/pair?uniqueid=0123456789ABCDEF&phrase=getservercert&clientcert={'41' * 40000}",
}


@pytest.mark.parametrize("path", BAD_PAIR_REQUESTS.values(), ids=BAD_PAIR_REQUESTS.keys())
async def test_malformed_pair_requests_get_an_xml_error_and_change_nothing(start_host, path):
    host = await start_host()
    client = client_for(host)
    await pair(host, client)
    before = (tmp := host.state.directory / "clients.json").read_bytes()
    reply = await raw_get(host, path)
    assert reply.status_code != 200 and reply.status_message
    assert host.pairing.pending == []
    assert tmp.read_bytes() == before
    assert await client.applist()  # the paired client is unaffected


async def test_pin_page_pairs_a_client(start_host):
    host = await start_host()
    client = client_for(host)
    pairing = asyncio.ensure_future(client.pair("2468"))
    url = f"http://127.0.0.1:{host.ports['http']}/pin"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(url) as page:
                if "roth" in await page.text():
                    break
            await asyncio.sleep(0.01)
        async with session.post(url, data={"pin": "2468"}) as page:
            assert "PIN sent" in await page.text()
    await pairing
    assert len(host.state.clients) == 1


async def test_pin_page_refuses_other_addresses_by_default(start_host):
    # pin_page = "loopback": check the decision directly with a non-loopback peer address.
    from moonhowl.net.http import GameStreamHttp

    host = await start_host()

    class FakeTransport:
        def get_extra_info(self, name):
            return ("192.0.2.7", 5555) if name == "peername" else None

    class FakeRequest:
        transport = FakeTransport()

    assert not GameStreamHttp(host)._pin_page_allowed(FakeRequest())
