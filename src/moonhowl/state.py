"""The host's persistent state: its identity (certificate, key, uniqueid) and its paired clients.

Everything is written atomically (temporary file, fsync, rename), so a crash never leaves a half
written file. A file that exists but cannot be read is never replaced: the server stops with an
error naming it, because silently starting over would discard every pairing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moonhowl.files import atomic_write
from moonhowl.protocol import crypto
from moonhowl.protocol.errors import ProtocolError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SERVER_CN = "moonhowl GameStream Host"


class StateError(Exception):
    """A state file is corrupt or unreadable; the message names the file and what to do."""


def client_id(cert_pem: bytes) -> str:
    """A short stable ID for a client: the start of its certificate's SHA-256 fingerprint.

    Every Moonlight client sends uniqueid=0123456789ABCDEF, so the certificate is the only thing
    that tells clients apart.
    """
    return hashlib.sha256(crypto.cert_der(cert_pem)).hexdigest()[:12]


@dataclass(frozen=True)
class PairedClient:
    id: str
    name: str
    cert_pem: str
    paired_at: str

    @property
    def der(self) -> bytes:
        return crypto.cert_der(self.cert_pem.encode())


class HostState:
    """Loaded with `HostState.open(directory)`; mutations persist before they return."""

    def __init__(self, directory: Path, cert_pem: bytes, key_pem: bytes, unique_id: str,
                 clients: list[PairedClient]) -> None:
        self.directory = directory
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.unique_id = unique_id
        self._clients = {c.id: c for c in clients}
        self._by_der = {c.der: c for c in clients}
        self._listeners: list[Callable[[], None]] = []

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path) -> HostState:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem, key_pem = cls._load_identity(directory)
        unique_id = cls._load_host(directory / "host.json")
        clients = cls._load_clients(directory / "clients.json")
        log.info("state in %s: %d paired client(s)", directory, len(clients))
        return cls(directory, cert_pem, key_pem, unique_id, clients)

    @staticmethod
    def _load_identity(directory: Path) -> tuple[bytes, bytes]:
        cert_path, key_path = directory / "server.pem", directory / "server.key"
        if not cert_path.exists() and not key_path.exists():
            log.info("generating the server certificate and RSA-2048 key in %s", directory)
            cert_pem, key_pem = crypto.generate_identity(SERVER_CN)
            atomic_write(key_path, key_pem, 0o600)
            atomic_write(cert_path, cert_pem, 0o644)
            return cert_pem, key_pem
        for path in (cert_path, key_path):
            if not path.exists():
                raise StateError(f"{path} is missing while its partner exists; restore it from a backup "
                                 f"(paired clients pinned this host's certificate), or remove both "
                                 f"files to create a new identity and re-pair every client")
        cert_pem, key_pem = _read(cert_path), _read(key_path)
        try:
            crypto.load_cert(cert_pem)
        except ProtocolError as exc:
            raise StateError(f"{cert_path} is corrupt ({exc}); restore it or remove server.pem and "
                             f"server.key to create a new identity (clients must re-pair)") from None
        if b"PRIVATE KEY" not in key_pem:
            raise StateError(f"{key_path} is corrupt (no PEM private key); restore it from a backup")
        return cert_pem, key_pem

    @staticmethod
    def _load_host(path: Path) -> str:
        if not path.exists():
            unique_id = str(uuid.uuid4()).upper()
            atomic_write(path, _dump({"version": FORMAT_VERSION, "uniqueid": unique_id}))
            return unique_id
        data = _load_json(path)
        unique_id = data.get("uniqueid")
        if not isinstance(unique_id, str) or not unique_id:
            raise StateError(f"{path} is corrupt: no 'uniqueid' string; restore it from a backup")
        return unique_id

    @staticmethod
    def _load_clients(path: Path) -> list[PairedClient]:
        if not path.exists():
            return []
        data = _load_json(path)
        raw = data.get("clients")
        if not isinstance(raw, list):
            raise StateError(f"{path} is corrupt: no 'clients' list; restore it from a backup "
                             f"(moonhowl will not overwrite it)")
        clients = []
        for index, entry in enumerate(raw):
            try:
                client = PairedClient(**entry)
                if client.id != client_id(client.cert_pem.encode()):
                    raise ValueError("its id does not match its certificate")
            except (TypeError, ValueError, ProtocolError) as exc:
                raise StateError(f"{path} is corrupt: client #{index} is unreadable ({exc}); "
                                 f"restore the file from a backup (moonhowl will not overwrite it)") from None
            clients.append(client)
        return clients

    # --- clients ---------------------------------------------------------------------------------
    @property
    def clients(self) -> list[PairedClient]:
        return list(self._clients.values())

    def find_client(self, der: bytes) -> PairedClient | None:
        """The paired client whose certificate is exactly `der`, or None."""
        return self._by_der.get(der)

    def add_client(self, cert_pem: bytes, name: str) -> PairedClient:
        cid = client_id(cert_pem)
        if cid in self._clients:
            return self._clients[cid]
        client = PairedClient(cid, name, cert_pem.decode("ascii"),
                              dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self._save_clients([*self._clients.values(), client])
        self._clients[cid] = client
        self._by_der[client.der] = client
        log.info("paired client %s (%s)", cid, name)
        self._notify()
        return client

    def remove_client(self, cid: str) -> PairedClient | None:
        client = self._clients.get(cid)
        if client is None:
            return None
        self._save_clients([c for c in self._clients.values() if c.id != cid])
        del self._clients[cid]
        del self._by_der[client.der]
        log.info("unpaired client %s (%s)", cid, client.name)
        self._notify()
        return client

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _save_clients(self, clients: list[PairedClient]) -> None:
        # Written before memory changes: a failed write leaves both as they were.
        atomic_write(self.directory / "clients.json",
                     _dump({"version": FORMAT_VERSION, "clients": [asdict(c) for c in clients]}), 0o600)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} is corrupt ({exc}); restore it from a backup "
                         f"(moonhowl will not overwrite it)") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} is corrupt: expected a JSON object; restore it from a backup")
    return data


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()
