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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from gateway import __version__
from gateway.config.common import Problem, Strict
from gateway.config.errors import listing
from gateway.text import counted
from protocols.modbus.codec import ByteOrder, Table
from protocols.modbus.config import Framing, RegisterLayout, SerialPort, serial_problems

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
        min_length=1,
        description="unit ids answered; a request for another gets exception 0A (on a serial "
        "line, no answer: another slave's)",
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

    @field_validator("unit_ids")
    @classmethod
    def _units(cls, v: list[int]) -> list[int]:
        if any(not 0 <= u <= 255 for u in v):
            raise ValueError("unit ids 0..255")
        if len(set(v)) != len(v):
            raise ValueError("each unit id once")
        return v

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
