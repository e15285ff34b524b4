"""The durable outbox on its own: order, acknowledgement, replay, bounds, policies, disk full."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import reaped, sigterm

from gateway.paths import STATE_ENV
from gateway.uplink.outbox import Outbox, OutboxConfig, read_status


def items(n: int, start: int = 0, topic: str = "t") -> list[tuple[str, bytes, int, bool]]:
    return [(topic, str(start + i).encode(), 1, False) for i in range(n)]


def payloads(rows: list) -> list[int]:  # type: ignore[type-arg]
    return [int(r.payload) for r in rows]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_order_ack_and_replay_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    assert box.append(items(5)) == 5
    assert box.append(items(5, 5)) == 5
    first = box.take(3)
    assert payloads(first) == [0, 1, 2]
    assert payloads(box.take(100)) == [3, 4, 5, 6, 7, 8, 9]
    box.ack(r.id for r in first)
    box.commit()
    assert box.rows == 7
    box.close()

    again = Outbox(path)  # a restart: everything not acknowledged comes back, oldest first
    assert again.rows == 7
    rows = again.take(100)
    assert payloads(rows) == [3, 4, 5, 6, 7, 8, 9]
    assert rows[0].id == 4  # ids go on from the file, never reused
    assert again.append(items(1, 10)) == 1
    assert again.take(10)[0].id == 11
    assert again.integrity_check() == "ok"
    again.close()


def test_a_caught_up_take_moves_the_cursor_to_the_last_id(tmp_path: Path) -> None:
    # Regression: a file whose rows were all delivered reopened with cursor 0 < last_id, and
    # the MQTT uplink, waiting for the cursor to pass the backlog, spun at 100 % CPU.
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.append(items(4))
    box.ack(r.id for r in box.take(10))
    box.commit()
    box.close()
    again = Outbox(path)
    assert (again.rows, again.cursor, again.last_id) == (0, 0, 4)
    assert again.take(10) == [] and again.cursor == 4
    again.append(items(2, 4))
    assert [r.id for r in again.take(1)] == [5] and again.cursor == 5
    again.rewind()  # a reconnect: both unacknowledged rows go again, then the cursor is at the end
    assert payloads(again.take(10)) == [4, 5] and again.cursor == 6
    assert again.take(10) == [] and again.cursor == 6
    again.close()


def test_acknowledgements_ride_on_the_next_append(tmp_path: Path) -> None:
    # Each transaction costs pages and an fsync whatever it holds: a steady flow made two per
    # publish (its append, then the delete of its acknowledgement), 6.4 kB written per tag.
    path = tmp_path / "o.db"
    box = Outbox(path)
    reader = sqlite3.connect(path)

    def commits() -> int:  # changes when another connection commits
        return int(reader.execute("PRAGMA data_version").fetchone()[0])

    box.append(items(3))
    box.ack(r.id for r in box.take(10))
    before = commits()
    box.commit(within=60)  # a transaction just ended: the acknowledgements wait
    assert commits() == before and box.rows == 3
    assert box.commit_due(60) == pytest.approx(60, abs=5)
    box.append(items(1, 3))  # one transaction: the new row in, the three acknowledged out
    assert commits() == before + 1 and box.rows == 1
    assert reader.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    assert box.commit_due(60) is None
    box.ack(r.id for r in box.take(10))
    box.commit(within=0.0)  # idle: on their own after all
    assert commits() == before + 2 and box.rows == 0
    reader.close()
    box.close()


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_acknowledged_rows_deleted_with_an_append_make_room_for_it(
    tmp_path: Path, policy: str
) -> None:
    # A full outbox draining after an outage: the rows the broker has are deleted with the next
    # append, so they must not count against its room (they made it drop or refuse rows).
    box = Outbox(tmp_path / "o.db", OutboxConfig(max_rows=10, policy=policy))  # type: ignore[arg-type]
    box.append(items(10))
    box.ack(r.id for r in box.take(5))
    box.commit(within=60)  # waits for the next append
    assert box.append(items(5, 10)) == 5
    assert box.total_dropped == 0 and box.rows == 10
    assert payloads(box.take(100)) == list(range(5, 15))
    box.close()


def test_ids_go_on_after_the_table_empties_in_an_append_that_kept_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, OutboxConfig(max_bytes=1024, policy="reject_new"))
    box.append(items(2))
    box.ack(r.id for r in box.take(10))
    box.commit(within=60)
    assert box.append([("t", b"x" * 2000, 1, False)]) == 0  # larger than the outbox: refused
    assert box.rows == 0  # and the acknowledged two deleted in that transaction
    box.close()
    again = Outbox(path)  # an empty table: only meta knows the ids already given out
    assert again.last_id >= 2
    again.append(items(1, 9))
    assert again.take(1)[0].id > 2
    again.close()


def test_stamp_writes_the_id_into_the_payload(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(items(2), stamp=lambda i, p: b"%d:" % i + p)
    assert [r.payload for r in box.take(2)] == [b"1:0", b"2:1"]
    box.close()


def test_backlog_read_from_file_then_live_tail(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.append(items(10))
    box.close()
    box = Outbox(path)
    assert payloads(box.take(4)) == [0, 1, 2, 3]
    box.append(items(3, 10))
    assert payloads(box.take(100)) == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert not box.pending()
    box.append(items(1, 13))
    assert box.pending()
    assert payloads(box.take(5)) == [13]
    box.close()


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_drop_oldest_keeps_the_newest_and_counts(tmp_path: Path, limit: str) -> None:
    # each row is 1 (topic) + 2 (payload) bytes
    cfg = OutboxConfig(max_rows=5) if limit == "rows" else OutboxConfig(max_bytes=1024)
    n = 5 if limit == "rows" else 1024 // 3
    box = Outbox(tmp_path / "o.db", cfg)
    box.append([("t", b"%02d" % (i % 100), 1, False) for i in range(n)])
    box.append([("t", b"xx", 1, False)] * 3)
    assert box.rows == n
    assert box.dropped["full"] == 3
    rows = box.take(n)
    assert rows[-1].payload == b"xx"
    assert rows[0].id == 4
    box.close()
    assert read_status(tmp_path / "o.db")["dropped_by_reason"]["full"] == 3


def test_reject_new_refuses_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", OutboxConfig(max_rows=5, policy="reject_new"))
    assert box.append(items(4)) == 4
    assert box.append(items(3, 4)) == 1
    assert box.dropped["full"] == 2
    assert payloads(box.take(10)) == [0, 1, 2, 3, 4]
    box.close()


def test_drop_oldest_may_drop_rows_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", OutboxConfig(max_rows=3))
    box.append(items(3))
    taken = box.take(2)
    box.append(items(2, 3))
    box.ack(r.id for r in taken)  # acknowledgement of rows already dropped: harmless
    box.commit()
    assert box.rows == 3
    assert payloads(box.take(10)) == [2, 3, 4]
    box.close()


_CLOCK_STEP = """
import logging, sys, time
logging.basicConfig(level=logging.WARNING, format="%(message)s")
real, step = time.time, [0.0]
time.time = lambda: real() + step[0]  # before the import: as if the system clock stepped
from gateway.uplink.outbox import Outbox, OutboxConfig
box = Outbox(sys.argv[1], OutboxConfig(max_age=3600))
box.append([("t", b"%d" % i, 1, False) for i in range(100)])
step[0] = 8 * 86400.0  # NTP reached after an outage on a box without a real-time clock
time.sleep(1.1)  # expiry runs at most once a second
box.append([("t", b"new", 1, False)])
print(box.rows, box.dropped["expired"], 0 < box.status()["oldest_age_s"] < 60)
box.close()
"""


def test_a_step_of_the_system_clock_does_not_expire_the_backlog(tmp_path: Path) -> None:
    # A Pi boots on a stale clock and NTP steps it forward when the network (and the broker)
    # comes back: on the wall clock the whole backlog was suddenly 8 days old and expired.
    run = subprocess.run(
        [sys.executable, "-c", _CLOCK_STEP, str(tmp_path / "o.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["101", "0", "True"]  # the age is seconds, not 8 days
    assert "the system clock stepped +691200 s" in run.stderr


def test_max_age_expires_old_rows(tmp_path: Path) -> None:
    clock = Clock()
    box = Outbox(tmp_path / "o.db", OutboxConfig(max_age=60), clock=clock)
    box.append(items(3))
    clock.now += 30
    box.append(items(2, 3))
    clock.now += 45  # the first three are 75 s old now
    box.append(items(1, 5))
    assert box.dropped["expired"] == 3
    assert payloads(box.take(10)) == [3, 4, 5]
    status = box.status()
    assert status["backlog"] == 3 and status["oldest_age_s"] == 45.0
    box.close()


@pytest.mark.parametrize("policy", ["reject_new", "drop_oldest"])
def test_disk_full_applies_the_policy_and_recovers(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, OutboxConfig(policy=policy))  # type: ignore[arg-type]
    big = [("t", b"x" * 2000, 1, False)] * 20
    box.append(big)
    box.commit()
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    kept = 0
    for _ in range(20):
        kept += box.append(big)
    assert box.disk_full or box.total_dropped
    assert box.total_dropped > 0
    assert box.total_dropped + box.rows == 20 + 20 * 20
    box._db.execute("PRAGMA max_page_count=1073741823")  # space returns
    assert box.append(big) == 20
    if policy == "drop_oldest":
        # it keeps making room until the filesystem has room for its reserve (checked each s)
        time.sleep(1.05)
        assert box.append(big) == 20
    assert not box.disk_full
    assert box.integrity_check() == "ok"
    box.close()
    status = read_status(path)
    assert status["dropped"] > 0 and status["backlog"] == box.rows


def test_synchronous_normal_and_read_status(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", OutboxConfig(synchronous="NORMAL"))
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.append(items(3))
    status = read_status(tmp_path / "o.db")
    assert status["backlog"] == 3 and status["dropped"] == 0
    box.close()


def test_file_is_plain_sqlite(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(items(2))
    box.close()
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2


def test_an_outbox_file_has_one_owner_at_a_time(tmp_path: Path) -> None:
    from gateway.uplink.outbox import OutboxInUse

    path = tmp_path / "o.db"
    first = Outbox(path)
    first.append([("t", b"kept", 1, False)])
    with pytest.raises(
        OutboxInUse, match=rf"in use by another gateway process \(pid {os.getpid()}\)"
    ):
        Outbox(path)
    first.close()
    again = Outbox(path)  # the lock goes with the owner
    assert [r.payload for r in again.take(10)] == [b"kept"]
    again.close()


def test_a_second_gateway_on_the_same_outbox_says_so_and_the_first_runs_on(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "devices:\n"
        "  plc: {protocol: modbus, host: 127.0.0.1, port: 9, points: [{name: t, address: 0}]}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: 127.0.0.1, port: 9}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: broker}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".protocol-brain" / "outbox-broker.db.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        # Another gateway name in the same state folder: not refused as the same gateway
        # (tests/test_live_status.py), but its outbox file is the first one's.
        other = tmp_path / "other.yaml"
        other.write_text("gateway: {name: other}\n" + config.read_text())
        second = subprocess.run(
            [*cmd[:-1], str(other)], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert second.stderr.startswith("error: ") and "Traceback" not in second.stderr
        assert "outbox-broker.db: in use by another gateway process" in second.stderr
        assert f"(pid {first.pid})" in second.stderr
        assert first.poll() is None  # the first one is not disturbed
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert first.returncode == 0


def test_status_names_a_damaged_outbox_file_and_reads_the_others(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "endpoints:\n"
        "  a: {protocol: mqtt, host: 127.0.0.1, port: 9}\n"
        "  b: {protocol: mqtt, host: 127.0.0.1, port: 9}\n"
        "  c: {protocol: mqtt, host: 127.0.0.1, port: 9}\n"
    )
    state = tmp_path / ".protocol-brain"
    state.mkdir()
    (state / "outbox-a.db").write_bytes(b"")  # what a crash on a full disk can leave
    (state / "outbox-b.db").write_bytes(b"\xff" * 4096)  # not SQLite at all
    box = Outbox(state / "outbox-c.db")
    box.append([("t", b"x", 1, False)])
    box.close()
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    cmd = [sys.executable, "-m", "gateway", "status", str(config)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors), errors
    assert "outbox-a.db: cannot read" in errors[0] and "outbox-b.db: cannot read" in errors[1]
    line_c = next(line for line in out.stdout.splitlines() if line.startswith("c "))
    assert line_c.split()[1] == "1"  # the healthy outbox's backlog is still reported
    out = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=60)
    rows = {r["endpoint"]: r for r in json.loads(out.stdout)["outboxes"]}
    assert out.returncode == 1 and rows["c"]["backlog"] == 1 and "error" in rows["a"]


# -- bench/outbox_replay.py ---------------------------------------------------------------------

BENCH_REPLAY = Path(__file__).resolve().parent.parent / "bench" / "outbox_replay.py"


def test_the_replay_bench_defaults_to_a_short_run() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("outbox_replay", BENCH_REPLAY)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    # Draining is most of the run: the default was 1,000,000 at a 20,000/s cap, which the
    # 2-core machine does not reach (about 7,000/s): more than 110 s.
    assert args.messages / args.drain_rate <= 30
    assert args.drain_rate == OutboxConfig().drain_rate  # the cap a user gets
    long = bench.parse_args(["--messages", "1000000", "--drain-rate", "10000"])
    assert (long.messages, long.drain_rate) == (1_000_000, 10_000)


def _replay_bench(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(BENCH_REPLAY), *args],
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temporary folder goes here
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_replay_bench_prints_json_last_and_removes_its_folder(tmp_path: Path) -> None:
    proc = _replay_bench(tmp_path, "--messages", "2000", "--drain-rate", "4000", "--live", "50")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["messages"], result["drained"]) == (2000, 2000)
    assert list(tmp_path.iterdir()) == []


def test_the_replay_bench_stopped_by_sigterm_cleans_up(tmp_path: Path) -> None:
    import psutil

    with reaped(_replay_bench(tmp_path, "--messages", "200000")) as proc:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("pb-bench-replay-*/outbox-up.db")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # filling or draining: either way it must clean up
        brokers = [p for p in psutil.Process(proc.pid).children() if "mosquitto" in p.name()]
        assert brokers
        err = sigterm(proc, 60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
    assert not any(b.is_running() and b.status() != psutil.STATUS_ZOMBIE for b in brokers)


def big_items(n: int, start: int = 0) -> list[tuple[str, bytes, int, bool]]:
    return [("t", str(start + i).encode().ljust(1000, b" "), 1, False) for i in range(n)]


def test_a_drained_file_is_given_back_to_the_disk_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for k in range(20):  # an outage: 20,000 rows of 1 kB
        box.append(big_items(1000, 1000 * k))
    box.shrink(every=0)  # a full backlog: nothing to give back
    grown = path.stat().st_size
    assert grown > 20e6 and box.shrunk == 0
    rows = box.take(19_990)
    box.ack(r.id for r in rows)
    box.commit()
    assert box.rows == 10 and path.stat().st_size == grown  # SQLite keeps the free pages
    assert box.shrink(every=0)
    assert path.stat().st_size < 1e6 and box.shrunk == 1
    assert box.integrity_check() == "ok"
    assert [int(r.payload) for r in box.take(100)] == list(range(19_990, 20_000))
    assert box.append(items(1)) == 1
    assert box.last_id == 20_001  # ids go on
    assert not box.shrink(every=0)  # nothing left to give back
    box.close()
    again = Outbox(path)
    assert [r.id for r in again.take(100)] == list(range(19_991, 20_002))
    again.close()


def test_shrink_checks_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.append(big_items(10_000))
    box.shrink()  # the first check runs, with the backlog still there
    box.ack(r.id for r in box.take(10_000))
    box.commit()
    assert not box.shrink()  # within a minute of the last check: not looked at
    assert box.shrink(every=0)
    box.close()
