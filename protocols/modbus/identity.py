"""Sans-IO answers to function 43 / MEI type 14, Read Device Identification (Modbus application
protocol v1.1b3, 6.21): the identification objects in, the response PDU out.

Objects are numbered: 0x00-0x02 are the basic category (VendorName, ProductCode,
MajorMinorRevision, mandatory), 0x03-0x7F the regular one (0x03-0x06 VendorUrl, ProductName,
ModelName, UserApplicationName, optional), 0x80-0xFF the extended one (none served here). A
request reads a category as a stream (read codes 01, 02, 03: the category and those below it,
from its object id on) or one object (read code 04).

Rules of the spec that a client notices:

* stream access: an object id that is not one the stream holds restarts the stream at object 0;
  what does not fit one response (a PDU of `MAX_PDU_SIZE` bytes) is cut before the first object
  that does not fit, with "more follows" FF and that object's id as the next to ask for (an
  object is never split: `MAX_OBJECT_SIZE` bounds each, so that every one fits alone);
* a category above what the server holds (03, with no extended objects) is answered with what it
  holds: the conformity level says what that is (0x81 basic, 0x82 regular; 0x80 added: individual
  access is served too);
* individual access to an object the server does not hold is exception 02; a read code other
  than 01-04 is 03 (`frames.parse_request`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from protocols.modbus.frames import (
    MAX_PDU_SIZE,
    MEI_DEVICE_IDENTIFICATION,
    ExceptionCode,
    FunctionCode,
    ModbusError,
    ReadDeviceIdCode,
    ReadDeviceIdentification,
)

_HEAD = struct.Struct(">BBBBBBB")  # function, MEI, read code, conformity, more, next id, count
MAX_OBJECT_SIZE = MAX_PDU_SIZE - _HEAD.size - 2  # one object (id, length, value) per response
MORE_FOLLOWS = 0xFF
INDIVIDUAL_ACCESS = 0x80  # conformity level bit: objects may be read one by one (code 04)
# the highest object id each stream access reads
_LAST_OF: dict[ReadDeviceIdCode, int] = {
    ReadDeviceIdCode.BASIC: 0x02,
    ReadDeviceIdCode.REGULAR: 0x7F,
    ReadDeviceIdCode.EXTENDED: 0xFF,
}


def conformity_level(objects: Mapping[int, bytes]) -> int:
    """The category the objects reach (1 basic, 2 regular, 3 extended), individual access on."""
    highest = max(objects, default=0)
    category = 3 if highest > 0x7F else 2 if highest > 0x02 else 1
    return INDIVIDUAL_ACCESS | category


def device_identification_pdu(
    objects: Mapping[int, bytes], request: ReadDeviceIdentification
) -> bytes:
    """The response PDU to ``request`` from ``objects`` (object id -> value, each at most
    `MAX_OBJECT_SIZE` bytes); raises `ModbusError` 02 for an object individual access lacks."""
    function = FunctionCode.ENCAPSULATED_INTERFACE
    if request.read_code is ReadDeviceIdCode.INDIVIDUAL:
        if request.object_id not in objects:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
        ids = [request.object_id]
    else:
        last = _LAST_OF[request.read_code]
        stream = sorted(i for i in objects if i <= last)
        first = request.object_id if request.object_id in stream else 0
        ids = [i for i in stream if i >= first]
    body = bytearray()
    more, next_id, count = 0, 0, 0
    for object_id in ids:
        value = objects[object_id]
        if _HEAD.size + len(body) + 2 + len(value) > MAX_PDU_SIZE:
            more, next_id = MORE_FOLLOWS, object_id
            break
        body += bytes((object_id, len(value))) + value
        count += 1
    head = _HEAD.pack(
        function,
        MEI_DEVICE_IDENTIFICATION,
        request.read_code,
        conformity_level(objects),
        more,
        next_id,
        count,
    )
    return head + bytes(body)
