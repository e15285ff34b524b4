"""The uplink: a durable outbox (SQLite) in front of a northbound sink; see docs/uplink.md."""

from gateway.uplink.outbox import Outbox, OutboxConfig, OutboxFull, Row

__all__ = ["Outbox", "OutboxConfig", "OutboxFull", "Row"]
