"""Shelving of one anomaly alarm (Part 9, 5.8.10 ShelvedStateMachineType): its state, the rules
of its three methods, and the fields its events carry.

An operator shelves a nuisance alarm for a while (TimedShelve, ShelvingTime in ms) or until it
next clears (OneShotShelve); Unshelve ends either. The rules (the status codes are Part 9's):

- TimedShelve only from Unshelved (BadConditionAlreadyShelved otherwise: a timed shelve is not
  extended, it is unshelved and shelved again), with 0 < ShelvingTime <= MaxTimeShelved
  (BadShelvingTimeOutOfRange);
- OneShotShelve from Unshelved or TimedShelved (BadConditionAlreadyShelved when one-shot
  already); it ends when the alarm clears, and at the latest after MaxTimeShelved (Part 9:
  MaxTimeShelved bounds both kinds, so a forgotten one-shot does not hide an alarm for good);
- Unshelve from either (BadConditionNotShelved when not shelved).

Sans-IO: the caller (`protocols.opcua.alarms`) runs the timers, fires the events and keeps the
state across restarts; this module only says what is allowed and what the events say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

UNSHELVED = "Unshelved"
TIMED = "TimedShelved"
ONE_SHOT = "OneShotShelved"
STATES = (UNSHELVED, TIMED, ONE_SHOT)

TIMED_SHELVE = "TimedShelve"
ONE_SHOT_SHELVE = "OneShotShelve"
UNSHELVE = "Unshelve"
_TARGET = {TIMED_SHELVE: TIMED, ONE_SHOT_SHELVE: ONE_SHOT, UNSHELVE: UNSHELVED}

# the ShelvedStateMachineType's methods, and the instance declarations of AlarmConditionType's
# ShelvingState (a client may name either; the ObjectId is the ConditionId, see `alarms`)
METHODS: dict[ua.NodeId, str] = {
    ua.NodeId(cast("ua.Int32", i)): name
    for i, name in (
        (ObjectIds.ShelvedStateMachineType_TimedShelve, TIMED_SHELVE),
        (ObjectIds.ShelvedStateMachineType_OneShotShelve, ONE_SHOT_SHELVE),
        (ObjectIds.ShelvedStateMachineType_Unshelve, UNSHELVE),
        (ObjectIds.AlarmConditionType_ShelvingState_TimedShelve, TIMED_SHELVE),
        (ObjectIds.AlarmConditionType_ShelvingState_OneShotShelve, ONE_SHOT_SHELVE),
        (ObjectIds.AlarmConditionType_ShelvingState_Unshelve, UNSHELVE),
    )
}
_STATE_IDS = {
    UNSHELVED: ObjectIds.ShelvedStateMachineType_Unshelved,
    TIMED: ObjectIds.ShelvedStateMachineType_TimedShelved,
    ONE_SHOT: ObjectIds.ShelvedStateMachineType_OneShotShelved,
}
_TRANSITION_IDS = {
    f"{UNSHELVED}To{TIMED}": ObjectIds.ShelvedStateMachineType_UnshelvedToTimedShelved,
    f"{UNSHELVED}To{ONE_SHOT}": ObjectIds.ShelvedStateMachineType_UnshelvedToOneShotShelved,
    f"{TIMED}To{UNSHELVED}": ObjectIds.ShelvedStateMachineType_TimedShelvedToUnshelved,
    f"{TIMED}To{ONE_SHOT}": ObjectIds.ShelvedStateMachineType_TimedShelvedToOneShotShelved,
    f"{ONE_SHOT}To{UNSHELVED}": ObjectIds.ShelvedStateMachineType_OneShotShelvedToUnshelved,
}
TRANSITIONS = tuple(_TRANSITION_IDS)
VT = ua.VariantType
_NUMBERS = frozenset(
    {VT.Double, VT.Float, VT.SByte, VT.Byte, VT.Int16, VT.UInt16, VT.Int32, VT.UInt32}
    | {VT.Int64, VT.UInt64}
)


@dataclass(slots=True)
class Shelving:
    """One alarm's ShelvingState."""

    state: str = UNSHELVED
    transition: str = ""  # LastTransition's name, "" before the first
    at: datetime | None = None  # LastTransition/TransitionTime
    until: datetime | None = None  # when shelved: when it ends by itself

    @property
    def shelved(self) -> bool:
        return self.state != UNSHELVED

    def answer(self, method: str, args: list[ua.Variant], most_ms: float) -> Refusal | float:
        """The refusal of calling ``method`` with ``args``, or the shelving time in ms
        (``most_ms`` for a OneShotShelve, 0 for an Unshelve)."""
        wanted = 1 if method == TIMED_SHELVE else 0
        if len(args) != wanted:
            few = len(args) < wanted
            return Refusal(
                StatusCodes.BadArgumentsMissing if few else StatusCodes.BadTooManyArguments
            )
        if method == UNSHELVE:
            return 0.0 if self.shelved else Refusal(StatusCodes.BadConditionNotShelved)
        if self.state == ONE_SHOT or (method == TIMED_SHELVE and self.state == TIMED):
            return Refusal(StatusCodes.BadConditionAlreadyShelved)
        if method == ONE_SHOT_SHELVE:
            return most_ms
        value = args[0].Value
        if args[0].VariantType not in _NUMBERS or isinstance(value, bool) or value is None:
            return Refusal(StatusCodes.BadInvalidArgument, (StatusCodes.BadTypeMismatch,))
        ms = float(value)
        if not 0 < ms <= most_ms:  # NaN too
            return Refusal(StatusCodes.BadShelvingTimeOutOfRange)
        return ms

    def move(self, method: str, at: datetime, ms: float) -> None:
        """Take the transition of ``method`` (allowed by `answer`) at ``at``, shelved for
        ``ms``."""
        self.end(_TARGET[method], at)
        self.until = at + timedelta(milliseconds=ms) if self.shelved else None

    def end(self, state: str, at: datetime) -> None:
        self.transition, self.state, self.at = f"{self.state}To{state}", state, at
        if not self.shelved:
            self.until = None

    def fields(self, at: datetime, most_ms: float) -> dict[str, tuple[Any, ua.VariantType]]:
        """The event fields of the state at ``at`` (UnshelveTime: ms left then, 0 when
        unshelved), with their types."""
        left = (self.until - at).total_seconds() * 1000 if self.until is not None else 0.0
        transition = self.transition or None
        return {
            "SuppressedOrShelved": (self.shelved, VT.Boolean),
            "MaxTimeShelved": (most_ms, VT.Double),
            "ShelvingState/CurrentState": (ua.LocalizedText(self.state), VT.LocalizedText),
            "ShelvingState/CurrentState/Id": (_node(_STATE_IDS[self.state]), VT.NodeId),
            "ShelvingState/LastTransition": (
                ua.LocalizedText(transition) if transition else None,
                VT.LocalizedText,
            ),
            "ShelvingState/LastTransition/Id": (
                _node(_TRANSITION_IDS[transition]) if transition else None,
                VT.NodeId,
            ),
            "ShelvingState/LastTransition/TransitionTime": (self.at, VT.DateTime),
            "ShelvingState/UnshelveTime": (max(left, 0.0), VT.Double),
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused call: its status and, for a bad argument, each argument's."""

    code: int
    args: tuple[int, ...] = ()


def _node(identifier: int) -> ua.NodeId:
    return ua.NodeId(cast("ua.Int32", identifier))
