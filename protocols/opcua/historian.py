"""The OPC UA server's HistoryRead service: raw values of the variables whose device has a
shadow, read from the shadow's history through the variable's bridge (in the target's units
and names), as `protocols.opcua.history` lays out.

Per node: Good with the values, GoodNoData when there are none, BadHistoryOperationUnsupported
for a node without history (not ours, a computed point, a device without a shadow) and for
what is not a raw read (processed, at-time, modified, events), BadHistoryOperationInvalid for a
raw read with fewer than two of start, end and numValuesPerNode, BadNodeIdUnknown for a node
that does not exist, BadContinuationPointInvalid, and BadInternalError when the history cannot
be read (the shadow stopping, a damaged file; logged, at most once a minute). The whole request:
BadNothingToDo without nodes, BadTimestampsToReturnInvalid for Neither.

The shadow keeps one time per value, the source's: it is the SourceTimestamp, and the
ServerTimestamp where one is asked for. Qualities: good -> Good, uncertain -> Uncertain, bad ->
Bad with a null value (a row the shadow kept when a device went bad).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes as Codes
from asyncua.ua.uaerrors import UaStatusCodeError

from protocols.opcua.history import (
    MAX_RESPONSE_VALUES,
    Continuations,
    InvalidContinuation,
    InvalidQuery,
    Item,
    NoBound,
    Position,
    RawQuery,
    read_page,
)

if TYPE_CHECKING:
    from gateway.bridge import Bridge
    from gateway.types import PointSpec

log = logging.getLogger(__name__)

VT = ua.VariantType
_TIMESTAMPS = (
    ua.TimestampsToReturn.Source,
    ua.TimestampsToReturn.Server,
    ua.TimestampsToReturn.Both,
)
_QUALITY = {"good": Codes.Good, "uncertain": Codes.Uncertain}
WARN_EVERY = 60.0  # seconds between log lines of failed reads


class HistoryVar(Protocol):
    """What the historian needs of a served variable (`protocols.opcua.server._Var`)."""

    @property
    def device(self) -> str: ...

    @property
    def bridge(self) -> Bridge: ...

    @property
    def vtype(self) -> ua.VariantType: ...

    @property
    def coerce(self) -> Callable[[Any], Any]: ...

    @property
    def historized(self) -> bool: ...

    @property
    def spec(self) -> PointSpec: ...


class Historian:
    """Answers HistoryRead for one server; counts what it served."""

    def __init__(self, name: str, variables: Mapping[ua.NodeId, HistoryVar]) -> None:
        self.name = name
        self.variables = variables
        self.continuations = Continuations()
        self.reads = 0  # nodes read
        self.values = 0  # values returned
        self.errors = 0  # nodes whose history could not be read
        self._warned = -WARN_EVERY

    async def read(
        self, params: ua.HistoryReadParameters, exists: Callable[[ua.NodeId], bool]
    ) -> list[ua.HistoryReadResult]:
        if not params.NodesToRead:
            raise UaStatusCodeError(Codes.BadNothingToDo)  # type: ignore[no-untyped-call]
        if params.TimestampsToReturn not in _TIMESTAMPS:
            raise UaStatusCodeError(Codes.BadTimestampsToReturnInvalid)  # type: ignore[no-untyped-call]
        room = MAX_RESPONSE_VALUES
        results = []
        for item in params.NodesToRead:
            result = await self._one(params, item, room, exists)
            data = result.HistoryData
            room -= len(data.DataValues or ()) if isinstance(data, ua.HistoryData) else 0
            results.append(result)
        return results

    async def _one(
        self,
        params: ua.HistoryReadParameters,
        item: ua.HistoryReadValueId,
        room: int,
        exists: Callable[[ua.NodeId], bool],
    ) -> ua.HistoryReadResult:
        var = self.variables.get(item.NodeId)
        node = item.NodeId.to_string()
        details = params.HistoryReadDetails
        if var is None and not exists(item.NodeId):
            return _failed(Codes.BadNodeIdUnknown)
        # a reload may have taken the shadow away from a server it kept running
        if (
            var is None
            or not var.historized
            or not var.bridge.historized(var.device, var.spec.name)
        ):
            return _failed(Codes.BadHistoryOperationUnsupported)
        if params.ReleaseContinuationPoints:
            return _failed(Codes.Good)  # nothing is held for a point: nothing to release
        if not isinstance(details, ua.ReadRawModifiedDetails) or details.IsReadModified:
            return _failed(Codes.BadHistoryOperationUnsupported)
        try:
            if item.ContinuationPoint:
                query, at = self.continuations.open(node, item.ContinuationPoint)
            else:
                query = RawQuery.of(
                    details.StartTime,
                    details.EndTime,
                    details.NumValuesPerNode,
                    details.ReturnBounds,
                )
                at = Position()
        except InvalidContinuation:
            return _failed(Codes.BadContinuationPointInvalid)
        except InvalidQuery:
            return _failed(Codes.BadHistoryOperationInvalid)

        rows = partial(var.bridge.history, var.device, var.spec.name)
        self.reads += 1
        try:
            items, after = await read_page(query, at, room, rows)
        except Exception as exc:  # the shadow stopping (a reload), a damaged file
            self.errors += 1
            self._warn(f"{var.device}/{var.spec.name}: {exc}")
            return _failed(Codes.BadInternalError)
        self.values += len(items)
        stamps = params.TimestampsToReturn
        values = [_data_value(var, i, stamps) for i in items]
        code = Codes.Good if values or after is not None else Codes.GoodNoData
        return ua.HistoryReadResult(
            StatusCode=ua.StatusCode(cast("ua.UInt32", code)),
            ContinuationPoint=self.continuations.make(node, query, after) if after else None,
            HistoryData=ua.HistoryData(DataValues=values),
        )

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("%s: history read failed for %s (%d so far)", self.name, what, self.errors)

    def status(self) -> dict[str, int]:
        return {
            "history_reads": self.reads,
            "history_values": self.values,
            "history_errors": self.errors,
        }


def _failed(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=ua.StatusCode(cast("ua.UInt32", code)))


def _data_value(var: HistoryVar, item: Item, stamps: ua.TimestampsToReturn) -> ua.DataValue:
    when = cast("ua.DateTime", datetime.fromtimestamp(item.ts, UTC))
    variant = ua.Variant(None, VT.Null)
    if isinstance(item, NoBound):
        code = Codes.BadBoundNotFound
    else:
        code = _QUALITY.get(item.quality, Codes.Bad)
        if code != Codes.Bad and item.value is not None:
            try:
                variant = ua.Variant(var.coerce(item.value), var.vtype)
            except (TypeError, ValueError, OverflowError):
                code = Codes.BadTypeMismatch
    return ua.DataValue(
        Value=variant,
        StatusCode=ua.StatusCode(cast("ua.UInt32", code)),
        SourceTimestamp=when if stamps != ua.TimestampsToReturn.Server else None,
        ServerTimestamp=when if stamps != ua.TimestampsToReturn.Source else None,
    )
