"""What the OPC UA server's anomaly alarms keep across a restart: each condition's latest state.

Without it a restart forgot every acknowledgement: an alarm still active was announced again
as unacknowledged, and a cleared alarm nobody had acknowledged vanished from the alarm list, so
an alarm no operator had seen was lost. Each OPC UA server endpoint keeps one JSON file,
``{state}/alarms/<endpoint>.json`` (`alarm_file`), rewritten whole (`write_atomic`: temporary
file, fsync, rename) whenever a condition changes: a rise, a clear, an Acknowledge, a Confirm,
an AddComment, a shelve or unshelve.

Why its own file and not the anomaly store's (``{state}/anomaly/<bridge>.json``): that file is
the anomaly stage's, per bridge, written from the stage's thread of work and locked by it; the
acknowledgements belong to the OPC UA server (an MQTT target of the same bridge has none), and
two servers fed by one bridge acknowledge separately.

A record keeps what a client saw last: the states (active, acked, confirmed, with their times),
the comment and its user, the latest event (EventId, time, message, LastSeverity) and the
EventIds the condition's methods still know, so that after a restart ConditionRefresh sends
that same event and an Acknowledge or Confirm with its EventId works as before; and its
shelving (`protocols.opcua.shelving`: the state, the last transition and when the shelving ends
by itself, wall-clock seconds, so that a timed shelve ends when it would have, restart or not).
Files written before shelving was served have no shelving fields: the alarm is unshelved.

A file that cannot be read is set aside (``.bad``, ``.bad.1``, ...) and logged; the alarms
start afresh. One that cannot be written (a full disk) is logged once per failure streak and
the state goes on in memory; the next change tries again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.paths import state_dir
from gateway.storefiles import set_aside_said, write_atomic
from gateway.streak import FailureStreak
from protocols.opcua.shelving import STATES, TRANSITIONS, UNSHELVED

log = logging.getLogger(__name__)

FORMAT = 1
FOLDER = "alarms"


def alarm_file(endpoint: str, state: str | None = None) -> Path:
    """Where the OPC UA server ``endpoint`` keeps its alarms (endpoint names are plain file
    names: the config allows letters, digits, ``_``, ``.`` and ``-``)."""
    return Path(state if state is not None else state_dir()) / FOLDER / f"{endpoint}.json"


@dataclass(slots=True)
class KeptAlarm:
    """One condition's state as kept on disk (times: seconds since the epoch; EventIds: hex)."""

    active: bool
    active_at: float | None
    acked: bool
    acked_at: float | None
    confirmed: bool
    confirmed_at: float | None
    comment: str
    comment_locale: str
    comment_at: float | None
    client_user: str
    event_id: str  # the latest event's
    time: float  # its Time
    message: str
    last_severity: int
    ackable: list[str] = field(default_factory=list)
    confirmable: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)
    shelving: str = UNSHELVED
    shelving_transition: str = ""
    shelving_at: float | None = None
    unshelve_at: float | None = None  # when a shelve ends by itself


_TYPES: dict[str, tuple[type, ...]] = {
    "active": (bool,),
    "acked": (bool,),
    "confirmed": (bool,),
    "comment": (str,),
    "comment_locale": (str,),
    "client_user": (str,),
    "event_id": (str,),
    "time": (int, float),
    "message": (str,),
    "last_severity": (int,),
    "ackable": (list,),
    "confirmable": (list,),
    "recent": (list,),
}


_SHELVING = ("shelving", "shelving_transition", "shelving_at", "unshelve_at")  # may be absent


def from_json(doc: Any) -> KeptAlarm:
    """A record read back; ValueError naming the first field that is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("a record is not an object")
    for name, types in _TYPES.items():
        value = doc.get(name)
        if not isinstance(value, types) or (bool in types) != isinstance(value, bool):
            raise ValueError(f"field {name!r}: {value!r}")
    for name in ("ackable", "confirmable", "recent"):
        if not all(isinstance(x, str) and _hex(x) for x in doc[name]):
            raise ValueError(f"field {name!r}: not a list of hex EventIds")
    if doc.get("shelving", UNSHELVED) not in STATES:
        raise ValueError(f"field 'shelving': {doc['shelving']!r}")
    if doc.get("shelving_transition", "") not in ("", *TRANSITIONS):
        raise ValueError(f"field 'shelving_transition': {doc['shelving_transition']!r}")
    times = ("active_at", "acked_at", "confirmed_at", "comment_at", "shelving_at", "unshelve_at")
    for name in times:
        value = doc.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"field {name!r}: {value!r}")
    if not _hex(doc["event_id"]):
        raise ValueError(f"field 'event_id': {doc['event_id']!r}")
    fields: dict[str, Any] = {
        k: doc.get(k) for k in KeptAlarm.__dataclass_fields__ if k in doc or k not in _SHELVING
    }
    return KeptAlarm(**fields)


def _hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def seconds(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


def moment(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class AlarmFile:
    """One server's file: read once at the start, written whole on every change."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self._writes = FailureStreak(log, f"{owner}: alarm state {path}", level=logging.WARNING)
        self.saves = 0

    def load(self) -> dict[str, KeptAlarm]:
        """The kept alarms by device; {} when there is no file or it is unusable (set aside)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("%s: cannot read the alarm state (%s); alarms start afresh", self.path, exc)
            return {}
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not an alarm state file of format {FORMAT}")
            devices = doc.get("devices")
            if not isinstance(devices, dict):
                raise ValueError("no devices")
            return {str(name): from_json(rec) for name, rec in devices.items()}
        except ValueError as exc:  # JSONDecodeError is one
            where = set_aside_said(self.path)
            log.warning(
                "%s: cannot read the alarm state (%s), %s; alarms start afresh: an"
                " acknowledgement made before the restart is asked for again",
                self.path,
                exc,
                where,
            )
            return {}

    def save(self, alarms: dict[str, KeptAlarm]) -> bool:
        """Write every record; False (logged once per failure streak) if the disk refuses."""
        doc = {
            "format": FORMAT,
            "written": time.time(),
            "devices": {name: asdict(kept) for name, kept in alarms.items()},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(doc).encode(), mode=0o640)
        except OSError as exc:
            self._writes.failed(
                f"cannot write ({exc.strerror or exc}); kept in memory until it can",
                traceback=False,
            )
            return False
        self._writes.succeeded()
        self.saves += 1
        return True
