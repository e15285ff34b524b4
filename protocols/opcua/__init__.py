"""OPC UA through asyncua: client (a source of points) and server (bridged points as variables).
The spec is light: asyncua is imported only by the adapters."""

from gateway.plugins import ProtocolSpec
from protocols.opcua.config import OpcuaClient, OpcuaServer, OpcuaServerRoute

SPEC = ProtocolSpec(
    name="opcua",
    description="OPC UA client (subscriptions, writes) and server (address space from config)",
    config_model=OpcuaClient,
    adapters={
        "client": "protocols.opcua.client:OpcuaClientAdapter",
        "server": "protocols.opcua.server:OpcuaServerAdapter",
    },
    role_models={"client": OpcuaClient, "server": OpcuaServer},
    route_models={"server": OpcuaServerRoute},
    capabilities=("subscribe", "write", "serve", "security", "users"),
    extra="opcua",
    requires=("asyncua",),
)
