"""Sans-IO payload codecs shared by CoAP and MQTT: samples <-> bytes in five content formats.

The formats are named by their CoAP Content-Format numbers (RFC 7252 section 12.3, RFC 8428):

=====  ======================  =====================================================
 id     media type              what `encode` writes / what `decode` accepts
=====  ======================  =====================================================
 0      text/plain              one value: ``21.5``, ``true``, ``on``; text otherwise
 50     application/json        ``{"point": value, ...}``; decode also takes a bare scalar
 60     application/cbor        the same shapes as JSON, in CBOR
 110    application/senml+json  a SenML pack (RFC 8428): ``[{"bn": .., "n": .., "v": ..}]``
 112    application/senml+cbor  the same pack with SenML's integer CBOR labels
=====  ======================  =====================================================

`decode` returns ``(name, value, time, unit)`` tuples. ``name`` is None where the payload does
not name the value (a bare text or JSON scalar). ``time`` is absolute (Unix seconds) or None.
SenML base fields are resolved as RFC 8428 section 4 says: ``bn`` is prefixed to ``n``, ``bt`` is
added to ``t``, ``bu`` is the default ``u``, ``bv``/``bs`` are added to ``v``/``s``, and a base
field stays in force until a later record changes it. A resolved time below 2**28 is relative to
now (section 4.5.3). ``bver`` above 10, and any unknown field ending in ``_`` (must-understand),
are refused. A record needs a value (``v``, ``vs``, ``vb`` or ``s``); ``vd`` (binary data) has no
place on the bus and is refused. A resolved time outside `TIME_RANGE` (1970 to 2200) is refused:
no clock reads it, and targets that store dates would fail on it later.

Numbers must be finite: NaN, infinities (``1e999`` included) and integers beyond a float's range
are refused in every format, so are JSON nested deeper than Python can parse.

In JSON and CBOR objects, nested objects are flattened with dots (``{"a": {"b": 1}}`` gives
``a.b``) and arrays inside an object are skipped; a top-level array is refused (it is probably
SenML sent under the wrong format). Every failure raises `PayloadError`, a ValueError whose
message says what was wrong, so a CoAP server answers 4.00 with it and an MQTT adapter logs it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import Any, TypeAlias

from gateway.types import Sample, Value

__all__ = [
    "Decoded",
    "Format",
    "PayloadError",
    "decode",
    "decode_for",
    "encode",
    "format_of",
    "load_json",
    "pint_unit",
    "senml_unit",
]

Decoded: TypeAlias = tuple[str | None, Value, float | None, str | None]

SENML_VERSION = 10
RELATIVE_LIMIT = 2**28  # SenML: a resolved time below this is relative to now
TIME_RANGE = (0.0, 7_258_118_400.0)  # Unix seconds of 1970-01-01 and 2200-01-01


class PayloadError(ValueError):
    """A payload that cannot be decoded, or samples that cannot be encoded, and why."""


class Format(IntEnum):
    """Content formats, numbered as CoAP's Content-Format registry numbers them."""

    TEXT = 0
    JSON = 50
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]

    @property
    def short(self) -> str:
        """The name used in config files: text, json, cbor, senml+json, senml+cbor."""
        return _SHORT[self]


_MEDIA_TYPES = {
    Format.TEXT: "text/plain;charset=utf-8",
    Format.JSON: "application/json",
    Format.CBOR: "application/cbor",
    Format.SENML_JSON: "application/senml+json",
    Format.SENML_CBOR: "application/senml+cbor",
}
_SHORT = {
    Format.TEXT: "text",
    Format.JSON: "json",
    Format.CBOR: "cbor",
    Format.SENML_JSON: "senml+json",
    Format.SENML_CBOR: "senml+cbor",
}
_BY_NAME: dict[str, Format] = {
    **{name: fmt for fmt, name in _SHORT.items()},
    **{media.split(";")[0]: fmt for fmt, media in _MEDIA_TYPES.items()},
    "senml": Format.SENML_JSON,
}

# RFC 8428 section 6: CBOR labels of the SenML fields.
_CBOR_LABELS: dict[int, str] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip
_CBOR_KEYS = {name: label for label, name in _CBOR_LABELS.items()}


def format_of(fmt: Format | int | str) -> Format:
    """A `Format` from its number, its config name ("senml+json") or its media type."""
    if isinstance(fmt, Format):
        return fmt
    if isinstance(fmt, int) and not isinstance(fmt, bool):
        try:
            return Format(fmt)
        except ValueError:
            raise PayloadError(f"unsupported content format {fmt}") from None
    if isinstance(fmt, str):
        found = _BY_NAME.get(fmt.split(";")[0].strip().lower())
        if found is not None:
            return found
    raise PayloadError(f"unsupported content format {fmt!r}; expected one of {', '.join(_BY_NAME)}")


# Units that pint spells differently from SenML's registry (RFC 8428 section 12.1) and that
# have an exact registered equivalent. Names both spell alike (K, Pa, W, V, A, Hz, l/s, ppm...)
# need no entry; names with no registered equivalent (degF, l/min, bar) stay as they are.
_SENML_UNITS = {
    "degC": "Cel", "degree_Celsius": "Cel", "celsius": "Cel",
    "percent": "%", "ohm": "Ohm", "degree": "deg",
    "liter": "l", "litre": "l", "L": "l", "lux": "lx", "lumen": "lm",
    "kelvin": "K", "pascal": "Pa", "watt": "W", "volt": "V", "ampere": "A", "hertz": "Hz",
}  # fmt: skip
# Registered names pint does not read as the same unit (pint has no "Cel"; its "Ohm" is none).
_PINT_UNITS = {"Cel": "degC", "%": "percent", "Ohm": "ohm"}


def senml_unit(unit: str | None) -> str | None:
    """``unit`` as SenML registers it ("degC" -> "Cel"), for a strict SenML reader; a unit
    with no exact registered equivalent as it is."""
    return unit if unit is None else _SENML_UNITS.get(unit, unit)


def pint_unit(unit: str | None) -> str | None:
    """A SenML unit as the gateway (pint) spells it ("Cel" -> "degC"); others as they are."""
    return unit if unit is None else _PINT_UNITS.get(unit, unit)


# ---------------------------------------------------------------- encode


def encode(samples: Iterable[Sample], fmt: Format | int | str, *, base_name: str = "") -> bytes:
    """Samples as a payload. ``base_name`` becomes SenML's ``bn`` (ignored by other formats).

    text/plain carries exactly one sample. JSON and CBOR carry ``{point: value}``. SenML carries
    one record per sample with its time and unit; a sample without a value (None) cannot be a
    SenML record (RFC 8428 requires a value), so it raises: leave such samples out first.
    """
    fmt = format_of(fmt)
    items = list(samples)
    if fmt is Format.TEXT:
        if len(items) != 1:
            raise PayloadError(f"text/plain carries one value, not {len(items)}")
        return _text(items[0].value).encode()
    if fmt in (Format.JSON, Format.CBOR):
        obj = {s.point: s.value for s in items}
        return _dump_json(obj) if fmt is Format.JSON else _dump_cbor(obj)
    records = list(_senml_records(items, base_name))
    if fmt is Format.SENML_JSON:
        return _dump_json(records)
    return _dump_cbor([{_CBOR_KEYS[k]: v for k, v in r.items()} for r in records])


def encode_field(field: str, value: Value, fmt: Format | int | str) -> bytes:
    """One value as the JSON or CBOR object a point with ``field`` is read from: a dotted
    field nests (``a.b`` gives ``{"a": {"b": value}}``, which `decode` flattens back to
    ``a.b``), as MQTT's command payloads do."""
    fmt = format_of(fmt)
    if fmt not in (Format.JSON, Format.CBOR):
        raise PayloadError(f"a field is written in JSON or CBOR, not {fmt.short}")
    obj: Any = value
    for key in reversed(field.split(".")):
        obj = {key: obj}
    return _dump_json(obj) if fmt is Format.JSON else _dump_cbor(obj)


def _text(value: Value) -> str:
    if value is None:
        raise PayloadError("no value to write as text")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)  # keeps "21.0": the reader sees a float
    return str(value)


def _senml_records(samples: list[Sample], base_name: str) -> Iterator[dict[str, Any]]:
    for i, s in enumerate(samples):
        record: dict[str, Any] = {}
        if i == 0 and base_name:
            record["bn"] = base_name
        record["n"] = s.point
        if s.unit:
            record["u"] = s.unit
        value = s.value
        if value is None:
            raise PayloadError(f"{s.point} has no value; a SenML record needs one")
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, (int, float)):
            record["v"] = value
        else:
            record["vs"] = str(value)
        if s.source_ts:
            record["t"] = s.source_ts
        yield record


def _dump_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except ValueError as exc:
        raise PayloadError(f"cannot write as JSON: {exc}") from None


def _dump_cbor(obj: Any) -> bytes:
    import cbor2

    return bytes(cbor2.dumps(obj))


# ---------------------------------------------------------------- decode


def decode(payload: bytes, fmt: Format | int | str) -> list[Decoded]:
    """A payload as ``(name, value, time, unit)`` tuples; `PayloadError` says why it is bad."""
    fmt = format_of(fmt)
    if not payload:
        raise PayloadError("empty payload")
    if fmt is Format.TEXT:
        return [(None, _parse_text(_utf8(payload)), None, None)]
    if fmt in (Format.JSON, Format.SENML_JSON):
        try:
            data = load_json(_utf8(payload))
        except json.JSONDecodeError as exc:
            raise PayloadError(f"not JSON: {exc}") from None
    else:
        data = _load_cbor(payload)
    try:
        if fmt in (Format.JSON, Format.CBOR):
            return _from_object(data, fmt)
    except RecursionError:  # _flatten, on objects nested nearly as deep as the parser allows
        raise PayloadError(_TOO_DEEP) from None
    return _from_senml(data, cbor=fmt is Format.SENML_CBOR)


def decode_for(payload: bytes, fmt: Format | int | str, datatype: str) -> list[Decoded]:
    """As `decode`, for a point of ``datatype``: text/plain for a ``string`` point is the text
    itself, so that "1234", "true" or "1e3" stay text instead of becoming numbers. One trailing
    line end (what ``echo`` or a file adds) is dropped; other whitespace is part of the text.
    """
    fmt = format_of(fmt)
    if fmt is not Format.TEXT or datatype != "string":
        return decode(payload, fmt)
    if not payload:
        raise PayloadError("empty payload")
    text = _utf8(payload)
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    return [(None, text, None, None)]


_TOO_DEEP = "nested too deeply"


def load_json(text: str) -> Any:
    """JSON text as Python data: `json.JSONDecodeError` when it is not JSON (callers word that
    their way), `PayloadError` when it is not JSON of finite numbers that Python can parse.

    ``json.loads`` alone takes NaN, Infinity and 1e999 (inf), raises a bare ValueError for an
    integer of over 4300 digits and RecursionError for deep nesting (``[`` * 100000): a caller
    that expects only a payload's errors would be taken down by those.
    """
    try:
        return json.loads(
            text, parse_constant=_json_constant, parse_float=_json_float, parse_int=_json_int
        )
    except RecursionError:
        raise PayloadError(_TOO_DEEP) from None


def _json_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not a finite number")


def _json_float(text: str) -> float:
    number = float(text)
    require_finite(number, text)
    return number


def _json_int(text: str) -> int:
    # Past 310 characters no float holds it (and int() refuses it past 4300 digits).
    number = int(text) if len(text) <= 310 else math.inf
    require_finite(number, text)
    return int(number)


def require_finite(number: float, shown: object, where: str = "") -> None:
    """`PayloadError` showing ``shown`` (after ``where``) unless a float holds ``number``.

    Integers count too: one beyond 1.8e308 fails ``float()`` wherever the value goes next."""
    try:
        if math.isfinite(number):
            return
    except OverflowError:  # an int too large for a float
        pass
    raise PayloadError(f"{where}{_clip(shown)} is not a finite number")


def _clip(shown: object) -> str:
    """A value for an error message: the reason must stay readable for a 60,000-digit number."""
    text = shown if isinstance(shown, str) else repr(shown)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def check_time(when: float, what: str, shown: object = None) -> None:
    """`PayloadError` naming ``what`` (and showing ``shown``, else ``when``) unless ``when``
    (Unix seconds) lies in `TIME_RANGE`."""
    if not TIME_RANGE[0] <= when < TIME_RANGE[1]:
        value = _clip(when if shown is None else shown)
        raise PayloadError(f"{what} {value} is not between 1970-01-01 and 2200-01-01")


def _utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _load_cbor(payload: bytes) -> Any:
    import cbor2

    try:
        return cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types, not all CBORDecodeError
        raise PayloadError(f"not CBOR: {exc}") from None


_TRUE = {"true", "on", "yes"}
_FALSE = {"false", "off", "no"}


def _parse_text(text: str) -> Value:
    word = text.strip()
    if not word:
        raise PayloadError("empty text")
    lowered = word.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    number: int | float
    try:
        number = int(word)
    except ValueError:  # not an integer, or over 4300 digits (float() reads those as inf)
        try:
            number = float(word)
        except ValueError:
            return word
    require_finite(number, word)
    return number


def _scalar(value: Any, where: str) -> Value:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        require_finite(value, value, f"{where}: ")
        return value
    raise PayloadError(f"{where}: a {type(value).__name__} is not a value")


def _from_object(data: Any, fmt: Format) -> list[Decoded]:
    kind = "JSON" if fmt is Format.JSON else "CBOR"
    if isinstance(data, list):
        raise PayloadError(f"a {kind} array; a SenML pack goes with senml+{kind.lower()}")
    if not isinstance(data, dict):
        return [(None, _scalar(data, kind), None, None)]
    out: list[Decoded] = []
    _flatten(data, "", out)
    if not out:
        raise PayloadError(f"a {kind} object without values")
    return out


def _flatten(obj: dict[Any, Any], prefix: str, out: list[Decoded]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out)
        elif not isinstance(value, (list, bytes)):
            out.append((name, _scalar(value, name), None, None))


def _from_senml(data: Any, *, cbor: bool) -> list[Decoded]:
    if isinstance(data, dict):
        data = [data]  # a lone record is a common mistake; it is unambiguous
    if not isinstance(data, list) or not data:
        raise PayloadError("a SenML pack is a non-empty array of records")
    base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
    now = time.time()
    out: list[Decoded] = []
    for i, raw in enumerate(data):
        where = f"record {i}"
        if not isinstance(raw, dict):
            raise PayloadError(f"{where} is not a map")
        record = _senml_fields(raw, where) if cbor else raw
        for key in record:
            if not isinstance(key, str):
                raise PayloadError(f"{where}: field {key!r} is not a SenML label")
            if key.endswith("_"):
                raise PayloadError(f"{where}: must-understand field {key!r} is not supported")
        if "bver" in record:
            version = record["bver"]
            if not isinstance(version, int) or version > SENML_VERSION:
                raise PayloadError(f"{where}: SenML version {version!r} is not supported")
        if "bn" in record:
            base_name = _typed(record, "bn", str, where)
        if "bt" in record:
            base_time = _number(record, "bt", where)
        if "bu" in record:
            base_unit = _typed(record, "bu", str, where)
        if "bv" in record:
            base_value = _number(record, "bv", where)
        if "bs" in record:
            base_sum = _number(record, "bs", where)
        name = base_name + (_typed(record, "n", str, where) if "n" in record else "")
        value = _senml_value(record, base_value, base_sum, where)
        when = base_time + (_number(record, "t", where) if "t" in record else 0.0)
        if when < RELATIVE_LIMIT:
            when += now
        check_time(when, f"{where}: time (bt + t)")
        unit = _typed(record, "u", str, where) if "u" in record else base_unit
        out.append((name or None, value, when, unit))
    return out


def _senml_fields(raw: dict[Any, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(key, int) and not isinstance(key, bool):
            if key not in _CBOR_LABELS:
                raise PayloadError(f"{where}: unknown SenML CBOR label {key}")
            out[_CBOR_LABELS[key]] = value
        else:
            out[key] = value  # extension fields keep their text labels
    return out


def _typed(record: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PayloadError(f"{where}: {key} must be a {kind.__name__}, not {value!r}")
    return value


def _number(record: dict[str, Any], key: str, where: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{where}: {key} must be a number, not {value!r}")
    require_finite(value, key, f"{where}: ")
    return value


def _senml_value(record: dict[str, Any], base_value: float, base_sum: float, where: str) -> Value:
    present = [k for k in ("v", "vs", "vb", "vd") if k in record]
    if len(present) > 1:
        raise PayloadError(f"{where} has more than one value: {', '.join(present)}")
    if present == ["v"]:
        number = _number(record, "v", where)
        return number + base_value if base_value else number
    if present == ["vs"]:
        return _typed(record, "vs", str, where)  # type: ignore[no-any-return]
    if present == ["vb"]:
        return _typed(record, "vb", bool, where)  # type: ignore[no-any-return]
    if present == ["vd"]:
        raise PayloadError(f"{where}: data values (vd) are not supported")
    if "s" in record:
        return _number(record, "s", where) + base_sum
    raise PayloadError(f"{where} has no value (v, vs, vb or s)")
