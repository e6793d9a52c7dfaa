"""An asyncio GameStream client over aiohttp: serverinfo, pairing, applist, box art, unpair.

It does what moonlight-qt (``nvhttp.cpp``, ``nvpairingmanager.cpp``) does on the wire, so moonhowl can
test itself without a real Moonlight client. :meth:`GameStreamClient.launch` / ``resume`` / ``cancel``
start and end an app; the stream itself is :mod:`moonhowl.client.stream`.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from moonhowl.client.identity import ClientIdentity
from moonhowl.protocol import xml
from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.pairing import UNIQUE_ID, ClientPairing, PairingError

logger = logging.getLogger(__name__)

__all__ = ["STEREO_SURROUND_INFO", "GameStreamClient", "GameStreamError", "PairingFailed", "launch_params"]

DEFAULT_HTTP_PORT = 47989
DEFAULT_HTTPS_PORT = 47984
# Box art is the largest thing the API returns; cap it so a broken host cannot exhaust memory.
MAX_ASSET_BYTES = 16 * 1024 * 1024
# SURROUNDAUDIOINFO_FROM_AUDIO_CONFIGURATION(stereo) in moonlight-common-c Limelight.h:
# channel mask 0x3 << 16 | 2 channels.
STEREO_SURROUND_INFO = 0x3 << 16 | 2
# moonlight-qt waits this long for /launch (LAUNCH_TIMEOUT_MS) and /resume, /cancel (30 s): a host may
# start the app (and here, a whole desktop) before it answers.
LAUNCH_TIMEOUT_S = 120.0
RESUME_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 30.0
# What moonlight-qt appends for an HDR-capable client (nvhttp.cpp startApp).
_HDR_PARAMS = {
    "hdrMode": "1", "clientHdrCapVersion": "0", "clientHdrCapSupportedFlagsInUint32": "0",
    "clientHdrCapMetaDataId": "NV_STATIC_METADATA_TYPE_1",
    "clientHdrCapDisplayData": "0x0x0x0x0x0x0x0x0x0x0",
}


class GameStreamError(Exception):
    """The host answered with a non-200 status (XML ``status_code`` or HTTP) or an unusable reply."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


class PairingFailed(GameStreamError):
    """Pairing was refused or could not be verified (wrong PIN, MITM, host busy)."""

    def __str__(self) -> str:
        return f"pairing failed: {self.message}"


def _client_ssl_context(identity: ClientIdentity, server_cert_pem: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Hosts use self-signed certificates without a useful name: trust comes from pairing.
    ctx.check_hostname = False
    # load_cert_chain only reads files; the directory lives only as long as this call.
    with tempfile.TemporaryDirectory(prefix="moonhowl-client-") as tmp:
        cert, key = Path(tmp) / "client.pem", Path(tmp) / "client.key"
        key.touch(mode=0o600)
        key.write_bytes(identity.key_pem)
        cert.write_bytes(identity.cert_pem)
        ctx.load_cert_chain(cert, key)
    if server_cert_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # Pin the certificate learned at pairing: it is its own trust anchor (PARTIAL_CHAIN lets
        # OpenSSL accept a self-signed leaf that sits in the store, as moonlight-qt's pinning does).
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.load_verify_locations(cadata=server_cert_pem.decode("ascii"))
    return ctx


def launch_params(
    app_id: int, width: int, height: int, fps: int, *, rikey: bytes, rikeyid: int,
    surround_info: int = STEREO_SURROUND_INFO, local_audio: bool = False, gamepad_mask: int = 0,
    hdr: bool = False, sops: bool = False, persist_gamepads: bool = False, corever: int | None = 1,
) -> dict[str, str]:
    """The query of /launch and /resume, in moonlight-qt's order (nvhttp.cpp ``startApp``).

    ``rikey`` is the 16-byte AES key of the session; ``rikeyid`` the signed 32-bit number moonlight-qt
    reads big-endian from the first 4 bytes of ``remoteInputAesIv`` (audio IVs start from it).
    ``corever`` is what moonlight-common-c's ``LiGetLaunchUrlQueryParameters()`` appends (``&corever=1``);
    None leaves it out.
    """
    if len(rikey) != 16:
        raise ValueError("rikey is 16 bytes")
    if not -(1 << 31) <= rikeyid < (1 << 31):
        raise ValueError("rikeyid must fit a signed 32-bit int (moonlight-qt prints it with QString::number(int))")
    if min(width, height, fps) <= 0:
        raise ValueError(f"bad mode {width}x{height}x{fps}")
    params = {
        "appid": str(app_id),
        "mode": f"{width}x{height}x{fps}",
        "additionalStates": "1",
        "sops": "1" if sops else "0",
        "rikey": rikey.hex(),
        "rikeyid": str(rikeyid),
        **(_HDR_PARAMS if hdr else {}),
        "localAudioPlayMode": "1" if local_audio else "0",
        "surroundAudioInfo": str(surround_info),
        "remoteControllersBitmap": str(gamepad_mask),
        "gcmap": str(gamepad_mask),
        "gcpersist": "1" if persist_gamepads else "0",
    }
    if corever is not None:
        params["corever"] = str(corever)
    return params


class GameStreamClient:
    """One host. Each call opens its own HTTP session, so there is nothing to close."""

    def __init__(
        self,
        host: str,
        http_port: int = DEFAULT_HTTP_PORT,
        https_port: int = DEFAULT_HTTPS_PORT,
        *,
        identity: ClientIdentity,
        server_cert_pem: bytes | None = None,
        request_timeout: float = 10.0,
        pin_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.http_port = http_port
        self.https_port = https_port
        self.identity = identity
        self.server_cert_pem = server_cert_pem
        self.request_timeout = request_timeout
        # Phase 1 of pairing waits for the user to type the PIN on the host: no limit by default.
        self.pin_timeout = pin_timeout
        self._ssl: tuple[bytes | None, ssl.SSLContext] | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None or self._ssl[0] != self.server_cert_pem:
            self._ssl = (self.server_cert_pem, _client_ssl_context(self.identity, self.server_cert_pem))
        return self._ssl[1]

    def _url(self, path: str, https: bool) -> URL:
        scheme, port = ("https", self.https_port) if https else ("http", self.http_port)
        return URL.build(scheme=scheme, host=self.host, port=port, path=path)

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        https: bool,
        timeout: float | None = None,
        limit: int = xml.MAX_XML_BYTES,
    ) -> bytes:
        # Every Moonlight request carries the fixed uniqueid and a fresh uuid (moonlight-qt nvhttp.cpp).
        query = {"uniqueid": UNIQUE_ID, "uuid": secrets.token_hex(16), **(params or {})}
        client_timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(self.request_timeout, timeout or self.request_timeout)
        )
        url = self._url(path, https)
        logger.debug("GET %s", url)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, params=query, ssl=self._ssl_context() if https else False) as resp,
        ):
            if resp.status >= 400:
                raise GameStreamError(resp.status, f"HTTP {resp.status} {resp.reason or ''}".strip())
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise GameStreamError(resp.status, f"reply to {path} larger than {limit} bytes")
            return bytes(body)

    async def request(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        https: bool = True,
        timeout: float | None = None,
    ) -> xml.Reply:
        """GET ``path`` and parse the XML; a ``status_code`` other than 200 raises GameStreamError."""
        body = await self._get(
            path, params, https=https, timeout=self.request_timeout if timeout is None else timeout
        )
        return self._check(path, body)

    @staticmethod
    def _check(path: str, body: bytes) -> xml.Reply:
        try:
            reply = xml.parse(body)
        except ProtocolError as exc:
            raise GameStreamError(-1, f"malformed reply to {path}: {exc.message}") from exc
        if reply.status_code != 200:
            raise GameStreamError(reply.status_code, reply.status_message or f"{path} failed")
        return reply

    async def serverinfo(self, https: bool = False) -> dict[str, str]:
        return (await self.request("/serverinfo", https=https)).fields

    async def applist(self) -> list[tuple[int, str]]:
        return (await self.request("/applist")).apps

    async def appasset(self, app_id: int) -> bytes:
        """Box art (PNG) of an app; the host answers XML instead when something is wrong."""
        params = {"appid": str(app_id), "AssetType": "2", "AssetIdx": "0"}
        body = await self._get("/appasset", params, https=True, timeout=self.request_timeout,
                               limit=MAX_ASSET_BYTES)
        if body.lstrip()[:5] in (b"<?xml", b"<root"):
            self._check("/appasset", body)
        return body

    async def unpair(self, *, https: bool | None = None) -> None:
        """Forget this client on the host.

        Over HTTPS (the default once the host's certificate is known) the host can tell who we are
        and removes the pairing; over HTTP, as moonlight-qt sends it, it only cancels a pairing in
        progress.
        """
        await self.request("/unpair", https=self.server_cert_pem is not None if https is None else https)

    async def pair(self, pin: str, *, timeout: float | None = None) -> bytes:
        """Run all five pairing phases; returns the host's certificate, also kept as ``server_cert_pem``.

        ``timeout`` bounds phase 1, which lasts until the PIN is entered on the host (default:
        ``pin_timeout``, None meaning no limit). Any failure raises PairingFailed or GameStreamError.
        """
        pairing = ClientPairing(self.identity.cert_pem, self.identity.key_pem, pin)
        pin_wait = self.pin_timeout if timeout is None else timeout
        try:
            reply = await self._get("/pair", pairing.getservercert_query(), https=False, timeout=pin_wait)
            pairing.on_getservercert_reply(self._check("/pair", reply).fields)
        except PairingError as exc:
            raise PairingFailed(200, exc.message) from exc

        previous, done = self.server_cert_pem, False
        try:
            pairing.on_clientchallenge_reply(await self._pair_step(pairing.clientchallenge_query()))
            pairing.on_serverchallengeresp_reply(await self._pair_step(pairing.serverchallengeresp_query()))
            pairing.on_clientpairingsecret_reply(await self._pair_step(pairing.clientpairingsecret_query()))
            # Phase 5 goes over HTTPS with our certificate, the host's one pinned.
            self.server_cert_pem = pairing.server_cert_pem
            pairing.on_pairchallenge_reply(await self._pair_step(pairing.pairchallenge_query(), https=True))
            done = True
        except Exception as exc:
            # Like moonlight-qt: tell the host to drop the half-done pairing, ignoring any error.
            try:
                await self.unpair(https=False)
            except Exception as cleanup_exc:  # the original error is the one that matters
                logger.debug("unpair after failed pairing failed too: %s", cleanup_exc)
            if isinstance(exc, PairingError):
                raise PairingFailed(200, exc.message) from exc
            raise
        finally:
            if not done:  # also on cancellation
                self.server_cert_pem = previous
        assert self.server_cert_pem is not None
        logger.info("paired with %s", self.host)
        return self.server_cert_pem

    async def _pair_step(self, query: Mapping[str, str], *, https: bool = False) -> dict[str, str]:
        return (await self.request("/pair", query, https=https)).fields

    async def launch(self, app_id: int, width: int, height: int, fps: int, *, rikey: bytes, rikeyid: int,
                     **options: Any) -> str:
        """Start ``app_id``; returns the RTSP session URL (``sessionUrl0``) for the stream handshake.
        ``options``: launch_params()'s (surround_info, local_audio, gamepad_mask, hdr, corever)."""
        params = launch_params(app_id, width, height, fps, rikey=rikey, rikeyid=rikeyid, **options)
        return await self._start_app("/launch", "gamesession", params, LAUNCH_TIMEOUT_S)

    async def resume(self, app_id: int, width: int, height: int, fps: int, *, rikey: bytes, rikeyid: int,
                     **options: Any) -> str:
        """Reattach to the running app with new keys (moonlight-qt sends the launch query to /resume)."""
        params = launch_params(app_id, width, height, fps, rikey=rikey, rikeyid=rikeyid, **options)
        return await self._start_app("/resume", "resume", params, RESUME_TIMEOUT_S)

    async def cancel(self) -> None:
        """Quit the running app (``/cancel``); the host must answer ``cancel=1``."""
        reply = await self.request("/cancel", timeout=QUIT_TIMEOUT_S)
        if reply.fields.get("cancel", "").strip() != "1":
            raise GameStreamError(reply.status_code, f"/cancel answered cancel={reply.fields.get('cancel')!r}")
        logger.info("app on %s cancelled", self.host)

    async def _start_app(self, path: str, flag: str, params: Mapping[str, str], timeout: float) -> str:
        reply = await self.request(path, params, timeout=timeout)
        # moonlight-embedded treats gamesession/resume = 0 as failure even with status 200.
        if reply.fields.get(flag, "").strip() != "1":
            raise GameStreamError(reply.status_code, f"{path} answered {flag}={reply.fields.get(flag)!r}")
        url = reply.fields.get("sessionUrl0", "").strip()
        if not url:
            # moonlight-common-c would fall back to port 48010; a host that omits it has a bug worth seeing.
            raise GameStreamError(reply.status_code, f"{path} reply has no sessionUrl0")
        logger.info("%s app %s on %s: RTSP at %s", path.lstrip("/"), params.get("appid"), self.host, url)
        return url
