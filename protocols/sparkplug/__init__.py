"""Sparkplug B (Eclipse Sparkplug 3.0) edge node over MQTT, through paho-mqtt. The spec is
light: paho is imported only by the adapter (`protocols.sparkplug.node`)."""

from gateway.plugins import ProtocolSpec
from protocols.sparkplug.config import SparkplugEndpoint, SparkplugRoute

SPEC = ProtocolSpec(
    name="sparkplug",
    description="Sparkplug B edge node: bridged devices as Sparkplug devices (births, DCMD writes)",
    config_model=SparkplugEndpoint,
    adapters={"client": "protocols.sparkplug.node:SparkplugAdapter"},
    route_model=SparkplugRoute,
    # "learns": a point a source names at run time gets an alias and a new DBIRTH
    capabilities=("publish", "serve", "learns", "write", "tls", "last-will"),
    extra="mqtt",
    requires=("paho.mqtt",),
)
