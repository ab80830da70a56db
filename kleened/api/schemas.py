"""Request and response schemas with the original's field names (reference §4).

Unknown properties are ignored, as the original's validator does. Booleans
accept JSON booleans and the strings "true"/"false", because klee sends
`"start_container": "true"` and `"quiet": "true"` (klee-client-needs §0.6).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _lenient_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    if isinstance(value, str):
        raise ValueError("Invalid boolean. Got: string")
    return value  # let strict validation name the real type


LenientBool = Annotated[bool, BeforeValidator(_lenient_bool), Field(strict=True)]


class Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- common responses


class IdResponse(Schema):
    id: str


class ErrorResponse(Schema):
    message: str


IdListResponse = list[str]


class WebSocketMessage(Schema):
    msg_type: Literal["starting", "closing", "error"]
    message: str = ""
    data: str = ""


# ---------------------------------------------------------------- volumes


class VolumeConfig(Schema):
    name: str


class Volume(Schema):
    name: str
    dataset: str
    mountpoint: str
    created: str


class MountPoint(Schema):
    type: Literal["volume", "nullfs"]
    container_id: str
    source: str
    destination: str
    read_only: bool


class VolumeInspect(Schema):
    volume: Volume
    mountpoints: list[MountPoint]


# ---------------------------------------------------------------- containers


class MountPointConfig(Schema):
    type: Literal["volume", "nullfs"]
    source: str
    destination: str
    read_only: LenientBool = False


class PublishedPortConfig(Schema):
    interfaces: list[str]
    host_port: str
    container_port: str
    protocol: Literal["tcp", "udp"] = "tcp"


class PublishedPort(PublishedPortConfig):
    ip_address: str = ""
    ip_address6: str = ""


NetworkDriver = Literal["ipnet", "host", "vnet", "disabled"]
RestartPolicy = Literal["no", "on-startup"]


class ContainerConfig(Schema):
    """Container create and update body (reference §4.1).

    Every field may be absent or null. On create that means the default; on
    update it means "leave unchanged" (the original wiped such fields, §14.1.1).
    """

    name: str | None = None
    image: str | None = None
    cmd: list[str] | None = None
    user: str | None = None
    env: list[str] | None = None
    mounts: list[MountPointConfig] | None = None
    jail_param: list[str] | None = None
    network_driver: NetworkDriver | None = None
    public_ports: list[PublishedPortConfig] | None = None
    restart_policy: RestartPolicy | None = None
    persist: LenientBool | None = None


class Container(Schema):
    id: str
    name: str | None
    image_id: str
    cmd: list[str]
    user: str
    env: list[str]
    network_driver: NetworkDriver
    public_ports: list[PublishedPort]
    jail_param: list[str]
    restart_policy: RestartPolicy
    persist: bool
    created: str
    dataset: str
    running: bool


class ContainerSummary(Container):
    image_name: str
    image_tag: str
    jid: int | None


class EndPoint(Schema):
    id: str
    network_id: str
    container_id: str
    epair: str | None
    ip_address: str
    ip_address6: str


class ContainerInspect(Schema):
    container: Container
    container_endpoints: list[EndPoint]
    container_mountpoints: list[MountPoint]


# ---------------------------------------------------------------- exec


class ExecConfig(Schema):
    container_id: str
    cmd: list[str] = Field(default_factory=list)
    user: str = ""
    env: list[str] = Field(default_factory=list)
    tty: LenientBool = False


class ExecStartConfig(Schema):
    exec_id: str
    attach: LenientBool
    start_container: LenientBool


# ---------------------------------------------------------------- images


class Image(Schema):
    id: str
    name: str
    tag: str
    cmd: list[str]
    env: list[str]
    user: str
    instructions: list[list[str]]
    buildargs: dict[str, str] = Field(default_factory=dict)
    created: str
    dataset: str


class ImageCreateConfig(Schema):
    """The first frame on /images/create (reference §4.10)."""

    method: Literal["fetch", "fetch-auto", "zfs-copy", "zfs-clone"]
    tag: str = ""
    dns: LenientBool = True
    localtime: LenientBool = True
    update: LenientBool = False
    zfs_dataset: str = ""
    url: str = ""
    autotag: LenientBool = False


class BuildNetworkConfig(Schema):
    """One entry of ImageBuildConfig.networks (an EndPointConfig; `container` is replaced)."""

    container: str = ""
    network: str
    ip_address: str = "<auto>"
    ip_address6: str = "<auto>"


class ImageBuildConfig(Schema):
    """The first frame on /images/build (reference §4.8)."""

    context: str
    dockerfile: str = "Dockerfile"
    quiet: LenientBool = False
    cleanup: LenientBool = True
    tag: str = ""
    buildargs: dict[str, str] = Field(default_factory=dict)
    container_config: ContainerConfig
    networks: list[BuildNetworkConfig] = Field(default_factory=list)
