"""Image management routes (reference §3.10-3.14)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from kleened.api.schemas import ErrorResponse, IdResponse, Image, LenientBool
from kleened.engine import images

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
