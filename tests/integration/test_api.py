"""The management API on its unix socket, checked against its own OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import stat

import aiohttp
import pytest

from moonhowl.api.server import openapi_document
from tests.conftest import client_for

pytestmark = pytest.mark.integration


async def api(host, method: str, path: str, **kwargs):
    connector = aiohttp.UnixConnector(path=str(host.config.api_socket))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, f"http://moonhowl{path}", **kwargs) as reply:
        return reply.status, await reply.json()


async def test_socket_is_private_and_documented(start_host):
    host = await start_host()
    assert stat.S_IMODE(os.stat(host.config.api_socket).st_mode) == 0o600
    status, document = await api(host, "GET", "/v1/openapi.json")
    assert status == 200 and document == openapi_document()
    routes = {(r.method.lower(), r.resource.canonical) for r in _api_app_routes(host)}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented


def _api_app_routes(host):
    from moonhowl.api.server import make_app

    return [r for r in make_app(host).router.routes() if r.method != "HEAD"]


async def test_pin_through_the_api_pairs_and_reports_the_client(start_host):
    host = await start_host()
    client = client_for(host)
    pairing = asyncio.ensure_future(client.pair("1357"))
    for _ in range(200):
        status, pending = await api(host, "GET", "/v1/pairings")
        if pending:
            break
        await asyncio.sleep(0.01)
    assert pending[0]["device_name"] == "roth" and pending[0]["waiting_for_pin"]
    status, reply = await api(host, "POST", "/v1/pin", json={"pin": "1357"})
    await pairing
    assert status == 200 and reply["state"] == "paired"
    status, clients = await api(host, "GET", "/v1/clients")
    assert [c["id"] for c in clients] == [reply["client"]["id"]]
    status, _ = await api(host, "DELETE", f"/v1/clients/{reply['client']['id']}")
    assert status == 200 and host.state.clients == []


async def test_wrong_pin_through_the_api_reports_failure(start_host):
    host = await start_host()
    pairing = asyncio.ensure_future(client_for(host).pair("1357"))
    while not host.pairing.pending:
        await asyncio.sleep(0.01)
    status, reply = await api(host, "POST", "/v1/pin", json={"pin": "9999"})
    assert status == 422 and "failed" in reply["error"]
    with pytest.raises(Exception, match="PIN"):
        await pairing
    assert host.state.clients == []


@pytest.mark.parametrize("body, status", [
    ({"pin": "1234"}, 409),           # nobody is waiting
    ({"pin": "12a4"}, 409),           # not 4 digits
    ({"pinn": "1234"}, 400),
    ("not json", 400),
])
async def test_bad_pin_requests(start_host, body, status):
    host = await start_host()
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    got, reply = await api(host, "POST", "/v1/pin", **kwargs)
    assert got == status and reply["error"]


async def test_removing_an_unknown_client_is_404(start_host):
    host = await start_host()
    status, reply = await api(host, "DELETE", "/v1/clients/nope")
    assert status == 404 and "nope" in reply["error"]


async def test_second_server_on_the_same_state_dir_is_refused(start_host, tmp_path):
    from moonhowl.app import StartupError

    await start_host()
    with pytest.raises(StartupError, match="already using"):
        await start_host()
