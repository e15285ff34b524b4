"""CoAP (RFC 7252) through aiocoap: client (a source of points, Observe or polling) and server
(bridged points as resources with Observe, PUT writes and /.well-known/core). OSCORE (RFC 8613)
or DTLS with pre-shared keys (coaps://, the [dtls] extra) protects either role. The spec is
light: aiocoap is imported only by the adapters."""

from gateway.plugins import ProtocolSpec
from protocols.coap.config import CoapClient, CoapServer, CoapServerRoute

SPEC = ProtocolSpec(
    name="coap",
    description="CoAP client (observe, poll, writes) and server (resources, observe, PUT)",
    config_model=CoapClient,
    adapters={
        "client": "protocols.coap.client:CoapClientAdapter",
        "server": "protocols.coap.server:CoapServerAdapter",
    },
    role_models={"client": CoapClient, "server": CoapServer},
    route_models={"server": CoapServerRoute},
    capabilities=("subscribe", "write", "serve", "security"),
    extra="coap",
    requires=("aiocoap", "cbor2"),
)
