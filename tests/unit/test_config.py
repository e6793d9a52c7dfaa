"""Configuration: defaults, overrides, and errors that name the key and line."""

from __future__ import annotations

import logging
import tomllib

import pytest

from moonhowl import config

pytestmark = pytest.mark.unit


def test_defaults_have_desktop_and_test_pattern_and_standard_ports():
    cfg = config.parse("")
    assert [a.title for a in cfg.apps] == ["Desktop", "Test pattern"]
    assert [a.id for a in cfg.apps] == [1, 2]
    assert (cfg.port("http"), cfg.port("https"), cfg.port("rtsp")) == (47989, 47984, 48010)
    assert cfg.get("encoders", "h264")[-2:] == ["x264", "openh264"]


def test_printed_configuration_parses_back_to_the_same():
    text = "[server]\nhttp_port = 1234\n[[apps]]\ntitle = \"Shell\"\ncommand = [\"foot\", \"-e\", \"sh\"]\n"
    cfg = config.parse(text)
    again = config.parse(cfg.to_toml())
    assert again.values == cfg.values
    assert again.apps == cfg.apps
    assert tomllib.loads(cfg.to_toml())["server"]["http_port"] == 1234


def test_wrong_type_names_the_key_and_line():
    text = "[server]\nhostname = \"box\"\n\nhttp_port = \"eighty\"\n"
    with pytest.raises(config.ConfigError, match=r"line 4: server\.http_port must be a whole number"):
        config.parse(text)


def test_out_of_range_port_is_an_error():
    with pytest.raises(config.ConfigError, match=r"line 2: server\.rtsp_port must be a port number"):
        config.parse("[server]\nrtsp_port = 70000\n")


def test_invalid_toml_says_where():
    with pytest.raises(config.ConfigError, match=r"invalid TOML.*line 2"):
        config.parse("[server]\nhttp_port = = 1\n")


def test_unknown_keys_are_warned_about_once(caplog):
    caplog.set_level(logging.WARNING)
    cfg = config.parse("[server]\nhttp_prot = 1\n[video]\nx = 1\n")
    assert len(cfg.warnings) == 2
    assert "line 2: unknown key server.http_prot" in cfg.warnings[0]
    assert "line 3: unknown section [video]" in cfg.warnings[1]
    assert len([r for r in caplog.records if "unknown" in r.message]) == 2


def test_app_errors_name_the_entry():
    text = "[[apps]]\ntitle = \"A\"\n[[apps]]\ntitle = \"B\"\nkind = \"game\"\n"
    with pytest.raises(config.ConfigError, match=r"line 3: apps\[1\]\.kind must be one of"):
        config.parse(text)
    with pytest.raises(config.ConfigError, match="used twice"):
        config.parse("[[apps]]\ntitle = \"A\"\n[[apps]]\ntitle = \"A\"\n")


def test_command_line_overrides_are_checked():
    assert config.parse("", None, {"server": {"http_port": 5}}).port("http") == 5
    with pytest.raises(config.ConfigError, match=r"--set server\.http_port must be a whole number"):
        config.parse("", None, {"server": {"http_port": "x"}})
    with pytest.raises(config.ConfigError, match="no such setting"):
        config.parse("", None, {"server": {"htp_port": 5}})


def test_pin_page_values():
    with pytest.raises(config.ConfigError, match=r"pairing\.pin_page must be one of"):
        config.parse("[pairing]\npin_page = \"everyone\"\n")
