"""The batch payload: several outbox rows in one MQTT publish, and back.

Format (version 1), documented for consumers in docs/optimizer.md::

    {"v":1,"items":[["<topic>","<payload as UTF-8 text>"], ["<topic>",{"b64":"..."}], ...]}

Items keep outbox order (so order per device). A payload that is not UTF-8 travels as base64.
When compressed, the whole JSON document is zlib (RFC 1950) and the publish's first byte is
0x78; an uncompressed batch starts with ``{``, so a consumer tells them apart by that byte.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Sequence

__all__ = ["BatchError", "decode_batch", "encode_batch", "is_batch"]

_HEAD = b'{"v":1,"items":['


class BatchError(ValueError):
    pass


def encode_batch(items: Sequence[tuple[str, bytes]], *, compress: bool = False) -> bytes:
    """(topic, payload) pairs -> one payload; zlib level 6 when ``compress``."""
    parts = []
    for topic, payload in items:
        try:
            body: object = payload.decode("utf-8")
        except UnicodeDecodeError:
            body = {"b64": base64.b64encode(payload).decode("ascii")}
        parts.append(json.dumps([topic, body], separators=(",", ":")).encode())
    doc = _HEAD + b",".join(parts) + b"]}"
    return zlib.compress(doc, 6) if compress else doc


def is_batch(payload: bytes) -> bool:
    return payload[:1] == b"\x78" or payload.startswith(_HEAD)


def decode_batch(payload: bytes) -> list[tuple[str, bytes]]:
    """One batch payload -> its (topic, payload) pairs, in order; BatchError if it is not one."""
    if payload[:1] == b"\x78":
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise BatchError(f"not a zlib batch: {exc}") from None
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchError(f"not a JSON batch: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("items"), list):
        raise BatchError("not a version 1 batch")
    out: list[tuple[str, bytes]] = []
    for item in doc["items"]:
        topic, body = item
        if isinstance(body, dict):
            out.append((str(topic), base64.b64decode(body["b64"])))
        else:
            out.append((str(topic), str(body).encode("utf-8")))
    return out
