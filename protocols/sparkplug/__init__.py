"""Sparkplug B (Eclipse Sparkplug 3.0) over MQTT, through paho-mqtt: an edge node (role
``client``, a bridge target) and a host application (role ``host``, a source). The spec is
light: paho is imported only by the adapters (`protocols.sparkplug.node`, `.host`)."""

from gateway.plugins import ProtocolSpec
from protocols.sparkplug.config import SparkplugEndpoint, SparkplugHost, SparkplugRoute

SPEC = ProtocolSpec(
    name="sparkplug",
    description=(
        "Sparkplug B edge node (bridged devices as Sparkplug devices, DCMD writes) and host"
        " application (other nodes' metrics as points, DCMD/NCMD writes)"
    ),
    config_model=SparkplugEndpoint,
    adapters={
        "client": "protocols.sparkplug.node:SparkplugAdapter",
        "host": "protocols.sparkplug.host:SparkplugHostAdapter",
    },
    role_models={"client": SparkplugEndpoint, "host": SparkplugHost},
    route_models={"client": SparkplugRoute},
    # "learns": a point a source names at run time gets an alias and a new DBIRTH
    capabilities=("publish", "serve", "learns", "write", "tls", "last-will"),
    extra="mqtt",
    requires=("paho.mqtt",),
)
