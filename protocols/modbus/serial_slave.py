"""The Modbus server target as an RTU slave on a local serial line (``serial:`` on the endpoint),
one of several slaves on a shared RS-485 bus.

A serial bus differs from RTU over TCP in what the slave hears and when it may speak:

* it hears every frame: the master's requests to every unit, and the other slaves' answers.
  A request for a unit id it does not serve gets no answer at all (another slave answers it: an
  exception 0A would collide with that answer), and an answer of another slave is recognised as
  one (its size follows from its function, its CRC matches) and ignored. Both are counted in
  ``frames_ignored``;
* there is no connection to drop: after noise, a bad CRC or bytes that start no frame, the slave
  discards everything until the line has been silent for t3.5, where the next frame must start
  (`BusDecoder`; Modbus over serial line 2.5.1.1), and counts one ``frame_errors``. A frame cut
  short by silence is dropped the same way;
* a slave answers after the request, once the line has been silent for t3.5.

Requests are served one at a time, in order, by the server adapter's own `handle` (reads at
once, writes once the device acknowledged, broadcasts carried out and not answered), so every
rule of the server holds. The port is opened when the server starts; one that cannot be opened
or disappears is logged as an error and opened again with backoff, the gateway running on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from gateway.backoff import BackoffTimer
from protocols.modbus.config import SerialPort
from protocols.modbus.frames import StreamDecoder
from protocols.modbus.rtu import (
    HEAD_SIZE,
    MAX_ADU,
    RtuFrame,
    crc16,
    request_size,
    response_size,
)
from protocols.modbus.serial_line import SerialLine, SerialLineError

if TYPE_CHECKING:
    from protocols.modbus.server import ModbusServerAdapter

log = logging.getLogger(__name__)

QUEUED = 16  # requests received while one is served; more are dropped (a master waits anyway)


class BusDecoder(StreamDecoder[RtuFrame]):
    """Sans-IO: the requests heard on a shared RTU bus. ``receive_data``, ``next_frame`` until
    None, and ``silence`` when the line has been quiet for t3.5 (a frame boundary).

    Frames of one burst are told apart by their size (a request's, `rtu.request_size`, or an
    answer's, `rtu.response_size`, whichever has a good CRC): bytes may come several frames at
    a time from a USB adapter or a pty. Answers are dropped (`answers`). Anything else is noise:
    every byte is dropped until the next silence (`errors` counts each such run)."""

    __slots__ = ("_resyncing", "errors", "answers", "last_error")

    def __init__(self) -> None:
        super().__init__()
        self._resyncing = False
        self.errors = 0
        self.answers = 0  # other slaves' answers heard and dropped
        self.last_error = ""

    def receive_data(self, data: bytes) -> None:
        if not self._resyncing:
            super().receive_data(data)

    def silence(self) -> None:
        """t3.5 of silence: a frame left incomplete is noise; the next byte starts a frame."""
        if self._buffer:  # (while resyncing nothing is kept)
            self._noise(f"a frame cut short ({len(self._buffer)} bytes, then silence)")
        self._resyncing = False

    def next_frame(self) -> RtuFrame | None:
        buf = self._buffer
        while buf and not self._resyncing:
            waiting = False
            request = request_size(buf[:HEAD_SIZE])
            answer = response_size(buf[:MAX_ADU])
            for size, is_request in ((request, True), (answer, False)):
                if size is None or (size and len(buf) < size):
                    waiting = True  # it may yet be this
                elif size and self._crc_ok(size):
                    frame = RtuFrame(buf[0], bytes(buf[1 : size - 2]))
                    del buf[:size]
                    if is_request:
                        return frame
                    self.answers += 1
                    break
            else:
                if waiting:
                    return None
                self._noise("a bad CRC" if request or answer else f"function {buf[1]:#04x}")
        return None

    def _crc_ok(self, size: int) -> bool:
        buf = self._buffer
        return crc16(buf[: size - 2]) == buf[size - 2] | buf[size - 1] << 8

    def _noise(self, why: str) -> None:
        self._buffer.clear()
        self._resyncing = True
        self.errors += 1
        self.last_error = why


class SerialSlave:
    """The server's serial line: opened (again) with backoff, frames heard, requests served."""

    def __init__(self, server: ModbusServerAdapter, settings: SerialPort) -> None:
        self._server = server
        self.settings = settings
        self.decoder = BusDecoder()
        self.line: SerialLine | None = None
        self.frames_ignored = 0  # requests to unit ids not served, other slaves' answers
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RtuFrame] = asyncio.Queue(QUEUED)
        self._lost = asyncio.Event()
        self._silence: asyncio.TimerHandle | None = None
        self._errors_said = 0
        self.origin = f"modbus:{settings.port}"

    @property
    def is_open(self) -> bool:
        return self.line is not None and self.line.is_open

    def open(self) -> str | None:
        """Open the port; why not, if it cannot be."""
        try:
            self.line = SerialLine.open(self.settings, self)
        except SerialLineError as exc:
            return f"cannot open serial port {self.settings.port}: {exc}"
        self._lost.clear()
        self.decoder, self._errors_said = BusDecoder(), 0
        return None

    def close(self) -> None:
        if self.line is not None:
            self.line.close()
        if self._silence is not None:
            self._silence.cancel()

    async def run(self) -> None:
        """Serve until cancelled; the port reopened with backoff whenever it fails."""
        backoff = BackoffTimer()
        why: str | None = None if self.is_open else "not open"
        said = False
        while True:
            if why is not None:
                why = self.open()
            if why is not None:
                if not said:
                    log.error("%s: %s; retrying with backoff", self._server.name, why)
                    said = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if said:
                log.info("%s: serial port %s open again", self._server.name, self.settings.port)
            said = False
            backoff.reset()
            serving = asyncio.ensure_future(self._serve())
            try:
                await self._lost.wait()
            finally:
                serving.cancel()
            why = self.line.lost if self.line is not None else None
            log.error("%s: %s; reopening with backoff", self._server.name, why)
            said = True
            why = why or "lost"

    # -- the line's callbacks

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.receive_data(data)
        answers = decoder.answers
        for frame in decoder:
            if frame.unit_id and frame.unit_id not in self._server.units:
                self.frames_ignored += 1  # another slave's: it answers
                continue
            try:
                self._queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._server.counters.frame_errors += 1
        self.frames_ignored += decoder.answers - answers
        self._count_errors()
        if self._silence is not None:
            self._silence.cancel()
        assert self.line is not None
        self._silence = self._loop.call_at(self.line.quiet_at, self._silent)

    def line_lost(self, reason: str) -> None:
        self._lost.set()

    def _silent(self) -> None:
        self._silence = None
        self.decoder.silence()
        self._count_errors()

    def _count_errors(self) -> None:
        decoder = self.decoder
        if decoder.errors != self._errors_said:
            why = f"{decoder.last_error} (dropped until silence)"
            self._server.dropped(decoder.errors - self._errors_said, self.origin, why)
            self._errors_said = decoder.errors

    # -- requests

    async def _serve(self) -> None:
        self._queue = asyncio.Queue(QUEUED)  # what was heard before a loss is stale
        while True:
            frame = await self._queue.get()
            response = self._server.handle(frame, self.origin)
            answer = await response if isinstance(response, Coroutine) else response
            line = self.line
            if answer is None or line is None or not line.is_open:
                continue  # a broadcast: carried out, not answered
            await line.wait_quiet()  # t3.5 after the request
            try:
                line.write(answer)
            except ConnectionError:
                return  # line_lost says so
