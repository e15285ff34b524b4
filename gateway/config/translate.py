"""The ``translate:`` key of a bridge: rename points by an approved map, or classify new ones.

Light (pydantic only): the config loader imports it; the model is loaded when a bridge runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.common import Strict

# The model file `gateway translator train --out DIR` writes in DIR (and the shipped one's name).
MODEL_FILE = "translator.onnx"
# What `gateway suggest` writes on the REVIEW line of a source it found no target for.
NO_TARGET = "no matching target"


class TranslateConfig(Strict):
    """``mode: map`` renames the mapped points and drops the others; ``mode: auto`` also
    classifies points it has never seen and forwards the confident ones as
    ``<BrickClass>.<name>``, sending the others to ``review_topic`` on the bus."""

    mode: Literal["map", "auto"] = Field("map", description="map: the map only; auto: + model")
    approved: bool = Field(
        True, description="false in a suggested bridge until the user has reviewed the map"
    )
    map: dict[str, str] = Field(
        default_factory=dict, description="source point name -> name the target sees"
    )
    threshold: float = Field(
        0.6, gt=0, le=1, description="auto: class probability needed to forward a new point"
    )
    review_topic: str = Field(
        "translator/review",
        pattern=r"^[^#+]+$",
        description="auto: topic prefix for points below the threshold ({topic}/{device}): on"
        " the bus, and on the broker of an MQTT target (once per point, with suggestions)",
    )
    examples: str | None = Field(
        None,
        description="auto: CSV of name,brick_class from this site (few-shot); relative to the"
        " config file",
    )
    model: str = Field(
        "builtin",
        min_length=1,
        description="auto: builtin (the shipped model), or a translator .onnx file or the"
        " folder `gateway translator train --out` wrote; relative to the config file",
    )

    @field_validator("map")
    @classmethod
    def _no_placeholder(cls, value: dict[str, str]) -> dict[str, str]:
        """A REVIEW line of `gateway suggest` for a source it found no target for, uncommented
        as it stands, maps the source to its placeholder: refuse it rather than publish on a
        point named "no matching target"."""
        for key, name in value.items():  # a point with no name cannot be read or published
            side = "source" if not key.strip() else "target" if not name.strip() else ""
            if side:
                raise ValueError(
                    f"{key!r}: {name!r}: an empty {side} point name; write both names, or"
                    " delete the line"
                )
        unmatched = [k for k, v in value.items() if v.strip() == NO_TARGET]
        if unmatched:
            names = ", ".join(repr(k) for k in unmatched[:5]) + (
                ", ..." if len(unmatched) > 5 else ""
            )
            raise ValueError(
                f"{names}: '{NO_TARGET}' is the placeholder of a suggested bridge, not a point: "
                "write the target's point name, or delete the line"
            )
        return value

    @model_validator(mode="after")
    def _approved(self) -> TranslateConfig:
        if not self.approved:
            raise ValueError(
                "this mapping is a suggestion that is not approved yet: review the map, then "
                "set approved: true"
            )
        if self.mode == "map" and not self.map:
            raise ValueError("mode map needs a non-empty map (or use mode: auto)")
        return self
