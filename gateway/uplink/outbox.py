"""Durable outbox: northbound publishes kept in SQLite until the broker has them. No network here.

Life of a row
-------------
``append`` stores a batch (one transaction per call: one ``send()`` of the adapter, however many
publishes it makes) and gives every publish an id, increasing for the life of the file; the
``stamp`` callback may write that id into the payload so that consumers can drop duplicates.
``take`` hands out rows in id order (so in order per device) and moves a cursor; ``ack`` deletes
them once the broker acknowledged (QoS 1/2) or once they were handed to the socket (QoS 0).
Acknowledgements are batched: ``ack`` only notes the ids and the next ``commit`` (or ``append``)
deletes them in one transaction; a crash in between re-sends those few, which is what the id
is for. ``Outbox(path)`` on an existing file starts the cursor at 0: everything still there is
replayed, oldest first.

Rows just appended are also kept in memory (`_tail`) while the cursor has caught up, so the live
path never reads back what it has just written; a backlog is read from the file in batches.

Bounds
------
``max_rows``, ``max_bytes`` (topic + payload bytes, and user properties' names and values) and
``max_age`` (seconds). When a batch does not fit, ``policy`` decides: ``reject_new`` refuses the
new publishes, ``drop_oldest`` deletes the oldest rows (even ones handed out and not yet
acknowledged) to make room. A full disk (``database or disk is full``) follows the same policy:
the transaction is rolled back, ``drop_oldest`` frees the oldest rows and tries once more, and
whatever still does not fit is counted. Every drop is counted by reason (``full``, ``expired``,
``disk_full``) and the counters are kept in the file (table ``meta``) so ``gateway status`` can
read them (while the disk is full they can only be written once space returns; the log has them
at once).

A full disk and the WAL
-----------------------
In WAL mode every write, a delete too, first needs room in the log, and the log only starts
again from its beginning after a checkpoint, which copies pages into the database file and may
have to grow it. On a disk that is full to the last byte neither can happen: the outbox could
not even drop its oldest rows. So it keeps a spare file beside the database (``-reserve``,
2 MiB, with the log checkpointed every ~1 MiB) and deletes it the first time the disk fills;
that room lets ``drop_oldest`` checkpoint and delete. While the disk stays full, each append
under ``drop_oldest`` first deletes as many bytes of the oldest rows as it adds, so the file
does not grow. The outbox writes freely again, and makes its spare file again, once the disk has
room for that file plus an eighth (2.25 MiB; looked at once a second at most), so that it has
some room left after it. If the disk fills again within a minute of that, the outbox waits twice
as long as the last time (from 1 s, up to a minute) before it looks for room again, so that a
disk that hovers at the edge does not flip it in and out of the full state (each time costs a
log line and, under ``drop_oldest``, a hundredth of the backlog). The shadow store, on the same
disk as a rule, leaves this room to the outbox (`gateway.shadow.store`).

A bad file
----------
The outbox holds publishes that were accepted and not sent yet, so it never moves or deletes
its file by itself. A file it cannot open stops the endpoint with an error that names it and
says what to do (move it aside and restart; its rows stay readable with ``sqlite3``). A log
(``-wal``) left by a crash is applied by SQLite when the file opens; if it is damaged, SQLite
drops what it cannot check without a word, so the outbox looks first: if SQLite applied fewer
committed frames than the log holds, a warning says so and a copy of the log is kept
(``-wal.bad``). A zero-length file (a truncated one?) starts an empty outbox with a warning.

Time
----
Rows are stamped, and ``max_age`` expires them, on a `SteadyClock`: the wall clock read once,
then advanced by the monotonic clock. A box without a real-time clock (a Raspberry Pi) boots on
a stale time and steps it forward once NTP can reach a server, which is when an outage ends; on
the wall clock that step would age the whole backlog at once and expire it just before it could
be sent. A step is logged; rows kept across a restart are aged on the wall clock of then.

Size on disk
------------
SQLite reuses the pages of deleted rows but never gives them back by itself, so a file that
grew during an outage would stay at its largest. ``shrink`` (the adapter calls it once the
backlog is sent; it checks at most once a minute) rewrites the file (``VACUUM``) when at least
8 MiB inside it are free, four times what its rows take, and at most 10,000 rows (2 MiB) are
left: the copy is small, since it runs on the event loop's thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from gateway.config.common import Strict
from gateway.paths import state_path
from gateway.storefiles import OUTBOX_RESERVE, free_bytes, free_name, resume_level, wal_kept
from gateway.uplink.lock import FileLock, OutboxInUse

log = logging.getLogger(__name__)

__all__ = [
    "Outbox",
    "OutboxConfig",
    "OutboxFull",
    "OutboxInUse",
    "Row",
    "SteadyClock",
    "read_status",
]

Policy = Literal["reject_new", "drop_oldest"]
DROP_REASONS = ("full", "expired", "disk_full")
_TAIL_MAX = 50_000  # rows kept in memory for the live path
_RESERVE_BYTES = OUTBOX_RESERVE  # the spare file given back when the disk fills
_HOLD_MIN_S, _HOLD_MAX_S = 1.0, 60.0  # time in the full state before a look for room
_REFILL_S = 60.0  # full again this soon after it had room: the next hold doubles
_WAL_PAGES = 256  # checkpoint every ~1 MiB of log (well inside the reserve)
# `shrink`: a drained backlog leaves its pages free inside the file; past this many bytes of
# them, and with few rows left to copy, they are given back to the disk (checked this often)
SHRINK_FREE_BYTES = 8 << 20
SHRINK_MAX_ROWS = 10_000
SHRINK_MAX_BYTES = 2 << 20  # what the copy may carry: it runs on the event loop's thread
SHRINK_EVERY_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL,
    user_properties TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxConfig(Strict):
    """``outbox:`` of an MQTT endpoint: where and how northbound publishes wait for the broker."""

    local_paths = ("path",)
    state_paths = ("path",)

    enabled: bool = Field(True, description="false: an in-memory buffer (lost on restart)")
    path: str = Field(
        "{state}/outbox-{name}.db",
        description=(
            "SQLite file; {name} is the endpoint, {state} the state folder"
            " ($PROTOCOL_BRAIN_STATE_DIR, else .protocol-brain next to the config file)"
        ),
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: survives power loss; NORMAL: faster, survives a crash"
    )
    write_delay: float = Field(
        0.0,
        ge=0,
        le=10,
        description=(
            "seconds: publishes arriving within this time are written in one transaction"
            " (less written to the disk, e.g. an SD card); a crash or power cut loses at most"
            " this much; alarms and replies are written at once"
        ),
    )
    max_bytes: int = Field(
        256 << 20, ge=1024, description="topic + payload (+ user properties) bytes kept at most"
    )
    max_rows: int = Field(1_000_000, ge=1, description="publishes kept at most")
    max_age: float = Field(7 * 86400.0, gt=0, description="seconds; older publishes are dropped")
    policy: Policy = Field("drop_oldest", description="when full: reject_new or drop_oldest")
    drain_rate: float | None = Field(
        2000.0, gt=0, description="backlog publishes/s after an outage; null: unlimited"
    )
    drain_order: Literal["strict", "live_first"] = Field(
        "strict",
        description=(
            "strict: live publishes wait behind the backlog (order per device kept);"
            " live_first: live publishes go at once while the backlog drains beside them"
        ),
    )

    def file_for(self, name: str) -> Path:
        return state_path(self.path, name)


class OutboxFull(Exception):
    """Not raised by the outbox itself; for callers that want to turn a refusal into one."""


# MQTT 5 user properties of a publish, (name, value) in order; () for none. Kept in the column
# user_properties as a JSON array of pairs (NULL for none), added to files made before it.
UserProperties = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    ts: float
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: UserProperties = ()

    @property
    def size(self) -> int:
        size = len(self.topic) + len(self.payload)
        if self.user_properties:
            size += sum(len(n) + len(v) for n, v in self.user_properties)
        return size


Item = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
PropItem = tuple[str, bytes, int, bool, UserProperties]  # and its user properties


def _props_json(props: UserProperties) -> str | None:
    return json.dumps(props, ensure_ascii=False, separators=(",", ":")) if props else None


def _props_of(text: str | None) -> UserProperties:
    if not text:
        return ()
    return tuple((str(n), str(v)) for n, v in json.loads(text))


_COLUMNS = "id, ts, topic, payload, qos, retain, user_properties"


class SteadyClock:
    """Epoch seconds that follow the monotonic clock: the system clock's steps do not move it
    (slewing, NTP's usual small corrections, does move both)."""

    STEP = 60.0  # seconds of difference from the wall clock that count as a step (logged)

    def __init__(self) -> None:
        self._base = time.time() - time.monotonic()

    def __call__(self) -> float:
        return self._base + time.monotonic()

    def step(self) -> float:
        """How far the wall clock has stepped since this clock started (+: forward)."""
        return time.time() - self()


_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little-endian, big-endian


def _wal_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_frames(wal: Path) -> int | None:
    """Committed frames an SQLite log (``-wal``) holds by its frame headers, or None if its own
    header is damaged (SQLite then ignores the whole log). Frame checksums are not checked:
    SQLite does that; the caller compares what it applied."""
    with open(wal, "rb") as f:
        head = f.read(32)
        if len(head) < 32:
            return None
        magic, version, page, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", head)
        if (
            magic not in _WAL_MAGIC
            or version != 3007000
            or _wal_checksum(head[:24], magic == _WAL_MAGIC[1]) != (c1, c2)
        ):
            return None
        committed = frames = 0
        while len(frame := f.read(24)) == 24:
            _page, commit, s1, s2 = struct.unpack(">4I", frame[:16])
            if (s1, s2) != (salt1, salt2):  # from before the log last started again
                break
            frames += 1
            if commit:
                committed = frames
            f.seek(page, os.SEEK_CUR)
        return committed


class _NotAnOutbox(sqlite3.DatabaseError):
    """A readable SQLite file with tables, none of them ours."""


def _is_disk_full(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "full" in text  # "database or disk is full"


def _rows(cursor: Iterable[tuple[Any, ...]]) -> list[Row]:
    """Rows as `_COLUMNS` reads them."""
    return [
        Row(i, ts, topic, bytes(payload), qos, bool(retain), _props_of(props))
        for i, ts, topic, payload, qos, retain, props in cursor
    ]


class Outbox:
    """Publishes waiting for the broker, in SQLite (WAL). Not thread-safe: one event loop."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: OutboxConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        name: str = "outbox",
    ) -> None:
        self.config = config or OutboxConfig()
        self.path = Path(path)
        self.name = name
        self._clock = SteadyClock() if clock is None else clock
        self._stepped = 0.0  # the wall clock's step last logged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.path)  # raises OutboxInUse if another process has the file
        try:
            with wal_kept(self.path):  # a file SQLite cannot read: its log is not deleted
                self._open()
        except _NotAnOutbox as exc:  # nothing of ours in it: say so, write nothing
            self._lock.release()
            raise sqlite3.DatabaseError(
                f"{self.path} is a SQLite file of something else ({exc}), not an outbox: the "
                "gateway leaves it as it is; give outbox.path a file of its own"
            ) from exc
        except sqlite3.Error as exc:  # damaged, not SQLite, a directory: say which file
            self._lock.release()
            raise sqlite3.DatabaseError(
                f"{self.path}: {exc}. The outbox cannot use this file; it may hold accepted "
                "publishes not sent yet, so the gateway leaves it alone: move it aside (with "
                "its -wal file) and restart to start with an empty outbox; its rows stay "
                "readable with sqlite3 (table outbox: topic, payload)"
            ) from exc
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        wal = self.path.with_name(self.path.name + "-wal")
        size = self.path.stat().st_size if self.path.is_file() else None
        wal_size = wal.stat().st_size if wal.is_file() else 0
        try:  # we hold the lock: no writer now
            logged = _wal_frames(wal) if wal_size else 0
        except OSError:  # unreadable: SQLite will say so itself
            logged = 0
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        try:
            self._prepare(wal, wal_size, logged, size == 0)
            self._init_state()
        except BaseException:
            db.close()  # now, inside `wal_kept`, not whenever it is collected
            raise

    def _prepare(self, wal: Path, wal_size: int, logged: int | None, empty: bool) -> None:
        db = self._db
        # Before anything writes: the shadow store's file, or another application's, must not
        # get our tables (and a later outbox drain its rows) by a slip in outbox.path.
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "outbox" not in tables:
            raise _NotAnOutbox(f"its tables are {', '.join(sorted(tables))}")
        db.execute("PRAGMA journal_mode=WAL")
        if wal_size:
            self._check_wal(wal, logged)
        elif empty:
            log.warning(
                "outbox %s: %s was empty (0 bytes; it may have been truncated): the outbox "
                "starts empty",
                self.name,
                self.path,
            )
        db.execute(f"PRAGMA synchronous={self.config.synchronous}")
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        if "user_properties" not in columns:  # a file from before user properties
            db.execute("ALTER TABLE outbox ADD COLUMN user_properties TEXT")

    def _init_state(self) -> None:
        db = self._db
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        for key, value in db.execute("SELECT key, value FROM meta"):
            if key in self.dropped:
                self.dropped[key] = int(value)
        rows, size, last = db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(id), 0) FROM outbox"
        ).fetchone()
        self.rows: int = rows
        self.bytes: int = size
        self._stored_last = self._meta("last_id")  # what meta holds (see `_commit`)
        self._next_id: int = max(last, self._stored_last) + 1
        self._inserted = False  # the open transaction inserted rows
        self._acked_size = (0, 0)  # rows, bytes of the acknowledged rows it deletes
        self._last_txn = 0.0  # monotonic time the last transaction ended (or failed to)
        self._cursor = 0  # every row with id > cursor is still to be handed out
        self._tail: collections.deque[Row] = collections.deque()
        self._tail_valid = rows == 0  # the tail holds every row after the cursor
        self._taken: dict[int, int] = {}  # id -> size of rows handed out, not acknowledged
        self._acked: list[int] = []
        self._pending_acked: list[int] = []  # acknowledged ids deleted in the open transaction
        self._dirty = False  # drop counters changed since they were last stored
        self._last_expiry = 0.0
        self.disk_full = False
        self._space_checked = 0.0
        self._full_since = 0.0  # monotonic time the disk filled (`disk_full` set)
        self._roomy_since = -float("inf")  # monotonic time it last had room again
        self._hold = _HOLD_MIN_S  # seconds in the full state before a look for room
        self._reserve = self.path.with_name(self.path.name + "-reserve")
        self._make_reserve()
        self.appended = 0
        self.acknowledged = 0
        self._shrink_checked = -float("inf")
        self.shrunk = 0  # times `shrink` gave pages back

    # --- writing ----------------------------------------------------------------------------

    def append(
        self, items: Sequence[Item | PropItem], stamp: Callable[[int, bytes], bytes] | None = None
    ) -> int:
        """Store ``items`` (with their user properties, or without: none) in one transaction;
        returns how many were kept (the rest counted)."""
        if not items:
            return 0
        now = self._clock()
        rows = []
        next_id = self._next_id
        for item in items:
            if len(item) == 4:
                topic, payload, qos, retain = item
                props: UserProperties = ()
            else:
                topic, payload, qos, retain, props = item
            if stamp is not None:
                payload = stamp(next_id, payload)
            rows.append(Row(next_id, now, topic, payload, qos, retain, props))
            next_id += 1
        self._next_id = next_id
        need_rows = len(rows)
        need_bytes = sum(r.size for r in rows)
        dropped = dict(self.dropped)
        if self.disk_full and self._space_returned():
            self.disk_full = False
            self._roomy_since = time.monotonic()
            self._make_reserve()
            log.warning("outbox %s: the disk has room again (%s)", self.name, self.path)
        try:
            self._begin()
            self._expire(now)
            rows = self._make_room(rows, need_rows, need_bytes)
            if self.disk_full and self.config.policy == "drop_oldest":
                # each new byte takes an old one's place, so the file need not grow
                self._delete_oldest(lambda _n, b, _ts: b < need_bytes, "disk_full")
            self._insert(rows)
            self._commit()
        except sqlite3.OperationalError as exc:
            self._rollback()
            self.dropped = dropped
            self._reload()
            if not _is_disk_full(exc):
                raise
            rows = self._disk_full(rows, exc)
        else:
            if self.disk_full and self.config.policy == "reject_new":
                # reject_new tries every append, so the first that fits says space is back
                self.disk_full = False
                log.warning("outbox %s: writing again (%s)", self.name, self.path)
        if rows:
            self.rows += len(rows)
            self.bytes += sum(r.size for r in rows)
            self.appended += len(rows)
            if self._tail_valid and len(self._tail) + len(rows) <= _TAIL_MAX:
                self._tail.extend(rows)
            else:
                self._tail_valid = False
                self._tail.clear()
        return len(rows)

    def _insert(self, rows: Sequence[Row]) -> None:
        if rows:
            self._db.executemany(
                f"INSERT INTO outbox ({_COLUMNS}, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.id,
                        r.ts,
                        r.topic,
                        r.payload,
                        r.qos,
                        int(r.retain),
                        _props_json(r.user_properties) if r.user_properties else None,
                        r.size,
                    )
                    for r in rows
                ],  # fmt: skip
            )
            self._inserted = True

    def _make_room(self, rows: list[Row], need_rows: int, need_bytes: int) -> list[Row]:
        cfg = self.config
        held_rows, held_bytes = self._held()
        over_rows = held_rows + need_rows - cfg.max_rows
        over_bytes = held_bytes + need_bytes - cfg.max_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return rows
        if cfg.policy == "reject_new":
            kept: list[Row] = []
            room_rows, room_bytes = cfg.max_rows - held_rows, cfg.max_bytes - held_bytes
            for r in rows:
                if room_rows >= 1 and room_bytes >= r.size:
                    kept.append(r)
                    room_rows -= 1
                    room_bytes -= r.size
            self._count("full", len(rows) - len(kept))
            return kept
        # drop_oldest; a batch larger than the whole outbox keeps its newest part
        while rows and (need_rows > cfg.max_rows or need_bytes > cfg.max_bytes):
            first = rows.pop(0)
            need_rows -= 1
            need_bytes -= first.size
            self._count("full", 1)
        held_rows, held_bytes = self._held()
        over_rows = held_rows + need_rows - cfg.max_rows
        over_bytes = held_bytes + need_bytes - cfg.max_bytes
        self._delete_oldest(lambda n, b, _ts: n < over_rows or b < over_bytes, "full")
        return rows

    def _expire(self, now: float) -> None:
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        if isinstance(self._clock, SteadyClock):
            step = self._clock.step()
            if abs(step - self._stepped) > SteadyClock.STEP:
                self._stepped = step
                log.warning(
                    "outbox %s: the system clock stepped %+.0f s; the backlog's ages and "
                    "max_age keep to the outbox's own clock until the gateway restarts",
                    self.name,
                    step,
                )
        cutoff = now - self.config.max_age
        self._delete_oldest(lambda _n, _b, ts: ts < cutoff, "expired")

    def _delete_oldest(self, more: Callable[[int, int, float], bool], reason: str) -> None:
        """Delete the oldest rows while ``more(rows_deleted, bytes_deleted, row_ts)``."""
        n = freed = 0
        ids: list[int] = []
        done = False
        while not done:
            batch = self._db.execute(
                "SELECT id, ts, size FROM outbox WHERE id > ? ORDER BY id LIMIT 1024",
                (ids[-1] if ids else 0,),
            ).fetchall()
            if not batch:
                break
            for row_id, ts, size in batch:
                if not more(n, freed, ts):
                    done = True
                    break
                ids.append(row_id)
                n += 1
                freed += size
        if not ids:
            return
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        self._forget(ids, n, freed)
        self._count(reason, n)

    def _forget(self, ids: list[int], n: int, freed: int) -> None:
        """Bookkeeping after rows left the file by a drop (ids ascending)."""
        self.rows -= n
        self.bytes -= freed
        for i in ids:
            self._taken.pop(i, None)
        last = ids[-1]
        tail = self._tail
        while tail and tail[0].id <= last:
            tail.popleft()

    def _disk_full(self, rows: list[Row], exc: sqlite3.OperationalError) -> list[Row]:
        if not self.disk_full:
            now = time.monotonic()
            again = now - self._roomy_since < _REFILL_S  # hovering at the edge: wait longer
            self._hold = min(2 * self._hold, _HOLD_MAX_S) if again else _HOLD_MIN_S
            self._full_since = now
            log.error(
                "outbox %s: %s (%s); policy %s applies until %s are free%s",
                self.name,
                exc,
                self.path,
                self.config.policy,
                f"{resume_level(_RESERVE_BYTES) / (1 << 20):.2f} MiB",
                f" (full again soon after: looks again in {self._hold:.0f} s)" if again else "",
            )
        self.disk_full = True
        self._release_reserve()
        if self.config.policy == "drop_oldest" and self.rows:
            dropped = dict(self.dropped)
            try:
                # the reserve's room lets the log go into the file and start again (module doc)
                self._db.execute("PRAGMA wal_checkpoint(RESTART)")
                self._begin()
                target = max(len(rows), self._held()[0] // 100)
                self._delete_oldest(lambda n, _b, _ts: n < target, "disk_full")
                self._insert(rows)
                self._commit()
                return rows
            except sqlite3.OperationalError:
                self._rollback()
                self.dropped = dropped
                self._reload()
        self.dropped["disk_full"] += len(rows)
        self._dirty = True
        return []

    def _make_reserve(self) -> None:
        try:
            if not self._reserve.exists():
                with open(self._reserve, "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, _RESERVE_BYTES)
        except OSError:  # no room for it (yet): the outbox works without, only less well
            self._release_reserve()

    def _release_reserve(self) -> None:
        try:
            self._reserve.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("outbox %s: cannot remove %s: %s", self.name, self._reserve, exc)

    def _space_returned(self) -> bool:
        """Room for the reserve plus an eighth (module docstring), looked at most once a
        second and not before the hold since the disk filled is over."""
        now = time.monotonic()
        if now - self._space_checked < 1.0 or now - self._full_since < self._hold:
            return False
        self._space_checked = now
        free = free_bytes(self.path.parent)
        return free is not None and free >= resume_level(_RESERVE_BYTES)

    def _check_wal(self, wal: Path, logged: int | None) -> None:
        """Warn if SQLite did not apply every committed frame of the log left by a crash
        (``logged``; None: its header is damaged) and keep a copy of the log."""
        try:  # a passive checkpoint tells how many frames SQLite took as the log
            _busy, applied, _done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError:  # no room to checkpoint: cannot tell
            return
        if logged is not None and applied >= logged:
            return
        copy = free_name(wal, ".bad")
        try:
            shutil.copyfile(wal, copy)
            kept = f"a copy of the log is kept as {copy}"
        except OSError as exc:
            kept = f"no copy of the log could be kept ({exc})"
        log.warning(
            "outbox %s: the log %s left by the last run is damaged: SQLite applied %s of its "
            "%s committed frames and dropped the rest (publishes stored last before the "
            "gateway stopped are lost, not counted as dropped); %s",
            self.name,
            wal,
            applied,
            "?" if logged is None else logged,
            kept,
        )

    def _reload(self) -> None:
        """After a failed transaction that changed the bookkeeping: count again from the file."""
        self.rows, self.bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
        ).fetchone()
        self._tail.clear()
        self._tail_valid = False

    # --- reading and acknowledging --------------------------------------------------------------

    def take(self, n: int) -> list[Row]:
        """Up to ``n`` rows not handed out yet, oldest first; they count as in flight."""
        if n <= 0:
            return []
        out: list[Row]
        if self._tail_valid:
            tail = self._tail
            out = [tail.popleft() for _ in range(min(n, len(tail)))]
        else:
            out = _rows(
                self._db.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (self._cursor, n),
                )
            )
            if len(out) < n:  # caught up: from now on the tail has everything
                self._tail_valid = True
                self._tail.clear()
        if out:
            self._cursor = out[-1].id
            taken = self._taken
            for r in out:
                taken[r.id] = r.size
        if len(out) < n:
            # Nothing is left to hand out, not even ids of rows long deleted: a caller waiting
            # for the cursor to reach `last_id` (the MQTT backlog) must see it there.
            self._cursor = self._next_id - 1
        return out

    def skip_to(self, mark: int) -> None:
        """Move the cursor past ``mark`` without handing those rows out: they are read later
        with `take_range` (live_first draining). Rows after ``mark`` stay in the tail."""
        if mark <= self._cursor:
            return
        self._cursor = mark
        tail = self._tail
        while tail and tail[0].id <= mark:
            tail.popleft()

    def take_range(self, after: int, upto: int, n: int) -> list[Row]:
        """Up to ``n`` rows with ``after < id <= upto``, oldest first, read from the file (the
        backlog lane of a live_first drain); they count as in flight like `take`'s."""
        if n <= 0 or after >= upto:
            return []
        out = _rows(
            self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after, upto, n),
            )
        )
        taken = self._taken
        for r in out:
            taken[r.id] = r.size
        return out

    def pending(self) -> bool:
        """Rows not handed out yet."""
        if self._tail_valid:
            return bool(self._tail)
        return self.rows > len(self._taken)

    def ack(self, ids: Iterable[int]) -> None:
        """The broker has these (or the socket, for QoS 0); deleted at the next `commit`."""
        self._acked.extend(ids)

    def commit(self, *, within: float = 0.0) -> None:
        """Delete the acknowledged rows (one transaction) and store changed counters.

        ``within`` > 0: not if a transaction ended less than ``within`` seconds ago; the next
        append carries them, or a call after `commit_due` seconds. Each transaction costs the
        disk a few pages and an fsync whatever it holds, so acknowledgements that ride on the
        next append halve the writes of a steady flow; a crash re-sends them (ids)."""
        if not self._acked and not self._dirty:
            return
        if within > 0 and time.monotonic() - self._last_txn < within:
            return
        try:
            self._begin()
            self._commit()
        except sqlite3.OperationalError as exc:
            self._rollback()  # the acknowledgements stay noted: tried again next time
            self._last_txn = time.monotonic()  # not again at once (`commit_due`)
            if not _is_disk_full(exc):
                raise

    def commit_due(self, within: float) -> float | None:
        """Seconds until `commit(within=within)` would commit; None when nothing waits."""
        if not self._acked and not self._dirty:
            return None
        return max(0.0, self._last_txn + within - time.monotonic())

    def shrink(self, every: float | None = None) -> bool:
        """Give the free pages of a drained file back to the disk (see the module docstring);
        checks at most once per ``every`` seconds (`SHRINK_EVERY_S`). True if it shrank."""
        now = time.monotonic()
        if now - self._shrink_checked < (SHRINK_EVERY_S if every is None else every):
            return False
        self._shrink_checked = now
        if self.rows > SHRINK_MAX_ROWS or self.bytes > SHRINK_MAX_BYTES or self.disk_full:
            return False
        db = self._db
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0]) * page
        if free < max(SHRINK_FREE_BYTES, 4 * self.bytes):  # the copy costs what is left
            return False
        before = self.path.stat().st_size
        try:
            self.commit()  # the acknowledged rows go first: fewer to copy
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:  # no room for the copy: the file stays
            log.warning("outbox %s: could not shrink %s: %s", self.name, self.path, exc)
            with contextlib.suppress(sqlite3.Error):  # the log the copy grew goes back
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return False
        self.shrunk += 1
        log.info(
            "outbox %s: %s shrunk from %.1f to %.1f MB after its backlog drained",
            self.name,
            self.path,
            before / 1e6,
            self.path.stat().st_size / 1e6,
        )
        return True

    def rewind(self) -> None:
        """Hand everything out again (rows in flight included), oldest first."""
        self._cursor = 0
        self._taken.clear()
        self._tail.clear()
        self._tail_valid = False

    @property
    def cursor(self) -> int:
        """Id of the last row handed out (0: none yet)."""
        return self._cursor

    @property
    def last_id(self) -> int:
        """Id of the newest row ever appended to this file."""
        return self._next_id - 1

    def now(self) -> float:
        """The outbox's clock, which stamps its rows (`SteadyClock` unless one was given)."""
        return self._clock()

    # --- status ------------------------------------------------------------------------------

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def oldest_ts(self) -> float | None:
        row = self._db.execute("SELECT ts FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def status(self) -> dict[str, Any]:
        oldest = self.oldest_ts()
        return {
            "path": str(self.path),
            "backlog": self.rows,
            "backlog_bytes": self.bytes,
            "oldest_age_s": None if oldest is None else round(self._clock() - oldest, 3),
            "dropped": self.total_dropped,
            "dropped_by_reason": dict(self.dropped),
            "disk_full": self.disk_full,
            "policy": self.config.policy,
            "drain_rate": self.config.drain_rate,
            "synchronous": self.config.synchronous,
        }

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()
            self._lock.release()

    # --- transactions and counters -----------------------------------------------------------

    def _count(self, reason: str, n: int) -> None:
        if n > 0:
            self.dropped[reason] += n
            self._dirty = True

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._inserted = False
        self._acked_size = (0, 0)
        if self._acked:  # piggy-back pending acknowledgements on this transaction
            acked, self._acked = self._acked, []
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in acked])
            self._pending_acked = acked
            # rows and bytes count them until the commit; the bounds must not (`_held`)
            sizes = [s for s in map(self._taken.get, acked) if s is not None]
            self._acked_size = (len(sizes), sum(sizes))
        else:
            self._pending_acked = []

    def _held(self) -> tuple[int, int]:
        """Rows and bytes in the file within the open transaction: without the acknowledged
        rows it deletes, which `rows` and `bytes` still count until it commits."""
        n, size = self._acked_size
        return self.rows - n, self.bytes - size

    def _commit(self) -> None:
        if self._dirty:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self.dropped.items()
            )
        # Ids increase for the life of the file, so an empty table must still know the last
        # one stored. A transaction that inserted keeps the rows it inserted, so only one that
        # did not (it may delete the newest) writes it: one page less in every append. (Ids of
        # rows refused in an append were never stored or sent; a restart may give them again.)
        last = self._next_id - 1
        write_last = not self._inserted and last > self._stored_last
        if write_last:
            self._set_meta("last_id", last)
        self._db.execute("COMMIT")
        self._last_txn = time.monotonic()
        if write_last:
            self._stored_last = last
        self._dirty = False
        # the acknowledged rows it deleted (`_begin` counted the ones still handed out)
        n, size = self._acked_size
        self.rows -= n
        self.bytes -= size
        self.acknowledged += n
        self._acked_size = (0, 0)
        for i in self._pending_acked:
            self._taken.pop(i, None)
        self._pending_acked = []

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._acked = self._pending_acked + self._acked
        self._pending_acked = []
        self._acked_size = (0, 0)
        self._dirty = True

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def read_status(path: str | os.PathLike[str], now: float | None = None) -> dict[str, Any]:
    """Backlog, oldest age and drop counters of an outbox file, read-only (``gateway status``)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        rows, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        oldest = db.execute("SELECT ts FROM outbox ORDER BY id LIMIT 1").fetchone()
        dropped = dict.fromkeys(DROP_REASONS, 0)
        for key, value in db.execute("SELECT key, value FROM meta"):
            if key in dropped:
                dropped[key] = int(value)
    finally:
        db.close()
    now = time.time() if now is None else now
    return {
        "path": str(path),
        "backlog": rows,
        "backlog_bytes": size,
        "oldest_age_s": None if oldest is None else round(now - float(oldest[0]), 3),
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
    }
