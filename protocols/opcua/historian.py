"""The OPC UA server's HistoryRead service: raw values, processed values (Part 13 aggregates)
and values at given times of the variables whose device has a shadow, read from the shadow's
history through the variable's bridge (in the target's units and names), as
`protocols.opcua.history` lays out.

Per node: Good with the values, GoodNoData when there are none, BadHistoryOperationUnsupported
for a node without history (not ours, a computed point, a device without a shadow) and for
modified and event reads, BadHistoryOperationInvalid for a raw read with fewer than two of
start, end and numValuesPerNode, a processed read without both times (or equal ones) or with a
negative interval, an at-time read without times; BadAggregateListMismatch when a processed
read does not give one AggregateType per node, BadAggregateNotSupported for an aggregate not in
`protocols.opcua.aggregates.Aggregate`, BadAggregateInvalidInputs for an AggregateConfiguration
Part 13 refuses (`protocols.opcua.aggregates.Config.problem`); BadNodeIdUnknown for a node that
does not exist, BadContinuationPointInvalid, and BadInternalError when the history cannot be
read (the shadow stopping, a damaged file; logged, at most once a minute). The whole request:
BadNothingToDo without nodes, BadTimestampsToReturnInvalid for Neither.

A processed read's AggregateConfiguration applies where its UseServerCapabilitiesDefaults is
false; otherwise the server's defaults (`protocols.opcua.aggregates.DEFAULT`, served in the
Server object's DefaultHAConfiguration) do.

Aggregate results are Double (Average, TimeAverage, Delta, Range), Int32 (Count) or of the
variable's type (Minimum, Maximum, Start, End, Interpolative).

The shadow keeps one time per value, the source's: it is the SourceTimestamp, and the
ServerTimestamp where one is asked for. Qualities: good -> Good, uncertain -> Uncertain, bad ->
Bad with a null value (a row the shadow kept when a device went bad).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes as Codes
from asyncua.ua.uaerrors import UaStatusCodeError

from protocols.opcua.aggregates import DEFAULT, KINDS, Aggregate, Config, Kind, Result
from protocols.opcua.history import (
    MAX_RESPONSE_VALUES,
    Continuations,
    InvalidContinuation,
    InvalidQuery,
    Item,
    NoBound,
    Position,
    ProcessedPosition,
    ProcessedQuery,
    RawQuery,
    Reader,
    read_at_times,
    read_page,
    read_processed,
    request_times,
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


@dataclass(frozen=True)
class _Request:
    """One node of a HistoryRead: the request, the node's place in it, its variable, how to
    read its rows, and how many values the response still has room for."""

    params: ua.HistoryReadParameters
    n: int
    item: ua.HistoryReadValueId
    var: HistoryVar
    rows: Reader
    room: int


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
        for n, item in enumerate(params.NodesToRead):
            result = await self._one(params, n, item, room, exists)
            data = result.HistoryData
            room -= len(data.DataValues or ()) if isinstance(data, ua.HistoryData) else 0
            results.append(result)
        return results

    async def _one(
        self,
        params: ua.HistoryReadParameters,
        n: int,
        item: ua.HistoryReadValueId,
        room: int,
        exists: Callable[[ua.NodeId], bool],
    ) -> ua.HistoryReadResult:
        var = self.variables.get(item.NodeId)
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
        rows = partial(var.bridge.history, var.device, var.spec.name)
        req = _Request(params, n, item, var, rows, room)
        try:
            if isinstance(details, ua.ReadProcessedDetails):
                planned = self._processed(req)
            elif isinstance(details, ua.ReadAtTimeDetails):
                planned = self._at_times(req)
            elif isinstance(details, ua.ReadRawModifiedDetails) and not details.IsReadModified:
                planned = self._raw(req)
            else:
                planned = Codes.BadHistoryOperationUnsupported
        except InvalidContinuation:
            planned = Codes.BadContinuationPointInvalid
        except InvalidQuery:
            planned = Codes.BadHistoryOperationInvalid
        if isinstance(planned, int):
            return _failed(planned)
        self.reads += 1
        try:
            values, point = await planned()
        except Exception as exc:  # the shadow stopping (a reload), a damaged file
            self.errors += 1
            self._warn(f"{var.device}/{var.spec.name}: {exc}")
            return _failed(Codes.BadInternalError)
        self.values += len(values)
        code = Codes.Good if values or point else Codes.GoodNoData
        return ua.HistoryReadResult(
            StatusCode=ua.StatusCode(cast("ua.UInt32", code)),
            ContinuationPoint=point,
            HistoryData=ua.HistoryData(DataValues=values),
        )

    # Each of these checks a request (raising InvalidQuery, InvalidContinuation, or giving the
    # code it is refused with) and gives what reads it: the values and the next point.

    def _raw(self, req: _Request) -> _Planned | int:
        params, item, var, rows, room = req.params, req.item, req.var, req.rows, req.room
        details, node = params.HistoryReadDetails, item.NodeId.to_string()
        if item.ContinuationPoint:
            query, at = self.continuations.open(node, item.ContinuationPoint)
        else:
            query = RawQuery.of(
                details.StartTime, details.EndTime, details.NumValuesPerNode, details.ReturnBounds
            )
            at = Position()

        async def read() -> _Read:
            items, after = await read_page(query, at, room, rows)
            values = [_data_value(var, i, params.TimestampsToReturn) for i in items]
            return values, self.continuations.make(node, query, after) if after else None

        return read

    def _processed(self, req: _Request) -> _Planned | int:
        params, item, var, rows, room = req.params, req.item, req.var, req.rows, req.room
        details, node = params.HistoryReadDetails, item.NodeId.to_string()
        if item.ContinuationPoint:
            query, at = self.continuations.open_processed(node, item.ContinuationPoint)
        else:
            kinds = details.AggregateType or []
            if len(kinds) != len(params.NodesToRead):
                return Codes.BadAggregateListMismatch
            aggregate = _AGGREGATES.get(kinds[req.n])
            if aggregate is None:
                return Codes.BadAggregateNotSupported
            config = aggregate_config(details.AggregateConfiguration)
            if config.problem() is not None:
                return Codes.BadAggregateInvalidInputs
            query = ProcessedQuery.of(
                details.StartTime, details.EndTime, details.ProcessingInterval, aggregate, config
            )
            at = ProcessedPosition()
        kind = KINDS.get(query.aggregate, Kind.SAME)

        async def read() -> _Read:
            results, after = await read_processed(query, at, room, rows, time.time())
            values = [_result_value(var, r, kind, params.TimestampsToReturn) for r in results]
            return values, self.continuations.make_processed(node, query, after) if after else None

        return read

    def _at_times(self, req: _Request) -> _Planned | int:
        params, item, var, rows, room = req.params, req.item, req.var, req.rows, req.room
        details, node = params.HistoryReadDetails, item.NodeId.to_string()
        simple = bool(details.UseSimpleBounds)
        times = request_times(list(details.ReqTimes or []))
        index = 0
        if item.ContinuationPoint:
            index = self.continuations.open_at_times(node, item.ContinuationPoint, times, simple)

        async def read() -> _Read:
            results, after = await read_at_times(times, index, room, rows, time.time(), simple)
            values = [_result_value(var, r, Kind.SAME, params.TimestampsToReturn) for r in results]
            made = self.continuations.make_at_times
            return values, made(node, times, simple, after) if after is not None else None

        return read

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


def aggregate_config(given: ua.AggregateConfiguration | None) -> Config:
    """The configuration a processed read asks for: its own, or with
    UseServerCapabilitiesDefaults (or none given) the server's."""
    if given is None or given.UseServerCapabilitiesDefaults:
        return DEFAULT
    return Config(
        uncertain_bad=bool(given.TreatUncertainAsBad),
        percent_bad=int(given.PercentDataBad),
        percent_good=int(given.PercentDataGood),
        sloped=bool(given.UseSlopedExtrapolation),
    )


def _failed(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=ua.StatusCode(cast("ua.UInt32", code)))


_Read = tuple[list[ua.DataValue], bytes | None]  # values, continuation point
_Planned = Callable[[], Awaitable[_Read]]
_AGGREGATES = {ua.NodeId(cast("ua.Int32", a.value)): a for a in Aggregate}
_KIND_TYPES = {Kind.DOUBLE: (float, VT.Double), Kind.COUNT: (int, VT.Int32)}


def _result_value(
    var: HistoryVar, result: Result, kind: Kind, stamps: ua.TimestampsToReturn
) -> ua.DataValue:
    """An aggregate's or an at-time read's value as a DataValue."""
    variant = ua.Variant(None, VT.Null)
    code = result.status
    if result.value is not None:
        coerce, vtype = _KIND_TYPES.get(kind, (var.coerce, var.vtype))
        try:
            variant = ua.Variant(coerce(result.value), vtype)
        except (TypeError, ValueError, OverflowError):
            code = Codes.BadTypeMismatch
    return _stamped(variant, code, result.ts, stamps)


def _stamped(
    variant: ua.Variant, code: int, ts: float, stamps: ua.TimestampsToReturn
) -> ua.DataValue:
    when = cast("ua.DateTime", datetime.fromtimestamp(ts, UTC))
    return ua.DataValue(
        Value=variant,
        StatusCode=ua.StatusCode(cast("ua.UInt32", code)),
        SourceTimestamp=when if stamps != ua.TimestampsToReturn.Server else None,
        ServerTimestamp=when if stamps != ua.TimestampsToReturn.Source else None,
    )


def _data_value(var: HistoryVar, item: Item, stamps: ua.TimestampsToReturn) -> ua.DataValue:
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
    return _stamped(variant, code, item.ts, stamps)
