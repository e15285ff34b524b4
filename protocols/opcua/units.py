"""pint unit strings -> OPC UA ``EUInformation`` (the EngineeringUnits property).

OPC UA identifies units by their UNECE Recommendation 20 common code, packed into an Int32
(OPC 10000-8 5.6.3: each character shifted in, "CEL" -> 0x43454C). Clients such as HMIs match on
that UnitId, not on the display text, so the common units carry their code; any other unit pint
knows gets UnitId -1 and its own spelling as DisplayName, which still tells a person what it is.

A unit is matched by what it means, not how it is spelled: ``degC``, ``celsius`` and
``degree_Celsius`` all parse to the same pint unit and all get CEL.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from asyncua import ua

CEFACT_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

# common code, display (UNECE symbol), description, one pint spelling of it
_UNECE: tuple[tuple[str, str, str, str], ...] = (
    ("CEL", "°C", "degree Celsius", "degC"),
    ("FAH", "°F", "degree Fahrenheit", "degF"),
    ("KEL", "K", "kelvin", "K"),
    ("BAR", "bar", "bar [unit of pressure]", "bar"),
    ("MBR", "mbar", "millibar", "mbar"),
    ("PAL", "Pa", "pascal", "Pa"),
    ("A97", "hPa", "hectopascal", "hPa"),
    ("KPA", "kPa", "kilopascal", "kPa"),
    ("MPA", "MPa", "megapascal", "MPa"),
    ("PS", "lbf/in²", "pound-force per square inch", "psi"),
    ("P1", "%", "percent", "percent"),
    ("WTT", "W", "watt", "W"),
    ("KWT", "kW", "kilowatt", "kW"),
    ("MAW", "MW", "megawatt", "MW"),
    ("WHR", "W·h", "watt hour", "Wh"),
    ("KWH", "kW·h", "kilowatt hour", "kWh"),
    ("MWH", "MW·h", "megawatt hour", "MWh"),
    ("VLT", "V", "volt", "V"),
    ("2Z", "mV", "millivolt", "mV"),
    ("KVT", "kV", "kilovolt", "kV"),
    ("AMP", "A", "ampere", "A"),
    ("4K", "mA", "milliampere", "mA"),
    ("D46", "V·A", "volt - ampere", "VA"),
    ("KVA", "kV·A", "kilovolt - ampere", "kVA"),
    ("OHM", "Ω", "ohm", "ohm"),
    ("HTZ", "Hz", "hertz", "Hz"),
    ("RPM", "r/min", "revolutions per minute", "rpm"),
    ("L2", "l/min", "litre per minute", "l/min"),
    ("G51", "l/s", "litre per second", "l/s"),
    ("MQH", "m³/h", "cubic metre per hour", "m3/h"),
    ("MQS", "m³/s", "cubic metre per second", "m3/s"),
    ("LTR", "l", "litre", "l"),
    ("MTQ", "m³", "cubic metre", "m3"),
    ("MTS", "m/s", "metre per second", "m/s"),
    ("C16", "mm/s", "millimetre per second", "mm/s"),
    ("MSK", "m/s²", "metre per second squared", "m/s**2"),
    ("MTR", "m", "metre", "m"),
    ("MMT", "mm", "millimetre", "mm"),
    ("CMT", "cm", "centimetre", "cm"),
    ("KGM", "kg", "kilogram", "kg"),
    ("GRM", "g", "gram", "g"),
    ("TNE", "t", "tonne (metric ton)", "t"),
    ("KGS", "kg/s", "kilogram per second", "kg/s"),
    ("E93", "kg/h", "kilogram per hour", "kg/h"),
    ("SEC", "s", "second [unit of time]", "s"),
    ("C26", "ms", "millisecond", "ms"),
    ("MIN", "min", "minute [unit of time]", "min"),
    ("HUR", "h", "hour", "h"),
    ("NEW", "N", "newton", "N"),
    ("NU", "N·m", "newton metre", "N*m"),
    ("JOU", "J", "joule", "J"),
    ("KJO", "kJ", "kilojoule", "kJ"),
    ("2N", "dB", "decibel", "dB"),
    ("LUX", "lx", "lux", "lux"),
    ("DD", "°", "degree [unit of angle]", "deg"),
)


def unit_id(code: str) -> int:
    """The UnitId of a UNECE common code (OPC 10000-8 5.6.3)."""
    value = 0
    for char in code.strip():
        value = (value << 8) | ord(char)
    return value


def _info(unit_id: int, display: str, description: str, namespace: str) -> ua.EUInformation:
    return ua.EUInformation(
        NamespaceUri=namespace,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(display, "en"),
        Description=ua.LocalizedText(description, "en"),
    )


@lru_cache(maxsize=1)
def _by_meaning() -> dict[Any, tuple[str, str, str]]:
    """pint unit -> (code, display, description); built once, on first use."""
    return {_parse(spelling): (code, disp, desc) for code, disp, desc, spelling in _UNECE}


def _parse(unit: str) -> Any:
    """The pint unit (hashable, equal for equal meanings) with the config's spelling rules
    (%, m3); None for a unit pint does not know."""
    from gateway.units import UnitError, _parse

    try:
        return _parse(unit)
    except UnitError:
        return None


@lru_cache(maxsize=1024)
def eu_information(unit: str | None) -> ua.EUInformation | None:
    """The EngineeringUnits of a point's unit; None when the point has no unit.

    Cached: the result is shared, so callers must not modify it.
    """
    if unit is None or not unit.strip():
        return None
    found = _by_meaning().get(_parse(unit))
    if found is None:
        return _info(-1, unit.strip(), unit.strip(), "")
    code, display, description = found
    return _info(unit_id(code), display, description, CEFACT_NAMESPACE)
