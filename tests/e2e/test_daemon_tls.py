"""TLS listeners with client-certificate verification, with certificates made here."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    d.mkdir()
    p = {
        name: d / f"{name}.pem"
        for name in (
            "ca",
            "ca-key",
            "server",
            "server-key",
            "client",
            "client-key",
            "rogue",
            "rogue-key",
        )
    }
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(p["ca-key"]),
        "-out",
        str(p["ca"]),
    )
    # Clients check the server's address against subjectAltName, not the CN.
    san = d / "server-san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "klee-user")):
        csr = d / f"{name}.csr"
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(p[f"{name}-key"]),
            "-out",
            str(csr),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(p["ca"]),
            "-CAkey",
            str(p["ca-key"]),
            "-CAcreateserial",
            *(("-extfile", str(san)) if name == "server" else ()),
            "-days",
            "2",
            "-out",
            str(p[name]),
        )
    # A self-signed client certificate the daemon's CA never signed.
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=rogue",
        "-keyout",
        str(p["rogue-key"]),
        "-out",
        str(p["rogue"]),
    )
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tlsverify_refuses_clients_without_a_signed_certificate(daemon_factory, tmp_path, pki):
    port = free_port()
    daemon_factory(
        api_listening_sockets=[
            {"address": f"http://{tmp_path}/kleened.sock"},
            {
                "address": f"https://127.0.0.1:{port}",
                "tlscert": str(pki["server"]),
                "tlskey": str(pki["server-key"]),
                "tlscacert": str(pki["ca"]),
                "tlsverify": True,
            },
        ]
    )
    url = f"https://127.0.0.1:{port}/volumes/list"

    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, verify=str(pki["ca"]), timeout=10)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(
            url, verify=str(pki["ca"]), cert=(str(pki["rogue"]), str(pki["rogue-key"])), timeout=10
        )

    r = httpx.get(
        url, verify=str(pki["ca"]), cert=(str(pki["client"]), str(pki["client-key"])), timeout=10
    )
    assert (r.status_code, r.json()) == (200, [])


def test_plain_tcp_listener_warns_loudly(daemon_factory, tmp_path):
    port = free_port()
    daemon = daemon_factory(
        api_listening_sockets=[
            {"address": f"http://{tmp_path}/kleened.sock"},
            {"address": f"http://127.0.0.1:{port}"},
        ]
    )
    r = httpx.get(f"http://127.0.0.1:{port}/volumes/list", timeout=10)
    assert (r.status_code, r.json()) == (200, [])
    log = daemon.log_path.read_text()
    assert "WITHOUT client certificates" in log
    assert "WARNING" in log
