"""Device shadows and point history in SQLite (sqlite-utils, WAL): no network, no asyncio.

The document
------------
One document per device, shaped like an AWS IoT Device Shadow::

    {"state": {"reported": {...}, "desired": {...}, "delta": {...}},
     "metadata": {"reported": {key: {"timestamp": t}}, "desired": {key: {"timestamp": t}}},
     "errors": {key: {"status": ..., "reason": ..., "value": ..., "timestamp": t}},
     "version": n, "timestamp": t}

- An update merges into ``reported`` or ``desired``: nested objects merge key by key, and a
  ``null`` value deletes the key (AWS semantics). Each key written gets a fresh metadata timestamp.
- ``delta`` is never stored: it is computed as the desired keys whose value differs from the
  reported one (numbers compare with a relative tolerance of 1e-6, so a value that went through a
  float32 register or a scale factor still counts as reached).
- ``version`` grows by one on every accepted change. An update that names a ``version`` is
  applied only if it equals the stored one, otherwise `VersionConflict` (optimistic concurrency):
  the check and the write happen in one ``BEGIN IMMEDIATE`` transaction, so of two writers that
  read the same version exactly one wins, even across processes (the CLI and a running gateway).
- ``errors`` records a desired value the gateway could not write (refused by the write path's
  safety rules or by the device). The desired value stays, so the delta stays too; the error is
  cleared when desired changes for that key or the device reports the desired value. Except for
  a key that is no point of the device (error ``unknown_point``): that is metadata (a site or
  area for topics), never written, so it is left out of ``delta`` (it stays in ``unreached``).
- Reported updates that change nothing (same value, same quality) are not written at all, so a
  device polled ten times a second does not bump the version ten times a second.

Limits on desired state
-----------------------
Every reading of a device saves its whole document, so its size is paid on every reading
(less than before the cache, below, but still): 60 updates of 500 new metadata keys each made a
2.3 MB document whose readings took 30 ms each, and history lagged a minute behind. So `update`
refuses (`ShadowLimitError`, before
anything is written) a desired state past ``max_desired_keys`` keys at its top level (a point
or a metadata key each) or ``max_desired_bytes`` bytes as compact JSON. An update that does not
grow a document already past a limit (one from before the limit, or a limit lowered since) is
let through, so that keys can still be deleted or changed. Reported state has no such limit: its
keys are the device's points, bounded by the config (an MQTT ``points: keys`` source by its
``max_keys``), and a reading is not refused. The errors of several keys (`set_errors`) are
recorded in one transaction, so the errors of one update cost one load and one save of the
document, not one per key.

The document cache
------------------
Decoding a document and encoding it again was most of a reading's cost (0.55 ms for a device of
250 points, 4.4 ms for 2,000, 10 % of them changed per reading; ``bench/shadow_reports.py``). So
the store keeps each device's document as the file has it (`_docs`: the last loaded or
committed) and `_load` reads only the row's version, desired_rev and timestamp: while they are
those of the kept document, and the file's ``PRAGMA data_version`` says no other connection
committed since the last look (another process's `update`, or its `set_errors`, which changes
the body alone), the document is a copy of the kept one (`_copy`: its maps its own), else it is
decoded from the file. A document saved in a transaction is kept only once that commits (a
rolled-back transaction, a savepoint of `report_many`, a `VersionConflict` or a
`ShadowLimitError` leave the kept one as the file has it); `update` always decodes (`merge`
changes nested objects in place). The body is encoded entry by entry (`BodyText`): an entry
whose value (or timestamp) is the same object as at the last save keeps its text, so a save
encodes what changed; the bytes are those of ``json.dumps`` (`ShadowDocument._body`), so other
processes and older versions read the file as ever. Same bench: 0.21 ms and 1.7 ms.

History
-------
One row per change of a point's reported value or quality (``history`` table, indexed by device,
point and time), so a steady value costs one row, not one per poll. `prune` applies retention by
age (``max_age`` seconds) and by size (at most ``max_rows`` rows per point, the newest kept).

Retention runs every minute on the thread that records readings, so its cost must not grow with
the table: a window function over all rows took 6 s on 2.5 million rows, deleting nothing, while
readings queued up. So the store keeps the number of rows of each point in memory (counted once,
from the index, by the first `prune`; kept up to date by `report` and `prune` after each commit)
and `prune` only touches points over ``max_rows``, deleting their oldest excess rows through the
``(device, point, ts)`` index, and per point the rows older than ``max_age`` (an index seek that
finds nothing when there is nothing to delete). Its cost is the rows deleted plus a seek per
point. The counts assume that only this store writes history to the file (the gateway; the CLI
only reads history), which is how the file is used.

Per point, a week of 100,000 rows each lets the file grow to many GB (1,000 changing points at
1 Hz wrote 3.9 MB a minute), up to ``min_free``. So ``max_bytes`` caps the bytes in use in the
file (its pages less its free pages: history, indexes and documents; two pragmas, no scan):
over it, `prune` deletes the oldest rows file-wide, merged then staged ones (`_cap`), down to
`CAP_TARGET` of it, fixes the counts, counts the rows in `history_capped` and logs it at most
once an hour. SQLite does not give freed pages back to the filesystem, it reuses them, so the
file stays near its largest size, about ``max_bytes``.

History on the disk: staged, then merged
----------------------------------------
An SD card wears by the bytes written, and SQLite writes whole pages, each twice (the log, then
the checkpoint). Inserted straight into the indexed table, each changed point dirtied its own
leaf page of the ``(device, point, ts)`` index in every transaction: readings spread over many
points cost a 4 KiB page each (``bench/shadow_writes.py``: 10.9 kB written per value at
``write_delay`` 0.1 with 1,000 points). So a row is first appended to ``history_staged`` (the
same columns, no index: rows go at the end, dozens to a page), in the same transaction as the
document, so a committed row survives a crash like any other. `merge` moves the staged rows
into ``history`` in one transaction, sorted by device, point and time (each point's index page
written once per merge, not once per reading), and empties the staging table; it runs after a
recording once `merge_interval` (60 s) has passed since the last one or `merge_rows` (50,000)
are staged (after a merge that failed, `merge_interval` later either way: not at every reading),
and at `close` (by the store that staged them: the CLI never merges). Not while
history is paused for free space: a merge writes the index pages it saved, and staged rows lose
nothing by waiting. Rows staged by a run that was killed stay staged and go with the next
merge. Same bench: 2.0 kB per value at 0.1 (a shared 2-core box; docs/shadow.md).

Everything that reads history reads both tables in one statement (one snapshot: a merge is
never half seen). `history` orders equal times staged-after-merged, which is the order they
were recorded in. Retention counts staged rows (the per-point counts include them) and finds
those to delete in memory: the store keeps each point's staged ``(ts, id)``, loaded with the
counts and kept up to date like them, so `prune` deletes staged rows by id, never scanning the
staging table, and keeps the newest ``max_rows`` of a point by time across both tables. A
search of staged rows by a query is a pass over the staging table, which merges keep small.

Free space: the outbox first
----------------------------
The MQTT outbox usually lives on the same filesystem, and when the disk fills it gives back a
spare file so that it can keep its newest rows; a shadow that goes on recording history takes that
room at once, and northbound readings are lost for local history. So with ``min_free`` set, the
store looks at the free space of its filesystem (``os.statvfs``, at most once a second): below
``min_free`` it stops adding history rows (counted in `history_skipped`, a log line when it
stops and one when it starts again) while the document, which does not grow, still follows
every reading. It starts again at ``min_free`` plus an eighth, so that it does not flap at the
floor. The log (WAL) is cut back to 4 MiB after a checkpoint (SQLite's, every 1000 pages), so
that a large retention run does not leave a big log on the disk; while paused, the log takes at
most those 4 MiB. (Checkpointing more often cost a fsync every few readings on a large table.)

The document stops too, lower down: below `DOCUMENT_FLOOR` (twice the outbox's spare file, so
4 MiB; ``min_free`` if that is smaller) each reading still updates the document, but in memory
(`documents_paused`, `unsaved`): writing it would grow the log into the room the outbox gives
back when the disk fills. The log is checkpointed and cut back at once, and the documents kept in
memory are written when the free space is back at that floor plus an eighth (or at `close`).
`get` sees them meanwhile. A desired update (`update`, `set_errors`) is still written at once:
it is rare and small, and it is answered as accepted only once it is in the file.

A bad file
----------
A file at ``path`` that is not a readable shadow store (not SQLite, damaged, another
application's database) raises `ShadowFileError`, which says what to do; with
``set_aside=True`` (the running gateway) it is moved aside to ``NAME.bad`` (``.bad.1`` and on if
that is taken, never over an earlier one; its ``-wal`` and ``-shm`` along with it), logged as an
error naming both paths, and the shadow starts empty. A folder at ``path`` is no damage but a
mistake in the config, so it is never moved: `ShadowFileError` says to point ``shadow.path`` at a
file. A zero-length file (a truncated one?) is used as a new store, with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway import storefiles
from gateway.shadow.bodytext import BodyText, scalar_text
from gateway.storefiles import OUTBOX_RESERVE, Floor
from gateway.text import counted

#: The error status of a desired key that is no point of its device (`WriteStatus.UNKNOWN_POINT`,
#: not imported: the store stays free of the asyncio side): metadata, left out of the delta.
UNKNOWN_POINT = "unknown_point"

__all__ = [
    "HistoryRow",
    "ShadowDocument",
    "ShadowError",
    "ShadowFileError",
    "ShadowLimitError",
    "ShadowStore",
    "VersionConflict",
    "compute_delta",
    "merge",
]

log = logging.getLogger(__name__)

REL_TOL = 1e-6
SPACE_CHECK_INTERVAL = 1.0  # s between looks at the free space (statvfs)
_WAL_KEEP_BYTES = 4 << 20  # the log file is cut back to this after a checkpoint
#: Below this much free space documents are kept in memory (module docstring): the outbox's
#: spare file and as much again, so the shadow has stopped before the disk is full.
DOCUMENT_FLOOR = 2 * OUTBOX_RESERVE
#: Staged history rows are moved into the indexed table (merged) this often (s) and when this
#: many are staged (module docstring: "History on the disk").
MERGE_INTERVAL = 60.0
MERGE_ROWS = 50_000
#: Over ``max_bytes`` in use, history is cut down to this share of it (not cut at every
#: retention pass), in at most this many deletes; a log line at most this often (s).
CAP_TARGET = 0.9
CAP_PASSES = 10  # at most this many deletes of at most CAP_BATCH rows per prune
CAP_BATCH = 20_000  # rows per transaction: the write lock and the log stay short
CAP_LOG_INTERVAL = 3600.0
#: Default limits on a device's desired state (module docstring, "Limits on desired state"); the
#: config's ``shadow.max_desired_keys`` and ``shadow.max_desired_bytes`` have the same defaults.
MAX_DESIRED_KEYS = 1000
MAX_DESIRED_BYTES = 65_536
_HISTORY_COLUMNS = {"id", "device", "point", "ts", "value", "quality"}
#: Columns a table of a shadow store must have; a file with other tables is not one.
_COLUMNS = {
    "shadows": {"device", "version", "desired_rev", "timestamp", "body"},
    "history": _HISTORY_COLUMNS,
    "history_staged": _HISTORY_COLUMNS,
}
#: A staged or merged history row of a point in the order of the history: (ts, staged, id).
_Key = tuple[float, int, int]
#: (device, point) -> its history rows (`ShadowStore._counts`), its staged rows' (ts, id).
_Counts = dict[tuple[str, str], int]
_StagedRows = dict[tuple[str, str], list[tuple[float, int]]]


class ShadowError(Exception):
    """A shadow request that cannot be applied (bad shape)."""


class ShadowLimitError(ShadowError):
    """An update would take a device's desired state past a limit (nothing was written)."""


class ShadowFileError(Exception):
    """The store's file cannot be used; the message names it and says what to do."""


class _NotAShadowStore(Exception):
    """A readable SQLite file whose tables are not a shadow store's."""


def _is_damage(exc: Exception) -> bool:
    """The file is not a (sound) SQLite database, as opposed to one that cannot be opened."""
    if isinstance(exc, _NotAShadowStore):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))


class VersionConflict(ShadowError):
    """An update carried a version other than the stored one."""

    def __init__(self, device: str, expected: int, actual: int) -> None:
        super().__init__(
            f"version conflict on {device}: the update is for version {expected}, "
            f"the shadow is at version {actual}"
        )
        self.device = device
        self.expected = expected
        self.actual = actual


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)
    return type(a) is type(b) and bool(a == b)


def compute_delta(desired: Mapping[str, Any], reported: Mapping[str, Any]) -> dict[str, Any]:
    """Desired keys whose value differs from the reported one (nested objects key by key)."""
    delta: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                delta[key] = sub
        elif key not in reported or not _same(want, have):
            delta[key] = want
    return delta


def merge(
    target: dict[str, Any], update: Mapping[str, Any], meta: dict[str, Any], now: float
) -> bool:
    """Merge ``update`` into ``target`` (``null`` deletes); timestamps into ``meta``. Changed?"""
    changed = False
    for key, value in update.items():
        if value is None:
            if key in target:
                del target[key]
                meta.pop(key, None)
                changed = True
        elif isinstance(value, dict):
            sub = target.get(key)
            if not isinstance(sub, dict):
                sub = target[key] = {}
                changed = True
            sub_meta = meta.get(key)
            if not isinstance(sub_meta, dict) or "timestamp" in sub_meta:
                sub_meta = meta[key] = {}
            changed = merge(sub, value, sub_meta, now) or changed
            if not sub:
                del target[key]
                meta.pop(key, None)
        else:
            if key not in target or not _same(target[key], value):
                changed = True
            target[key] = value
            meta[key] = {"timestamp": now}
    return changed


@dataclass
class ShadowDocument:
    device: str
    reported: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"reported": {}, "desired": {}}
    )
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: dict[str, str] = field(default_factory=dict)
    version: int = 0
    timestamp: float = 0.0
    desired_rev: int = 0  # grows when desired changes: what a running gateway polls for

    @property
    def unreached(self) -> dict[str, Any]:
        """Desired keys whose value the device has not reported, metadata keys included."""
        return compute_delta(self.desired, self.reported)

    @property
    def delta(self) -> dict[str, Any]:
        """`unreached`, less the keys recorded as no point of the device (metadata): what is
        still to be written."""
        return {
            key: value
            for key, value in self.unreached.items()
            if (self.errors.get(key) or {}).get("status") != UNKNOWN_POINT
        }

    @property
    def exists(self) -> bool:
        return self.version > 0

    def to_json(self) -> dict[str, Any]:
        """The AWS-shaped document (plus ``errors`` and ``quality``)."""
        state: dict[str, Any] = {"reported": self.reported, "desired": self.desired}
        delta = self.delta
        if delta:
            state["delta"] = delta
        out: dict[str, Any] = {
            "state": state,
            "metadata": self.metadata,
            "version": self.version,
            "timestamp": self.timestamp,
        }
        if self.errors:
            out["errors"] = self.errors
        if self.quality:
            out["quality"] = self.quality
        return out

    def _body(self) -> str:
        return json.dumps(
            {
                "reported": self.reported,
                "desired": self.desired,
                "metadata": self.metadata,
                "errors": self.errors,
                "quality": self.quality,
            },
            separators=(",", ":"),
        )

    @staticmethod
    def _from_row(row: Mapping[str, Any]) -> ShadowDocument:
        body = json.loads(row["body"])
        return ShadowDocument(
            device=row["device"],
            reported=body["reported"],
            desired=body["desired"],
            metadata=body["metadata"],
            errors=body["errors"],
            quality=body.get("quality", {}),
            version=row["version"],
            timestamp=row["timestamp"],
            desired_rev=row["desired_rev"],
        )


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON in UTF-8 (what the limit's text says)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))  # JSON may carry a lone surrogate


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _key(doc: ShadowDocument) -> tuple[int, int, float]:
    """The columns beside the body that every saved change of a document changes (one at
    least; `_load` also watches the file's data version for a body-only change elsewhere)."""
    return doc.version, doc.desired_rev, doc.timestamp


def _copy(doc: ShadowDocument) -> ShadowDocument:
    """A copy with maps of its own (reported, desired, metadata and its two maps, errors,
    quality): what the store changes of a document loaded from its cache. The values in them
    are shared: the store replaces a value, never changes one in place, except `merge` in
    `ShadowStore.update`, which loads its document from the file (``fresh``)."""
    return ShadowDocument(
        device=doc.device,
        reported=dict(doc.reported),
        desired=dict(doc.desired),
        metadata={k: dict(v) if isinstance(v, dict) else v for k, v in doc.metadata.items()},
        errors=dict(doc.errors),
        quality=dict(doc.quality),
        version=doc.version,
        timestamp=doc.timestamp,
        desired_rev=doc.desired_rev,
    )


def _size(path: str) -> int | None:
    """Bytes in the file at ``path``; None if there is none."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


@dataclass(frozen=True)
class HistoryRow:
    ts: float
    value: Any
    quality: str


class ShadowStore:
    """The shadows and the history in one SQLite file; safe for several processes (WAL).

    One instance belongs to one thread (the service runs it in a single-thread executor).
    """

    def __init__(
        self,
        path: str,
        *,
        max_age: float | None = None,
        max_rows: int | None = None,
        min_free: int = 0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        set_aside: bool = False,
        merge_interval: float = MERGE_INTERVAL,
        merge_rows: int = MERGE_ROWS,
        max_desired_keys: int = MAX_DESIRED_KEYS,
        max_desired_bytes: int = MAX_DESIRED_BYTES,
        max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes  # bytes in use in the file at most (history retention)
        self.max_desired_keys = max_desired_keys
        self.max_desired_bytes = max_desired_bytes
        self.max_age = max_age
        self.max_rows = max_rows
        self.min_free = min_free  # bytes; 0: history is written whatever the free space
        self.clock = clock
        self.monotonic = monotonic
        self._history_floor = Floor(min_free)  # below it: no history rows
        self._document_floor = Floor(min(min_free, DOCUMENT_FLOOR))  # below it: no documents
        self.history_skipped = 0  # history rows not written because of min_free
        self._skipped_in_pause = 0
        self._space_checked: float | None = None
        # device -> document changed while documents were paused, not in the file yet
        self._unsaved: dict[str, ShadowDocument] = {}
        self._written: list[str] = []  # devices whose document the open transaction writes
        # device -> the document as in the file, the last this store loaded or committed
        # (module docstring, "The document cache"); handed out as copies (`_copy`)
        self._docs: dict[str, ShadowDocument] = {}
        # device -> the document the open transaction saved: `_docs` once committed
        self._pending: dict[str, ShadowDocument] = {}
        self._data_version: int | None = None  # the file's, when `_docs` was last checked
        self._texts: dict[str, BodyText] = {}  # device -> its body's text, entry by entry
        self.decoded = 0  # documents decoded from the file (not taken from the cache)
        self.documents_deferred = 0  # readings whose document change waited in memory
        self._open(set_aside)
        # (device, point) -> rows in history, staged ones included; None until the first prune
        # counts them (the CLI, which never prunes, does not pay for the count).
        self._counts: dict[tuple[str, str], int] | None = None
        # (device, point) -> its staged rows' (ts, id), in the order staged; loaded with the
        # counts, so that retention finds staged rows to delete without a pass over the table.
        self._staged: dict[tuple[str, str], list[tuple[float, int]]] | None = None
        self.merge_interval = merge_interval
        self.merge_rows = merge_rows
        self._staged_here = 0  # rows this store staged since its last merge
        self._merged_at = self.monotonic()
        self._merge_failed = False  # the last merge failed: the next one waits its interval
        self.merges = 0  # merges done (tests, status)
        self.history_capped = 0  # history rows deleted by max_bytes (status)
        self._capped_unlogged = 0  # of those, deleted since the last log line
        self._capped_logged: float | None = None  # monotonic time of that line

    @property
    def history_paused(self) -> bool:
        """Below ``min_free``: no history rows."""
        return self._history_floor.low

    @property
    def documents_paused(self) -> bool:
        """Below `DOCUMENT_FLOOR`: documents change in memory only (`unsaved`)."""
        return self._document_floor.low

    @property
    def unsaved(self) -> int:
        """Documents changed in memory and not written to the file yet."""
        return len(self._unsaved)

    def _open(self, set_aside: bool) -> None:
        """Open (or create) the file; a bad one raises `ShadowFileError` or is set aside."""
        path = self.path
        if path == ":memory:":
            self._connect()
            return
        if os.path.isdir(path):
            raise ShadowFileError(
                f"{path} is a folder, not a shadow store file: point shadow.path at a file "
                f"(e.g. {os.path.join(path, 'shadow.db')}) or move the folder away"
            )
        was_empty = _size(path) == 0 and not _size(path + "-wal")
        try:
            with storefiles.wal_kept(Path(path)):  # set aside with the file, or left for the CLI
                self._connect()
        except (sqlite3.DatabaseError, _NotAShadowStore) as exc:
            if not _is_damage(exc):
                raise ShadowFileError(
                    f"{path}: cannot open the shadow store ({exc}); check that its folder "
                    "exists, that the gateway may write there and that the disk has room, and "
                    "that no other process holds the file"
                ) from None
            if not set_aside:
                raise ShadowFileError(
                    f"{path}: not a readable shadow store ({exc}); move it aside (with its "
                    "-wal file) so that the shadow starts empty: `gateway run` does that itself"
                ) from None
            try:
                aside = storefiles.set_aside(Path(path), storefiles.SQLITE_COMPANIONS)
            except OSError as move:
                raise ShadowFileError(
                    f"{path}: not a readable shadow store ({exc}) and it cannot be moved aside "
                    f"({move}); move or remove it"
                ) from None
            log.error(
                "shadow: %s is not a readable shadow store (%s): moved aside to %s; the "
                "shadow starts empty (reported state comes back with the next readings, "
                "desired values must be set again)",
                path,
                exc,
                aside,
            )
            self._connect()
            return
        if was_empty:
            log.warning(
                "shadow: %s was empty (0 bytes; it may have been truncated): the shadow "
                "starts empty",
                path,
            )

    def _connect(self) -> None:
        conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        try:
            self.db = sqlite_utils.Database(conn)
            self._create()
        except BaseException:
            conn.close()
            raise

    def _create(self) -> None:
        # Read before writing anything: another application's file is left as it was.
        tables = set(self.db.table_names())
        if tables and not tables & _COLUMNS.keys():
            raise _NotAShadowStore(f"its tables are {', '.join(sorted(tables))}")
        for name, needed in _COLUMNS.items():
            if name in tables:
                have = set(self.db.table(name).columns_dict)
                if not needed <= have:
                    missing = ", ".join(sorted(needed - have))
                    raise _NotAShadowStore(f"its table {name} has no column {missing}")
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA journal_size_limit={_WAL_KEEP_BYTES}")
        if "shadows" not in self.db.table_names():
            self.db.table("shadows").create(
                {
                    "device": str,
                    "version": int,
                    "desired_rev": int,
                    "timestamp": float,
                    "body": str,
                },
                pk="device",
                if_not_exists=True,
            )
        columns = {
            "id": int,
            "device": str,
            "point": str,
            "ts": float,
            "value": str,
            "quality": str,
        }
        for name in ("history", "history_staged"):  # a file from before staging gets it now
            if name not in self.db.table_names():
                self.db.table(name).create(columns, pk="id", if_not_exists=True)
        # Retention and queries need it; a file whose table was created without it (the two
        # steps were not one transaction) gets it now.
        self.db.execute(
            "CREATE INDEX IF NOT EXISTS history_point_ts ON history (device, point, ts)"
        )

    def close(self) -> None:
        """Write what is pending: documents kept in memory, and the staged history rows into
        the indexed table (this store's, if it staged any; not while history is paused)."""
        try:
            if self._unsaved:
                self._flush()
        except sqlite3.Error as exc:
            log.warning(
                "shadow: %s kept in memory (low disk) not written to %s: %s",
                counted(len(self._unsaved), "document"),
                self.path,
                exc,
            )
        try:
            if self._staged_here and not self.history_paused:
                self.merge()
        except sqlite3.Error as exc:  # the rows stay staged: the next start merges them
            log.warning("shadow: staged history rows not merged in %s: %s", self.path, exc)
        finally:
            self.db.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        self._written = []
        self._pending = {}
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT too; SQLite may have rolled back itself
                conn.execute("ROLLBACK")
            raise
        finally:
            written, self._written = self._written, []
            pending, self._pending = self._pending, {}  # rolled back: the cache is the file
        for device in written:  # in the file now: memory need not keep them
            self._unsaved.pop(device, None)
        for device, doc in pending.items():  # a copy: the caller owns the document it got
            self._docs[device] = _copy(doc)

    def _load(
        self, conn: sqlite3.Connection, device: str, *, fresh: bool = False
    ) -> ShadowDocument:
        """The device's document, the caller's to change: a copy of the cached one while the
        file's row has the same version, desired revision and timestamp and no other process
        wrote the file meanwhile, else decoded from the file (``fresh``: always). Inside a
        transaction, or `get`'s read transaction: the small columns and the data version are
        of one snapshot."""
        row = conn.execute(
            "SELECT version, desired_rev, timestamp FROM shadows WHERE device = ?", (device,)
        ).fetchone()
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:  # another connection committed: trust nothing
            self._data_version = data_version
            self._docs.clear()
        doc: ShadowDocument | None = None
        if row is None:
            doc = ShadowDocument(device)
            self._docs.pop(device, None)
        elif not fresh:
            kept = self._pending.get(device) or self._docs.get(device)
            if kept is not None and _key(kept) == tuple(row):
                doc = _copy(kept)
        if doc is None:
            cur = conn.execute(
                "SELECT device, version, desired_rev, timestamp, body FROM shadows "
                "WHERE device = ?",
                (device,),
            )
            names = [d[0] for d in cur.description]
            found = cur.fetchone()
            if found is None:  # gone since the first look (outside a transaction)
                doc = ShadowDocument(device)
            else:
                doc = ShadowDocument._from_row(dict(zip(names, found, strict=True)))
                self.decoded += 1
                if not fresh and device not in self._pending:  # as committed: cached
                    self._docs[device] = _copy(doc)
        unsaved = self._unsaved.get(device)
        if unsaved is not None:  # the readings are newer; desired may have changed elsewhere
            # copies: a reading rolled back must not have changed the one kept in memory
            doc.reported = dict(unsaved.reported)
            doc.quality = dict(unsaved.quality)
            doc.metadata["reported"] = dict(unsaved.metadata.get("reported", {}))
            doc.version = max(doc.version, unsaved.version)
            doc.timestamp = max(doc.timestamp, unsaved.timestamp)
            self._clear_reached_errors(doc)
        return doc

    def _save(self, conn: sqlite3.Connection, doc: ShadowDocument) -> None:
        conn.execute(
            "INSERT INTO shadows (device, version, desired_rev, timestamp, body) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET version = excluded.version,"
            " desired_rev = excluded.desired_rev, timestamp = excluded.timestamp,"
            " body = excluded.body",
            (doc.device, doc.version, doc.desired_rev, doc.timestamp, self._body(doc)),
        )
        self._written.append(doc.device)
        self._pending[doc.device] = doc

    def _body(self, doc: ShadowDocument) -> str:
        """`ShadowDocument._body`, the same bytes, encoding only the entries that changed since
        the device's last save (`BodyText`)."""
        text = self._texts.get(doc.device)
        if text is None:
            text = self._texts[doc.device] = BodyText()
        return text.encode(doc)

    def _flush(self) -> None:
        """Write the documents kept in memory while the disk was low (one transaction)."""
        with self._transaction() as conn:
            for device in list(self._unsaved):
                self._save(conn, self._load(conn, device))

    # -- documents ------------------------------------------------------------------------------

    def get(self, device: str) -> ShadowDocument:
        """The device's shadow (version 0 and empty if it has none yet)."""
        conn = self.db.conn
        conn.execute("BEGIN")  # one snapshot for the look at the row and the data version
        try:
            return self._load(conn, device)
        finally:
            conn.execute("COMMIT")

    def devices(self) -> list[str]:
        stored = {r[0] for r in self.db.execute("SELECT device FROM shadows")}
        return sorted(stored | self._unsaved.keys())

    def desired_revisions(self) -> dict[str, int]:
        """device -> desired revision: cheap to poll for desired changes made elsewhere."""
        return {r[0]: r[1] for r in self.db.execute("SELECT device, desired_rev FROM shadows")}

    def update(
        self,
        device: str,
        *,
        desired: Mapping[str, Any] | None = None,
        reported: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> ShadowDocument:
        """Merge a state update; `VersionConflict` if ``version`` is given and stale."""
        for name, part in (("desired", desired), ("reported", reported)):
            if part is not None and not isinstance(part, Mapping):
                raise ShadowError(f"state.{name} must be an object, got {type(part).__name__}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ShadowError(f"version must be an integer, got {version!r}")
        now = self.clock()
        with self._transaction() as conn:
            # From the file, not the cache: `merge` changes nested objects in place (`_copy`).
            doc = self._load(conn, device, fresh=True)
            if version is not None and version != doc.version:
                raise VersionConflict(device, version, doc.version)
            changed = False
            if desired:
                before = (len(doc.desired), _json_size(doc.desired))
                if merge(doc.desired, desired, doc.metadata.setdefault("desired", {}), now):
                    self._check_limits(device, doc.desired, before)
                    doc.desired_rev += 1
                    changed = True
                    for key in desired:
                        doc.errors.pop(key, None)
            if reported:
                changed = (
                    merge(doc.reported, reported, doc.metadata.setdefault("reported", {}), now)
                    or changed
                )
            self._clear_reached_errors(doc)
            if changed or desired or reported or not doc.exists:
                doc.version += 1
                doc.timestamp = now
                self._save(conn, doc)
        return doc

    def _check_limits(
        self, device: str, desired: Mapping[str, Any], before: tuple[int, int]
    ) -> None:
        """`ShadowLimitError` if ``desired`` (merged, not saved yet) is past a limit and larger
        than it was (``before``: keys, bytes): a document already past one may still shrink."""
        keys, size = len(desired), _json_size(desired)
        if keys > self.max_desired_keys and keys > before[0]:
            raise ShadowLimitError(
                f"the desired state of {device} would have {keys} keys, over the limit of "
                f"{self.max_desired_keys} (shadow.max_desired_keys in the config); delete keys"
                " (null) first, or raise it"
            )
        if size > self.max_desired_bytes and size > before[1]:
            raise ShadowLimitError(
                f"the desired state of {device} would be {size} bytes, over the limit of "
                f"{self.max_desired_bytes} (shadow.max_desired_bytes in the config); delete keys"
                " (null) first, or raise it"
            )

    @staticmethod
    def _clear_reached_errors(doc: ShadowDocument) -> None:
        if doc.errors:
            delta = doc.unreached
            for key in [k for k in doc.errors if k not in delta]:
                del doc.errors[key]

    def report(
        self, device: str, samples: Mapping[str, tuple[Any, str, float]]
    ) -> ShadowDocument | None:
        """Device readings ``point -> (value, quality, ts)``: reported state and history.

        Good and uncertain samples set the reported value; every sample sets the point's
        quality. Only changes are written (one history row per changed point). None if nothing
        changed.
        """
        now = self.clock()
        keep_history = self._check_space()
        with self._transaction() as conn:
            doc, rows = self._report(conn, device, samples, now, keep_history)
        self._recorded(device, rows, keep_history)
        self._merge_due()
        return doc

    def report_many(
        self, batch: Sequence[tuple[str, Mapping[str, tuple[Any, str, float]]]]
    ) -> list[ShadowDocument | None | Exception]:
        """`report` for each ``(device, samples)``, all in one transaction (one commit, one
        sync, the shared pages written once); a result per item, in order.

        An item that fails is rolled back alone (a savepoint) and its exception is its result;
        the others are kept. A database error (a full disk) fails the whole transaction, so
        then each item is tried in a transaction of its own, as `report` does, and gets its own
        result.
        """
        now = self.clock()
        keep_history = self._check_space()
        results: list[ShadowDocument | None | Exception] = []
        recorded: list[tuple[str, list[tuple[str, float, int]]]] = []
        try:
            with self._transaction() as conn:
                for device, samples in batch:
                    conn.execute("SAVEPOINT reading")
                    saved, written = self._pending.get(device), len(self._written)
                    try:
                        doc, rows = self._report(conn, device, samples, now, keep_history)
                    except sqlite3.Error:
                        raise  # the file's trouble, not this item's: one by one, below
                    except Exception as exc:
                        conn.execute("ROLLBACK TO reading")
                        # as the file: what an earlier item of the batch saved, or nothing
                        del self._written[written:]
                        if saved is None:
                            self._pending.pop(device, None)
                        else:
                            self._pending[device] = saved
                        results.append(exc)
                    else:
                        results.append(doc)
                        recorded.append((device, rows))
                    conn.execute("RELEASE reading")
        except sqlite3.Error:
            if len(batch) <= 1:
                raise
            alone: list[ShadowDocument | None | Exception] = []
            for device, samples in batch:
                try:
                    alone.append(self.report(device, samples))
                except Exception as exc:
                    alone.append(exc)
            return alone
        for device, rows in recorded:
            self._recorded(device, rows, keep_history)
        self._merge_due()
        return results

    def _report(
        self,
        conn: sqlite3.Connection,
        device: str,
        samples: Mapping[str, tuple[Any, str, float]],
        now: float,
        keep_history: bool,
    ) -> tuple[ShadowDocument | None, list[tuple[str, float, int]]]:
        """`report` inside a transaction: the document (None if unchanged), and per history
        row staged its point, ts and id (none if history is paused)."""
        doc = self._load(conn, device)
        meta = doc.metadata.setdefault("reported", {})
        rows: list[tuple[str, str, float, str, str]] = []
        for point, (value, quality, ts) in samples.items():
            # An uncertain reading (one outside the point's low..high) is still what the
            # device says: it is reported and kept, flagged in ``quality``. A bad one is not.
            usable = quality != "bad" and value is not None
            value_changed = usable and (
                point not in doc.reported or not _same(doc.reported[point], value)
            )
            if not value_changed and doc.quality.get(point, "good") == quality:
                continue
            if usable:
                doc.reported[point] = value
                meta[point] = {"timestamp": ts or now}
            if quality == "good":
                doc.quality.pop(point, None)
            else:
                doc.quality[point] = quality
            text = scalar_text(value)  # json.dumps's text, without its call (most values)
            rows.append((device, point, ts or now, text or json.dumps(value), quality))
        if not rows:
            return None, []
        staged: list[tuple[str, float, int]] = []
        for row in rows:  # staged: appended at the end of an unindexed table (docstring)
            staged_id = 0  # none: history is paused
            if keep_history:
                staged_id = (
                    conn.execute(
                        "INSERT INTO history_staged (device, point, ts, value, quality) "
                        "VALUES (?, ?, ?, ?, ?)",
                        row,
                    ).lastrowid
                    or 0
                )
            staged.append((row[1], row[2], staged_id))
        self._clear_reached_errors(doc)
        doc.version += 1
        doc.timestamp = now
        if self.documents_paused:  # the outbox's room: kept in memory (module docstring)
            self._unsaved[device] = doc
            self.documents_deferred += 1
        else:
            self._save(conn, doc)
        return doc, staged

    def _recorded(self, device: str, rows: list[tuple[str, float, int]], kept: bool) -> None:
        """After the commit: the per-point row counts and staged rows, or the rows skipped
        under min_free."""
        if not kept:
            self.history_skipped += len(rows)
            self._skipped_in_pause += len(rows)
            return
        self._staged_here += len(rows)
        counts, staged = self._counts, self._staged
        if counts is not None and staged is not None:
            for point, ts, staged_id in rows:
                key = (device, point)
                counts[key] = counts.get(key, 0) + 1
                staged.setdefault(key, []).append((ts, staged_id))

    def _merge_due(self) -> None:
        """Merge if `merge_interval` has passed since the last merge or `merge_rows` rows are
        staged. A merge that fails (a full disk) is tried again later: the rows stay staged,
        visible to queries and retention, so nothing is lost meanwhile."""
        if not self._staged_here or self.history_paused:
            return
        since = self.monotonic() - self._merged_at
        if since < self.merge_interval and (
            self._merge_failed or self._staged_here < self.merge_rows
        ):
            return  # after a failure, not at every reading past merge_rows: at the next interval
        try:
            self.merge()
        except sqlite3.Error as exc:
            self._merge_failed = True
            self._merged_at = self.monotonic()
            log.warning("shadow: merging staged history rows in %s failed: %s", self.path, exc)

    @property
    def staged_rows(self) -> int:
        """History rows this store staged and has not merged yet."""
        return self._staged_here

    @property
    def merge_failing(self) -> bool:
        """The last merge failed (tried again after `merge_interval`)."""
        return self._merge_failed

    def merge(self) -> int:
        """Move the staged history rows into the indexed table, sorted by device, point and
        time, in one transaction (each point's index page written once); the rows moved."""
        with self._transaction() as conn:
            moved = conn.execute(
                "INSERT INTO history (device, point, ts, value, quality) "
                "SELECT device, point, ts, value, quality FROM history_staged "
                "ORDER BY device, point, ts, id"
            ).rowcount
            conn.execute("DELETE FROM history_staged")
        self._staged_here = 0
        self._merged_at = self.monotonic()
        self._merge_failed = False
        self.merges += 1
        if self._staged is not None:
            self._staged.clear()
        return moved

    def _check_space(self) -> bool:
        """Look at the free space (at most once every `SPACE_CHECK_INTERVAL` seconds; see the
        module's docstring): pause or resume history and documents, write the documents kept
        in memory once there is room. False while history is paused."""
        if self.min_free <= 0 or self.path == ":memory:":
            return True
        now = self.monotonic()
        if self._space_checked is not None and now - self._space_checked < SPACE_CHECK_INTERVAL:
            return not self.history_paused
        self._space_checked = now
        free = storefiles.free_bytes(os.path.dirname(os.path.abspath(self.path)))
        if free is None:
            return not self.history_paused
        if self._history_floor.update(free):
            self._history_changed(free)
        if self._document_floor.update(free):
            self._documents_changed(free)
        if self._unsaved and not self.documents_paused:
            try:
                self._flush()
            except sqlite3.Error as exc:  # still no room: kept, tried again at the next look
                log.debug("shadow: documents kept in memory not written yet: %s", exc)
        return not self.history_paused

    def _history_changed(self, free: int) -> None:
        if self.history_paused:
            self._skipped_in_pause = 0
            log.warning(
                "shadow: history paused: %s free on the filesystem of %s, under "
                "shadow.history.min_free (%s); the MQTT outbox has priority on that room. "
                "Reported state still follows the readings; history starts again at %s free",
                _mib(free),
                self.path,
                _mib(self.min_free),
                _mib(self._history_floor.resume),
            )
        else:
            log.warning(
                "shadow: history recorded again: %s free on the filesystem of %s; %s not "
                "recorded while paused",
                _mib(free),
                self.path,
                counted(self._skipped_in_pause, "history row"),
            )

    def _documents_changed(self, free: int) -> None:
        floor = self._document_floor
        if self.documents_paused:
            # What the log holds goes into the file and the log is cut back: room for the outbox.
            with suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.warning(
                "shadow: documents paused: %s free on the filesystem of %s, under %s (the MQTT "
                "outbox's spare room); reported state is kept in memory and written to the file "
                "once %s are free",
                _mib(free),
                self.path,
                _mib(floor.floor),
                _mib(floor.resume),
            )
        else:
            log.warning(
                "shadow: documents written again: %s free on the filesystem of %s; %s kept in "
                "memory meanwhile",
                _mib(free),
                self.path,
                counted(len(self._unsaved), "document"),
            )

    def set_error(
        self, device: str, key: str, value: Any, status: str, reason: str
    ) -> ShadowDocument:
        """Record that the desired ``value`` of ``key`` could not be written (`set_errors`)."""
        return self.set_errors(device, {key: (value, status, reason)})

    def set_errors(
        self, device: str, errors: Mapping[str, tuple[Any, str, str] | None]
    ) -> ShadowDocument:
        """Record the errors of several keys, ``key -> (value, status, reason)``, or clear a
        key's error (None), in one transaction: one load and one save of the document however
        many keys (no version bump: the state did not change).

        An error for a value that is no longer the key's unreached desired value (desired
        changed or was deleted meanwhile, which cleared the error) is not recorded: it would
        stand for the new value."""
        now = self.clock()
        with self._transaction() as conn:
            doc = self._load(conn, device)
            changed = False
            for key, error in errors.items():
                if error is None:
                    changed = doc.errors.pop(key, None) is not None or changed
                    continue
                value, status, reason = error
                if key not in doc.desired:
                    continue
                want = compute_delta({key: doc.desired[key]}, doc.reported).get(key)
                if want is None or not _same(want, value):
                    continue
                doc.errors[key] = {
                    "value": value,
                    "status": status,
                    "reason": reason,
                    "timestamp": now,
                }
                changed = True
            if changed:
                self._save(conn, doc)
        return doc

    def clear_error(self, device: str, key: str) -> None:
        self.set_errors(device, {key: None})

    # -- history --------------------------------------------------------------------------------

    def history(
        self,
        device: str,
        point: str,
        *,
        last: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[HistoryRow]:
        """Rows oldest first: the ``last`` N, or those with ``since <= ts <= until``; the staged
        rows too (one statement, so one snapshot: a merge in between is never half seen)."""
        rows = self.history_page(
            device, point, low=since, high=until, newest_first=True, limit=last
        )
        rows.reverse()
        return rows

    def history_page(
        self,
        device: str,
        point: str,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[HistoryRow]:
        """At most ``limit`` rows with ``low <= ts <= high`` (``<`` where ``*_open``), in time
        order or ``newest_first``; the staged rows too, in one statement (one snapshot)."""
        where = "device = ? AND point = ?"
        args: list[Any] = [device, point]
        if low is not None:
            where += " AND ts > ?" if low_open else " AND ts >= ?"
            args.append(low)
        if high is not None:
            where += " AND ts < ?" if high_open else " AND ts <= ?"
            args.append(high)
        cap = ""
        if limit is not None:
            cap = " LIMIT ?"
            args.append(limit)
        # Of equal times, a staged row is the newer one: it was recorded after every merged row.
        way = "DESC" if newest_first else "ASC"
        parts = [
            f"SELECT * FROM (SELECT ts, value, quality, {staged} AS staged, id FROM {table} "
            f"WHERE {where} ORDER BY ts {way}, id {way}{cap})"
            for table, staged in (("history", 0), ("history_staged", 1))
        ]
        sql = f"{parts[0]} UNION ALL {parts[1]} ORDER BY 1 {way}, 4 {way}, 5 {way}{cap}"
        params = args + args + ([limit] if limit is not None else [])
        return [HistoryRow(r[0], json.loads(r[1]), r[2]) for r in self.db.execute(sql, params)]

    def _count(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], list[tuple[float, int]]]]:
        """The rows of each point (from the index, without reading the rows) and the staged
        rows (a pass over the staging table, which merges keep small); once."""
        if self._counts is None or self._staged is None:
            conn = self.db.conn
            conn.execute("BEGIN")  # one snapshot for both tables
            try:
                counts = {
                    (device, point): n
                    for device, point, n in conn.execute(
                        "SELECT device, point, count(*) FROM history GROUP BY device, point"
                    )
                }
                staged: dict[tuple[str, str], list[tuple[float, int]]] = {}
                for staged_id, device, point, ts in conn.execute(
                    "SELECT id, device, point, ts FROM history_staged ORDER BY id"
                ):
                    key = (device, point)
                    staged.setdefault(key, []).append((ts, staged_id))
                    counts[key] = counts.get(key, 0) + 1
            finally:
                conn.execute("COMMIT")
            self._counts, self._staged = counts, staged
        return self._counts, self._staged

    def prune(self, now: float | None = None) -> int:
        """Apply retention (by age, then by rows per point, then by the bytes of the file);
        returns the rows deleted.

        Costs the rows deleted plus one index seek per point, not a pass over the table: the
        staged rows to delete are found in memory (`_staged`), and deleted by id.
        """
        now = self.clock() if now is None else now
        if self.max_age is None and self.max_rows is None and self.max_bytes is None:
            return 0
        counts, staged = self._count()
        deleted = 0
        if self.max_age is not None or self.max_rows is not None:
            deleted += self._retain(now, counts, staged)
        if self.max_bytes is not None:
            deleted += self._cap(self.max_bytes, counts, staged)
        return deleted

    def _retain(self, now: float, counts: _Counts, staged: _StagedRows) -> int:
        """Retention by age and by rows per point; the rows deleted."""
        cutoff = None if self.max_age is None else now - self.max_age
        deleted: dict[tuple[str, str], int] = {}
        dropped: dict[tuple[str, str], set[int]] = {}  # staged ids deleted
        with self._transaction() as conn:
            for (device, point), n in counts.items():
                mine = staged.get((device, point), [])
                gone = 0
                drop: set[int] = set()
                if cutoff is not None:
                    gone += conn.execute(
                        "DELETE FROM history WHERE device = ? AND point = ? AND ts < ?",
                        (device, point, cutoff),
                    ).rowcount
                    drop.update(i for ts, i in mine if ts < cutoff)
                excess = 0 if self.max_rows is None else n - gone - len(drop) - self.max_rows
                if excess > 0 and len(drop) == len(mine):  # nothing staged left: as ever
                    gone += conn.execute(
                        "DELETE FROM history WHERE id IN (SELECT id FROM history "
                        "WHERE device = ? AND point = ? ORDER BY ts, id LIMIT ?)",
                        (device, point, excess),
                    ).rowcount
                elif excess > 0:  # the oldest of both tables, in the history's order
                    oldest: list[_Key] = [
                        (ts, 0, i)
                        for ts, i in conn.execute(
                            "SELECT ts, id FROM history WHERE device = ? AND point = ? "
                            "ORDER BY ts, id LIMIT ?",
                            (device, point, excess),
                        )
                    ]
                    oldest += sorted((ts, 1, i) for ts, i in mine if i not in drop)[:excess]
                    oldest.sort()
                    merged = [(i,) for _, in_staging, i in oldest[:excess] if not in_staging]
                    drop.update(i for _, in_staging, i in oldest[:excess] if in_staging)
                    conn.executemany("DELETE FROM history WHERE id = ?", merged)
                    gone += len(merged)
                if drop:
                    conn.executemany(
                        "DELETE FROM history_staged WHERE id = ?", [(i,) for i in drop]
                    )
                    dropped[device, point] = drop
                if gone + len(drop):
                    deleted[device, point] = gone + len(drop)
        for key, gone in deleted.items():  # committed: now the counts follow
            counts[key] -= gone
            if counts[key] <= 0:
                del counts[key]
        for key, drop in dropped.items():
            left = [row for row in staged[key] if row[1] not in drop]
            if left:
                staged[key] = left
            else:
                del staged[key]
        return sum(deleted.values())

    def used_bytes(self) -> int:
        """Bytes of the file in use: its pages less the free ones (the file does not shrink
        after a delete; its free pages are reused)."""
        conn = self.db.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _cap(self, cap: int, counts: _Counts, staged: _StagedRows) -> int:
        """Over ``max_bytes`` in use: delete the oldest history rows file-wide until the file
        is at `CAP_TARGET` of it (not at every pass); the rows deleted.

        Oldest by id: ids grow with insertion, and a merge moves every staged row at once, so
        each row in ``history_staged`` was recorded after every row in ``history``: merged rows
        go first, by id, then staged rows, by id. Within one merge the ids follow device,
        point and time (`merge` sorts so), not time alone: a cut may keep a row up to one
        merge interval older than one it deletes. How many rows to delete is estimated from
        the bytes in use per row, then measured again (a delete frees whole pages only). At
        most `CAP_BATCH` rows a transaction and `CAP_PASSES` transactions a prune: a file far
        over the cap (a store of an older version, which had none) comes down over several
        prunes, without holding the write lock, the store's thread or the log for long.
        """
        used = self.used_bytes()
        if used <= cap:
            return 0
        target = int(cap * CAP_TARGET)
        deleted = 0
        for _ in range(CAP_PASSES):
            rows = sum(counts.values())
            if used <= target or rows <= 0:
                break
            excess = min(rows, CAP_BATCH, max(1, math.ceil((used - target) * rows / used)))
            deleted += self._delete_oldest(excess, counts, staged)
            used = self.used_bytes()
        if deleted:
            self.history_capped += deleted
            self._capped_unlogged += deleted
            now = self.monotonic()
            if self._capped_logged is None or now - self._capped_logged >= CAP_LOG_INTERVAL:
                log.warning(
                    "shadow: history over shadow.history.max_bytes (%s) in %s: %s deleted, "
                    "the oldest (%s in all since the gateway started); %s in use now",
                    _mib(cap),
                    self.path,
                    counted(self._capped_unlogged, "row"),
                    counted(self.history_capped, "row"),
                    _mib(used),
                )
                self._capped_logged = now
                self._capped_unlogged = 0
        return deleted

    def _delete_oldest(self, n: int, counts: _Counts, staged: _StagedRows) -> int:
        """Delete the ``n`` oldest history rows, merged first (`_cap`); the counts follow."""
        gone: dict[tuple[str, str], int] = {}
        staged_cut = 0  # staged ids up to this one are deleted
        with self._transaction() as conn:
            left = n
            for table in ("history", "history_staged"):
                if left <= 0:
                    break
                found = conn.execute(
                    f"SELECT id FROM {table} ORDER BY id LIMIT 1 OFFSET ?", (left - 1,)
                ).fetchone()
                if found is None:  # fewer rows than that: all of them
                    found = conn.execute(f"SELECT max(id) FROM {table}").fetchone()
                cut = found[0] if found else None
                if cut is None:  # an empty table
                    continue
                for device, point, k in conn.execute(
                    f"SELECT device, point, count(*) FROM {table} WHERE id <= ? "
                    "GROUP BY device, point",
                    (cut,),
                ):
                    gone[device, point] = gone.get((device, point), 0) + k
                    left -= k
                conn.execute(f"DELETE FROM {table} WHERE id <= ?", (cut,))
                if table == "history_staged":
                    staged_cut = cut
        for key, k in gone.items():  # committed: now the counts follow
            left_rows = counts.get(key, 0) - k
            if left_rows > 0:
                counts[key] = left_rows
            else:
                counts.pop(key, None)
        if staged_cut:
            dropped = 0
            for key in list(staged):
                kept = [row for row in staged[key] if row[1] > staged_cut]
                dropped += len(staged[key]) - len(kept)
                if kept:
                    staged[key] = kept
                else:
                    del staged[key]
            self._staged_here = max(0, self._staged_here - dropped)
        return sum(gone.values())
