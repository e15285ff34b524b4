"""The late-update guard: is a desired update over MQTT too old to carry out? (no I/O)

A broker queues updates for a persistent session while the gateway is away, a backed-up bridge
or a retained update delivers them later still, so a setpoint sent hours ago can arrive now and
be written now. MQTT 5's Message Expiry bounds only the time a message waits at the broker, and
most clouds still speak 3.1.1, so the sender's own clock is the one measure that covers the
whole way: with ``shadow.mqtt.max_age`` an update carries a top-level ``timestamp`` (epoch
seconds, the field AWS IoT's shadow replies carry) and is refused once it is older than that.

A timestamp ahead of the gateway's clock by more than ``max_skew`` is refused too: it means a
clock is wrong (or a sender writes milliseconds), and accepting it would let that sender's
updates look fresh for as long as its clock is ahead, which is what the guard is there to stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.text import duration

if TYPE_CHECKING:
    from gateway.config.model import ShadowMqtt

#: Why an update is refused: older than max_age, ahead of the clock, without a timestamp while
#: one is required, or one that is no number (a malformed request, not a late one).
Kind = Literal["stale", "future", "untimed", "bad"]
MILLISECONDS = 1e11  # epoch seconds pass it in the year 5138; epoch milliseconds since 1973


@dataclass(frozen=True)
class Refusal:
    kind: Kind
    message: str  # the rejected reply's message (code 400)


def request_time(body: Mapping[str, Any]) -> float | None:
    """The update's top-level ``timestamp``, None when it has none (absent or null); a value
    that is no number raises ValueError."""
    stamp = body.get("timestamp")
    if stamp is None:
        return None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise ValueError(f"timestamp must be a number of seconds since the epoch, not {stamp!r}")
    return float(stamp)


def check_age(
    body: Mapping[str, Any],
    now: float,
    *,
    max_age: float,
    max_skew: float,
    require: bool,
) -> Refusal | None:
    """None if the update may be carried out at ``now`` (epoch seconds), else why not."""
    try:
        sent = request_time(body)
    except ValueError as exc:
        return Refusal("bad", str(exc))
    if sent is None:
        if not require:
            return None
        return Refusal(
            "untimed",
            'an update needs a top-level "timestamp" (epoch seconds) here '
            "(shadow.mqtt.require_timestamp); not applied",
        )
    age = now - sent
    if age > max_age:
        return Refusal(
            "stale",
            f"stale update: sent {duration(age)} ago (timestamp {sent:.0f}), over "
            f"shadow.mqtt.max_age {duration(max_age)}; not applied, send it again if still wanted",
        )
    if -age > max_skew:
        hint = " (in milliseconds? it must be seconds)" if sent > MILLISECONDS else ""
        return Refusal(
            "future",
            f"timestamp {sent:.0f}{hint} is {duration(-age)} ahead of the gateway's clock, over "
            f"shadow.mqtt.max_skew {duration(max_skew)}: check the clocks (NTP); not applied",
        )
    return None


def guard_warnings(mqtt: ShadowMqtt, broker: object) -> list[tuple[str, str]]:
    """What to say of the guard's settings, as (key under ``shadow.mqtt``, or "", text):
    updates that a persistent session's broker queues (``broker``: the endpoint's config,
    its ``session.persistent``) with no ``max_age`` to stop a late one, and a ``max_skew``
    given without ``max_age``, where it does nothing. ``gateway validate`` prints them, the
    shadow service logs them at start."""
    if mqtt.max_age is not None:
        return []
    said: list[tuple[str, str]] = []
    if getattr(getattr(broker, "session", None), "persistent", False):
        said.append(
            (
                "",
                f"endpoint {mqtt.endpoint!r} keeps a persistent session, so the broker queues"
                " shadow updates while the gateway is away and they are carried out when it is"
                " back, however late (a setpoint queued for hours is written hours late); set"
                " max_age (seconds) and send updates with a timestamp to refuse late ones",
            )
        )
    if "max_skew" in mqtt.model_fields_set:
        said.append(
            (
                "max_skew",
                "does nothing without max_age (the late-update guard is off); set max_age, or"
                " leave out max_skew",
            )
        )
    return said
