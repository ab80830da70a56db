"""etc/kleened.yaml.sample is loadable and documents every key the parser accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kleened.config import KNOWN_KEYS, LISTENER_KEYS, load_settings, settings_from_mapping

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "kleened.yaml.sample"


def test_sample_loads_through_the_daemons_parser():
    settings = load_settings(str(SAMPLE), system="FreeBSD")
    assert settings.storage == "zfs"
    assert settings.kleene_root == "zroot/kleene"
    assert [lst.address for lst in settings.api_listening_sockets] == [
        "http:///var/run/kleened.sock"
    ]


def test_sample_values_are_the_freebsd_defaults():
    """The sample says its values are the defaults: an empty config must agree."""
    from_sample = load_settings(str(SAMPLE), system="FreeBSD")
    defaults = settings_from_mapping({}, system="FreeBSD")
    for key in KNOWN_KEYS:
        assert getattr(from_sample, key) == getattr(defaults, key), key


def test_every_accepted_key_is_set_and_documented():
    text = SAMPLE.read_text()
    assert set(yaml.safe_load(text)) == KNOWN_KEYS
    for key in KNOWN_KEYS:
        # each top-level key has a comment block right above it ending in "Default:"
        block = re.search(rf"((?:^#.*\n)+){re.escape(key)}:", text, re.MULTILINE)
        assert block is not None, f"{key} has no comment"
        assert "Default:" in block.group(1), f"{key}'s comment gives no default"
    for key in LISTENER_KEYS:
        assert re.search(rf"^#\s+{key}:", text, re.MULTILINE), f"listener key {key}"


def test_the_commented_tls_listener_also_parses(tmp_path):
    uncommented = re.sub(r"^  # ?( *)(- address|tls)", r"  \1\2", SAMPLE.read_text(), flags=re.M)
    raw = yaml.safe_load(uncommented)
    assert len(raw["api_listening_sockets"]) == 2
    for name in ("server-cert.pem", "server-key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = raw["api_listening_sockets"][1]
    for key in ("tlscert", "tlskey", "tlscacert"):
        tls[key] = str(tmp_path / Path(tls[key]).name)
    settings = settings_from_mapping(raw, system="FreeBSD")
    assert settings.api_listening_sockets[1].tlsverify is True
