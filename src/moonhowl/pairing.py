"""Pairing attempts in flight: each waits for the PIN a person enters (CLI, web page or API).

The five-phase crypto is sans-IO in protocol/pairing.py; this module adds time and people: the
first request (getservercert) is held open until a PIN arrives or `pin_timeout` passes, and a
wrong PIN fails only that attempt, storing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from moonhowl.protocol.pairing import PairingError, PairPhase, PairRequest, ServerPairing
from moonhowl.state import HostState, PairedClient

log = logging.getLogger(__name__)


class PinError(Exception):
    """A PIN could not be applied (none pending, ambiguous, malformed); the message says which."""


@dataclass
class PendingPairing:
    id: str
    device_name: str
    remote: str
    key: tuple[str, str]
    attempt: ServerPairing
    created: float = field(default_factory=time.monotonic)
    pin: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    outcome: asyncio.Future[PairedClient] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "device_name": self.device_name, "remote": self.remote,
                "waiting_for_pin": not self.pin.done(),
                "age_s": round(time.monotonic() - self.created, 1)}


class PairingService:
    def __init__(self, state: HostState, pin_timeout: float) -> None:
        self.state = state
        self.pin_timeout = pin_timeout
        self._by_key: dict[tuple[str, str], PendingPairing] = {}

    @property
    def pending(self) -> list[PendingPairing]:
        self._expire()
        return list(self._by_key.values())

    async def handle(self, request: PairRequest, remote: str, device_name: str,
                     client: PairedClient | None) -> dict[str, str]:
        """Runs one /pair request; raises PairingError (the HTTP layer turns it into XML)."""
        self._expire()
        key = (request.unique_id, remote)
        if request.phase is PairPhase.GETSERVERCERT:
            return await self._getservercert(request, key, remote, device_name)
        if request.phase is PairPhase.PAIRCHALLENGE:
            # Phase 5 arrives over HTTPS with the freshly paired certificate.
            if client is None:
                raise PairingError("pairchallenge needs HTTPS with a paired client certificate")
            return {"paired": "1"}
        pending = self._by_key.get(key)
        if pending is None or not pending.pin.done():
            raise PairingError(f"no pairing in progress for {remote} (start with getservercert)")
        attempt = pending.attempt
        if request.phase is PairPhase.CLIENTCHALLENGE:
            return attempt.on_client_challenge(request.client_challenge)
        if request.phase is PairPhase.SERVERCHALLENGERESP:
            return attempt.on_server_challenge_resp(request.server_challenge_resp)
        reply, verified = attempt.on_client_pairing_secret(request.client_pairing_secret)
        self._drop(pending)
        if verified:
            paired = self.state.add_client(attempt.client_cert_pem, pending.device_name)
            if not pending.outcome.done():
                pending.outcome.set_result(paired)
        else:
            log.warning("pairing %s from %s failed: wrong PIN or tampered exchange", pending.id, remote)
            _settle_failed(pending, "the PIN was wrong")
        return reply

    async def _getservercert(self, request: PairRequest, key: tuple[str, str], remote: str,
                             device_name: str) -> dict[str, str]:
        old = self._by_key.get(key)
        if old is not None:
            # A client that starts over abandons its previous attempt (moonlight does this when
            # the user cancels and retries).
            self._fail(old, "superseded by a new pairing request from the same client")
        attempt = ServerPairing(self.state.cert_pem, self.state.key_pem, request.salt,
                                request.client_cert_pem)
        pending = PendingPairing(secrets.token_hex(3), device_name or "unknown", remote, key, attempt)
        self._by_key[key] = pending
        log.info("pairing %s from %s (%s) is waiting for its PIN: run `moonhowl pin NNNN` or open "
                 "the /pin page", pending.id, remote, pending.device_name)
        try:
            pin = await asyncio.wait_for(asyncio.shield(pending.pin), self.pin_timeout)
        except TimeoutError:
            self._fail(pending, f"no PIN was entered within {self.pin_timeout:g} s")
            raise PairingError(f"no PIN was entered within {self.pin_timeout:g} s") from None
        except asyncio.CancelledError:
            # The client hung up while we waited.
            self._fail(pending, "the client disconnected while waiting for the PIN")
            raise
        attempt.set_pin(pin)
        return attempt.server_cert_reply()

    def submit_pin(self, pin: str, pairing_id: str | None = None) -> PendingPairing:
        if len(pin) != 4 or not (pin.isascii() and pin.isdigit()):
            raise PinError("a PIN is exactly 4 digits")
        waiting = [p for p in self.pending if not p.pin.done()]
        if pairing_id is not None:
            waiting = [p for p in waiting if p.id == pairing_id]
            if not waiting:
                raise PinError(f"no pairing {pairing_id!r} is waiting for a PIN")
        if not waiting:
            raise PinError("no pairing is waiting for a PIN: start pairing on the client first")
        if len(waiting) > 1:
            ids = ", ".join(f"{p.id} ({p.device_name} at {p.remote})" for p in waiting)
            raise PinError(f"several pairings are waiting ({ids}); name one")
        pending = waiting[0]
        pending.pin.set_result(pin)
        log.info("PIN entered for pairing %s", pending.id)
        return pending

    def cancel(self, unique_id: str, remote: str) -> bool:
        pending = self._by_key.get((unique_id, remote))
        if pending is not None:
            self._fail(pending, "cancelled by the client")
        return pending is not None

    def _expire(self) -> None:
        # An attempt whose client stopped halfway (a wrong PIN makes moonlight give up after phase 2)
        # must not linger: it would block the next attempt from the same address.
        now = time.monotonic()
        for pending in list(self._by_key.values()):
            if pending.pin.done() and now - pending.created > self.pin_timeout + 30:
                self._fail(pending, "the client stopped before finishing")

    def _fail(self, pending: PendingPairing, why: str) -> None:
        self._drop(pending)
        if not pending.pin.done():
            pending.pin.cancel()
        _settle_failed(pending, why)
        log.info("pairing %s ended: %s", pending.id, why)

    def _drop(self, pending: PendingPairing) -> None:
        if self._by_key.get(pending.key) is pending:
            del self._by_key[pending.key]


def _settle_failed(pending: PendingPairing, why: str) -> None:
    if pending.outcome.done():
        return
    pending.outcome.set_exception(PinError(f"pairing {pending.id} failed: {why}"))
    # Nobody may be waiting on the outcome: mark it retrieved so asyncio stays quiet.
    with contextlib.suppress(PinError):
        pending.outcome.exception()
