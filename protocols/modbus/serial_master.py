"""The Modbus RTU master side of a local serial line: what the client adapter asks a device
with ``serial:`` through, in place of pymodbus's TCP client.

It is pymodbus's client API (`ModbusClientMixin`: ``read_holding_registers``, ``write_register``
and the rest build the request PDUs, and pymodbus decodes the answers' PDUs), so the adapter
polls and writes alike over both transports; the frames are `protocols.modbus.rtu`'s (unit id,
PDU, CRC16) and the line is `protocols.modbus.serial_line`'s. pymodbus's own serial client is not
used: it keeps no silent interval between frames and counts a request's timeout from when it was
queued, not from when its last byte left the UART (at 9600 baud a 123-register write takes
0.27 s to send).

One request at a time, as on any Modbus serial bus (2.1: a master talks to one slave at a time):

* before sending, the line must have been silent for t3.5 (`SerialLine.quiet_at`);
* a frame received while no request waits (the late answer of a unit that timed out) is
  dropped;
* the timeout counts from the end of sending;
* the answer is the first frame with a good CRC from the unit asked (a frame of another unit, a
  late answer of a unit that timed out, is dropped); a frame with a bad CRC is dropped too, so
  it reads as a timeout. Whether the answer answers *this* request (its function, its size) is
  for the adapter to judge, as over RTU over TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException
from pymodbus.pdu import DecodePDU, ModbusPDU

from protocols.modbus.config import SerialPort
from protocols.modbus.rtu import MAX_ADU, RtuDecoder, RtuFrame, build_rtu_frame, response_size
from protocols.modbus.serial_line import SerialLine, SerialLineError


class SerialRtuClient(ModbusClientMixin[Awaitable[ModbusPDU]]):
    """An RTU master on one serial port: `connect`, requests, `close` (see the module)."""

    def __init__(self, settings: SerialPort, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.last_error = ""  # why the port could not be opened, or was lost
        self._line: SerialLine | None = None
        self._lock = asyncio.Lock()
        self._decoder = RtuDecoder(response_size, head=MAX_ADU)
        self._pdus = DecodePDU(is_server=False)
        self._waiting: tuple[int, asyncio.Future[RtuFrame]] | None = None  # (unit, its answer)

    @property
    def connected(self) -> bool:
        return self._line is not None and self._line.is_open

    async def connect(self) -> bool:
        """Open the port; False (and `last_error`) when it cannot be."""
        self.close()
        try:
            self._line = SerialLine.open(self.settings, self)
        except SerialLineError as exc:
            self.last_error = f"cannot open serial port {self.settings.port}: {exc}"
            return False
        return True

    def close(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            line.close()
        self._fail(ConnectionException(f"serial port {self.settings.port} closed"))

    # -- the line's callbacks

    def data_received(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        for frame in self._decoder:
            waiting = self._waiting
            if waiting is not None and frame.unit_id == waiting[0] and not waiting[1].done():
                waiting[1].set_result(frame)

    def line_lost(self, reason: str) -> None:
        self.last_error = reason
        self._fail(ConnectionException(reason))

    def _fail(self, exc: Exception) -> None:
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(exc)

    # -- requests

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        """Send ``request`` to its unit (``dev_id``) and return the answer's PDU; TimeoutError
        when none comes within `timeout` of the end of sending, ConnectionException when the
        port is closed or lost."""
        pdu = request.function_code.to_bytes(1, "big") + request.encode()
        frame = build_rtu_frame(request.dev_id, pdu)
        async with self._lock:
            loop = asyncio.get_running_loop()
            await self._line_or_fail().wait_quiet()  # t3.5 since the last frame
            line = self._line_or_fail()
            answer: asyncio.Future[RtuFrame] = loop.create_future()
            self._waiting = (request.dev_id, answer)
            try:
                sent = line.write(frame)
                if no_response_expected:  # a broadcast: nobody answers it
                    return request
                try:
                    async with asyncio.timeout_at(sent + self.timeout):
                        got = await answer
                except TimeoutError:
                    raise TimeoutError(
                        f"timeout: no answer from unit {request.dev_id} within {self.timeout:g} s"
                    ) from None
            except ConnectionError as exc:
                raise ConnectionException(str(exc)) from None
            finally:
                self._waiting = None
        response = self._pdus.decode(got.pdu)
        if response is None:
            raise ConnectionException(
                f"unit {got.unit_id} answered with a PDU pymodbus cannot decode: {got.pdu.hex()}"
            )
        response.dev_id = got.unit_id
        return response

    def _line_or_fail(self) -> SerialLine:
        line = self._line
        if line is None or not line.is_open:
            raise ConnectionException(self.last_error or f"serial port {self.settings.port} closed")
        return line
