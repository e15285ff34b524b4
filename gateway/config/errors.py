"""Config problems with a place: file, line, column, key path, what was found, what was expected.

Pydantic's errors are precise but written for programmers (``loc=('points', 2, 'type')``,
``"Input should be 'bool', 'int16' or ..."``). `translate` turns them into the two halves a user
needs, *found* and *expected*, and says where to point: at the value (wrong type, out of range),
at the key (unknown key), or at the mapping that lacks a key (missing key). `ConfigError` carries
every problem of a file at once, so that one run of ``gateway validate`` shows them all.

A pydantic ``loc`` may contain steps that are not in the data (the member of a union that was
tried, ``[key]`` for a mapping key); they are dropped by walking the loc along the input.
"""

from __future__ import annotations

import datetime
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from gateway.config.common import Path, Problem
from gateway.config.yamlmarks import Marks
from gateway.text import counted

MAX_SHOWN = 60  # characters of a value quoted in a message
MAX_CHOICES = 24  # names listed in "expected one of: ..."
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")

Where = Literal["value", "key"]


def format_path(path: Path) -> str:
    """``("devices", "plc1", "points", 2, "type")`` -> ``devices.plc1.points[2].type``."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _PLAIN_KEY.match(step):
            out += f".{step}" if out else step
        else:
            out += f"[{step!r}]"
    return out


@dataclass(frozen=True)
class LocatedProblem:
    file: str
    line: int
    column: int
    path: Path
    found: str
    expected: str

    @property
    def dotted(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        where = place(self.file, self.line, self.column, self.path)
        return f"{where}found {self.found}; expected {self.expected}"


def place(file: str, line: int, column: int, path: Path) -> str:
    """``file:line:column: key.path: ``, the start of a problem's or a warning's line."""
    return f"{file}:{line}:{column}: " + (f"{format_path(path)}: " if path else "")


class ConfigError(Exception):
    """Everything wrong with one config file; ``str()`` gives one problem per line.

    ``warnings`` are the lines the file's load also had to say (a plugin package that was
    refused, a disabled device that could not be checked), shown with the problems."""

    def __init__(self, problems: Iterable[LocatedProblem], warnings: Iterable[str] = ()) -> None:
        unique = dict.fromkeys(problems)  # drop exact repeats, keep order
        self.problems: list[LocatedProblem] = sorted(unique, key=lambda p: (p.line, p.column))
        self.warnings: tuple[str, ...] = tuple(warnings)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class Finding:
    """A problem with a path but no position yet; ``where`` says which mark the path takes."""

    path: Path
    found: str
    expected: str
    where: Where = "value"

    @classmethod
    def of(cls, problem: Problem, prefix: Path = ()) -> Finding:
        return cls((*prefix, *problem.path), problem.found, problem.expected)


def locate(file: str, marks: Marks, finding: Finding) -> LocatedProblem:
    mark = marks.key(finding.path) if finding.where == "key" else marks.value(finding.path)
    return LocatedProblem(
        file, mark.line, mark.column, finding.path, finding.found, finding.expected
    )


# -- showing values ------------------------------------------------------------------------------


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _flow(value: Any) -> str:
    """A short YAML-like rendering: strings quoted, mappings and lists in flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def show(value: Any) -> str:
    """The value as the user wrote it, cut to about 60 characters."""
    return _truncate(_flow(value))


def kind_of(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.datetime):
        return "a date and time"
    if isinstance(value, datetime.date):
        return "a date"
    return f"a {type(value).__name__}"


def describe(value: Any) -> str:
    """What was found, with its kind: ``'abc' (a string)``; containers by kind only."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return kind_of(value)
    return f"{show(value)} ({kind_of(value)})"


# -- walking models ------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union / Optional / Annotated, flattened."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [alt for arg in typing.get_args(annotation) for alt in _unwrap(arg)]
    return [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_annotation(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _step(annotation: Any, step: str | int) -> list[Any]:
    out: list[Any] = []
    for tp in _unwrap(annotation):
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if _is_model(tp) and isinstance(step, str):
            found = _field_annotation(tp, step)
            if found is not None:
                out.append(found)
        elif isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
            out.append(args[1])
        elif isinstance(origin, type) and issubclass(origin, Sequence) and args:
            if isinstance(step, int):
                out.append(args[0])
    return out


def model_at(model: type[BaseModel], path: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` inside ``model``, if any."""
    current: list[Any] = [model]
    for step in path:
        current = [nxt for tp in current for nxt in _step(tp, step)]
    for tp in current:
        for alt in _unwrap(tp):
            if _is_model(alt):
                return typing.cast(type[BaseModel], alt)
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def listing(names: Sequence[str], limit: int = MAX_CHOICES) -> str:
    """``a, b, c``; beyond ``limit`` names, ``a, b, ... (40 in all)``."""
    if len(names) > limit:
        return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
    return ", ".join(names)


def choices(value: str, options: Sequence[str], what: str) -> str:
    """Expected text for ``value`` that should be one of ``options``, with a did-you-mean."""
    if not options:
        return f"{what} (there are none)"
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if close:
        return f"one of: {listing(options)} (did you mean {close[0]!r}?)"
    return f"one of: {listing(options)}"


def unknown_key(key: str, known: Sequence[str]) -> tuple[str, str]:
    """Found / expected for a key that is not one of ``known``."""
    return f"unknown key {key!r}", choices(key, known, "no keys here")


# -- translating pydantic errors ----------------------------------------------------------------

_TYPE_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "none_required": "no value",
}

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _normalize(loc: Sequence[str | int], data: Any) -> tuple[Path, bool, bool]:
    """Keep the steps of ``loc`` that exist in ``data``; then whether a ``[key]`` step was
    seen, and whether some other step was dropped (a union member: see `_prune_members`)."""
    path: list[str | int] = []
    current = data
    is_key = dropped = False
    for step in loc:
        if step == "[key]":
            is_key = True
            continue
        if isinstance(current, Mapping) and step in current:
            current = current[step]
            path.append(step)
        elif (
            isinstance(current, list)
            and isinstance(step, int)
            and not isinstance(step, bool)
            and 0 <= step < len(current)
        ):
            current = current[step]
            path.append(step)
        else:  # a union member tag or validator name; not a place in the data
            dropped = True
    return tuple(path), is_key, dropped


def _one_of(expected: str) -> str:
    """``"'a', 'b' or 'c'"`` (pydantic's list) -> ``one of 'a', 'b', 'c'``."""
    head, sep, last = expected.rpartition(" or ")
    if not sep:
        return expected
    return f"one of {head}, {last}"


def _number(limit: Any) -> str:
    if isinstance(limit, float) and limit.is_integer():
        return str(int(limit))
    return str(limit)


def _found_expected(err: ErrorDetails) -> tuple[str, str]:
    kind = err["type"]
    value = err.get("input")
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    msg = err["msg"]
    if kind in _TYPE_EXPECTED:
        if kind == "int_from_float":
            return f"{show(value)} (a number with a fraction)", "an integer"
        if kind == "string_type" and isinstance(value, bool):
            # YAML 1.1 reads on, off, yes and no unquoted as booleans: a point named on
            return describe(
                value
            ), "a string (on/off/yes/no unquoted are booleans in YAML: put it in quotes)"
        return describe(value), _TYPE_EXPECTED[kind]
    if kind in ("literal_error", "enum"):
        return show(value), _one_of(str(ctx.get("expected", msg)))
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return show(value), f"a number {op} {_number(ctx.get(key))}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        if n == 1:
            return "an empty string", "a non-empty string"
        return show(value), f"a string of at least {n} characters"
    if kind == "string_too_long":
        return show(value), f"a string of at most {counted(ctx.get('max_length', 0), 'character')}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        found = "an empty list" if not value else counted(ctx.get("actual_length", 0), "item")
        return found, f"at least {counted(n, 'item')}"
    if kind == "too_long":
        most = counted(ctx.get("max_length", 0), "item")
        return counted(ctx.get("actual_length", 0), "item"), f"at most {most}"
    if kind == "string_pattern_mismatch":
        return show(value), f"a string matching {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        # the line reads "...; expected <text>": a message starting with "expected" says it once
        return show(value), text.removeprefix("expected ")
    if msg.startswith("Input should be "):
        return show(value), msg.removeprefix("Input should be ")
    return show(value), msg[:1].lower() + msg[1:]


def translate(
    errors: Iterable[ErrorDetails],
    data: Any,
    model: type[BaseModel] | None = None,
    *,
    prefix: Path = (),
    root_keys: Sequence[str] = (),
    hints: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Pydantic errors of validating ``data`` with ``model`` -> findings under ``prefix``.

    ``root_keys`` are keys accepted at the top of ``data`` besides the model's fields (they
    were taken out before validation), listed when a key is unknown there. ``hints`` replace
    the expected text of a missing top-level key (``{"to": "key 'to' naming ..."}``)."""
    findings: list[Finding] = []
    members: set[int] = set()  # indexes of findings about one member of a union
    for err in errors:
        kind = err["type"]
        loc = tuple(err["loc"])
        if kind == "missing" and loc and isinstance(loc[-1], str):
            parent, _, _ = _normalize(loc[:-1], data)
            name = loc[-1]
            expected = f"key {name!r}"
            if hints and not parent and name in hints:
                expected = hints[name]
            findings.append(Finding((*prefix, *parent), f"no {name!r} key", expected, "key"))
            continue
        path, is_key, dropped = _normalize(loc, data)
        if dropped:
            members.add(len(findings))
        if kind == "extra_forbidden" and path and isinstance(path[-1], str):
            at = model_at(model, path[:-1]) if model is not None else None
            known = field_names(at) if at is not None else []
            if not path[:-1]:
                known = [*known, *(k for k in root_keys if k not in known)]
            found, expected = unknown_key(path[-1], known)
            findings.append(Finding((*prefix, *path), found, expected, "key"))
            continue
        found, expected = _found_expected(err)
        if is_key:
            found = f"the key {found}"
            expected = f"{expected} as the key"
        findings.append(Finding((*prefix, *path), found, expected, "key" if is_key else "value"))
    return _merge_alternatives(_prune_members(findings, members))


def _prune_members(findings: list[Finding], members: set[int]) -> list[Finding]:
    """``from: [plc1, 3]`` fails ``str | list[str]`` twice: as "a list, expected a string" at
    ``from`` and as "3, expected a string" at ``from[1]``. The deeper error is of the member
    that fits the shape of the value; the shallower one only says the other member did not."""
    deep = [findings[i].path for i in members]
    return [
        f
        for i, f in enumerate(findings)
        if i not in members
        or not any(len(d) > len(f.path) and d[: len(f.path)] == f.path for d in deep)
    ]


def _merge_alternatives(findings: list[Finding]) -> list[Finding]:
    """A union reports one error per member at the same place: say "a or b" once."""
    merged: dict[tuple[Path, Where, str], Finding] = {}
    for f in findings:
        key = (f.path, f.where, f.found)
        prev = merged.get(key)
        if prev is None:
            merged[key] = f
        elif f.expected not in prev.expected.split(" or "):
            merged[key] = Finding(f.path, f.found, f"{prev.expected} or {f.expected}", f.where)
    return list(merged.values())
