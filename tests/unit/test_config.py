"""Configuration: defaults without a file, the original's keys, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kleened.config import ConfigError, load_settings, settings_from_mapping


def test_no_file_gives_working_linux_defaults(monkeypatch):
    monkeypatch.delenv("KLEENED_CONFIG", raising=False)
    monkeypatch.setattr("kleened.config.DEFAULT_CONFIG_PATHS", ())
    s = load_settings(None, system="Linux")
    assert s.storage == "dir"
    assert s.data_root == Path("/var/lib/kleened")
    assert [lst.address for lst in s.api_listening_sockets] == ["http:///var/run/kleened.sock"]
    assert s.api_listening_sockets[0].kind == "unix"
    assert s.api_listening_sockets[0].path == Path("/var/run/kleened.sock")
    assert s.enable_logging is False
    assert s.source is None


def test_freebsd_defaults_to_zfs():
    s = settings_from_mapping({}, system="FreeBSD")
    assert s.storage == "zfs"
    assert s.kleene_root == "zroot/kleene"
    assert (s.image_root, s.container_root, s.volume_root) == (
        "zroot/kleene/image",
        "zroot/kleene/container",
        "zroot/kleene/volumes",
    )


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "k.yaml"
    cfg.write_text("kleene_root: tank/k\nstorage: zfs\nlog_level: debug\n")
    monkeypatch.setenv("KLEENED_CONFIG", str(cfg))
    s = load_settings(None)
    assert (s.kleene_root, s.storage, s.log_level, s.source) == ("tank/k", "zfs", "debug", cfg)


def test_explicit_path_wins_over_env(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("log_level: error\n")
    (tmp_path / "b.yaml").write_text("log_level: debug\n")
    monkeypatch.setenv("KLEENED_CONFIG", str(tmp_path / "a.yaml"))
    assert load_settings(str(tmp_path / "b.yaml")).log_level == "debug"


@pytest.mark.parametrize(
    ("address", "kind", "host", "port", "path"),
    [
        ("http:///var/run/k.sock", "unix", None, None, Path("/var/run/k.sock")),
        ("http://127.0.0.1:8085", "tcp", "127.0.0.1", 8085, None),
        ("http://[::1]:8080/", "tcp", "::1", 8080, None),
        ("http://127.0.0.1", "tcp", "127.0.0.1", 80, None),
    ],
)
def test_listener_forms(address, kind, host, port, path):
    (lst,) = settings_from_mapping(
        {"api_listening_sockets": [{"address": address}]}
    ).api_listening_sockets
    assert (lst.kind, lst.host, lst.port, lst.path, lst.tls) == (kind, host, port, path, False)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("ftp://127.0.0.1:21", "Failed to extract correct information from socket URI"),
        ("http://localhost:8080", "Error parsing ip-address in 'api_socket'"),
        ("http://user@127.0.0.1:1", "userinfo, query and fragment are not allowed"),
        ("http://127.0.0.1:1/?x=1", "userinfo, query and fragment are not allowed"),
        ("http://127.0.0.1:1/prefix", "takes no path"),
        ("tcp://0.0.0.0:1", "Failed to extract correct information"),
    ],
)
def test_bad_listener_forms_name_the_key(address, words):
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"api_listening_sockets": [{"address": address}]})
    assert "api_listening_sockets[0].address" in str(err.value)
    assert words in str(err.value)


def test_missing_tls_file_is_named(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(
            {
                "api_listening_sockets": [
                    {
                        "address": "https://127.0.0.1:8443",
                        "tlscert": str(cert),
                        "tlskey": str(tmp_path / "missing-key.pem"),
                    }
                ]
            }
        )
    assert "tlskey" in str(err.value) and "does not exist" in str(err.value)


def test_https_requires_cert_and_key():
    with pytest.raises(ConfigError, match="needs both 'tlscert' and 'tlskey'"):
        settings_from_mapping({"api_listening_sockets": [{"address": "https://127.0.0.1:1"}]})


def test_tlsverify_must_be_boolean_and_needs_a_ca(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    base = {
        "address": "https://127.0.0.1:1",
        "tlscert": str(tmp_path / "c.pem"),
        "tlskey": str(tmp_path / "k.pem"),
    }
    with pytest.raises(ConfigError, match="'verify' options value not understood"):
        settings_from_mapping({"api_listening_sockets": [{**base, "tlsverify": "yes"}]})
    with pytest.raises(ConfigError, match="needs 'tlscacert'"):
        settings_from_mapping({"api_listening_sockets": [{**base, "tlsverify": True}]})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"storage": "btrfs"}, "'storage'"),
        ({"log_level": "loud"}, "'log_level'"),
        ({"enable_logging": "yes"}, "'enable_logging'"),
        ({"kleene_root": "/abs"}, "'kleene_root'"),
        ({"data_root": "relative"}, "'data_root'"),
        ({"api_listening_sockets": []}, "'api_listening_sockets'"),
        ({"kleene_rot": "x"}, "'kleene_rot'"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(raw)
    assert key in str(err.value)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kleene_root: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(str(bad))
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(str(notmap))
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(str(tmp_path / "absent.yaml"))


def test_overlay_storage_is_linux_only():
    assert settings_from_mapping({"storage": "overlay"}, system="Linux").storage == "overlay"
    with pytest.raises(ConfigError, match="'storage: overlay' needs Linux"):
        settings_from_mapping({"storage": "overlay"}, system="FreeBSD")
