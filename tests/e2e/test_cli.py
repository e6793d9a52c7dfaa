"""The README's flow, as a new user runs it: serve, pair with the PIN, list apps, manage clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def moonhowl(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moonhowl", *args], capture_output=True, text=True,
                          timeout=60, check=False, **kwargs)


@pytest.fixture
def server(tmp_path):
    state = tmp_path / "state"
    http, https = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moonhowl", "serve", "--state-dir", str(state), "--set", "server.bind=127.0.0.1",
         "--set", f"server.http_port={http}", "--set", f"server.https_port={https}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while not (state / "api.sock").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield {"state": state, "http": http, "proc": proc}
    proc.terminate()
    assert proc.wait(10) == 0  # a clean shutdown on SIGTERM
    assert not (state / "api.sock").exists()


def test_pair_list_and_manage_clients(server, tmp_path):
    state, http = str(server["state"]), str(server["http"])
    identity = str(tmp_path / "client")
    pairing = subprocess.Popen([sys.executable, "-m", "moonhowl", "client", "pair", "127.0.0.1", "--port", http,
                                "--pin", "4242", "--identity", identity],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        status = json.loads(moonhowl("status", "--state-dir", state).stdout)
        if status["pairings"]:
            break
        assert time.monotonic() < deadline, "the pairing request never arrived"
        time.sleep(0.1)
    pin = moonhowl("pin", "4242", "--state-dir", state)
    assert pin.returncode == 0, pin.stderr
    assert "paired: roth" in pin.stdout
    _out, err = pairing.communicate(timeout=30)
    assert pairing.returncode == 0, err
    assert "enter PIN 4242" in err

    listing = moonhowl("client", "list", "127.0.0.1", "--port", http, "--identity", identity)
    assert listing.returncode == 0, listing.stderr
    assert "Desktop" in listing.stdout and "Test pattern" in listing.stdout

    clients = moonhowl("clients", "--state-dir", state)
    client_id = clients.stdout.split()[0]
    assert "roth" in clients.stdout
    removed = moonhowl("clients", "remove", client_id, "--state-dir", state)
    assert removed.returncode == 0 and client_id in removed.stdout
    assert "no paired clients" in moonhowl("clients", "--state-dir", state).stdout


def test_pin_without_a_waiting_client_is_a_clear_error(server):
    result = moonhowl("pin", "1234", "--state-dir", str(server["state"]))
    assert result.returncode == 1
    assert "no pairing is waiting" in result.stderr


def test_pin_without_a_server_is_a_clear_error(tmp_path):
    result = moonhowl("pin", "1234", "--state-dir", str(tmp_path))
    assert result.returncode != 0
    assert "no server is running" in result.stderr


def test_corrupt_state_stops_the_server_naming_the_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "clients.json").write_text("{oops")
    result = moonhowl("serve", "--state-dir", str(state), "--set", f"server.http_port={free_port()}")
    assert result.returncode == 2
    assert str(state / "clients.json") in result.stderr
    assert (state / "clients.json").read_text() == "{oops"


def test_bad_config_names_key_and_line(tmp_path):
    path = tmp_path / "moonhowl.toml"
    path.write_text("[stream]\nfec_percentage = \"lots\"\n")
    result = moonhowl("config", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:line 2: stream.fec_percentage must be a whole number" in result.stderr


def test_config_prints_the_effective_configuration():
    result = moonhowl("config", "--set", "server.http_port=5000", env={**os.environ, "XDG_CONFIG_HOME": "/nonexistent"})
    assert result.returncode == 0
    assert "http_port = 5000" in result.stdout and 'title = "Test pattern"' in result.stdout


def test_help_lists_the_commands():
    result = moonhowl("--help")
    for command in ("serve", "pin", "clients", "config", "doctor", "client", "test"):
        assert command in result.stdout
