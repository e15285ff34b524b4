"""Unit conversion: spellings, offset units, exactness, errors, pint kept off the import path."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from gateway.units import UnitError, compatible, convert, converter, validate_unit


def test_import_does_not_load_pint() -> None:
    code = "import sys, gateway.units; assert 'pint' not in sys.modules, 'pint imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


ENGINEERING = [
    "degC",
    "degF",
    "K",
    "%",
    "percent",
    "kW",
    "kWh",
    "bar",
    "psi",
    "Pa",
    "m3/h",
    "l/min",
    "rpm",
    "A",
    "V",
    "Hz",
    "m^3/h",
    "m**3/h",
    "cm2",
    "L/s",
    "°C",
    "kg/m3",
    " mbar ",
]


@pytest.mark.parametrize("name", ENGINEERING)
def test_validate_accepts(name: str) -> None:
    assert validate_unit(name) == name.strip()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("degF2", "unknown unit 'degF2'"),
        ("foo", "unknown unit 'foo'"),
        ("kWhh", "unknown unit 'kWhh'"),
        ("m3x", "unknown unit 'm3x'"),
        ("", "empty unit name"),
        ("   ", "empty unit name"),
        ("2 m", "'2 m' is not a unit"),
        ("m/", "'m/' is not a unit"),
        ("(m", "'\\(m' is not a unit"),
    ],
)
def test_validate_rejects(name: str, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        validate_unit(name)


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)


# Exact: the affine map is derived with fractions, so these are equal, not approximately equal.
EXACT = [
    (0, "degC", "degF", 32.0),
    (100, "degC", "degF", 212.0),
    (-40, "degC", "degF", -40.0),
    (212, "degF", "degC", 100.0),
    (32, "degF", "degC", 0.0),
    (-40, "degF", "degC", -40.0),
    (0, "degC", "K", 273.15),
    (273.15, "K", "degC", 0.0),
    (1, "l/min", "m3/h", 0.06),
    (1000, "l/min", "m3/h", 60.0),
    (60, "m3/h", "l/min", 1000.0),
    (50, "%", "dimensionless", 0.5),
    (5, "%", "percent", 5.0),
    (0.25, "dimensionless", "%", 25.0),
    (1.5, "kW", "W", 1500.0),
    (1, "kWh", "J", 3.6e6),
    (1, "bar", "Pa", 1e5),
    (250, "mbar", "bar", 0.25),
    (1, "Hz", "1/min", 60.0),
    (60, "rpm", "revolution/second", 1.0),
    (3, "A", "mA", 3000.0),
    (5, "V", "V", 5.0),
    (60, "degC/min", "K/s", 1.0),  # a rate of temperature is a difference, no offset
]


@pytest.mark.parametrize(("value", "src", "dst", "expected"), EXACT)
def test_convert_exact(value: float, src: str, dst: str, expected: float) -> None:
    assert convert(value, src, dst) == expected
    assert converter(src, dst)(value) == expected


@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        (1, "psi", "bar", 0.0689475729),
        (14.5, "psi", "kPa", 99.9739807),
        (1, "bar", "psi", 14.5037738),
        (98.6, "degF", "K", 310.15),
        (60, "rpm", "Hz", 2 * math.pi),  # pint's rpm is an angular velocity, see the module
        (10, "dB", "dimensionless", 10.0),  # logarithmic: converted through pint every call
        (20, "dB", "dimensionless", 100.0),
    ],
)
def test_convert_approx(value: float, src: str, dst: str, expected: float) -> None:
    assert convert(value, src, dst) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("value", [-1e6, -273.15, -1.5, 0.0, 0.1, 21.7, 1e9])
@pytest.mark.parametrize(("a", "b"), [("degC", "degF"), ("K", "degF"), ("psi", "bar")])
def test_round_trip(value: float, a: str, b: str) -> None:
    assert convert(convert(value, a, b), b, a) == pytest.approx(value, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("bar", "degC", "cannot convert bar to degC"),
        ("kW", "kWh", "cannot convert kW to kWh"),
        ("m3/h", "l", "cannot convert m3/h to l"),
        ("%", "V", "cannot convert % to V"),
        ("degF2", "degC", "unknown unit 'degF2'"),
        ("degC", "nope", "unknown unit 'nope'"),
    ],
)
def test_convert_rejects(src: str, dst: str, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        convert(1.0, src, dst)


def test_converter_is_cached_plain_function() -> None:
    f = converter("degC", "degF")
    assert converter("degC", "degF") is f
    assert f.__module__ == "gateway.units" and f(37.0) == pytest.approx(98.6)
    assert isinstance(f(1), float)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("bar", "psi", True),
        ("degC", "K", True),
        ("l/min", "m3/h", True),
        ("%", "dimensionless", True),
        ("kWh", "J", True),
        ("bar", "degC", False),
        ("kW", "kWh", False),
        ("A", "V", False),
    ],
)
def test_compatible(a: str, b: str, expected: bool) -> None:
    assert compatible(a, b) is expected


def test_compatible_unknown_unit_is_an_error() -> None:
    with pytest.raises(UnitError, match="unknown unit 'degF2'"):
        compatible("degF2", "degC")


def test_a_bridge_labels_a_failed_read_in_the_unit_it_converts_to() -> None:
    """A bad sample has no value to convert, but its unit must still say what the bridge
    delivers, or a consumer sees degC among the degF readings of the same point."""
    from gateway.bridge import PointTransform
    from gateway.types import Quality, Sample

    transform = PointTransform(("*",), {"room_temp": "degF"})
    good = Sample("room_temp", 20.0, unit="degC")
    bad = Sample("room_temp", None, Quality.BAD, unit="degC", reason="connection lost")
    out = transform.apply((good, bad))
    assert [(s.value, s.unit, s.quality) for s in out] == [
        (68.0, "degF", Quality.GOOD),
        (None, "degF", Quality.BAD),
    ]
    assert out[1].reason == "connection lost"
