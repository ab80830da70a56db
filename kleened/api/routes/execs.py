"""Execution instances: REST create/stop and the /exec/start WebSocket (§3.8, §3.9, §5.2)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from kleened.api import ws
from kleened.api.schemas import ErrorResponse, ExecConfig, ExecStartConfig, IdResponse, LenientBool
from kleened.engine import execs
from kleened.engine.errors import EngineError

router = APIRouter(prefix="/exec", tags=["exec"])
ERR = {"model": ErrorResponse}


@router.post(
    "/create",
    status_code=201,
    response_model=IdResponse,
    responses={404: ERR, 500: ERR},
    summary="Create an execution instance",
)
async def exec_create(config: ExecConfig, request: Request) -> JSONResponse:
    instance = await execs.create(
        request.app.state.runtime,
        config.container_id,
        config.cmd,
        config.user,
        config.env,
        config.tty,
    )
    return JSONResponse({"id": instance.id}, status_code=201)


@router.post(
    "/{exec_id}/stop",
    response_model=IdResponse,
    responses={404: ERR},
    summary="Stop an execution instance, and optionally its container",
)
async def exec_stop(
    exec_id: str,
    request: Request,
    force_stop: LenientBool = Query(...),
    stop_container: LenientBool = Query(...),
) -> JSONResponse:
    await execs.stop(
        request.app.state.runtime, exec_id, force=force_stop, stop_container=stop_container
    )
    return JSONResponse({"id": exec_id})


@router.get(
    "/start",
    include_in_schema=True,
    responses={400: ERR},
    summary="WebSocket: start an execution instance and attach to its I/O",
)
async def exec_start_http() -> JSONResponse:
    """Documents the WebSocket; a plain GET is told to upgrade."""
    return JSONResponse({"message": "this endpoint needs a WebSocket upgrade"}, status_code=400)


async def _pump_input(websocket: WebSocket, instance: execs.ExecInstance) -> None:
    """Every text or binary frame goes to the process's stdin; empty ones are ignored."""
    assert instance.process is not None
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        data = frame.get("bytes")
        if data is None:
            data = (frame.get("text") or "").encode()
        if data:
            await instance.process.write(data)


async def _pump_output(websocket: WebSocket, instance: execs.ExecInstance) -> None:
    stream = ws.TextStream()
    async with contextlib.aclosing(execs.output(instance)) as output:
        async for chunk in output:
            for text in stream.feed(chunk):
                await websocket.send_text(text)
    for text in stream.flush():
        await websocket.send_text(text)
    await instance.done.wait()


@router.websocket("/start")
async def exec_start(websocket: WebSocket) -> None:
    runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        config = await ws.receive_config(websocket, ExecStartConfig)
    except ws.ConfigError as err:
        await ws.close(
            websocket, ws.CLOSE_INVALID, ws.close_reason("error", f"invalid parameters: {err.text}")
        )
        return
    except WebSocketDisconnect:
        return

    try:
        instance = await execs.start(
            runtime, config.exec_id, start_container=config.start_container
        )
    except EngineError as err:
        # klee handles a failed start cleanly only as a non-1000/1001 close
        # before any frame (klee-client-needs §5.2), so no "error:" text frame.
        await ws.close(websocket, ws.CLOSE_FAILURE, ws.close_reason("error", err.message))
        return

    if not config.attach:
        await ws.close(
            websocket,
            ws.CLOSE_DETACHED,
            ws.close_reason("closing", "succesfully started execution instance in detached mode"),
        )  # [exact]
        return

    await websocket.send_text(ws.message("starting"))
    output = asyncio.create_task(_pump_output(websocket, instance))
    inputs = asyncio.create_task(_pump_input(websocket, instance))
    try:
        done, _ = await asyncio.wait({output, inputs}, return_when=asyncio.FIRST_COMPLETED)
        if output in done and output.exception() is None:
            await ws.close(
                websocket, ws.CLOSE_NORMAL, ws.close_reason("closing", instance.closing_message)
            )
        else:
            await execs.detach(runtime, instance)  # the client went away (§5.2)
    finally:
        for task in (output, inputs):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
