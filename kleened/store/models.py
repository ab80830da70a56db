"""SQLAlchemy models for every resource the API has.

Scalars are real columns with foreign keys between resources; only the
string lists the API itself carries as lists (cmd, env, jail parameters,
instructions, interfaces) are JSON columns. The schema is created and changed
only by the Alembic migrations in migrations/.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String, default="", index=True)
    tag: Mapped[str] = mapped_column(String, default="")
    cmd: Mapped[list[str]] = mapped_column(JSON, default=list)
    env: Mapped[list[str]] = mapped_column(JSON, default=list)
    user: Mapped[str] = mapped_column(String, default="")
    # [[instruction line, "@snapshot" or ""], ...] exactly as the API returns it.
    instructions: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    buildargs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created: Mapped[str] = mapped_column(String, index=True)
    dataset: Mapped[str] = mapped_column(String)

    def to_api(self) -> dict[str, Any]:
        return {
            "buildargs": self.buildargs,
            "cmd": self.cmd,
            "created": self.created,
            "dataset": self.dataset,
            "env": self.env,
            "id": self.id,
            "instructions": self.instructions,
            "name": self.name,
            "tag": self.tag,
            "user": self.user,
        }


class Container(Base):
    __tablename__ = "containers"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str | None] = mapped_column(String, unique=True, nullable=True)
    # RESTRICT: an image cannot disappear under its containers (its dataset is
    # their clone origin anyway).
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    cmd: Mapped[list[str]] = mapped_column(JSON, default=list)
    user: Mapped[str] = mapped_column(String, default="")
    env: Mapped[list[str]] = mapped_column(JSON, default=list)
    network_driver: Mapped[str] = mapped_column(String, default="ipnet")
    jail_param: Mapped[list[str]] = mapped_column(JSON, default=list)
    restart_policy: Mapped[str] = mapped_column(String, default="no")
    persist: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[str] = mapped_column(String, index=True)
    dataset: Mapped[str] = mapped_column(String)


class PublishedPort(Base):
    __tablename__ = "published_ports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    interfaces: Mapped[list[str]] = mapped_column(JSON, default=list)
    host_port: Mapped[str] = mapped_column(String)
    container_port: Mapped[str] = mapped_column(String)
    protocol: Mapped[str] = mapped_column(String, default="tcp")
    ip_address: Mapped[str] = mapped_column(String, default="")
    ip_address6: Mapped[str] = mapped_column(String, default="")

    API_FIELDS = (
        "container_port",
        "host_port",
        "interfaces",
        "ip_address",
        "ip_address6",
        "protocol",
    )

    def to_api(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.API_FIELDS}


class Network(Base):
    __tablename__ = "networks"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    type: Mapped[str] = mapped_column(String)
    interface: Mapped[str] = mapped_column(String, unique=True)
    subnet: Mapped[str] = mapped_column(String, default="")
    subnet6: Mapped[str] = mapped_column(String, default="")
    gateway: Mapped[str] = mapped_column(String, default="")
    gateway6: Mapped[str] = mapped_column(String, default="")
    nat: Mapped[str] = mapped_column(String, default="")
    icc: Mapped[bool] = mapped_column(Boolean, default=True)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether the daemon created the host interface (and so may destroy it).
    owns_interface: Mapped[bool] = mapped_column(Boolean, default=True)

    def to_api(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "gateway6": self.gateway6,
            "icc": self.icc,
            "id": self.id,
            "interface": self.interface,
            "internal": self.internal,
            "name": self.name,
            "nat": self.nat,
            "subnet": self.subnet,
            "subnet6": self.subnet6,
            "type": self.type,
        }


class Endpoint(Base):
    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("container_id", "network_id"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    network_id: Mapped[str] = mapped_column(
        ForeignKey("networks.id", ondelete="RESTRICT"), index=True
    )
    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    epair: Mapped[str | None] = mapped_column(String, nullable=True)
    ip_address: Mapped[str] = mapped_column(String, default="")
    ip_address6: Mapped[str] = mapped_column(String, default="")

    def to_api(self) -> dict[str, Any]:
        return {
            "container_id": self.container_id,
            "epair": self.epair,
            "id": self.id,
            "ip_address": self.ip_address,
            "ip_address6": self.ip_address6,
            "network_id": self.network_id,
        }


class Volume(Base):
    __tablename__ = "volumes"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    dataset: Mapped[str] = mapped_column(String)
    mountpoint: Mapped[str] = mapped_column(String)
    created: Mapped[str] = mapped_column(String, index=True)

    def to_api(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "dataset": self.dataset,
            "mountpoint": self.mountpoint,
            "name": self.name,
        }


class Mount(Base):
    __tablename__ = "mounts"
    # One mount per destination: the original's keyless table allowed duplicates.
    __table_args__ = (UniqueConstraint("container_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String)  # "volume" | "nullfs"
    # The volume name for type volume, the host path for nullfs (as the original).
    source: Mapped[str] = mapped_column(String, index=True)
    destination: Mapped[str] = mapped_column(String)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_api(self) -> dict[str, Any]:
        return {
            "container_id": self.container_id,
            "destination": self.destination,
            "read_only": self.read_only,
            "source": self.source,
            "type": self.type,
        }
