"""Modbus TCP. The spec is light: pymodbus is imported only by the adapters."""

from gateway.plugins import ProtocolSpec
from protocols.modbus.config import ModbusDevice

SPEC = ProtocolSpec(
    name="modbus",
    description="Modbus TCP: holding and input registers, coils and discrete inputs",
    config_model=ModbusDevice,
    adapters={"client": "protocols.modbus.client:ModbusClientAdapter"},
    capabilities=("read", "poll", "write"),
    extra="modbus",
    requires=("pymodbus",),
)
