"""Read planner: fewest requests, gap and size limits at their exact edges, slicing responses."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from protocols.modbus.codec import Table
from protocols.modbus.planner import ReadItem, ReadRequest, plan_reads

H, IN, C, DI = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE


def spans(requests: list[ReadRequest[ReadItem]]) -> list[tuple[int, Table, int, int]]:
    return [(r.unit, r.table, r.address, r.count) for r in requests]


def items(table: Table, *address_count: tuple[int, int], unit: int = 1) -> list[ReadItem]:
    return [ReadItem(unit, table, a, c, key=i) for i, (a, c) in enumerate(address_count)]


@pytest.mark.parametrize(
    ("table", "layout", "max_gap", "expected"),
    [
        # contiguous points merge whatever the gap allowance
        (H, [(0, 1), (1, 2), (3, 1)], 0, [(0, 4)]),
        # gap of exactly max_gap merges, max_gap + 1 does not
        (H, [(0, 1), (6, 2)], 5, [(0, 8)]),
        (H, [(0, 1), (7, 2)], 5, [(0, 1), (7, 2)]),
        (H, [(10, 2), (12, 1)], 0, [(10, 3)]),
        (H, [(10, 2), (13, 1)], 0, [(10, 2), (13, 1)]),
        (IN, [(100, 2), (110, 2), (130, 2)], 8, [(100, 12), (130, 2)]),
        # the gap counts from the furthest end so far, not from the last item
        (H, [(0, 10), (2, 1), (12, 1)], 2, [(0, 13)]),
        # overlapping and nested items share registers
        (H, [(0, 2), (1, 2)], 0, [(0, 3)]),
        (H, [(0, 4), (1, 1)], 0, [(0, 4)]),
        (H, [(5, 1), (5, 1), (5, 2)], 0, [(5, 2)]),
        # exactly 125 registers is one request, 126 is two
        (H, [(0, 100), (100, 25)], 0, [(0, 125)]),
        (H, [(0, 100), (100, 26)], 0, [(0, 100), (100, 26)]),
        (H, [(0, 1), (124, 1)], 200, [(0, 125)]),
        (H, [(0, 1), (125, 1)], 200, [(0, 1), (125, 1)]),
        (H, [(0, 125)], 0, [(0, 125)]),
        (H, [(0, 60), (60, 60), (120, 60)], 0, [(0, 120), (120, 60)]),
        # exactly 2000 bits is one request, 2001 is two
        (C, [(0, 1), (1999, 1)], 5000, [(0, 2000)]),
        (C, [(0, 1), (2000, 1)], 5000, [(0, 1), (2000, 1)]),
        (DI, [(0, 2000)], 0, [(0, 2000)]),
        (DI, [(3, 1), (4, 1), (9, 1)], 4, [(3, 7)]),
        (DI, [(3, 1), (4, 1), (10, 1)], 4, [(3, 2), (10, 1)]),
        # the far end of the address space
        (H, [(65535, 1), (65530, 2)], 3, [(65530, 6)]),
    ],
)
def test_merging(
    table: Table,
    layout: list[tuple[int, int]],
    max_gap: int,
    expected: list[tuple[int, int]],
) -> None:
    plan = plan_reads(items(table, *layout), max_gap=max_gap)
    assert spans(plan) == [(1, table, a, c) for a, c in expected]
    # every item is in exactly one request, inside its span
    placed = [it for r in plan for it in r.items]
    assert len(placed) == len(layout)
    assert {it.key for it in placed} == set(range(len(layout)))
    for r in plan:
        for it in r.items:
            assert r.address <= it.address and it.address + it.count <= r.address + r.count


def test_smaller_limits() -> None:
    layout = [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert spans(plan_reads(items(H, *layout), max_gap=0, max_registers=4)) == [
        (1, H, 0, 4),
        (1, H, 4, 4),
    ]
    assert spans(plan_reads(items(C, *layout), max_gap=0, max_bits=6)) == [
        (1, C, 0, 6),
        (1, C, 6, 2),
    ]


def test_units_and_tables_are_separate_requests_in_order() -> None:
    mixed = [
        ReadItem(2, H, 0, 1, "u2-h0"),
        ReadItem(1, IN, 0, 1, "u1-i0"),
        ReadItem(1, H, 1, 1, "u1-h1"),
        ReadItem(1, H, 0, 1, "u1-h0"),
        ReadItem(1, C, 0, 1, "u1-c0"),
        ReadItem(1, DI, 0, 1, "u1-d0"),
        ReadItem(1, H, 50, 1, "u1-h50"),
    ]
    expected = [
        (1, C, 0, 1),
        (1, DI, 0, 1),
        (1, H, 0, 2),
        (1, H, 50, 1),
        (1, IN, 0, 1),
        (2, H, 0, 1),
    ]
    rng = random.Random(7)
    for _ in range(20):  # the input order does not matter
        rng.shuffle(mixed)
        plan = plan_reads(mixed, max_gap=10)
        assert spans(plan) == expected
        assert [it.key for it in plan[2].items] == ["u1-h0", "u1-h1"]


def test_bits_of_one_register_share_it() -> None:
    bits = [ReadItem(1, H, 40, 1, f"bit{b}") for b in (3, 0, 15)]
    (request,) = plan_reads(bits, max_gap=0)
    assert (request.address, request.count, len(request.items)) == (40, 1, 3)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (ReadItem(1, H, 0, 126), "126 registers do not fit in one request \\(125\\)"),
        (ReadItem(1, IN, 0, 126), "126 registers do not fit"),
        (ReadItem(1, C, 0, 2001), "2001 bits do not fit in one request \\(2000\\)"),
        (ReadItem(1, DI, 0, 2001), "2001 bits do not fit"),
        (ReadItem(1, H, 0, 0), "count must be >= 1"),
        (ReadItem(1, H, 65535, 2), "outside 0..65535"),
        (ReadItem(1, H, -1, 1), "outside 0..65535"),
    ],
)
def test_bad_items(item: ReadItem, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_reads([ReadItem(1, H, 0, 1), item], max_gap=0)


def test_limits_are_per_table_kind() -> None:
    # 126 is too many registers but fine as bits, and a custom limit applies
    assert spans(plan_reads([ReadItem(1, C, 0, 126)], max_gap=0)) == [(1, C, 0, 126)]
    with pytest.raises(ValueError, match="11 registers"):
        plan_reads([ReadItem(1, H, 0, 11)], max_gap=0, max_registers=10)


@pytest.mark.parametrize(
    "kwargs", [{"max_gap": -1}, {"max_gap": 0, "max_registers": 0}, {"max_gap": 0, "max_bits": 0}]
)
def test_bad_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        plan_reads([ReadItem(1, H, 0, 1)], **kwargs)


def test_nothing_to_read() -> None:
    assert plan_reads([], max_gap=8) == []


def test_slice_registers() -> None:
    a, b, c = items(H, (10, 2), (15, 1), (11, 3))
    (request,) = plan_reads([a, b, c], max_gap=4)
    assert (request.address, request.count) == (10, 6)
    response = [100, 101, 102, 103, 104, 105]
    assert list(request.slice(response, a)) == [100, 101]
    assert list(request.slice(response, b)) == [105]
    assert list(request.slice(response, c)) == [101, 102, 103]


def test_slice_padded_bits() -> None:
    x, y = items(C, (3, 1), (7, 2))
    (request,) = plan_reads([x, y], max_gap=5)
    assert (request.address, request.count) == (3, 6)
    padded = [True, False, False, False, True, False, False, False]  # one whole byte back
    assert list(request.slice(padded, x)) == [True]
    assert list(request.slice(padded, y)) == [True, False]


def test_slice_rejects_short_response_and_foreign_items() -> None:
    a, b = items(H, (0, 2), (4, 2))
    (request,) = plan_reads([a, b], max_gap=2)
    with pytest.raises(ValueError, match="response has 5 values, 6 needed"):
        request.slice([0] * 5, b)
    with pytest.raises(ValueError, match="outside this request"):
        request.slice([0] * 6, ReadItem(1, H, 5, 2))


@dataclass(frozen=True)
class Point:
    """Any object with unit, table, address and count can be planned, not only ReadItem."""

    name: str
    unit: int
    table: Table
    address: int
    count: int


def test_plans_any_span() -> None:
    points = [Point("t", 1, IN, 0, 2), Point("p", 1, IN, 2, 2)]
    (request,) = plan_reads(points, max_gap=0)
    assert [p.name for p in request.items] == ["t", "p"]
    assert list(request.slice([1, 2, 3, 4], points[1])) == [3, 4]
