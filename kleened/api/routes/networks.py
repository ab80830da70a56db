"""Network routes (networking reference §1.1, §2.1, §4).

Status codes per route come from api/errors.py ROUTE_STATUS. Disconnect never
answers 409: klee crashes on it (klee-client-needs §3.3), so its errors are 404.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from kleened.api.schemas import ErrorResponse, IdResponse, LenientBool, Schema
from kleened.engine.networks import NetworkConfig as EngineNetworkConfig
from kleened.engine.networks import NetworkService

router = APIRouter(prefix="/networks", tags=["networks"])
ERR = {"model": ErrorResponse}


class NetworkConfig(Schema):
    name: str
    type: Literal["bridge", "loopback", "custom"]
    interface: str = Field("", max_length=15)
    subnet: str = ""
    subnet6: str = ""
    gateway: str = ""
    gateway6: str = ""
    nat: str = "<host-gateway>"
    icc: LenientBool = True
    internal: LenientBool = False


class Network(Schema):
    id: str
    name: str
    type: Literal["bridge", "loopback", "custom"]
    interface: str
    subnet: str
    subnet6: str
    gateway: str
    gateway6: str
    nat: str
    icc: bool
    internal: bool


class EndPoint(Schema):
    id: str
    network_id: str
    container_id: str
    epair: str | None
    ip_address: str
    ip_address6: str


class NetworkInspect(Schema):
    network: Network
    network_endpoints: list[EndPoint]


class EndPointConfig(Schema):
    container: str
    network: str
    ip_address: str = ""  # "" is no address, "<auto>" allocates (reference §3)
    ip_address6: str = ""


def service(request: Request) -> NetworkService:
    network = request.app.state.runtime.network
    if network is None:  # pragma: no cover - every supported platform has one
        raise RuntimeError("networking is not available on this host")
    return network


@router.post(
    "/create",
    status_code=201,
    response_model=IdResponse,
    responses={409: ERR, 500: ERR},
    summary="Create a network",
)
async def network_create(config: NetworkConfig, request: Request) -> JSONResponse:
    network_id = await service(request).create(EngineNetworkConfig(**config.model_dump()))
    return JSONResponse({"id": network_id}, status_code=201)


@router.get("/list", response_model=list[Network], summary="List networks by name")
async def network_list(request: Request) -> JSONResponse:
    return JSONResponse([n.to_api() for n in await service(request).list_all()])


@router.get(
    "/{network_id}/inspect",
    response_model=NetworkInspect,
    responses={404: ERR},
    summary="Inspect a network and its endpoints",
)
async def network_inspect(network_id: str, request: Request) -> JSONResponse:
    net, endpoints = await service(request).inspect(network_id)
    return JSONResponse(
        {"network": net.to_api(), "network_endpoints": [e.to_api() for e in endpoints]}
    )


@router.delete(
    "/{network_id}",
    response_model=IdResponse,
    responses={404: ERR, 500: ERR},
    summary="Remove a network, disconnecting its containers",
)
async def network_remove(network_id: str, request: Request) -> JSONResponse:
    return JSONResponse({"id": await service(request).remove(network_id)})


@router.post("/prune", response_model=list[str], summary="Remove every network without endpoints")
async def network_prune(request: Request) -> JSONResponse:
    return JSONResponse(await service(request).prune())


@router.post(
    "/connect",
    status_code=204,
    responses={404: ERR, 409: ERR, 500: ERR},
    summary="Connect a container to a network",
)
async def network_connect(config: EndPointConfig, request: Request) -> Response:
    await service(request).connect(
        config.container, config.network, config.ip_address, config.ip_address6
    )
    return Response(status_code=204)


@router.post(
    "/{network_id}/disconnect/{container_id}",
    status_code=204,
    responses={404: ERR, 500: ERR},
    summary="Disconnect a container from a network",
)
async def network_disconnect(network_id: str, container_id: str, request: Request) -> Response:
    await service(request).disconnect(network_id, container_id)
    return Response(status_code=204)
