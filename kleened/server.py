"""Listeners: one uvicorn server per configured socket, all serving one app.

Sockets are created here rather than by uvicorn so that a UNIX socket gets
mode 0660 (uvicorn would make it 0666: access to it is root access), a stale
socket file is replaced, and a second daemon on the same socket is refused.
The app's lifespan runs once, around all the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from kleened.app import create_app
from kleened.config import Listener, Settings

log = logging.getLogger("kleened")
PIDFILE = Path("/var/run/kleened.pid")


class ListenerError(Exception):
    pass


def unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def bind_unix(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if path.is_socket() and unix_socket_answers(path):
            raise ListenerError(f"another daemon is already listening on {path}")
        path.unlink()  # a stale socket (or file) from an earlier run
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # no window in which the socket is world-accessible
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ListenerError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve` below."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_for(app: object, listener: Listener, settings: Settings) -> _Server:
    kwargs: dict = dict(
        lifespan="off",  # run once by serve(), not once per listener
        log_config=None,
        access_log=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_max_size=16 * 1024 * 1024,
        # Compressing process output cost two thirds of the daemon's CPU when
        # streaming (benchmarks/, row 4), for clients that are mostly local.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
    )
    if listener.tls:
        kwargs.update(
            ssl_certfile=str(listener.tlscert),
            ssl_keyfile=str(listener.tlskey),
        )
        if listener.tlscacert:
            kwargs["ssl_ca_certs"] = str(listener.tlscacert)
        if listener.tlsverify:
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return _Server(uvicorn.Config(app, **kwargs))


def warn_about(listener: Listener) -> None:
    if listener.kind == "tcp" and not listener.verifies_clients:
        log.warning(
            "!!! %s accepts connections from anyone who can reach %s:%s WITHOUT client "
            "certificates: whoever connects controls this host as root. Use https:// with "
            "tlsverify: true and tlscacert, or listen on a UNIX socket only. !!!",
            listener.address,
            listener.host,
            listener.port,
        )


def open_sockets(settings: Settings) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for listener in settings.api_listening_sockets:
            if listener.kind == "unix":
                assert listener.path is not None
                sockets.append(bind_unix(listener.path))
            else:
                assert listener.host is not None and listener.port is not None
                sockets.append(bind_tcp(listener.host, listener.port))
            warn_about(listener)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def remove_socket_files(settings: Settings) -> None:
    for listener in settings.api_listening_sockets:
        if listener.kind == "unix" and listener.path is not None:
            with contextlib.suppress(FileNotFoundError):
                listener.path.unlink()


def write_pidfile() -> None:
    try:
        PIDFILE.write_text(f"{os.getpid()}\n")
    except OSError as err:
        log.warning("could not write %s: %s", PIDFILE, err)  # only logged, as the original


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    sockets = open_sockets(settings)
    servers = [server_for(app, lst, settings) for lst in settings.api_listening_sockets]
    loop = asyncio.get_running_loop()

    def stop(signame: str) -> None:
        log.info("received %s, shutting down", signame)
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    write_pidfile()
    try:
        async with app.router.lifespan_context(app):
            for listener in settings.api_listening_sockets:
                log.info("listening on %s", listener.address)
            await asyncio.gather(
                *(srv.serve(sockets=[sock]) for srv, sock in zip(servers, sockets, strict=True))
            )
    finally:
        for sock in sockets:
            sock.close()
        remove_socket_files(settings)
        with contextlib.suppress(OSError):
            PIDFILE.unlink()
        log.info("kleened stopped")
