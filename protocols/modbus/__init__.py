"""Modbus TCP, and Modbus RTU over TCP (``framing: rtu``: RTU frames through a serial-to-Ethernet
converter). The spec is light: pymodbus is imported only by the client adapter.

Roles: ``client`` (the default: polls a device) and ``server`` (a bridge target that serves
bridged points as a register map; see `protocols.modbus.server`). Both speak either framing."""

from gateway.plugins import ProtocolSpec
from protocols.modbus.config import ModbusDevice
from protocols.modbus.server_config import ModbusServer, ModbusServerRoute

SPEC = ProtocolSpec(
    name="modbus",
    description="Modbus TCP and RTU over TCP: holding and input registers, coils and discrete "
    "inputs; client (polls devices) and server (register map from config)",
    config_model=ModbusDevice,
    adapters={
        "client": "protocols.modbus.client:ModbusClientAdapter",
        "server": "protocols.modbus.server:ModbusServerAdapter",
    },
    role_models={"client": ModbusDevice, "server": ModbusServer},
    route_models={"server": ModbusServerRoute},
    capabilities=("read", "poll", "write", "serve"),
    extra="modbus",
    requires=("pymodbus",),
)
