"""Condition calls: an operator's Acknowledge, Confirm or AddComment, sent down to the device
whose alarm it is.

A server target that re-serves a device's alarms (the OPC UA server in front of several PLCs)
takes an operator's call on one of them; the alarm lives on the device, so the call must go
there, as every write does (`gateway.commands`). It is no point write (no point, no value, no
range), so it has its own typed request: `request` puts a `ConditionCall` on the bus at
``condition/<device>``, with a future for the answer, and the device's adapter, which runs
`serve` for its device, carries it out and answers with a `CallResult`. The bus is in-process:
the future travels in the message. Nobody listening (the device is no events client, or is
stopped) is answered at once; no answer within the timeout is a timeout, and a call still
queued then is dropped, never made late (the operator was told it failed).

Who may call is the caller's business (the server checks its user's write access and that the
bridge lets clients write, `Bridge.call_condition`); the device answers with its own status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.bus import Bus
from gateway.commands import DEFAULT_WRITE_TIMEOUT, WriteStatus
from gateway.types import Message, MessageKind, next_sequence

log = logging.getLogger(__name__)

ACKNOWLEDGE = "Acknowledge"
CONFIRM = "Confirm"
ADD_COMMENT = "AddComment"


@dataclass(frozen=True, slots=True)
class ConditionCall:
    """One operator's call on a device's alarm, in the device's own terms."""

    method: str  # ACKNOWLEDGE, CONFIRM or ADD_COMMENT
    condition: str  # the device's id of the condition (OPC UA: its ConditionId, string form)
    event_id: bytes  # the device's id of the event the operator saw
    comment: str
    origin: str  # who calls, for the log ("opcua:op@10.0.0.5:50712")


@dataclass(frozen=True, slots=True)
class CallResult:
    status: WriteStatus
    reason: str = ""
    code: int | None = None  # the device's own status when it refused (OPC UA's StatusCode)

    @property
    def ok(self) -> bool:
        return self.status is WriteStatus.GOOD


def call_topic(device: str) -> str:
    return f"condition/{device}"


async def request(
    bus: Bus, device: str, call: ConditionCall, ack_timeout: float = DEFAULT_WRITE_TIMEOUT
) -> CallResult:
    """``call`` made by ``device``'s adapter; its answer, or why there is none."""
    reply: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
    message = Message(
        topic=call_topic(device),
        kind=MessageKind.COMMAND,
        samples=(),
        origin=call.origin,
        seq=next_sequence(call.origin),
        device=device,
        meta={"call": call, "reply": reply},
    )
    if bus.publish_nowait(message) == 0:
        return CallResult(WriteStatus.UNREACHABLE, f"{device} takes no alarm calls (not running)")
    try:
        return await asyncio.wait_for(asyncio.shield(reply), ack_timeout)
    except TimeoutError:
        return CallResult(WriteStatus.TIMEOUT, f"{device} did not answer in {ack_timeout:g} s")
    finally:
        reply.cancel()  # a call still queued is dropped, not made late (`serve`)


async def serve(
    bus: Bus, device: str, handler: Callable[[ConditionCall], Awaitable[CallResult]]
) -> None:
    """Carry out, one at a time and in order, the calls addressed to ``device``."""
    with bus.subscribe(call_topic(device), maxsize=100, name=f"conditions:{device}") as sub:
        async for message in sub:
            call, reply = message.meta.get("call"), message.meta.get("reply")
            if not isinstance(call, ConditionCall) or not isinstance(reply, asyncio.Future):
                continue
            if reply.done():
                continue  # its caller gave up (`request` cancels it): not made late
            try:
                result = await handler(call)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a handler bug must not stop the loop
                log.exception("%s: %s of %s failed", device, call.method, call.condition)
                result = CallResult(WriteStatus.DEVICE_ERROR, str(exc) or type(exc).__name__)
            if not reply.done():
                reply.set_result(result)
