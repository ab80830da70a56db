"""`kleened serve | migrate | ping | openapi | init [--dry-run]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys

from kleened import __version__
from kleened.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from kleened import logs, server

    settings = _settings(args)
    logs.configure(settings)
    try:
        asyncio.run(server.serve(settings))
    except server.ListenerError as err:
        logging.getLogger("kleened").error("%s", err)
        return 1
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from kleened.app import database_path
    from kleened.host.factory import build_storage
    from kleened.store import db

    settings = _settings(args)
    path = asyncio.run(database_path(settings, build_storage(settings)))
    db.migrate(path)
    print(f"database {path} is at the newest schema")
    return 0


def _ping_one(settings: Settings, timeout: float) -> tuple[bool, str]:
    """Ask the first listener for /volumes/list; any HTTP answer means alive."""
    listener = settings.api_listening_sockets[0]
    request = b"GET /volumes/list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    try:
        if listener.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(listener.path))
        else:
            sock = socket.create_connection((listener.host, listener.port), timeout=timeout)
            if listener.tls:
                import ssl

                ctx = ssl.create_default_context(
                    cafile=str(listener.tlscacert) if listener.tlscacert else None
                )
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                if listener.tlscert and listener.tlskey:
                    ctx.load_cert_chain(str(listener.tlscert), str(listener.tlskey))
                sock = ctx.wrap_socket(sock)
        with sock:
            sock.sendall(request)
            answer = sock.recv(64)
    except OSError as err:
        return False, f"kleened is not running ({listener.address}: {err})"
    if answer.startswith(b"HTTP/1.1 "):
        return True, f"kleened is running ({listener.address})"
    return False, f"something else answers on {listener.address}"


def cmd_ping(args: argparse.Namespace) -> int:
    ok, message = _ping_one(_settings(args), args.timeout)
    print(message)
    return 0 if ok else 1


def cmd_openapi(args: argparse.Namespace) -> int:
    from kleened.app import create_app

    spec = create_app(_settings(args)).openapi()
    json.dump(spec, sys.stdout, indent=2)
    print()
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from kleened.hostinit import run_init

    return run_init(_settings(args), dry_run=args.dry_run)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kleened",
        description="Kleene container daemon (jails on FreeBSD, namespaces on Linux).",
    )
    top.add_argument("--version", action="version", version=f"kleened {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            metavar="PATH",
            help="configuration file (default: $KLEENED_CONFIG, then "
            "/usr/local/etc/kleened/kleened.yaml, /etc/kleened/kleened.yaml, "
            "else built-in defaults)",
        )
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the daemon in the foreground")
    add("migrate", cmd_migrate, "create or upgrade the metadata database, then exit")
    ping = add("ping", cmd_ping, "exit 0 if a daemon answers on the configured socket")
    ping.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    add("openapi", cmd_openapi, "print the OpenAPI specification as JSON")
    init = add("init", cmd_init, "prepare this host for kleened (kernel modules, datasets, ...)")
    init.add_argument("--dry-run", action="store_true", help="only check; change nothing")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"kleened: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
