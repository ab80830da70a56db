"""Image management routes (reference §3.10-3.14)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from kleened.api import ws
from kleened.api.schemas import (
    ErrorResponse,
    IdResponse,
    Image,
    ImageBuildConfig,
    ImageCreateConfig,
    LenientBool,
)
from kleened.engine import build as build_engine
from kleened.engine import image_create as image_create_engine
from kleened.engine import images
from kleened.engine.dockerfile import ParseError
from kleened.engine.errors import EngineError
from kleened.engine.ids import new_id

log = logging.getLogger("kleened.images")
router = APIRouter(prefix="/images", tags=["images"])
ERR = {"model": ErrorResponse}


@router.get("/list", response_model=list[Image], summary="List images, newest first")
async def image_list(request: Request) -> JSONResponse:
    return JSONResponse([i.to_api() for i in await images.list_all(request.app.state.runtime)])


@router.get(
    "/{image_id}/inspect",
    response_model=Image,
    responses={404: ERR, 500: ERR},
    summary="Inspect an image",
)
async def image_inspect(image_id: str, request: Request) -> JSONResponse:
    return JSONResponse((await images.get(request.app.state.runtime, image_id)).to_api())


@router.post(
    "/{image_id}/tag",
    response_model=IdResponse,
    responses={404: ERR, 500: ERR},
    summary="Give an image a name:tag, taking it from any other image",
)
async def image_tag(image_id: str, request: Request, nametag: str = Query(...)) -> JSONResponse:
    return JSONResponse({"id": await images.tag(request.app.state.runtime, image_id, nametag)})


@router.delete(
    "/{image_id}",
    response_model=IdResponse,
    responses={404: ERR, 500: ERR},
    summary="Remove an image that no container or image depends on",
)
async def image_remove(image_id: str, request: Request) -> JSONResponse:
    return JSONResponse({"id": await images.remove(request.app.state.runtime, image_id)})


@router.post(
    "/prune",
    response_model=list[str],
    summary="Remove unused untagged images (all unused images with all=true)",
)
async def image_prune(request: Request, all: LenientBool = Query(False)) -> JSONResponse:
    return JSONResponse(await images.prune(request.app.state.runtime, all_=all))


@router.get(
    "/create",
    responses={400: ERR},
    summary="WebSocket: create a base image (fetch, fetch-auto, zfs-copy, zfs-clone)",
)
async def image_create_http() -> JSONResponse:
    return JSONResponse({"message": "this endpoint needs a WebSocket upgrade"}, status_code=400)


@router.websocket("/create")
async def image_create(websocket: WebSocket) -> None:
    """Reference §5.4: progress frames, then close 1000 `image created` with the id."""
    runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        config = await ws.receive_config(websocket, ImageCreateConfig)
    except ws.ConfigError as err:
        await websocket.send_text(err.text)
        summary = "invalid json" if err.text.startswith("invalid json") else "invalid parameters"
        await ws.close(websocket, ws.CLOSE_INVALID, ws.close_reason("error", summary))
        return
    except WebSocketDisconnect:
        return
    await websocket.send_text(ws.message("starting"))
    result = image_create_engine.Created()
    try:
        # aclosing: if the client leaves, the generator is closed at once and
        # removes whatever it had made.
        async with contextlib.aclosing(image_create_engine.run(runtime, config, result)) as lines:
            async for line in lines:
                await websocket.send_text(line)
    except EngineError as err:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(err.message)  # the full text; the reason is cut to fit
        await ws.close(
            websocket,
            ws.CLOSE_FAILURE,
            ws.close_reason("error", f"image creation failed: {err.message}"),
        )
        return
    except (WebSocketDisconnect, RuntimeError):
        return  # the client left; run() removed what it had made
    assert result.image is not None
    await ws.close(
        websocket, ws.CLOSE_NORMAL, ws.close_reason("closing", "image created", result.image.id)
    )


@router.get(
    "/build",
    responses={400: ERR},
    summary="WebSocket: build an image from a Dockerfile in a context on the daemon's host",
)
async def image_build_http() -> JSONResponse:
    return JSONResponse({"message": "this endpoint needs a WebSocket upgrade"}, status_code=400)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Frames after the config are ignored (§5.3); returns when the client is gone."""
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return


@router.websocket("/build")
async def image_build(websocket: WebSocket) -> None:
    """Reference §5.3: step lines, output and snapshot lines, then close 1000 or 1011."""
    runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        config = await ws.receive_config(websocket, ImageBuildConfig)
        images.parse_nametag(config.tag)
    except (ws.ConfigError, EngineError) as err:
        text = err.text if isinstance(err, ws.ConfigError) else err.message
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(text)
        summary = "invalid json" if text.startswith("invalid json") else "invalid parameters"
        await ws.close(websocket, ws.CLOSE_INVALID, ws.close_reason("error", summary))
        return
    except WebSocketDisconnect:
        return
    try:
        plan = await asyncio.to_thread(build_engine.load_plan, config)
    except ParseError as err:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(ws.message("starting"))
            await websocket.send_text(err.message)
        await ws.close(
            websocket,
            ws.CLOSE_FAILURE,
            ws.close_reason("error", "failed to process Dockerfile"),  # [exact]
        )
        return

    image_id = new_id()
    stream = ws.TextStream()

    async def emit(item: str | bytes) -> None:
        for text in stream.feed(item) if isinstance(item, bytes) else [item]:
            await websocket.send_text(text)

    builder = build_engine.Build(runtime, config, plan, image_id, emit)
    try:
        await websocket.send_text(ws.message("starting", data=image_id))
    except (WebSocketDisconnect, RuntimeError):
        return
    # The build is tied to the socket (§5.3): if the client goes, the build is
    # cancelled and removes everything it made.
    work = asyncio.ensure_future(builder.run())
    watcher = asyncio.ensure_future(_until_disconnect(websocket))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    try:
        outcome = await work
    except asyncio.CancelledError:
        return  # the client left; the build removed what it had made
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # sending failed: the client left
    except Exception:
        log.exception("build %s failed unexpectedly", image_id)
        await ws.close(websocket, ws.CLOSE_FAILURE, ws.close_reason("error", "image build failed"))
        return
    if outcome.ok:
        await ws.close(
            websocket, ws.CLOSE_NORMAL, ws.close_reason("closing", "image created", image_id)
        )
    else:
        await ws.close(
            websocket,
            ws.CLOSE_FAILURE,
            ws.close_reason("error", "image build failed", outcome.data),  # [exact]
        )
