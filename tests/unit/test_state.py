"""Host state: identity generated once, pairings kept, corrupt files never overwritten."""

from __future__ import annotations

import os
import stat

import pytest

from moonhowl.client.identity import ClientIdentity
from moonhowl.files import atomic_write
from moonhowl.state import HostState, StateError

pytestmark = pytest.mark.unit


def test_identity_is_created_once_and_reused(tmp_path):
    first = HostState.open(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "server.key").st_mode) == 0o600
    second = HostState.open(tmp_path)
    assert (second.cert_pem, second.unique_id) == (first.cert_pem, first.unique_id)


def test_clients_persist_and_are_found_by_exact_certificate(tmp_path):
    state = HostState.open(tmp_path)
    a, b = ClientIdentity.generate(serial_zero=True), ClientIdentity.generate(serial_zero=True)
    added = state.add_client(a.cert_pem, "tv")
    assert state.add_client(a.cert_pem, "tv") == added  # idempotent
    reopened = HostState.open(tmp_path)
    assert [c.id for c in reopened.clients] == [added.id]
    from moonhowl.protocol.crypto import cert_der

    assert reopened.find_client(cert_der(a.cert_pem)) is not None
    assert reopened.find_client(cert_der(b.cert_pem)) is None  # same subject, other key
    assert reopened.remove_client(added.id) is not None
    assert HostState.open(tmp_path).clients == []


@pytest.mark.parametrize("name, content", [
    ("clients.json", b"{not json"),
    ("clients.json", b'{"clients": [{"id": "x"}]}'),
    ("clients.json", b"[]"),
    ("host.json", b'{"version": 1}'),
    ("server.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"),
])
def test_a_corrupt_file_stops_with_its_name_and_is_left_alone(tmp_path, name, content):
    state = HostState.open(tmp_path)
    state.add_client(ClientIdentity.generate().cert_pem, "tv")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StateError, match=str(tmp_path / name)):
        HostState.open(tmp_path)
    assert (tmp_path / name).read_bytes() == content


def test_missing_key_with_existing_certificate_is_an_error(tmp_path):
    HostState.open(tmp_path)
    (tmp_path / "server.key").unlink()
    with pytest.raises(StateError, match=r"server\.key is missing"):
        HostState.open(tmp_path)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, b"one", 0o600)
    atomic_write(path, b"two", 0o600)
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left behind
