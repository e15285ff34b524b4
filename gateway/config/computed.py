"""The ``computed:`` entries of a bridge (config only; evaluated by `gateway.computed`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from gateway.config.common import Strict
from gateway.expressions import ExpressionError, compile_expression
from gateway.types import PointSpec

__all__ = ["ComputedPoint"]


class ComputedPoint(Strict):
    """One ``computed:`` entry of a bridge."""

    name: str = Field(min_length=1, description="name of the computed point")
    expr: str = Field(
        min_length=1,
        description=(
            "arithmetic over the device's points and shadow.reported.<key> /"
            " shadow.desired.<key>; + - * / // % **, comparisons, a if c else b,"
            " abs min max round sqrt exp log log10"
        ),
    )
    unit: str | None = Field(None, description="unit of the result")
    description: str | None = None

    @field_validator("expr")
    @classmethod
    def _parses(cls, text: str) -> str:
        try:
            compile_expression(text)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return text

    def spec(self, device: str) -> PointSpec:
        return PointSpec(
            id=f"{device}/{self.name}",
            name=self.name,
            datatype="float64",
            unit=self.unit,
            description=self.description or f"computed: {self.expr}",
        )
