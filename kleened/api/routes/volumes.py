"""Volume routes (reference §3.15-3.19)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kleened.api.schemas import ErrorResponse, IdResponse, Volume, VolumeConfig, VolumeInspect
from kleened.engine import volumes

router = APIRouter(prefix="/volumes", tags=["volumes"])
ERR = {"model": ErrorResponse}


@router.post(
    "/create",
    status_code=201,
    response_model=IdResponse,
    responses={500: ERR},
    summary="Create a volume (returns the existing one if the name is taken)",
)
async def volume_create(config: VolumeConfig, request: Request) -> JSONResponse:
    volume = await volumes.get_or_create(request.app.state.runtime, config.name)
    return JSONResponse({"id": volume.name}, status_code=201)


@router.get("/list", response_model=list[Volume], summary="List volumes, newest first")
async def volume_list(request: Request) -> JSONResponse:
    return JSONResponse([v.to_api() for v in await volumes.list_all(request.app.state.runtime)])


@router.get(
    "/{volume_name}/inspect",
    response_model=VolumeInspect,
    responses={404: ERR},
    summary="Inspect a volume and the mounts that use it",
)
async def volume_inspect(volume_name: str, request: Request) -> JSONResponse:
    volume, mounts = await volumes.inspect(request.app.state.runtime, volume_name)
    return JSONResponse({"volume": volume.to_api(), "mountpoints": [m.to_api() for m in mounts]})


@router.delete(
    "/{volume_name}",
    response_model=IdResponse,
    responses={404: ERR, 500: ERR},
    summary="Remove a volume that no container uses",
)
async def volume_remove(volume_name: str, request: Request) -> JSONResponse:
    return JSONResponse({"id": await volumes.remove(request.app.state.runtime, volume_name)})


@router.post("/prune", response_model=list[str], summary="Remove every unused volume")
async def volume_prune(request: Request) -> JSONResponse:
    return JSONResponse(await volumes.prune(request.app.state.runtime))
