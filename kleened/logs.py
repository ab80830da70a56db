"""Logging set-up and the per-request access log."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from typing import Any

from kleened.config import LOG_FILE, Settings

log = logging.getLogger("kleened.access")


def configure(settings: Settings) -> None:
    handler: logging.Handler
    if settings.enable_logging:
        # Rotation as the original: 10 MB, five files kept.
        handler = logging.handlers.RotatingFileHandler(LOG_FILE, maxBytes=10_000_000, backupCount=5)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(levelname)s] %(name)s pid=%(process)d: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level_number)
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """Pure ASGI middleware (so WebSockets pass through untouched):
    method, path, status and duration of every request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "websocket.accept":
                status.append(101)
            elif message["type"] == "websocket.close" and not status:
                status.append(message.get("code", 1000))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "WS")
            log.info(
                "%s %s %s %.1fms",
                method,
                scope.get("path", ""),
                status[0] if status else "-",
                (time.perf_counter() - started) * 1000,
            )
