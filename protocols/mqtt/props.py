"""Light PUBLISH properties for publishes that carry user properties (`MqttAdapter`).

paho's `Properties` builds its tables of property names and types for every object (6 KB
each) and packs itself by looking up all 43 names on every publish. A gateway publishing per
point with user properties keeps one object per (property set, lifetime) and sends each many
times, so here the tables are shared (paho only reads them) and the packed bytes are kept until
a property is set again.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["PublishProperties"]

_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


class PublishProperties(Properties):
    """PUBLISH properties sharing paho's tables, packed once."""

    _packed: bytes | None

    def __init__(self) -> None:  # paho's builds the tables anew: shared instead
        set_ = object.__setattr__
        set_(self, "packetType", PacketTypes.PUBLISH)
        set_(self, "types", _TABLES.types)
        set_(self, "names", _TABLES.names)
        set_(self, "properties", _TABLES.properties)
        set_(self, "_packed", None)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", None)  # a property changed: packed again

    def pack(self) -> bytes:
        packed: bytes | None = self._packed
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)
        return packed
