"""MQTT 3.1.1/5 through paho-mqtt. The spec is light: paho is imported only by the adapter."""

from gateway.plugins import ProtocolSpec
from protocols.mqtt.config import MqttEndpoint, MqttRoute

SPEC = ProtocolSpec(
    name="mqtt",
    description="MQTT client: publish bridged points, subscribe to topics",
    config_model=MqttEndpoint,
    adapters={"client": "protocols.mqtt.client:MqttAdapter"},
    route_model=MqttRoute,
    capabilities=("publish", "subscribe", "tls", "last-will"),
    extra="mqtt",
    requires=("paho.mqtt",),
)
