"""Engineering unit conversion with pint, kept off the import path and off the hot path.

pint takes a few tenths of a second to import and to build its registry, so this module imports
it on first use and shares one registry. Converting through pint costs tens of microseconds, far
too slow at 15,000 samples a second, so `converter` asks pint once for the conversion of 0 and 1
(and checks a third point), keeps the affine map a*x + b that they define and returns a plain
function. The registry computes with fractions: degF -> degC is exactly (x - 32) * 5/9, so
212 degF converts to 100.0 and not 99.99999999999997. The few non-linear units pint knows
(decibels, ...) fall back to pint on every call.

Spellings: everything pint parses, plus ``%`` and ``m3``/``cm2``-style powers of length units
(``m3/h``), which engineers write and pint does not. Mind that pint's ``rpm`` is an angular
velocity: 60 rpm converts to 2*pi Hz, not 1 Hz.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pint

__all__ = ["UnitError", "compatible", "convert", "converter", "validate_unit"]


class UnitError(ValueError):
    """An unknown unit, or a conversion between units of different dimensions."""


# m3 -> m**3, cm2 -> cm**2: only for length units, so a typo like "degF2" stays an error
_LENGTH_POWER = re.compile(r"(?<![A-Za-z_])(mm|cm|dm|m|km|in|ft|yd)([23])(?![\w.])")
_registry: pint.UnitRegistry[Any] | None = None
_float_registry: pint.UnitRegistry[Any] | None = None
_registry_lock = threading.Lock()


def validate_unit(name: str) -> str:
    """``name`` (stripped) when it is a unit; raises UnitError otherwise."""
    _parse(name)
    return name.strip()


def compatible(a: str, b: str) -> bool:
    """Whether ``a`` converts to ``b`` (same dimension); UnitError for an unknown unit."""
    return bool(_parse(a).dimensionality == _parse(b).dimensionality)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (offset units such as degC included)."""
    return converter(from_unit, to_unit)(value)


@lru_cache(maxsize=1024)
def converter(from_unit: str, to_unit: str) -> Callable[[float], float]:
    """A fast ``convert`` for one pair of units; cached, so call it freely."""
    src, dst = _parse(from_unit), _parse(to_unit)
    if src.dimensionality != dst.dimensionality:
        raise UnitError(f"cannot convert {from_unit} to {to_unit}")
    if src == dst:
        return float
    quantity = _ureg().Quantity

    def through_pint(x: float) -> float:
        return float(quantity(x, src).to(dst).magnitude)

    try:
        b, one, far = (quantity(Fraction(x), src).to(dst).magnitude for x in (0, 1, 1000))
    except Exception as exc:
        # Logarithmic units: once numpy is installed pint computes their logs with np.log,
        # which takes no Fraction, so they go through a float registry instead.
        floats = _float_converter(from_unit, to_unit)
        if floats is None:
            raise UnitError(f"cannot convert {from_unit} to {to_unit}: {exc}") from None
        return floats
    if not all(isinstance(v, Fraction) for v in (b, one, far)) or far != 1000 * (one - b) + b:
        return through_pint  # not affine (logarithmic units)
    return _affine(one - b, b)


def _affine(a: Fraction, b: Fraction) -> Callable[[float], float]:
    """x -> a*x + b as plain float arithmetic, exact in the common cases.

    With small denominators it computes (x*p + r) / q, which keeps ratios like 5/9 exact
    (212 degF -> 100.0 degC); otherwise the floats a and b.
    """
    q = math.lcm(a.denominator, b.denominator)
    p, r = a * q, b * q
    if q <= 1 << 20 and abs(p) < 1 << 53 and abs(r) < 1 << 53:
        pf, rf, qf = float(p), float(r), float(q)
        if q == 1:
            return (lambda x: x * pf) if r == 0 else (lambda x: x * pf + rf)
        return (lambda x: x * pf / qf) if r == 0 else (lambda x: (x * pf + rf) / qf)
    af, bf = float(a), float(b)
    return (lambda x: x * af) if b == 0 else (lambda x: x * af + bf)


@lru_cache(maxsize=1024)
def _parse(name: str) -> Any:
    """The pint Unit of ``name``; UnitError with the name for anything that is not one."""
    import pint

    text = name.strip()
    if not text:
        raise UnitError("empty unit name")
    text = _LENGTH_POWER.sub(r"\1**\2", text.replace("%", "percent"))
    try:
        return _ureg().parse_units(text)
    except pint.UndefinedUnitError:
        raise UnitError(f"unknown unit {name!r}") from None
    except Exception as exc:  # pint's parser raises a zoo of types for malformed text
        detail = f": {exc}" if str(exc) else ""
        raise UnitError(f"{name!r} is not a unit{detail}") from None


def _float_converter(from_unit: str, to_unit: str) -> Callable[[float], float] | None:
    """Conversion through a float pint registry (built on first use), or None if it fails."""
    global _float_registry
    import pint

    with _registry_lock:
        if _float_registry is None:
            _float_registry = pint.UnitRegistry()
    ureg = _float_registry
    spell = [
        _LENGTH_POWER.sub(r"\1**\2", u.strip().replace("%", "percent"))
        for u in (from_unit, to_unit)
    ]
    try:
        src, dst = (ureg.parse_units(u) for u in spell)
        ureg.Quantity(1.0, src).to(dst)
    except Exception:
        return None

    def through_pint(x: float) -> float:
        return float(ureg.Quantity(x, src).to(dst).magnitude)

    return through_pint


def _ureg() -> pint.UnitRegistry[Any]:
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                import pint

                # Fractions keep conversion factors exact; see the module docstring.
                _registry = pint.UnitRegistry(non_int_type=Fraction)
    return _registry
