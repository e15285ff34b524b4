"""``gateway scan modbus HOST[:PORT]`` (or ``--serial PORT``): which units answer at a Modbus
TCP (or RTU over TCP) address or on a local serial line, what they are (43/14 device
identification) and, with ``--registers``, which addresses of their tables answer; a table on
stdout, ``--json`` for tools, ``--yaml OUT`` a starting ``devices:`` config that ``gateway
validate`` accepts.

The probing is `protocols.modbus.scan` (read-only by construction, bounds in its docstring); this
module only parses the command line and writes what was found. Exit 0 when the address was
reached (whether or not a unit answered), 1 when it could not be reached at all, 2 for bad
options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cliargs import output_file, path_text, positive_float, positive_int

if TYPE_CHECKING:
    from protocols.modbus.config import Framing, SerialPort
    from protocols.modbus.scan import ScanOptions, ScanReport, UnitReport

DEFAULT_PORT = 502
# Point name prefixes per table in the starting config: hr_0, ir_0, co_0, di_0.
PREFIXES = {"holding": "hr", "input": "ir", "coil": "co", "discrete": "di"}
MAX_ADDRESS = 65536


def host_port(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` (port 502 when left out)."""
    text = text.strip()
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            raise argparse.ArgumentTypeError(f"expected [IPv6]:PORT, got {text!r}")
        host, port = text[1:end], text[end + 2 :] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port!r}")
    return host, int(port)


def max_address(text: str) -> int:
    value = positive_int(text)
    if value > MAX_ADDRESS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_ADDRESS}, got {text!r}")
    return value


def cmd_scan_modbus(args: argparse.Namespace) -> int:
    from gateway.cli import CommandError
    from protocols.modbus.scan import ScanError, ScanOptions, parse_units, scan

    serial = _serial_port(args)
    host, port = args.target or ("", DEFAULT_PORT)
    framing: Framing = "rtu" if serial is not None else args.framing
    try:
        units = parse_units(args.units, framing)
    except ValueError as exc:
        raise CommandError(f"--units: {exc}") from None
    options = ScanOptions(
        host=host, port=port, framing=framing, units=tuple(units), timeout=args.timeout,
        deadline=args.deadline, concurrency=args.concurrency, registers=args.registers,
        limit=args.max_address, serial=serial,
    )  # fmt: skip
    out = output_file(args.yaml) if args.yaml else None  # a path it cannot write: before probing
    try:
        try:
            report = asyncio.run(scan(options))
        except ScanError as exc:
            if out is not None:  # no empty starting config left behind
                out.close()
                Path(args.yaml).unlink(missing_ok=True)
            if args.json:
                print(json.dumps({"target": _target(options), "error": str(exc)}, indent=2))
            raise CommandError(str(exc), 1) from None
        if out is not None:
            out.write(starting_config(report))
    finally:
        if out is not None:
            out.close()
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        for line in report_lines(report):
            print(line)
        if args.yaml:
            print(f"starting config for {_units_found(report)} written to {args.yaml}")
    return 0


def _serial_port(args: argparse.Namespace) -> SerialPort | None:
    """--serial and its line settings, or None for HOST[:PORT]; exactly one of the two."""
    from gateway.cli import CommandError
    from protocols.modbus.config import SerialPort

    if (args.target is None) == (args.serial is None):
        raise CommandError("give HOST[:PORT] or --serial PORT (one of the two)", 2)
    line = {"baudrate": args.baudrate, "parity": args.parity, "stopbits": args.stopbits}
    if args.serial is None:
        given = [f"--{k}" for k, v in line.items() if v is not None]
        if given:
            raise CommandError(f"{', '.join(given)}: only with --serial", 2)
        return None
    if args.framing == "tcp" and args.framing_given:
        raise CommandError("--framing tcp: a serial line speaks RTU", 2)
    try:
        return SerialPort(port=args.serial, **{k: v for k, v in line.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError: the baud rate
        first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}
        raise CommandError(f"--baudrate: {first['msg'].removeprefix('Value error, ')}", 2) from None


def _target(options: ScanOptions) -> str:
    return options.target


def _units_found(report: ScanReport) -> str:
    from gateway.text import counted

    return counted(len(report.found), "unit")


def span_text(spans: list[tuple[int, int]]) -> str:
    """Half-open spans as ``0-9, 20``."""
    return ", ".join(f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in spans) or "-"


def identification_text(unit: UnitReport) -> str:
    if unit.identification is None:
        return unit.identification_note or "-"
    ident = unit.identification
    main = [ident.get(k, "") for k in ("vendor_name", "product_code", "revision")]
    return " ".join(v for v in main if v) or ", ".join(f"{k}={v}" for k, v in ident.items())


def report_lines(report: ScanReport) -> list[str]:
    """The readable report: a line for the probe, a row per unit that answered (or did
    something worth saying), then the count."""
    from gateway.text import counted
    from protocols.modbus.scan import probe_bounds

    options = report.options
    lines = [
        f"modbus {_target(options)} ({options.framing}): {counted(len(options.units), 'unit id')}"
        f" probed; {probe_bounds(options)}"
    ]
    shown = [u for u in report.units if u.status in ("found", "garbage", "closed")]
    if shown:
        rows = [[str(u.unit), u.status, u.answer] for u in shown]
        widths = [max(len(r[i]) for r in [["unit", "status", "answer"], *rows]) for i in range(3)]

        def row(cells: list[str], last: str) -> str:
            return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + f"  {last}"

        lines.append(row(["unit", "status", "answer"], "identification"))
        for unit, cells in zip(shown, rows, strict=True):
            lines.append(row(cells, identification_text(unit)))
            if not options.registers or unit.status != "found":
                continue
            for table, spans in unit.ranges.items():
                note = unit.range_notes.get(table)
                lines.append(
                    f"      {table:<8} {span_text(spans)}" + (f" ({note})" if note else "")
                )
    absent = sum(1 for u in report.units if u.status == "absent")
    skipped = [u.unit for u in report.units if u.status == "not probed"]
    summary = f"{counted(len(report.found), 'unit')} found, {absent} without an answer"
    if skipped:
        why = "deadline reached" if report.deadline_hit else "no connection"
        summary += f", {len(skipped)} not probed ({why}: {_unit_list(skipped)})"
    lines.append(summary)
    lines += [f"note: {n}" for n in report.notes]
    return lines


def _unit_list(units: list[int]) -> str:
    from protocols.modbus.scan import merge

    return span_text(merge([(u, u + 1) for u in units]))


def report_json(report: ScanReport) -> dict[str, Any]:
    options = report.options
    return {
        "target": _target(options),
        "framing": options.framing,
        "bounds": {
            "timeout_s": options.timeout,
            "deadline_s": options.deadline,
            "concurrency": 1 if options.framing == "rtu" else options.concurrency,
            "addresses": options.limit if options.registers else None,
        },
        "units": [
            {
                "unit": u.unit,
                "status": u.status,
                "answer": u.answer,
                "identification": u.identification,
                "identification_note": u.identification_note or None,
                "registers": (
                    {str(t): [[a, b - 1] for a, b in spans] for t, spans in u.ranges.items()}
                    if options.registers and u.status == "found"
                    else None
                ),
                "register_notes": {str(t): n for t, n in u.range_notes.items()},
            }
            for u in report.units
            if u.status != "absent"
        ],
        "found": [u.unit for u in report.found],
        "deadline_reached": report.deadline_hit,
        "notes": report.notes,
    }


def starting_config(report: ScanReport) -> str:
    """A ``devices:`` entry per unit found, a read-only point per address that answered (the
    holding register 0 of the presence read when the tables were not probed)."""
    options = report.options
    lines = [
        f"# A starting point written by `gateway scan modbus {_target(options)}`: one read-only",
        "# point per address that answered (uint16 registers, bool bits). Rename the points, give",
        "# them their real types (float32 over two registers, scale, unit) and remove the rest.",
    ]
    devices: list[str] = []
    for unit in report.found:
        points = _points(unit, options.registers)
        head = f"  unit_{unit.unit}:" + (
            f"  # {identification_text(unit)}" if unit.identification else ""
        )
        entry = [
            head,
            "    protocol: modbus",
            *_address_lines(options),
            f"    unit_id: {unit.unit}",
            f"    timeout: {options.timeout:g}",
            "    points:",
            *points,
        ]
        if points:
            devices += entry
        else:  # a device needs a point to validate: left for the user to fill
            lines.append(f"# unit {unit.unit} answered ({unit.answer}) but no address read:")
            lines += ["#" + line for line in entry]
    lines.append("devices:" if devices else "devices: {}")
    return "\n".join(lines + devices) + "\n"


def _address_lines(options: ScanOptions) -> list[str]:
    serial = options.serial
    if serial is not None:
        return [
            f"    serial: {{port: {json.dumps(serial.port)}, baudrate: {serial.baudrate}, "
            f"parity: {serial.parity}, stopbits: {serial.stopbits}}}"
        ]
    return [
        f"    host: {json.dumps(options.host)}",
        f"    port: {options.port}",
        *(["    framing: rtu"] if options.framing == "rtu" else []),
    ]


def _points(unit: UnitReport, probed: bool) -> list[str]:
    if not probed:
        spans = {"holding": [(0, 1)]} if unit.holding_zero else {}
    else:
        spans = {str(t): s for t, s in unit.ranges.items()}
    out = []
    for table, ranges in spans.items():
        kind = "bool" if table in ("coil", "discrete") else "uint16"
        for a, b in ranges:
            out += [
                f"      - {{name: {PREFIXES[table]}_{i}, table: {table}, address: {i}, "
                f"type: {kind}, access: r}}"
                for i in range(a, b)
            ]
    return out


class _Given(argparse.Action):
    """Stores the value and notes that it was given (``framing_given``)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.framing_given = True


def register(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="find the devices at an address (scan modbus HOST[:PORT])",
        description="Probe an address for the devices behind it and print what answers, with "
        "a starting config. Read-only: nothing is ever written to a device.",
    )
    kinds = scan.add_subparsers(dest="scan_protocol", required=True)
    p = kinds.add_parser(
        "modbus",
        help="which unit ids answer at a Modbus TCP (or RTU over TCP) address, and what they are",
        description="Ask each unit id for holding register 0 (any answer but exceptions 0A/0B, "
        "which a gateway gives for an absent unit, means a unit is there), then for its device "
        "identification (function 43/14) and, with --registers, which addresses of its four "
        "tables answer. Only read functions (01-04, 43) are sent. Exit 0 when the address was "
        "reached, 1 when it could not be, 2 for bad options.",
    )
    p.add_argument(
        "target",
        type=host_port,
        nargs="?",
        metavar="HOST[:PORT]",
        help="the device or gateway (port 502); or --serial",
    )
    p.add_argument(
        "--serial",
        metavar="PORT",
        help="scan a local serial line (RTU) instead, e.g. /dev/ttyUSB0",
    )
    p.add_argument(
        "--baudrate",
        type=positive_int,
        metavar="BAUD",
        help="with --serial: the line's baud rate (default 19200)",
    )
    p.add_argument("--parity", choices=["N", "E", "O"], help="with --serial: N, E or O (default E)")
    p.add_argument("--stopbits", type=int, choices=[1, 2], help="with --serial: 1 or 2 (default 1)")
    p.add_argument(
        "--units",
        default="1-247",
        help="unit ids to probe: a range and/or a list, like 1-247 or 1,2,5 (default %(default)s)",
    )
    p.add_argument(
        "--framing",
        choices=["tcp", "rtu"],
        action=_Given,
        default="tcp",
        help="tcp: Modbus TCP (MBAP); rtu: RTU frames through a serial-to-Ethernet converter "
        "(default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=1.0,
        help="seconds to wait for each answer (default %(default)s)",
    )
    p.add_argument(
        "--deadline",
        type=positive_float,
        default=120.0,
        help="seconds for the whole scan; units not probed by then are reported as such "
        "(default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        help="TCP connections probing unit ids at once, one request at a time on each "
        "(default %(default)s; 1 for a device that takes one client; rtu: always 1)",
    )
    p.add_argument(
        "--registers",
        action="store_true",
        help="also find which addresses of the holding, input, coil and discrete tables answer",
    )
    p.add_argument(
        "--max-address",
        type=max_address,
        default=200,
        help="with --registers: probe addresses 0 to this minus 1 of each table, in blocks of "
        "100, then 10, then one by one where refused (default %(default)s)",
    )
    p.add_argument(
        "--yaml",
        type=path_text,
        metavar="OUT",
        help="write a starting devices: config (one entry per unit found) to this file",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_scan_modbus, framing_given=False)
