"""A local serial line (a USB RS-485 adapter, a board's UART) opened for Modbus RTU and read by
the event loop: pyserial opens and configures the tty (baud rate, parity, stop bits, raw mode,
exclusive), then the loop watches its file descriptor (``add_reader``), so there is no thread and
no polling; writes go straight to the fd, the rest (a full kernel buffer) when it drains.

Timing (Modbus over serial line V1.02, 2.5.1.1). A frame ends with 3.5 characters of silence
(t3.5), and the next frame on the line may start only after it: `silent_interval` is 3.5
character times (11 bits each: start, 8 data, parity or a second stop bit, stop), fixed at
1.75 ms above 19200 baud as the spec says. The line keeps `quiet_at`, the loop time from which
it has been silent for t3.5 (the later of the last byte received and the end of the last frame
sent, plus t3.5): a sender waits for it. A frame written leaves the UART at the baud rate, so
`write` returns the loop time its last byte is on the wire (from the character time: the
kernel's buffer is not asked), from which a master counts its answer's timeout.

A line that fails (a USB adapter unplugged reads as end of file or EIO, a pty whose other end
closed as EIO) is closed and its protocol told once, through ``line_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any, Protocol

import serial

from protocols.modbus.config import SerialPort

READ_SIZE = 4096
FAST_BAUDRATE = 19200  # above it, the timing is fixed (2.5.1.1)
FAST_SILENCE = 0.00175  # t3.5 above FAST_BAUDRATE, seconds


def char_time(settings: SerialPort) -> float:
    """Seconds one character takes on the wire: start bit, data bits, parity, stop bits."""
    bits = 1 + settings.bytesize + (settings.parity != "N") + settings.stopbits
    return bits / settings.baudrate


def silent_interval(settings: SerialPort) -> float:
    """t3.5: the silence that ends a frame, and that must pass before the next one starts."""
    if settings.baudrate > FAST_BAUDRATE:
        return FAST_SILENCE
    return 3.5 * char_time(settings)


class SerialLineError(OSError):
    """The port cannot be opened or configured: one line for the log, naming it."""


class LineProtocol(Protocol):
    def data_received(self, data: bytes) -> None: ...
    def line_lost(self, reason: str) -> None: ...


class SerialLine:
    """One open serial port, read by the event loop (see the module's docstring)."""

    def __init__(
        self, settings: SerialPort, protocol: LineProtocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.settings = settings
        self.char_time = char_time(settings)
        self.silence = silent_interval(settings)
        self._protocol = protocol
        self._loop = loop
        self._port: Any = None
        self._fd = -1
        self._pending = bytearray()  # written while the kernel's buffer was full
        self.quiet_at = 0.0  # loop time from which the line has been silent for t3.5
        self._sent_at = 0.0  # loop time the last byte written leaves the UART
        self.lost: str | None = None  # why the line failed, once it has

    @classmethod
    def open(cls, settings: SerialPort, protocol: LineProtocol) -> SerialLine:
        """The port open and watched; SerialLineError says why not."""
        line = cls(settings, protocol, asyncio.get_running_loop())
        try:
            port = serial.Serial(
                settings.port,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=settings.parity,
                stopbits=settings.stopbits,
                timeout=0,
                exclusive=True,  # a second program on the line would garble both
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialLineError(_reason(exc, settings.port)) from None
        line._port = port
        line._fd = port.fileno()
        os.set_blocking(line._fd, False)
        port.reset_input_buffer()  # bytes from before we opened it belong to nobody
        line.quiet_at = line._loop.time() + line.silence
        line._loop.add_reader(line._fd, line._read_ready)
        return line

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def write(self, data: bytes) -> float:
        """Send ``data`` now; the loop time its last byte will have left the UART."""
        if self._port is None:
            raise ConnectionError(f"serial port {self.settings.port} is closed ({self.lost})")
        size = len(data)
        if not self._pending:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                raise ConnectionError(self.lost) from None
            data = data[sent:]
            if data:
                self._loop.add_writer(self._fd, self._write_ready)
        self._pending += data
        # bytes go out one after the other: a frame starts when the one before it has left
        done = max(self._loop.time(), self._sent_at) + size * self.char_time
        self._sent_at = done
        self.quiet_at = max(self.quiet_at, done + self.silence)
        return done

    async def wait_quiet(self) -> None:
        """Until the line has been silent for t3.5, before sending (each byte heard meanwhile
        pushes the moment on, so it is a deadline to sleep to again, not an event)."""
        while (wait := self.quiet_at - self._loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        with contextlib.suppress(OSError, serial.SerialException):
            port.close()

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if not data:  # ready but empty: the device is gone (pyserial says the same)
            self._fail(OSError(errno.ENODEV, "device disconnected"))
            return
        self.quiet_at = max(self.quiet_at, self._loop.time() + self.silence)
        self._protocol.data_received(data)

    def _write_ready(self) -> None:
        try:
            sent = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self._fd)

    def _fail(self, exc: OSError) -> None:
        if self._port is None:
            return
        self.lost = f"serial port {self.settings.port} lost: {_reason(exc, self.settings.port)}"
        self.close()
        self._protocol.line_lost(self.lost)


def _reason(exc: BaseException, port: str) -> str:
    """The system's reason, without pyserial's repetitions of the port's name."""
    if "exclusively lock" in str(exc):
        return "in use by another program"
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number:
        return os.strerror(number)
    text = str(exc).replace(f"could not open port {port}: ", "")
    return text or type(exc).__name__
