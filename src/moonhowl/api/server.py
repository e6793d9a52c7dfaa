"""The management API on a unix socket (mode 0600: only this user may pair clients).

Routes are listed in openapi.json beside this file; the CLI (`moonhowl pin`, `moonhowl clients`)
is a client of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from moonhowl.pairing import PinError
from moonhowl.state import PairedClient

if TYPE_CHECKING:
    from moonhowl.app import Host

log = logging.getLogger(__name__)

# How long POST /v1/pin waits for the client to finish the remaining pairing phases.
PIN_OUTCOME_TIMEOUT = 30.0


def openapi_document() -> dict[str, Any]:
    text = resources.files("moonhowl.api").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def _client_json(client: PairedClient) -> dict[str, str]:
    return {"id": client.id, "name": client.name, "paired_at": client.paired_at}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(host: Host) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/v1/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    @routes.get("/v1/status")
    async def status(request: web.Request) -> web.Response:
        return web.json_response(host.status())

    @routes.get("/v1/pairings")
    async def pairings(request: web.Request) -> web.Response:
        return web.json_response([p.describe() for p in host.pairing.pending])

    @routes.post("/v1/pin")
    async def pin(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body must be JSON: {\"pin\": \"1234\"}")
        if not isinstance(body, dict) or not isinstance(body.get("pin"), str):
            return _error(400, "the body must be a JSON object with a string 'pin'")
        pairing_id = body.get("pairing")
        if pairing_id is not None and not isinstance(pairing_id, str):
            return _error(400, "'pairing' must be a string")
        try:
            pending = host.pairing.submit_pin(body["pin"], pairing_id)
        except PinError as exc:
            return _error(409, str(exc))
        if not body.get("wait", True):
            return web.json_response({"pairing": pending.id, "state": "pin-entered"}, status=202)
        try:
            client = await asyncio.wait_for(asyncio.shield(pending.outcome), PIN_OUTCOME_TIMEOUT)
        except PinError as exc:
            return _error(422, str(exc))
        except TimeoutError:
            return _error(504, f"the client did not finish pairing within {PIN_OUTCOME_TIMEOUT:g} s")
        return web.json_response({"pairing": pending.id, "state": "paired", "client": _client_json(client)})

    @routes.get("/v1/clients")
    async def clients(request: web.Request) -> web.Response:
        return web.json_response([_client_json(c) for c in host.state.clients])

    @routes.delete("/v1/clients/{id}")
    async def remove_client(request: web.Request) -> web.Response:
        removed = host.state.remove_client(request.match_info["id"])
        if removed is None:
            return _error(404, f"no paired client {request.match_info['id']!r}")
        return web.json_response(_client_json(removed))

    app = web.Application(client_max_size=16 * 1024)
    app.add_routes(routes)
    return app
