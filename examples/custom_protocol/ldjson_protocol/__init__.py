"""ldjson: devices that speak line-delimited JSON over TCP, as a Protocol Brain plugin.

This module is what the entry point names, so it stays light: the spec and the config models,
nothing that does I/O. The adapter is named as a "module:Class" string and imported only when a
gateway runs one.
"""

from gateway.plugins import ProtocolSpec
from ldjson_protocol.config import LdjsonDevice

SPEC = ProtocolSpec(
    name="ldjson",
    description="line-delimited JSON over TCP: readings in, acknowledged writes out",
    config_model=LdjsonDevice,
    adapters={"client": "ldjson_protocol.adapter:LdjsonAdapter"},
    capabilities=("telemetry", "write"),
)

__all__ = ["SPEC"]
