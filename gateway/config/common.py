"""Config pieces shared by several protocols."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    def check(self) -> list[Problem]:
        """Cross-field checks that need the whole model (overlaps, references)."""
        return []


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
