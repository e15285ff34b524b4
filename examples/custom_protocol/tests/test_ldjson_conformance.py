"""The ldjson plugin passes Protocol Brain's conformance kit, against its own simulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ldjson_protocol import SPEC
from ldjson_protocol.simulator import Device

from gateway.testing import ProtocolConformance
from gateway.types import PointSpec, Value


class TestLdjsonClient(ProtocolConformance):
    spec = SPEC
    role = "client"
    writes = True

    def config(self, peer: Device | None) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": peer.port if peer is not None else self.closed_port(),
            "timeout": 1.0,
            "reconnect": {"initial": 0.05, "max": 0.2},
            "points": [
                {"name": "temp", "unit": "degC"},
                {"name": "sp", "access": "rw", "low": 0, "high": 100},
                {"name": "on", "type": "bool", "access": "rw"},
            ],
        }

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Device]:
        async with Device({"temp": 21.5, "sp": 40.0, "on": False}, writable={"sp", "on"}) as dev:
            yield dev

    async def check_written(self, peer: Device, point: PointSpec, value: Value) -> None:
        assert (point.name, value) in peer.written
