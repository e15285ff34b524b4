"""Refuse an OPC UA message chunk larger than the server's receive buffer as soon as its header
says so (OPC UA Part 6, 7.1.2: Bad_TcpMessageTooLarge).

asyncua's server protocol buffers a chunk until its announced size has arrived and checks the
size only then: a peer announcing 4 GiB kept the connection and every byte it sent (growing a
`bytes` buffer by copying it, so CPU too) until its session timer ran out. Chunks cannot be
larger than the negotiated buffer (65,535 bytes by default), so a bigger header is never a
client we can serve.
"""

from __future__ import annotations

import logging
import struct

from asyncua.server import binary_server_asyncio

# Throttled like asyncua's own per-connection lines (gateway.streak.NOISY).
log = logging.getLogger("protocols.opcua.transport")
_HEADER = struct.Struct("<3scI")  # message type, chunk type, size of the whole chunk


class GuardedProtocol(binary_server_asyncio.OPCUAProtocol):
    def data_received(self, data: bytes) -> None:
        buffered = self._buffer
        at = 0
        while (size := _size_at(buffered, data, at)) is not None:
            if size > self.limits.max_recv_buffer:
                log.warning(
                    "closing OPC UA connection from %s: it announced a %d-byte chunk, above "
                    "the receive buffer of %d bytes",
                    self.peer_name,
                    size,
                    self.limits.max_recv_buffer,
                )
                self._buffer = b""
                if self.transport is not None:
                    self.transport.close()
                return
            if size < _HEADER.size:
                break  # malformed: asyncua's own check closes the connection
            at += size
        super().data_received(data)


def _size_at(buffered: bytes, data: bytes, at: int) -> int | None:
    """The size in the chunk header at offset ``at`` of ``buffered + data``, or None if its 8
    bytes have not all arrived.

    Without joining the two: asyncua joins them already (its buffer grows by a copy per read),
    a second copy here doubled that cost for a large chunk arriving in many reads. Only a
    header split across two reads is joined, 8 bytes."""
    held = len(buffered)
    if at + _HEADER.size <= held:
        return int(_HEADER.unpack_from(buffered, at)[2])
    if at >= held:
        if at - held + _HEADER.size > len(data):
            return None
        return int(_HEADER.unpack_from(data, at - held)[2])
    head = buffered[at:] + data[: at + _HEADER.size - held]
    return int(_HEADER.unpack(head)[2]) if len(head) == _HEADER.size else None


def install() -> None:
    """Make asyncua's servers in this process build `GuardedProtocol` per connection
    (`BinaryServer` looks the class up in its module when a client connects)."""
    binary_server_asyncio.OPCUAProtocol = GuardedProtocol  # type: ignore[misc]
