"""Scaling and deadband: the exact rules, edge by edge."""

from __future__ import annotations

import math

import pytest

from gateway.transform import DeadbandFilter, Scaling
from gateway.types import Quality, Value

GOOD, BAD, UNCERTAIN = Quality.GOOD, Quality.BAD, Quality.UNCERTAIN
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("raw", [0, 1, -32768, 65535, 2**63])
def test_identity_keeps_ints(raw: int) -> None:
    out = Scaling().apply(raw)
    assert out == raw and type(out) is int


@pytest.mark.parametrize(
    ("scale", "offset", "raw", "eng"),
    [
        (0.1, 0.0, 215, 21.5),
        (0.1, -40.0, 500, 10.0),
        (1.0, 2.5, 4, 6.5),  # an offset alone makes it a float
        (-2.0, 0.0, 3, -6.0),
        (0.001, 0.0, 1234567, 1234.567),
        (1.0, 0.0, 2.5, 2.5),
    ],
)
def test_scaling(scale: float, offset: float, raw: float, eng: float) -> None:
    s = Scaling(scale, offset)
    assert s.apply(raw) == pytest.approx(eng)
    assert s.invert(eng) == pytest.approx(raw)


@pytest.mark.parametrize(("scale", "offset"), [(0.0, 0.0), (NAN, 0.0), (INF, 0.0), (1.0, NAN)])
def test_scaling_rejects(scale: float, offset: float) -> None:
    with pytest.raises(ValueError, match="scale must be finite and not 0"):
        Scaling(scale, offset)


def test_scaling_equality_ignores_cache() -> None:
    assert Scaling(0.5, 1.0) == Scaling(0.5, 1.0)
    assert Scaling(0.5, 1.0) != Scaling(0.5, 2.0)


# (filter arguments, [(value, quality, accepted?), ...]) played in order on one filter
SEQUENCES: list[tuple[dict[str, float], list[tuple[Value, Quality, bool]]]] = [
    ({}, [(1, GOOD, True), (1, GOOD, False), (2, GOOD, True), (2.0, GOOD, False), (1, GOOD, True)]),
    (
        {"absolute": 0.5},
        [
            (10, GOOD, True),
            (10.5, GOOD, False),
            (10.6, GOOD, True),
            (10.2, GOOD, False),
            (11.2, GOOD, True),
            (10.6, GOOD, True),
        ],
    ),
    # drift adds up against the last *accepted* value
    (
        {"absolute": 1.0},
        [(0.0, GOOD, True), (0.6, GOOD, False), (0.9, GOOD, False), (1.2, GOOD, True)],
    ),
    ({"absolute": 0.0}, [(5, GOOD, True), (5, GOOD, False), (5.001, GOOD, True)]),
    # percent of the last accepted value
    (
        {"percent": 10},
        [
            (100, GOOD, True),
            (109, GOOD, False),
            (111, GOOD, True),
            (100, GOOD, False),
            (99.8, GOOD, True),
        ],
    ),
    ({"percent": 10}, [(-50, GOOD, True), (-54, GOOD, False), (-56, GOOD, True)]),
    ({"percent": 5}, [(0, GOOD, True), (0.001, GOOD, True)]),  # 5 % of 0 is 0
    # percent of the span
    (
        {"percent": 10, "span": 50},
        [(0, GOOD, True), (5, GOOD, False), (5.5, GOOD, True), (1, GOOD, False), (0.4, GOOD, True)],
    ),
    # absolute OR percent: whichever is passed first
    (
        {"absolute": 100, "percent": 1, "span": 1000},
        [(0, GOOD, True), (9, GOOD, False), (11, GOOD, True)],
    ),
    ({"absolute": 2, "percent": 50}, [(100, GOOD, True), (103, GOOD, True)]),
    # a change of quality is always sent, with or without a value change
    (
        {"absolute": 10},
        [
            (1, GOOD, True),
            (1, BAD, True),
            (1, BAD, False),
            (2, BAD, False),
            (2, UNCERTAIN, True),
            (2, GOOD, True),
        ],
    ),
    ({}, [(None, BAD, True), (None, BAD, False), (3, GOOD, True), (None, BAD, True)]),
    # non-numbers: any difference
    ({"absolute": 10}, [("a", GOOD, True), ("a", GOOD, False), ("b", GOOD, True)]),
    ({"absolute": 10}, [(True, GOOD, True), (True, GOOD, False), (False, GOOD, True)]),
    ({"absolute": 10}, [(1, GOOD, True), (True, GOOD, True), (1, GOOD, True)]),  # bool is no int
    ({"absolute": 10}, [(1, GOOD, True), ("1", GOOD, True), (1, GOOD, True)]),
    # NaN is sent once; NaN after NaN is unchanged
    ({}, [(1.0, GOOD, True), (NAN, GOOD, True), (NAN, GOOD, False), (1.0, GOOD, True)]),
    ({"absolute": 5}, [(NAN, GOOD, True), (NAN, GOOD, False), (0.0, GOOD, True)]),
    ({"percent": 5}, [(NAN, GOOD, True), (2.0, GOOD, True), (2.05, GOOD, False)]),
    # infinities
    ({}, [(INF, GOOD, True), (INF, GOOD, False), (-INF, GOOD, True), (0.0, GOOD, True)]),
    ({"absolute": 1}, [(1.0, GOOD, True), (INF, GOOD, True), (INF, GOOD, False)]),
]


@pytest.mark.parametrize(("kwargs", "steps"), SEQUENCES)
def test_deadband(kwargs: dict[str, float], steps: list[tuple[Value, Quality, bool]]) -> None:
    f = DeadbandFilter(**kwargs)
    got = [f.accept(value, quality) for value, quality, _ in steps]
    assert got == [accepted for _, _, accepted in steps]


def test_deadband_reset() -> None:
    f = DeadbandFilter(absolute=5)
    assert f.accept(1, GOOD)
    assert not f.accept(1, GOOD)
    f.reset()
    assert f.accept(1, GOOD)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"absolute": -1}, "absolute deadband must be >= 0"),
        ({"percent": -0.1}, "percent deadband must be >= 0"),
        ({"absolute": NAN}, "absolute deadband must be >= 0"),
        ({"percent": 1, "span": 0}, "span must be > 0"),
        ({"percent": 1, "span": -10}, "span must be > 0"),
    ],
)
def test_deadband_rejects(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeadbandFilter(**kwargs)


def test_scaling_drops_binary_noise_of_decimal_scales() -> None:
    from gateway.transform import Scaling

    assert Scaling(0.001).apply(208) == 0.208  # plain float arithmetic gives 0.20800000000000002
    assert Scaling(0.1, -40).apply(655) == 25.5
    assert Scaling(0.1).invert(Scaling(0.1).apply(215)) == pytest.approx(215)
