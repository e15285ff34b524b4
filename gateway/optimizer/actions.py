"""The optimizer's action space: five discrete knobs, decoded into a `Decision`.

The tables are shared by the simulator (training), the shipped policy's JSON and the uplink,
so an index means the same thing everywhere. ``policy.json`` repeats them and the loader
checks they match: a model trained on other tables is refused instead of misread.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACTION_DIMS",
    "BATCHES",
    "DEADLINES",
    "WINDOWS",
    "Decision",
    "decode",
    "encode",
    "tables",
]

DEADLINES: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)  # seconds
BATCHES: tuple[int, ...] = (1, 4, 16, 64, 256)  # samples per publish at most
QOS: tuple[int, ...] = (0, 1)
COMPRESS: tuple[bool, ...] = (False, True)
WINDOWS: tuple[int, ...] = (1, 4, 16, 64)  # QoS 1 publishes in flight at most
ACTION_DIMS: tuple[int, ...] = (len(DEADLINES), len(BATCHES), len(COMPRESS), len(QOS), len(WINDOWS))


@dataclass(frozen=True, slots=True)
class Decision:
    """How the uplink sends telemetry until the next decision (alarms: QoS 1, at once)."""

    deadline: float  # flush when the oldest waiting sample is this old (s)
    max_batch: int  # ... or when this many wait; a publish carries at most this many
    compress: bool  # zlib the batch payload
    qos: int  # telemetry QoS
    window: int  # QoS 1 publishes in flight at most

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "deadline": self.deadline,
            "max_batch": self.max_batch,
            "compress": self.compress,
            "qos": self.qos,
            "window": self.window,
        }


def decode(index: tuple[int, ...] | list[int]) -> Decision:
    """Five indexes (one per knob) -> Decision; out-of-range indexes raise IndexError."""
    d, b, c, q, w = (int(i) for i in index)
    return Decision(DEADLINES[d], BATCHES[b], COMPRESS[c], QOS[q], WINDOWS[w])


def encode(decision: Decision) -> tuple[int, int, int, int, int]:
    """Decision -> indexes (the decision must use values from the tables)."""
    return (
        DEADLINES.index(decision.deadline),
        BATCHES.index(decision.max_batch),
        COMPRESS.index(decision.compress),
        QOS.index(decision.qos),
        WINDOWS.index(decision.window),
    )


def tables() -> dict[str, list[float] | list[int] | list[bool]]:
    return {
        "deadline": list(DEADLINES),
        "max_batch": list(BATCHES),
        "compress": list(COMPRESS),
        "qos": list(QOS),
        "window": list(WINDOWS),
    }
