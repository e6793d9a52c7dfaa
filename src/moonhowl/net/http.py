"""GameStream HTTP (47989) and HTTPS (47984): serverinfo, pairing, apps, and the /pin page.

Real clients treat an HTTP status >= 400 as a transport failure, so every answer is HTTP 200
with the outcome in `<root status_code=..>` (moonlight-qt nvhttp.cpp verifyResponseStatus).
HTTPS asks for a client certificate; the TLS layer trusts only paired certificates and each
request is matched again, exactly, against the paired list (a client removed while its
connection stays open is refused from the next request on).
"""

from __future__ import annotations

import html
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from moonhowl import boxart
from moonhowl.pairing import PinError
from moonhowl.protocol import xml
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.pairing import PairRequest
from moonhowl.state import PairedClient

if TYPE_CHECKING:
    from moonhowl.app import Host

log = logging.getLogger(__name__)

# "7.1.431.-1": major 7 selects the modern protocol (encrypted control v2, one PLAY); the
# negative 4th field marks a Sunshine-like host so clients use the x-ss-* extensions
# (moonlight-common-c Limelight.h / RtspConnection.c).
APP_VERSION = "7.1.431.-1"
GFE_VERSION = "3.23.0.74"
MAX_QUERY = 16 * 1024  # a client certificate in hex is 2.5-4 KB; anything far larger is abuse
# aiohttp's own limit sits above ours so that oversized requests still get an XML answer.
MAX_LINE = 128 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Reply(Protocol):
    def __call__(self, request: web.Request, client: PairedClient | None) -> Awaitable[bytes]: ...


def xml_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


def peer_certificate(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def remote_ip(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "?"


class GameStreamHttp:
    """The request handlers of both ports; `https` tells them which one they serve."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def make_app(self, https: bool) -> web.Application:
        app = web.Application(client_max_size=MAX_QUERY, middlewares=[self._guard(https)])
        routes = {"/serverinfo": self.serverinfo, "/pair": self.pair, "/unpair": self.unpair}
        if https:
            routes |= {"/applist": self.applist}
            routes |= self.host.stream_routes()
            # /appasset answers a PNG, not XML, so it does its own client check.
            app.router.add_get("/appasset", self.appasset)
        for path, handler in routes.items():
            app.router.add_get(path, self._wrap(handler, https))
        if not https and self.host.config.get("pairing", "pin_page") != "off":
            app.router.add_get("/pin", self.pin_page)
            app.router.add_post("/pin", self.pin_page)
        return app

    def _guard(self, https: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            if len(request.query_string) > MAX_QUERY:
                log.warning("%s: query of %d bytes refused", remote_ip(request), len(request.query_string))
                return xml_response(xml.error(413, "request too large"))
            return await handler(request)
        return guard

    def _wrap(self, handler: _Reply, https: bool) -> Handler:
        async def run(request: web.Request) -> web.Response:
            client = None
            if https:
                der = peer_certificate(request)
                client = self.host.state.find_client(der) if der else None
                if client is None and request.path != "/serverinfo":
                    # moonlight-qt falls back to HTTP on 401 (nvhttp.cpp getServerInfo).
                    return xml_response(xml.error(401, "the client is not paired"))
            try:
                return xml_response(await handler(request, client))
            except ProtocolError as exc:
                log.warning("%s %s from %s: %s", request.method, request.path, remote_ip(request), exc)
                return xml_response(xml.error(exc.status_code, str(exc)))
        return run

    # --- handlers --------------------------------------------------------------------------------
    async def serverinfo(self, request: web.Request, client: PairedClient | None) -> bytes:
        host, config = self.host, self.host.config
        running = host.current_game(client)
        fields: dict[str, str | int] = {
            "hostname": config.hostname,
            "appversion": APP_VERSION,
            "GfeVersion": GFE_VERSION,
            "uniqueid": host.state.unique_id,
            "HttpsPort": host.port("https"),
            "ExternalPort": host.port("http"),
            "MaxLumaPixelsHEVC": host.max_luma_pixels_hevc(),
            "mac": host.mac_address(),
            "LocalIP": host.advertised_ip(request),
            "ServerCodecModeSupport": host.codec_mode_support(),
            # Only an HTTPS request with a paired certificate proves pairing (FACTS: PairStatus).
            "PairStatus": 1 if client is not None else 0,
            "currentgame": running,
            "state": "SUNSHINE_SERVER_BUSY" if running else "SUNSHINE_SERVER_FREE",
        }
        return xml.response(fields)

    async def pair(self, request: web.Request, client: PairedClient | None) -> bytes:
        pair_request = PairRequest.from_query(request.query.items())
        device = request.query.get("devicename", "")
        fields = await self.host.pairing.handle(pair_request, remote_ip(request), device, client)
        return xml.response(fields)

    async def unpair(self, request: web.Request, client: PairedClient | None) -> bytes:
        if client is not None:
            self.host.state.remove_client(client.id)
        else:
            # Over plain HTTP nothing identifies the client (uniqueid is the same for all):
            # only its own pairing in progress can be cancelled.
            self.host.pairing.cancel(request.query.get("uniqueid", ""), remote_ip(request))
        return xml.response({})

    async def applist(self, request: web.Request, client: PairedClient | None) -> bytes:
        return xml.applist((app.id, app.title) for app in self.host.config.apps)

    async def appasset(self, request: web.Request) -> web.Response:
        der = peer_certificate(request)
        if not der or self.host.state.find_client(der) is None:
            return xml_response(xml.error(401, "the client is not paired"))
        try:
            app = self.host.config.app(int(request.query.get("appid", "")))
        except ValueError:
            app = None
        if app is None:
            return xml_response(xml.error(404, "no such app"))
        return web.Response(body=boxart.render(app.title), content_type="image/png")

    async def pin_page(self, request: web.Request) -> web.Response:
        if not self._pin_page_allowed(request):
            log.warning("/pin refused for %s (pairing.pin_page = %r)", remote_ip(request),
                        self.host.config.get("pairing", "pin_page"))
            return web.Response(status=403, text="The PIN page is only served to this machine.\n")
        message = ""
        if request.method == "POST":
            form = await request.post()
            pin = str(form.get("pin", "")).strip()
            pairing_id = str(form.get("pairing", "")) or None
            try:
                pending = self.host.pairing.submit_pin(pin, pairing_id)
                message = f"PIN sent to {html.escape(pending.device_name)}; the client finishes pairing."
            except PinError as exc:
                message = html.escape(str(exc))
        rows = "".join(
            f"<li><label><input type=radio name=pairing value={html.escape(p.id)} checked> "
            f"{html.escape(p.device_name)} at {html.escape(p.remote)}</label></li>"
            for p in self.host.pairing.pending if not p.pin.done())
        body = PIN_PAGE.format(message=message, rows=rows or "<li>No client is waiting.</li>")
        return web.Response(text=body, content_type="text/html")

    def _pin_page_allowed(self, request: web.Request) -> bool:
        mode = self.host.config.get("pairing", "pin_page")
        if mode == "any":
            return True
        try:
            return ipaddress.ip_address(remote_ip(request)).is_loopback
        except ValueError:
            return False


PIN_PAGE = """<!doctype html><html><head><meta charset=utf-8><title>moonhowl: pair a client</title>
<style>body{{font-family:sans-serif;max-width:30em;margin:3em auto}}input[name=pin]{{font-size:2em;width:5em}}</style>
</head><body><h1>Pair a Moonlight client</h1><p>{message}</p>
<form method=post><ul>{rows}</ul>
<p><input name=pin inputmode=numeric pattern="[0-9]{{4}}" maxlength=4 autofocus placeholder=PIN>
<button>Pair</button></p></form></body></html>
"""


def server_ssl_context(cert_pem: bytes, key_pem: bytes, trusted: list[bytes]) -> ssl.SSLContext:
    """TLS for the HTTPS port: asks for a client certificate and trusts exactly the paired ones.

    All Moonlight certificates are self-signed with the same subject, so each is its own trust
    anchor: VERIFY_X509_PARTIAL_CHAIN lets OpenSSL accept a leaf that is itself in the store.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    for pem in trusted:
        ctx.load_verify_locations(cadata=pem.decode("ascii"))
    return ctx
