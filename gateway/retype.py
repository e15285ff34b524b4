"""Server targets following a type a source learns late (shared by the CoAP and OPC UA servers).

An OPC UA device point without ``type:`` is float64 until the client has read the node's
DataType and re-declared the point. A server built its resources or nodes at start, so it
re-reads the bridges' point specs when a sample's value cannot be of the type it serves (a
bool or a text for a number), at most once per `RETYPE_INTERVAL` per device: a source whose
values never fit (a wrong ``type:``) must not cost a walk over every point per sample.
"""

from __future__ import annotations

import time

from gateway.types import Value

RETYPE_INTERVAL = 1.0  # seconds between two re-reads of one device's point specs


def misfits(value: Value, datatype: str) -> bool:
    """Whether ``value`` cannot be of ``datatype``: the sign of a type learned since the start."""
    kind = type(value)
    return (kind is bool) != (datatype == "bool") or (kind is str) != (datatype == "string")


class RetypeGate:
    """Says when a device's specs may be re-read again (once per `RETYPE_INTERVAL`)."""

    def __init__(self, interval: float = RETYPE_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}  # device -> monotonic time of its last re-read

    def due(self, device: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(device, float("-inf")) < self.interval:
            return False
        self._last[device] = now
        return True
