"""The ``anomaly:`` option of a bridge (config only; scored by `gateway.anomaly.stage`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from gateway.config.common import Strict


class AnomalyOptions(Strict):
    """Score every numeric sample of the bridge's sources; alarm events with hysteresis."""

    model: str = Field(
        "student",
        min_length=1,
        description="'student' (int8, shipped), 'teacher' (shipped) or a path to an .onnx file"
        " (relative to the config file)",
    )
    window: int | None = Field(
        None, ge=8, multiple_of=8, description="samples per point in one evaluation; default 32"
    )
    threshold: float | None = Field(
        None, gt=0, description="fixed alarm threshold; default: set by calibration"
    )
    calibration: int = Field(
        400, ge=50, description="first N messages per device that calibrate it (normal period)"
    )
    calibration_period: tuple[datetime, datetime] | None = Field(
        None, description="[start, end] (ISO 8601) of a clean period to calibrate on instead"
    )
    points: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="globs of the point names scored (default: every numeric point); a "
        "setpoint or command changes when an operator says so, not when something breaks",
    )
    exclude: list[str] = Field(
        default_factory=list, description="globs of point names not scored, e.g. ['*_sp']"
    )
    smooth: int = Field(10, ge=1, description="samples the device score is averaged over")
    margin: float = Field(1.5, gt=0, description="threshold = 99th percentile x margin")
    clear_ratio: float = Field(
        0.8, gt=0, le=1, description="the alarm clears below threshold x clear_ratio ..."
    )
    hold: int = Field(10, ge=1, description="... for this many consecutive samples")
    refresh: float = Field(
        0,
        ge=0,
        description="time constant (samples) of the level and spread learned while no alarm is"
        " active and the score is low; 0: keep the calibration's",
    )

    @field_validator("calibration_period", mode="before")
    @classmethod
    def _two_times(cls, value: Any) -> Any:
        """[start] alone (or one time, or three) says so, not "field required" of an item."""
        if value is None or isinstance(value, dict):
            return value  # the default, or a mapping: pydantic says "a list"
        count = len(value) if isinstance(value, list | tuple) else 1
        if count != 2 or isinstance(value, str):
            given = "none" if count == 0 else "one" if count == 1 else str(count)
            raise ValueError(
                "two times [start, end] (ISO 8601, e.g. [2024-05-01T00:00:00, "
                f"2024-05-08T00:00:00]), not {given}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> AnomalyOptions:
        period = self.calibration_period
        if period is not None and period[0] >= period[1]:
            raise ValueError("calibration_period: start must be before end")
        return self
