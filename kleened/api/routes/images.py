"""Image management routes (reference §3.10-3.14)."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from kleened.api import ws
from kleened.api.schemas import ErrorResponse, IdResponse, Image, ImageCreateConfig, LenientBool
from kleened.engine import image_create as image_create_engine
from kleened.engine import images
from kleened.engine.errors import EngineError

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
