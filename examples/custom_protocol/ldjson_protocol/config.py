"""Config of one ldjson device (a ``devices:`` entry with ``protocol: ldjson``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.config.common import Backoff, Problem, Strict
from gateway.types import Access


class LdjsonPoint(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
    type: Literal["bool", "int32", "float64", "string"] = "float64"
    unit: str | None = None
    access: Access = Access.READ
    low: float | None = None
    high: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> LdjsonPoint:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError("low is above high")
        return self


class LdjsonDevice(Strict):
    protocol: Literal["ldjson"] = "ldjson"
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(2.0, gt=0, description="seconds to connect, and to wait for an ack")
    reconnect: Backoff = Field(default_factory=Backoff)
    points: list[LdjsonPoint] = Field(min_length=1)

    def check(self) -> list[Problem]:
        seen: set[str] = set()
        problems = []
        for i, p in enumerate(self.points):
            if p.name in seen:
                problems.append(Problem(("points", i, "name"), repr(p.name), "a unique name"))
            seen.add(p.name)
        return problems
