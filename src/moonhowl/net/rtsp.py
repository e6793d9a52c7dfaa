"""A session's RTSP listener: one request per TCP connection, answered by the sans-IO session.

moonlight-common-c reads each reply until the server closes the connection (RtspConnection.c
transactRtspMessageTcp), so every connection carries exactly one request and one response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from moonhowl.protocol.errors import ProtocolError
from moonhowl.protocol.rtsp import RtspReader, RtspRequest, RtspResponse, RtspServerSession

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0


class RtspListener:
    def __init__(self, session: RtspServerSession, on_request: Callable[[RtspRequest, RtspResponse], None],
                 name: str) -> None:
        self.session = session
        self.on_request = on_request
        self.name = name
        self.server: asyncio.Server | None = None
        self.errors = 0

    async def start(self, bind: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, bind, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        parser = RtspReader(RtspRequest)
        try:
            request = await asyncio.wait_for(self._read_one(reader, parser), READ_TIMEOUT_S)
            if request is None:
                return
            response = self.session.handle(request)
            writer.write(bytes(response))
            await writer.drain()
            if response.status < 300:
                self.on_request(request, response)
            else:
                log.warning("%s: RTSP %s %s from %s answered %d %s", self.name, request.method, request.target,
                            peer, response.status, response.reason)
        except ProtocolError as exc:
            self.errors += 1
            log.warning("%s: malformed RTSP request from %s: %s", self.name, peer, exc)
            writer.write(bytes(RtspServerSession.error_response(exc)))
        except (TimeoutError, ConnectionError) as exc:
            log.info("%s: RTSP connection from %s dropped: %s", self.name, peer, exc or type(exc).__name__)
        except Exception:
            log.exception("%s: RTSP request from %s failed", self.name, peer)
        finally:
            writer.close()

    @staticmethod
    async def _read_one(reader: asyncio.StreamReader, parser: RtspReader[RtspRequest]) -> RtspRequest | None:
        while True:
            data = await reader.read(65536)
            messages = parser.feed(data) if data else parser.feed_eof()
            if messages:
                return messages[0]
            if not data:
                return None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
