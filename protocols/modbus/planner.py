"""Plan the fewest Modbus read requests that cover a set of points. Sans-IO.

Each request costs a round trip, so reading a few unused addresses between two points is cheaper
than a second request, up to ``max_gap`` of them. Items are grouped by (unit, table), sorted by
address and merged greedily: an item joins the open request when the unused addresses between
them are at most ``max_gap`` and the merged span stays within the protocol's limit (125
registers, 2000 bits per request); otherwise it opens a new one. Overlapping items (two bits of
one register, a point read as two types) share the registers. Greedy is optimal here: with sorted
items, closing a request as late as possible never makes a later one start earlier.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from protocols.modbus.codec import Table

MAX_REGISTERS = 125  # Modbus read holding/input registers: at most 125 per request
MAX_BITS = 2000  # read coils/discrete inputs: at most 2000 per request
_ADDRESSES = 65536


class Span(Protocol):
    """What the planner needs of an item: where it is and how many registers or bits it has."""

    @property
    def unit(self) -> int: ...
    @property
    def table(self) -> Table: ...
    @property
    def address(self) -> int: ...
    @property
    def count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadItem:
    """One thing to read; ``key`` is the caller's own handle on it (a point index, a name)."""

    unit: int
    table: Table
    address: int
    count: int
    key: Hashable = None


T = TypeVar("T", bound=Span)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class ReadRequest(Generic[T]):
    """One read request: ``count`` registers or bits from ``address``, covering ``items``."""

    unit: int
    table: Table
    address: int
    count: int
    items: tuple[T, ...]

    def slice(self, values: Sequence[V], item: Span) -> Sequence[V]:
        """The registers or bits of ``item`` out of this request's response ``values``.

        ``values`` may be longer than ``count`` (bit reads come back padded to whole bytes).
        """
        start = item.address - self.address
        stop = start + item.count
        if start < 0 or stop > self.count:
            raise ValueError(
                f"{item.table} {item.address}+{item.count} is outside this request "
                f"({self.table} {self.address}+{self.count})"
            )
        if stop > len(values):
            raise ValueError(f"response has {len(values)} values, {stop} needed")
        return values[start:stop]


def plan_reads(
    items: Iterable[T],
    *,
    max_gap: int,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest[T]]:
    """The fewest requests covering ``items``, ordered by (unit, table, address).

    Raises ValueError for an item larger than one request may be, or outside 0..65535.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if max_registers < 1 or max_bits < 1:
        raise ValueError("max_registers and max_bits must be >= 1")
    groups: dict[tuple[int, Table], list[T]] = {}
    for item in items:
        limit = max_bits if item.table.is_bit else max_registers
        _check(item, limit)
        groups.setdefault((item.unit, item.table), []).append(item)

    requests: list[ReadRequest[T]] = []
    for (unit, table), group in sorted(groups.items(), key=lambda kv: kv[0]):
        limit = max_bits if table.is_bit else max_registers
        group.sort(key=lambda it: (it.address, it.count))
        start, end = group[0].address, group[0].address  # [start, end) of the open request
        members: list[T] = []
        for item in group:
            item_end = item.address + item.count
            if members and (item.address - end > max_gap or max(end, item_end) - start > limit):
                requests.append(ReadRequest(unit, table, start, end - start, tuple(members)))
                start, end, members = item.address, item.address, []
            members.append(item)
            end = max(end, item_end)
        requests.append(ReadRequest(unit, table, start, end - start, tuple(members)))
    return requests


def _check(item: Span, limit: int) -> None:
    what = "bits" if item.table.is_bit else "registers"
    if item.count < 1:
        raise ValueError(f"{item!r}: count must be >= 1")
    if item.count > limit:
        raise ValueError(f"{item!r}: {item.count} {what} do not fit in one request ({limit})")
    if item.address < 0 or item.address + item.count > _ADDRESSES:
        raise ValueError(f"{item!r}: addresses run outside 0..65535")
