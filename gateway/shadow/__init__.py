"""Device shadow: reported / desired / delta per device, versions, history (issue 5).

`gateway.shadow.store` is the sans-network part (SQLite); `gateway.shadow.service` connects it to
the bus, the write path and MQTT. This package imports neither at import time, so the CLI stays
light.
"""

from __future__ import annotations

__all__ = ["REQUEST_TOPICS", "request_filters", "shadow_topic"]

# The topics a client publishes to; the gateway answers on these plus a suffix
# (``/accepted``, ``/rejected``) and publishes ``update/delta`` itself (AWS IoT's layout).
REQUEST_TOPICS = ("get", "update")


def shadow_topic(prefix: str, device: str, action: str) -> str:
    """``{prefix}/{device}/shadow/{action}``, e.g. ``things/pump/shadow/update/accepted``."""
    return f"{prefix}/{device}/shadow/{action}"


def request_filters(prefix: str) -> list[str]:
    """MQTT topic filters the shadow's endpoint subscribes to (requests for any device)."""
    return [shadow_topic(prefix, "+", action) for action in REQUEST_TOPICS]
