"""The WebSocket protocol shared by /exec/start, /images/build and /images/create.

Reference §5.1: a config frame first (text or binary), a `starting` message,
raw output as text frames, and a close whose reason is a JSON
WebSocketMessage of at most 123 bytes.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from kleened.api.errors import validation_message

MAX_REASON = 123
# klee's websockets client refuses messages over 1 MiB; stay far below.
MAX_FRAME = 64 * 1024

CLOSE_NORMAL = 1000
CLOSE_DETACHED = 1001
CLOSE_INVALID = 1002
CLOSE_FAILURE = 1011

M = TypeVar("M", bound=BaseModel)


def message(
    msg_type: Literal["starting", "closing", "error"], text: str = "", data: str = ""
) -> str:
    """A WebSocketMessage as compact JSON with the original's alphabetical key order."""
    return json.dumps(
        {"data": data, "message": text, "msg_type": msg_type},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def close_reason(
    msg_type: Literal["starting", "closing", "error"], text: str = "", data: str = ""
) -> str:
    """The JSON reason, shortened (message first, then data) to fit 123 bytes."""
    reason = message(msg_type, text, data)
    while len(reason.encode()) > MAX_REASON and text:
        text = text[: max(0, len(text) - max(1, len(reason.encode()) - MAX_REASON))]
        reason = message(msg_type, text, data)
    while len(reason.encode()) > MAX_REASON and data:
        data = data[:-1]
        reason = message(msg_type, text, data)
    return reason


class ConfigError(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


async def receive_config(websocket: WebSocket, model: type[M]) -> M:
    """The first frame, text or binary, parsed as `model` (unknown keys ignored)."""
    frame = await websocket.receive()
    if frame["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(frame.get("code", 1000))
    raw = frame.get("text")
    if raw is None:
        raw = (frame.get("bytes") or b"").decode("utf-8", errors="replace")
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"invalid json: {err}") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(list(err.errors()))) from err


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        # The client may already be gone.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close(code=code, reason=reason)


class TextStream:
    """Turns arbitrary process bytes into valid UTF-8 text frames.

    Invalid bytes become U+FFFD; a multibyte sequence split across chunks is
    kept for the next chunk instead of being mangled (§14.2.4).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> list[str]:
        text = self._decoder.decode(chunk)
        return [text[i : i + MAX_FRAME] for i in range(0, len(text), MAX_FRAME)] if text else []

    def flush(self) -> list[str]:
        text = self._decoder.decode(b"", final=True)
        return [text] if text else []
