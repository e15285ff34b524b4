"""Config pieces shared by several protocols."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.types import OutOfRange

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One semantic problem found after the schema validated; ``path`` is relative to the
    model that reported it, the loader prefixes it and adds file, line and column."""

    path: Path
    found: str
    expected: str


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, values are not coerced silently."""

    # allow_inf_nan: a .nan scale or an .inf interval in YAML is a mistake, never a setting
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    # Fields holding a file or folder path: the loader makes a relative one relative to the
    # config file (`with_local_paths`), as shadow.path and model files are, so a service whose
    # working folder is elsewhere finds them. A value starting with {state} is left as it is.
    local_paths: ClassVar[tuple[str, ...]] = ()
    # Those of them that hold the gateway's own state (sequence numbers, a backlog, its
    # certificate), {state} and {name} templates: before 2026-11-22 a relative one was read
    # from the working folder, and state found only there must not be replaced by a fresh one.
    state_paths: ClassVar[tuple[str, ...]] = ()
    # Fields whose files the running part reads again by itself (a trust list, read at every
    # check): a change there does not restart the part at a reload (`gateway.handover`); the
    # adapter is told of the reload instead (`Adapter.reloaded`). A state field here is not
    # stamped at all, its trust list included.
    live_paths: ClassVar[tuple[str, ...]] = ()

    def check(self) -> list[Problem]:
        """Cross-field checks that need the whole model (overlaps, references)."""
        return []

    def run_warnings(self) -> list[tuple[Path, str]]:
        """What ``gateway validate`` prints as warnings, not problems: (key path, text) pairs.
        Things ``gateway run`` would refuse on this machine although the file may be right
        for the machine it runs on (a TLS file that is not here), and things it accepts but
        the integrator should know (a unit pint does not know)."""
        return []


def missing_files(files: dict[Path, str | None]) -> list[tuple[Path, str]]:
    """`Strict.run_warnings` for the files of ``files`` (key path -> configured path) that do
    not exist. Checked as ``gateway run`` opens them: the loader has already made a relative
    path relative to the config file (`with_local_paths`)."""
    return [
        (where, f"{'.'.join(map(str, where))} {name}: no such file on this machine"
                " (gateway run refuses to start this entry without it)")
        for where, name in files.items()
        if name is not None and not os.path.isfile(name)
    ]  # fmt: skip


def config_relative(config_file: str, name: str) -> str:
    """A path from the config file ``config_file``: a relative one is relative to the config
    file's folder, ``~`` is the home folder; one that starts with ``{state}`` is kept, to be
    filled in where it is opened (`gateway.paths.state_path`)."""
    if name.startswith("{state}"):
        return name
    name = os.path.expanduser(name)
    if os.path.isabs(name) or config_file == "<string>":
        return name
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), name)


def left_behind(config_file: str, value: str, entry: str) -> tuple[str, str] | None:
    """(old, new) when the state a relative state path names (`Strict.state_paths`, for entry
    ``entry``) is still where the working folder put it before 2026-11-22 and not yet next
    to the config file; None otherwise. Starting afresh there would restart OSCORE sequence
    numbers under the same keys (nonce reuse), leave an outbox's backlog behind or make a new
    OPC UA certificate."""
    old = os.path.abspath(os.path.expanduser(value.replace("{name}", entry)))
    new = config_relative(config_file, value).replace("{name}", entry)
    if old != new and os.path.exists(old) and not os.path.exists(new):
        return old, new
    return None


def left_behind_text(value: str, old: str, new: str) -> tuple[str, str]:
    """Found / expected for a `left_behind` state path."""
    return (
        f"{value!r}, now read next to the config file ({new}), but what it holds is at {old},"
        " where the working folder put it before",
        f"that moved next to the config (mv {old} {new}), or its absolute path",
    )


def with_local_paths(
    model: BaseModel,
    local: Callable[[str], str],
    relative_state: Callable[[Path, str], None] | None = None,
    where: Path = (),
) -> BaseModel:
    """``model`` with every `Strict.local_paths` field (a str, or a list or tuple of str), in
    it and in the models it holds (fields, lists, tuples, dict values), passed through
    ``local``; None stays None. ``relative_state`` is told each `Strict.state_paths` value
    that ``local`` changed (a relative one), with its key path under ``where``."""
    update: dict[str, Any] = {}
    paths = getattr(model, "local_paths", ())
    state = getattr(model, "state_paths", ())
    for name in type(model).model_fields:
        value = getattr(model, name)
        at = (*where, name)
        new: Any = value
        if name in paths and isinstance(value, str):
            new = local(value)
            if relative_state is not None and name in state and new != value:
                relative_state(at, value)
        elif name in paths and isinstance(value, list | tuple):
            new = type(value)(local(v) if isinstance(v, str) else v for v in value)
        elif isinstance(value, BaseModel):
            new = with_local_paths(value, local, relative_state, at)
        elif isinstance(value, list | tuple):
            new = type(value)(
                with_local_paths(v, local, relative_state, (*at, i))
                if isinstance(v, BaseModel)
                else v
                for i, v in enumerate(value)
            )
        elif isinstance(value, dict):
            new = {
                k: with_local_paths(v, local, relative_state, (*at, k))
                if isinstance(v, BaseModel)
                else v
                for k, v in value.items()
            }
        if new != value:
            update[name] = new
    return model.model_copy(update=update) if update else model


class Backoff(Strict):
    """Capped exponential backoff with full jitter between reconnect attempts."""

    initial: float = Field(0.5, gt=0, description="first delay in seconds")
    max: float = Field(30.0, gt=0, description="cap on the delay in seconds")
    multiplier: float = Field(2.0, ge=1)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Backoff:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max}) must be >= initial ({self.initial})")
        return self


class Deadband(Strict):
    """Do not re-send a value that moved less than this since the last one sent.

    ``percent`` is of the point's range (low..high) when it has one, else of the last sent
    value's magnitude."""

    absolute: float | None = Field(None, ge=0)
    percent: float | None = Field(None, ge=0, le=100)


class PointLimits(Strict):
    """The engineering limits of a point, the same keys for every protocol's points.

    ``low``/``high`` are the point's EURange: the range check of writes, the span of percent
    deadbands, and the range its readings are checked against (`gateway.limits`)."""

    low: float | None = Field(None, description="engineering low limit (also the write range)")
    high: float | None = Field(None, description="engineering high limit (also the write range)")
    # Default None: uncertain for read-only points; keep for writable ones, whose low..high
    # configs have long used as the write range only (a setpoint that reads 0 while idle).
    out_of_range: OutOfRange | None = Field(
        None,
        description="a reading outside low..high: uncertain or bad quality (the value is "
        "kept as read), or keep its quality; default uncertain for read-only points, keep for "
        "writable ones (their low..high is their write range)",
    )

    @model_validator(mode="after")
    def _low_not_above_high(self) -> PointLimits:
        if self.low is not None and self.high is not None and self.low > self.high:
            # An error on the point's ``low`` key (a plain ValueError would be on the whole
            # point): "points[2].low: found 15.0; expected a number not above high (4.0)".
            error = PydanticCustomError(
                "value_error", "a number not above high ({high})", {"high": self.high}
            )
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=error, loc=("low",), input=self.low)],
            )
        return self


def _known_unit(name: str | None) -> str | None:
    if name is None:
        return name
    from gateway.units import UnitError, validate_unit  # pint loads on first use only

    try:
        return validate_unit(name)
    except UnitError:
        raise ValueError("a known unit, such as degC, bar, kW, l/min or %") from None


#: A Modbus point's ``unit:``: a unit name pint knows (the scaling is written for it), or None.
Unit = Annotated[str | None, AfterValidator(_known_unit)]


def repeated_names(points: Sequence[Any], key: str = "points") -> list[Problem]:
    """`Strict.check` for point names used twice in the list at ``key`` (one problem at each
    repeat's ``name``)."""
    seen: set[str] = set()
    problems: list[Problem] = []
    for i, point in enumerate(points):
        if point.name in seen:
            problems.append(
                Problem((key, i, "name"), f"{point.name!r} again", "a point name used once")
            )
        seen.add(point.name)
    return problems


def unknown_units(points: Sequence[Any], key: str = "points") -> list[tuple[Path, str]]:
    """`Strict.run_warnings` for the points whose ``unit:`` pint does not know (at ``key``, i,
    ``unit``). On OPC UA, CoAP and MQTT points and a bridge's computed points a unit is also
    a label a device or a site uses (``%RH``, ``NTU``): it is published as written, and only a
    ``units:`` conversion needs pint to know it (an error there), so validate warns instead
    of refusing the config."""
    from gateway.units import UnitError, validate_unit  # pint loads on first use only

    out: list[tuple[Path, str]] = []
    for i, point in enumerate(points):
        unit = getattr(point, "unit", None)
        if unit is None:
            continue
        try:
            validate_unit(unit)
        except UnitError:
            out.append(
                (
                    (key, i, "unit"),
                    f"{unit!r} is not a unit pint knows: published as written, and a bridge's"
                    " units: cannot convert it",
                )
            )
    return out
