"""``optimizer:`` of an MQTT endpoint, and the reward weights (shared with training).

The reward is a cost the operator pays, summed over a decision interval and negated::

    cost = latency * (telemetry sample-seconds of delay)
         + alarm_latency * (alarm-seconds of delay) + deadline_miss * (alarms later than deadline)
         + energy * (radio joules) + bytes * (kB up and down, headers and acks included)
         + loss * (samples lost)

so a policy's "gain" is the relative drop of mean cost per sample, the same thing as the
relative rise of the (negative) mean reward towards zero.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gateway.config.common import Strict

__all__ = ["OptimizerConfig", "RewardWeights"]


class RewardWeights(Strict):
    """Cost units per physical unit (defaults: a battery/cellular gateway, data must arrive)."""

    latency: float = Field(1.0, ge=0, description="per sample-second of telemetry delay")
    alarm_latency: float = Field(10.0, ge=0, description="per alarm-second of delay")
    alarm_deadline: float = Field(2.0, gt=0, description="seconds an alarm may take")
    deadline_miss: float = Field(200.0, ge=0, description="per alarm later than its deadline")
    energy: float = Field(1.0, ge=0, description="per joule of radio energy")
    bytes: float = Field(0.5, ge=0, description="per kB sent or received")
    loss: float = Field(50.0, ge=0, description="per sample lost (QoS 0 on a dropped link)")


class OptimizerConfig(Strict):
    """How an MQTT endpoint's uplink decides batching, compression, QoS and in-flight window."""

    model: str = Field(
        "builtin",
        description=(
            "builtin: the shipped ONNX policy; a path to a policy.onnx (its .json beside it);"
            " heuristic: the AIMD rule; off: one publish per sample, as without optimizer"
        ),
    )
    interval: float = Field(1.0, gt=0, le=60, description="seconds between decisions")
    batch_topic: str = Field(
        "protocol-brain/{gateway}/batch",
        description="where batches go ({gateway}); consumers unbatch (docs/optimizer.md)",
    )
    ack_timeout: float = Field(3.0, gt=0, description="an unacknowledged publish older counts")
    weights: RewardWeights = Field(default_factory=RewardWeights)
    fallback: Literal["heuristic", "off"] = Field(
        "heuristic", description="what decides if the model cannot be loaded"
    )

    @field_validator("model", "fallback", mode="before")
    @classmethod
    def _off_is_a_word(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: `model: off` means the word, as documented.
        return "off" if value is False else value
