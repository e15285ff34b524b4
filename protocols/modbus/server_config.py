"""Config models of the Modbus server role (Modbus TCP, RTU over TCP with ``framing: rtu``, or
an RTU slave on a local serial line with ``serial:``):
the listener (`ModbusServer`, an endpoint with ``role: server``) and the register map of a bridge
that targets it (`ModbusServerRoute`).

A map entry places one bridged point at an address of one of the four tables, with the type,
byte order, scale and offset a Modbus client expects there. The same point may appear more than
once (say as a float32 and as a scaled int16). Entries of one route must not share registers
(different ``bit`` of one register excepted); this is checked when the config is loaded, and
reported at the entry's ``address`` (``bridges[0].map[3].address``). On a bridge with
``anomaly:`` an entry may also name ``anomaly`` or ``anomaly_score``, the alarm's read-only
points (`gateway.anomaly.verdict`).

``passthrough:`` (`Passthrough`) makes the server a Modbus gateway besides: the requests for its
unit ids go, as they are, to a Modbus client device of the same config (`protocols.modbus.
passthrough`). Those unit ids are no map's: `ModbusServer.check` keeps them apart from
``unit_ids``, and `ModbusServer.check_references` makes sure the device is a Modbus client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from gateway import __version__
from gateway.config.common import Path, Problem, Strict
from gateway.config.errors import listing
from gateway.text import counted
from protocols.modbus.codec import ByteOrder, Table
from protocols.modbus.config import (
    Framing,
    ModbusDevice,
    RegisterLayout,
    SerialPort,
    serial_problems,
)

if TYPE_CHECKING:
    from gateway.types import PointSpec

POINT_PATTERN = r"^([A-Za-z0-9_][A-Za-z0-9_.\-]*/)?[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
# Device identification objects are ASCII strings; each must fit one response alone
# (identity.MAX_OBJECT_SIZE: a 253-byte PDU less its 7-byte head and the object's id and length).
IDENTITY_PATTERN = r"^[ -~]*$"
IDENTITY_SIZE = 244


def _identity_text(default: str | None, what: str) -> Any:
    return Field(
        default,
        max_length=IDENTITY_SIZE,
        pattern=IDENTITY_PATTERN,
        description=f"{what} (printable ASCII, at most {IDENTITY_SIZE} characters)",
    )


class DeviceIdentity(Strict):
    """What function 43/14 (Read Device Identification) answers, for every unit id served:
    the basic objects (0x00-0x02) always, the regular ones (0x03-0x06) that are set."""

    vendor_name: str = _identity_text("Protocol Brain", "object 0x00 VendorName")
    product_code: str = _identity_text("protocol-brain", "object 0x01 ProductCode")
    revision: str = _identity_text(__version__, "object 0x02 MajorMinorRevision")
    vendor_url: str | None = _identity_text(None, "object 0x03 VendorUrl; null: none")
    product_name: str | None = _identity_text(
        "Protocol Brain gateway", "object 0x04 ProductName; null: none"
    )
    model_name: str | None = _identity_text(None, "object 0x05 ModelName; null: none")
    user_application_name: str | None = _identity_text(
        None, "object 0x06 UserApplicationName; null: the gateway's name"
    )

    def objects(self, gateway_name: str) -> dict[int, bytes]:
        """Object id -> value, as function 43/14 serves them (the unset regular ones left out)."""
        application = self.user_application_name
        values = (
            self.vendor_name,
            self.product_code,
            self.revision,
            self.vendor_url,
            self.product_name,
            self.model_name,
            gateway_name[:IDENTITY_SIZE] if application is None else application,
        )
        return {i: v.encode("ascii", "replace") for i, v in enumerate(values) if v is not None}


def unit_list(v: list[int], low: int, high: int, expected: str) -> list[int]:
    """A validator's check of a list of unit ids: each in ``low``..``high``, each once."""
    if any(not low <= u <= high for u in v):
        raise ValueError(expected)
    if len(set(v)) != len(v):
        raise ValueError("each unit id once")
    return v


class Passthrough(Strict):
    """Requests for ``unit_ids`` forwarded, as they are, to ``device`` (a Modbus client device
    of this config), on its own connection or serial line between its polls."""

    device: str = Field(description="a Modbus client device of this config (role client)")
    unit_ids: list[int] = Field(
        min_length=1,
        description="unit ids forwarded to the device (1-247); none of the server's unit_ids",
    )
    writable: bool = Field(
        False,
        description="forward writes too (functions 5, 6, 15, 16, 22, 23): they bypass the "
        "write rules of the points; else they get exception 01 and reach nothing",
    )
    max_queued: int = Field(
        16,
        ge=1,
        le=1000,
        description="requests of this passthrough waiting for the device at once; more get "
        "exception 06 (server busy)",
    )

    @field_validator("unit_ids")
    @classmethod
    def _units(cls, v: list[int]) -> list[int]:
        return unit_list(v, 1, 247, "unit ids 1-247 (0 is broadcast, 248-255 are reserved)")


class ModbusServer(Strict):
    """The gateway as a Modbus TCP (or RTU over TCP, or serial RTU slave) server: bridged points
    as a register map."""

    protocol: Literal["modbus"] = "modbus"
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(502, ge=0, le=65535, description="TCP port (502 needs privileges)")
    serial: SerialPort | None = Field(
        None,
        description="serve as an RTU slave on this serial line instead of listening on TCP "
        "(silent for the unit ids it does not serve)",
    )
    framing: Framing = Field(
        "tcp",
        description="tcp: Modbus TCP (MBAP header); rtu: Modbus RTU over TCP (unit id, PDU, "
        "CRC16; no MBAP header), for masters set up to talk to a serial-to-Ethernet converter; "
        "unit id 0 is then broadcast",
    )
    unit_ids: list[int] = Field(
        default_factory=lambda: [1],
        description="unit ids answered from the maps; a request for another (and no "
        "passthrough's) gets exception 0A (on a serial line, no answer: another slave's); "
        "default [1], or none with passthrough",
    )
    max_connections: int = Field(
        64,
        ge=1,
        le=10000,
        description="clients served at once; when all are taken, a newcomer takes the slot of "
        "the connection idle longest (see idle_evict_after), or is refused if none is",
    )
    idle_evict_after: float = Field(
        10.0,
        gt=0,
        description="seconds without a request served after which a connection may be closed to "
        "make room for a newcomer when max_connections are open; busier ones are never closed",
    )
    idle_timeout: float | None = Field(
        300.0,
        ge=0,
        description="seconds without a request served after which a connection is closed; 0 or "
        "null: never",
    )
    write_timeout: float = Field(
        5.0, gt=0, le=60, description="seconds a write waits for the device's acknowledgement"
    )
    identity: DeviceIdentity = Field(
        default_factory=DeviceIdentity,
        description="what function 43/14 (Read Device Identification) answers",
    )
    passthrough: list[Passthrough] = Field(
        default_factory=list,
        description="unit ids whose requests go, as they are, to a Modbus client device of "
        "this config (a Modbus gateway); read-only unless writable: true",
    )

    @model_validator(mode="before")
    @classmethod
    def _gateway_only(cls, data: Any) -> Any:
        """With passthrough and no unit_ids, the server has no map of its own (a unit id 1 by
        default would take one that is likely a device's)."""
        if isinstance(data, dict) and data.get("passthrough") and "unit_ids" not in data:
            return {**data, "unit_ids": []}
        return data

    @field_validator("unit_ids")
    @classmethod
    def _units(cls, v: list[int]) -> list[int]:
        return unit_list(v, 0, 255, "unit ids 0..255")

    @property
    def rtu(self) -> bool:
        """RTU frames: on a serial line, or over TCP (``framing: rtu``)."""
        return self.serial is not None or self.framing == "rtu"

    def check(self) -> list[Problem]:
        """``serial`` speaks RTU and does not listen on TCP. With RTU the unit ids are those of a
        serial bus: 0 is broadcast (every device acts on it, none answers) and 248-255 are
        reserved (Modbus over serial line, 2.2)."""
        tcp_keys = [k for k in ("host", "port") if k in self.model_fields_set]
        problems = serial_problems(
            self.serial, "framing" in self.model_fields_set, self.framing, tcp_keys
        )
        if not self.unit_ids and not self.passthrough:
            problems.append(Problem(("unit_ids",), "[]", "at least one unit id (or passthrough)"))
        problems += self._passthrough_problems()
        wrong = [u for u in self.unit_ids if not 1 <= u <= 247]
        if not self.rtu or not wrong:
            return problems
        how = "serial" if self.serial is not None else "framing: rtu"
        problems.append(
            Problem(
                ("unit_ids",),
                f"{listing([str(u) for u in wrong])} ({how})",
                "unit ids 1-247 (on a serial bus 0 is broadcast, which no device answers, and "
                "248-255 are reserved)" + ("" if self.serial is not None else ", or framing: tcp"),
            )
        )
        return problems

    def _passthrough_problems(self) -> list[Problem]:
        """A unit id is the map's or one device's: never both, never two devices'. Not on a
        serial line: its slave answers only the map's unit ids."""
        problems: list[Problem] = []
        if self.passthrough and self.serial is not None:
            problems.append(
                Problem(
                    ("passthrough",),
                    "passthrough on a server with serial:",
                    "passthrough on a TCP server (host/port, framing tcp or rtu) only",
                )
            )
        owners = {u: "the server's own unit_ids" for u in self.unit_ids}
        for i, entry in enumerate(self.passthrough):
            for u in entry.unit_ids:
                owner = owners.setdefault(u, f"passthrough[{i}] ({entry.device})")
                if not owner.startswith(f"passthrough[{i}] "):
                    problems.append(
                        Problem(
                            ("passthrough", i, "unit_ids"),
                            f"unit id {u}, which is {owner} too",
                            "unit ids that no map (unit_ids) and no other passthrough serves",
                        )
                    )
        return problems

    def check_references(self, entries: Mapping[str, BaseModel]) -> list[Problem]:
        """Each passthrough device must be an (enabled) Modbus client device of the config;
        ``entries``: every enabled device and endpoint's config by name."""
        clients = sorted(n for n, c in entries.items() if isinstance(c, ModbusDevice))
        return [
            Problem(
                ("passthrough", i, "device"),
                f"{entry.device!r}, which is not an enabled Modbus client device of this config",
                f"one of: {listing(clients)}" if clients else "a Modbus client device (none)",
            )
            for i, entry in enumerate(self.passthrough)
            if not isinstance(entries.get(entry.device), ModbusDevice)
        ]

    def run_warnings(self) -> list[tuple[Path, str]]:
        """``gateway validate``: a writable passthrough, which no write rule guards."""
        return [
            ((("passthrough", i, "writable"), text))
            for i, entry in enumerate(self.passthrough)
            if (text := self.passthrough_warning(entry)) is not None
        ]

    def passthrough_warning(self, entry: Passthrough) -> str | None:
        """What to say of a writable passthrough: any client may write any register of its
        units, past the write rules of the points (logged at start and by validate)."""
        if not entry.writable:
            return None
        units = listing([str(u) for u in entry.unit_ids])
        return (
            f"passthrough to {entry.device} is writable: any client that reaches this server "
            f"can write any register of unit ids {units} (functions 5, 6, 15, 16, 22 and 23, "
            "past the write rules of the points; each write is logged); set writable: false "
            "if it should not"
        )

    def write_warning(self, writable: int) -> str | None:
        """What to say when ``writable`` points can be written through this server: Modbus TCP
        has no authentication, so anyone who reaches the port can write them; None when none
        can. The server logs it at start, ``gateway validate`` prints it (the config loader
        calls this by name). The defaults (every interface, writable routes) are kept: changing
        them would break running configs."""
        if writable <= 0:
            return None
        if self.serial is not None:
            return (
                "Modbus has no authentication: any master on the serial line "
                f"{self.serial.port} can write {counted(writable, 'point')} (functions 5, 6, 15, "
                "16, 22 and 23); set writable: false on the bridges to it if it should not"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        every = " (every interface)" if self.host in ("0.0.0.0", "::", "") else ""
        return (
            f"Modbus has no authentication: anyone who can reach {host}:{self.port}{every} can "
            f"write {counted(writable, 'point')} (functions 5, 6, 15, 16, 22 and 23 need no "
            "login); bind host: to a trusted interface, set writable: false on the bridges to "
            "it, or firewall the port"
        )


class MapEntry(RegisterLayout):
    """One point at one place of the register map."""

    point: str = Field(
        pattern=POINT_PATTERN,
        description='"name", or "device/name" when the bridge has several sources',
    )
    byte_order: ByteOrder | None = Field(None, description="defaults to the route's byte_order")

    @model_validator(mode="after")
    def _fits_table(self) -> MapEntry:
        problem = self.layout_problem()
        if problem is not None:
            raise ValueError(problem)
        return self


class ModbusServerRoute(Strict):
    """Bridge target options when the target is the Modbus server: where each point is served."""

    unit_id: int | None = Field(
        None, ge=0, le=255, description="unit id of this map; default the server's first"
    )
    byte_order: ByteOrder = Field(ByteOrder.ABCD, description="default byte order of the map")
    writable: bool = Field(True, description="let clients write points declared rw")
    map: list[MapEntry] = Field(min_length=1, description="the register map")

    @model_validator(mode="after")
    def _no_overlaps(self) -> ModbusServerRoute:
        # The loader runs check() for devices, not for bridge options: raise its problems as
        # validation errors at their own paths so that they are reported the same way.
        problems = self.check()
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("map_overlap", p.expected),
                        loc=p.path,
                        input=self.map[int(p.path[1])].address,
                    )
                    for p in problems
                ],
            )
        return self

    def check_carried(
        self,
        server: object,
        points: dict[str, list[PointSpec]] | None,
        shared: dict[Any, Any],
    ) -> list[Problem]:
        """``gateway validate``: what the server would refuse of this map when it starts (the
        same check, `server.check_map`); ``shared`` holds the maps of earlier bridges to it."""
        from protocols.modbus.server import check_map  # the adapter module: no library import

        if not isinstance(server, ModbusServer):
            return []
        return check_map(self, server, points, shared)

    def order_of(self, entry: MapEntry) -> ByteOrder:
        return self.byte_order if entry.byte_order is None else entry.byte_order

    def check(self) -> list[Problem]:
        """Entries that share registers (two bits of one register may)."""
        problems: list[Problem] = []
        spans = sorted((e.table, e.address, e.address + e.count, i) for i, e in enumerate(self.map))
        reach: dict[Table, tuple[int, int]] = {}  # table -> (end, index) of the furthest so far
        bits: dict[tuple[Table, int, int], int] = {}  # (table, address, bit) -> first index
        for table, start, end, i in spans:
            entry, far = self.map[i], reach.get(table)
            clash: int | None = None
            if entry.bit is not None:
                clash = bits.setdefault((table, start, entry.bit), i)
                clash = None if clash == i else clash
            if clash is None and far is not None and start < far[0]:
                # two entries with bits reach here only for one register: different bits
                if entry.bit is None or self.map[far[1]].bit is None:
                    clash = far[1]
            if clash is not None:
                other = self.map[clash]
                problems.append(
                    Problem(
                        ("map", i, "address"),
                        str(entry.address),
                        f"an address not used by map[{clash}] ({other.point!r}, {table} "
                        f"{other.address}..{other.address + other.count - 1})",
                    )
                )
            if far is None or end > far[0]:
                reach[table] = (end, i)
        problems.sort(key=lambda p: p.path)
        return problems
