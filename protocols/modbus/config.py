"""Config model of one Modbus device (a `devices:` entry with ``protocol: modbus``): over TCP
(``host``), or an RTU slave on a local serial line (``serial``: RS-485 or RS-232)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.config.common import Backoff, Deadband, PointLimits, Problem, Strict, Unit
from gateway.config.errors import listing
from gateway.text import counted
from gateway.types import Access
from protocols.modbus.codec import ByteOrder, DataType, Table, register_count

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
Framing = Literal["tcp", "rtu"]
# How a bool at a bit of a holding register is written. read_modify_write (FC 03 then FC 06) works
# on every device but is not atomic: a bit the device changes between the two is lost. mask
# (FC 22, Mask Write Register) changes only that bit, in the device; many devices lack it.
BitWrite = Literal["read_modify_write", "mask"]
WRITE_MULTIPLE_HELP = (
    "write one register with FC 16 and one coil with FC 15 instead of FC 06 and FC 05 "
    "(for devices that implement only the multiple-write functions)"
)
BIT_WRITE_HELP = (
    "read_modify_write: FC 03 then FC 06 (any device; a bit the device changes in between is "
    "lost); mask: FC 22, atomic (devices that implement it)"
)


# Modbus over serial line (V1.02) 2.5.1: 19200 and 9600 baud are required, the others usual.
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class SerialPort(Strict):
    """A local serial line (a USB RS-485 adapter, a board's UART) in RTU mode. The defaults are
    the Modbus serial-line spec's (2.5.1): 19200 baud, 8 data bits, even parity, 1 stop bit."""

    port: str = Field(min_length=1, description="the tty, e.g. /dev/ttyUSB0 or /dev/ttyAMA0")
    baudrate: int = Field(19200, description=f"one of {', '.join(map(str, BAUDRATES))}")
    parity: Literal["N", "E", "O"] = Field("E", description="N (none), E (even) or O (odd)")
    stopbits: Literal[1, 2] = Field(1, description="1 or 2")
    bytesize: Literal[8] = Field(8, description="8: RTU carries whole bytes")

    @field_validator("baudrate")
    @classmethod
    def _usual_rate(cls, v: int) -> int:
        if v not in BAUDRATES:
            raise ValueError(f"baudrate {v}: expected one of {', '.join(map(str, BAUDRATES))}")
        return v


def serial_problems(
    serial: SerialPort | None, framing_set: bool, framing: Framing, tcp_keys: Sequence[str]
) -> list[Problem]:
    """A ``serial:`` line speaks RTU and has no TCP address: said at the key that conflicts
    (a device and the server's endpoint share this)."""
    if serial is None:
        return []
    problems = [
        Problem((key,), f"{key} with serial", f"either serial or {key}, not both")
        for key in tcp_keys
    ]
    if framing_set and framing != "rtu":
        problems.append(
            Problem(
                ("framing",),
                f"{framing} with serial",
                "framing: rtu or no framing (a serial line speaks Modbus RTU), or host/port "
                "instead of serial for Modbus TCP",
            )
        )
    return problems


class PollGroup(Strict):
    interval: float = Field(gt=0, le=86400, description="seconds between polls")


class RegisterLayout(Strict):
    """Where a value sits in the Modbus tables and how it is encoded: shared by the points of a
    device (client) and the entries of a served register map (server)."""

    table: Table = Field(Table.HOLDING, description="holding, input, coil or discrete")
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    type: DataType | None = Field(None, description="defaults to bool for bits, uint16 otherwise")
    byte_order: ByteOrder | None = Field(None, description="defaults to the device's byte_order")
    bit: int | None = Field(None, ge=0, le=15, description="bit of a register, for type bool")
    length: int | None = Field(None, ge=1, le=125, description="registers of a string")
    scale: float = Field(1.0, description="engineering = raw * scale + offset")
    offset: float = 0.0

    @field_validator("scale")
    @classmethod
    def _scale_not_zero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0 (it must be reversible for writes)")
        return v

    @property
    def dtype(self) -> DataType:
        if self.type is not None:
            return self.type
        return DataType.BOOL if self.table.is_bit else DataType.UINT16

    @property
    def count(self) -> int:
        """Registers (or bits) this value occupies."""
        if self.table.is_bit or self.bit is not None:
            return 1
        return register_count(self.dtype, self.length)

    def layout_problem(self) -> str | None:
        """What makes this layout impossible, or None."""
        dtype = self.dtype
        if self.table.is_bit and dtype is not DataType.BOOL:
            return f"a {self.table} table holds bools, not {dtype}"
        if self.bit is not None and (self.table.is_bit or dtype is not DataType.BOOL):
            return "bit selects one bit of a holding or input register, type bool"
        if dtype is DataType.STRING and self.length is None:
            return "a string point needs length (registers, 2 characters each)"
        if dtype is not DataType.STRING and self.length is not None:
            return "length applies to string points only"
        if dtype is DataType.BOOL and not self.table.is_bit and self.bit is None:
            return "a bool in a register needs bit (0-15)"
        if self.address + self.count > 65536:
            return f"address {self.address} + {self.count} registers runs past 65535"
        return None


class ModbusPoint(RegisterLayout, PointLimits):
    name: str = Field(pattern=NAME_PATTERN, description="point name, unique in the device")
    unit_id: int | None = Field(None, ge=0, le=255, description="defaults to the device's")
    unit: Unit = Field(None, description="engineering unit after scaling (pint name)")
    poll: str = Field("default", description="name of a poll group of the device")
    deadband: Deadband | None = None
    publish: Literal["change", "always"] | None = Field(
        None, description="change: only values past the deadband; always: every poll"
    )
    access: Access | None = Field(None, description="r or rw; defaults to r")
    write_rate: float | None = Field(
        None, gt=0, description="writes per second allowed (default 20), a safety limit"
    )
    write_multiple: bool | None = Field(None, description="defaults to the device's")
    bit_write: BitWrite | None = Field(None, description="defaults to the device's")
    description: str = ""

    @property
    def writable(self) -> bool:
        return self.access is not None and self.access.writable

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        problem = self.layout_problem()
        if problem is not None:
            raise ValueError(problem)
        if self.bit_write is not None and self.bit is None:
            raise ValueError("bit_write applies to points with bit (a bool in a register)")
        if self.access is not None and self.access.writable and not self.table.writable:
            raise ValueError(f"{self.table} points are read-only; access must be r")
        return self


_NO_HOST = object()  # neither host nor serial given: see ModbusDevice._host_or_serial


class ModbusDevice(Strict):
    """One Modbus connection: TCP (``host``) or a local serial line (``serial``); points may
    address several unit ids behind it (with RTU, the devices on the serial bus)."""

    # editors: one of the two (a file with neither is told "no 'host' key", `_host_or_serial`)
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["host"]}, {"required": ["serial"]}]}
    )

    protocol: Literal["modbus"] = "modbus"
    host: str | None = Field(None, min_length=1, description="address; or serial")
    port: int = Field(502, ge=1, le=65535)
    serial: SerialPort | None = Field(
        None, description="a local serial line (RTU) instead of host and port"
    )
    framing: Framing = Field(
        "tcp",
        description="tcp: Modbus TCP (MBAP header); rtu: raw RTU frames (unit id, PDU, CRC16) "
        "through a serial-to-Ethernet converter in TCP server (raw) mode; always rtu on a "
        "serial line",
    )
    unit_id: int = Field(1, ge=0, le=255, description="default unit id of the points")
    timeout: float = Field(1.0, gt=0, le=60, description="seconds per request")
    byte_order: ByteOrder = ByteOrder.ABCD
    max_gap: int = Field(
        8, ge=0, le=125, description="unused registers one read may span to save a request"
    )
    max_registers: int = Field(125, ge=1, le=125, description="registers per read request")
    max_bits: int = Field(2000, ge=1, le=2000, description="bits per read request")
    publish: Literal["change", "always"] = Field(
        "change", description="default for the points: publish on change or on every poll"
    )
    poll_groups: dict[str, PollGroup] = Field(
        default_factory=lambda: {"default": PollGroup(interval=1.0)}
    )
    reconnect: Backoff = Field(default_factory=Backoff)
    write_multiple: bool = Field(False, description=WRITE_MULTIPLE_HELP)
    bit_write: BitWrite = Field("read_modify_write", description=BIT_WRITE_HELP)
    write_fallback: bool = Field(
        True,
        description="a device answering FC 06 or FC 05 with exception 01 (illegal function, "
        "so it did nothing) is written again at once with FC 16 or FC 15, and so from then on",
    )
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _host_or_serial(cls, data: Any) -> Any:
        """Neither: host is missing, said as for any required key (most devices are TCP), with
        the device's other errors (an unknown key 'hots' above all): `_present`."""
        if isinstance(data, dict) and "host" not in data and "serial" not in data:
            return {**data, "host": _NO_HOST}
        return data

    @field_validator("host", mode="before")
    @classmethod
    def _present(cls, v: Any) -> Any:
        if v is _NO_HOST:
            raise PydanticCustomError("missing", "Field required")
        return v

    @property
    def rtu(self) -> bool:
        """RTU frames: on a serial line, or through a converter (``framing: rtu``)."""
        return self.serial is not None or self.framing == "rtu"

    @property
    def where(self) -> str:
        """The device's address in words, for the log."""
        if self.serial is not None:
            return f"serial port {self.serial.port}"
        return f"{self.host}:{self.port}"

    def check(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.host is None and self.serial is None:  # host: null
            problems.append(Problem(("host",), "null", "an address (Modbus TCP), or serial"))
        tcp_keys = [k for k in ("host", "port") if k in self.model_fields_set]
        problems += serial_problems(
            self.serial, "framing" in self.model_fields_set, self.framing, tcp_keys
        )
        seen: dict[str, int] = {}
        implicit: list[int] = []  # points without poll: while no group is named default
        for i, p in enumerate(self.points):
            if p.name in seen:
                problems.append(
                    Problem(
                        ("points", i, "name"),
                        f"{p.name!r} again",
                        f"a point name not already used (points[{seen[p.name]}])",
                    )
                )
            seen.setdefault(p.name, i)
            if p.poll in self.poll_groups:
                continue
            if "poll" not in p.model_fields_set:  # said once below, not once per point
                implicit.append(i)
                continue
            problems.append(
                Problem(
                    ("points", i, "poll"),
                    repr(p.poll),
                    f"one of the poll_groups: {', '.join(sorted(self.poll_groups))}",
                )
            )
        if implicit:
            names = [self.points[i].name for i in implicit]
            problems.append(
                Problem(
                    ("points", implicit[0], "poll"),
                    f"{counted(len(names), 'point')} without poll: ({listing(names)}), which go"
                    " to poll group 'default', and there is none",
                    f"poll: on each (one of the poll_groups: {', '.join(sorted(self.poll_groups))})"
                    " or a poll group named default",
                )
            )
        problems.extend(self._overlaps())
        problems.extend(self._broadcast_reads())
        return problems

    def _broadcast_reads(self) -> list[Problem]:
        """On a serial bus unit id 0 is broadcast: every device acts on it and none answers, so
        a point read through it would only ever time out; 248-255 are reserved (Modbus over
        serial line, 2.2), no device has them. Modbus TCP devices answer on any unit id."""
        if not self.rtu:
            return []
        expected = (
            "a unit id 1-247 (0 is broadcast on a serial bus: no device answers a read;"
            " 248-255 are reserved)"
        )
        how = "serial" if self.serial is not None else "framing: rtu"
        problems = [
            Problem(("points", i, "unit_id"), f"{p.unit_id} ({how})", expected)
            for i, p in enumerate(self.points)
            if p.unit_id is not None and not 1 <= p.unit_id <= 247
        ]
        inherit = [p.name for p in self.points if p.unit_id is None]
        if not 1 <= self.unit_id <= 247 and inherit:
            problems.append(
                Problem(
                    ("unit_id",),
                    f"{self.unit_id} ({how}), the unit id of "
                    f"{counted(len(inherit), 'point')} ({listing(inherit)})",
                    expected,
                )
            )
        return problems

    def _overlaps(self) -> list[Problem]:
        """Two points on the same registers are a config mistake, except different bits."""
        spans: list[tuple[int, Table, int, int, int | None, int]] = []
        for i, p in enumerate(self.points):
            unit = self.unit_id if p.unit_id is None else p.unit_id
            spans.append((unit, p.table, p.address, p.address + p.count, p.bit, i))
        spans.sort()
        problems: list[Problem] = []
        widest: tuple[int, Table, int, int, int | None, int] | None = None  # reaches furthest
        for b in spans:
            a = widest
            if a is None or a[0] != b[0] or a[1] != b[1] or b[2] >= a[3]:
                if a is None or a[0] != b[0] or a[1] != b[1] or b[3] > a[3]:
                    widest = b
                continue
            if b[3] > a[3]:
                widest = b
            if a[4] is not None and b[4] is not None and a[4] != b[4]:
                continue  # two different bits of one register
            first, second = self.points[a[5]], self.points[b[5]]
            problems.append(
                Problem(
                    ("points", b[5], "address"),
                    f"{second.name!r} at {b[1]} {b[2]} overlaps {first.name!r} "
                    f"({b[1]} {a[2]}..{a[3] - 1}, unit {a[0]})",
                    "points that do not share registers",
                )
            )
        return problems

    def unit_of(self, point: ModbusPoint) -> int:
        return self.unit_id if point.unit_id is None else point.unit_id

    def publish_of(self, point: ModbusPoint) -> str:
        return self.publish if point.publish is None else point.publish

    def order_of(self, point: ModbusPoint) -> ByteOrder:
        return self.byte_order if point.byte_order is None else point.byte_order

    def write_multiple_of(self, point: ModbusPoint) -> bool:
        return self.write_multiple if point.write_multiple is None else point.write_multiple

    def bit_write_of(self, point: ModbusPoint) -> BitWrite:
        return self.bit_write if point.bit_write is None else point.bit_write
