"""Config models of a Sparkplug B edge node endpoint and of a bridge that feeds it.

The broker connection (TLS, username and password, reconnect backoff) is the MQTT endpoint's:
the same `Tls` and `Backoff` models and the same warnings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gateway.config.common import Backoff, Path, Problem, Strict, missing_files
from gateway.types import PointSpec
from protocols.mqtt.config import TLS_FILES, Tls, broker_port, password_warning
from protocols.sparkplug.codec import check_id, id_problem


class SparkplugEndpoint(Strict):
    protocol: Literal["sparkplug"] = "sparkplug"
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="1883, or 8883 with tls")
    group: str = Field(description="Sparkplug group_id (no '/', '+' or '#')")
    node: str | None = Field(
        None, description="Sparkplug edge_node_id (no '/', '+' or '#'); default: gateway.name"
    )
    client_id: str | None = Field(
        None, description="MQTT client id; defaults to protocol-brain-{gateway}-{name}"
    )
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(30, ge=5, le=65535)
    tls: Tls | None = None
    reconnect: Backoff = Field(default_factory=Backoff)
    primary_host: str | None = Field(
        None,
        description=(
            "host_id of the Primary Host Application (no '/', '+' or '#'): the births wait for"
            " its STATE online, and its STATE offline ends the session (NDEATH, reconnect, wait)"
        ),
    )
    buffer: int = Field(
        10_000,
        ge=0,
        description=(
            "telemetry messages kept in memory while disconnected, sent as historical DDATA"
            " after the births (the oldest dropped past it, counted and logged; 0: none kept)"
        ),
    )

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        return check_id(v, "group_id")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "edge_node_id")

    @field_validator("primary_host")
    @classmethod
    def _primary_host(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "host_id")

    def run_warnings(self) -> list[tuple[Path, str]]:
        tls = self.tls
        files: dict[Path, str | None] = (
            {} if tls is None else {("tls", key): getattr(tls, key) for key in TLS_FILES}
        )
        found = missing_files(files)
        clear = self.password_warning()
        if clear is not None:
            found.append((("password",), f"Sparkplug endpoint {clear}"))
        return found

    def password_warning(self) -> str | None:
        """`protocols.mqtt.config.password_warning` of this node's connection."""
        return password_warning(self)

    @property
    def effective_port(self) -> int:
        return broker_port(self)


class SparkplugRoute(Strict):
    """Bridge options when the target is a Sparkplug edge node (none yet): each source device
    of the bridge is a Sparkplug device, named by its device name."""

    def check_carried(
        self,
        endpoint: object,
        points: dict[str, list[PointSpec]] | None,
        shared: dict[Any, Any],
    ) -> list[Problem]:
        """``gateway validate``: a source device whose name cannot be a Sparkplug device_id."""
        return [
            Problem(
                ("from",),
                f"source device {problem}",
                "a device name without '/', '+' or '#' (it is the Sparkplug device_id)",
            )
            for device in points or {}
            if (problem := id_problem(device)) is not None
        ]
