"""Bytes the shadow store writes to the disk per reading (what wears an SD card).
``python bench/shadow_writes.py [--devices N] [--points M] [--rate R] [--write-delay D ...]``

Drives a `ShadowStore` the way `ShadowService` does: every device is polled every ``--poll``
seconds and its message carries the points that changed (published on change), ``--rate``
changed values a second spread at random over the devices' points; the readings of one
``--write-delay`` window are recorded by one `report_many` (at most 500 messages, as the
service's batch), with 0 one message per transaction (a store that keeps up wakes up per
message); retention runs every 60 s. Time is simulated (the store's clock and monotonic clock
too), so a run takes as long as the store's work, not ``--seconds``; the transactions carry
what that period would gather.

The history starts with ``--prefill`` rows per point (a gateway that has run a while: each
point's index spans pages of its own), written once into a template file that each run copies.
The figure is ``wchar`` in ``/proc/self/io`` from the open to the close (bytes the process passed
to write calls: SQLite's log frames, its checkpoint's page writes, the file), divided by the
changed values. ``write_bytes`` (what the kernel charges the process for dirtying the page
cache) is shown too, but on a kernel whose page cache uses large folios (6.18 on the box these
figures come from) it is charged per folio, up to 2 MiB for one 4 KiB page, so it overstates
what a random page write costs; on a 4 KiB page cache the two agree. ``documents`` is the same
run with history paused (``min_free`` above the free space: documents only), so that the
history's share is the difference. The file must be on a real disk (tmpfs counts nothing):
``--folder``, default /var/tmp; the run's folder is removed at the end.

Human-readable lines first, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_bench  # noqa: E402

from gateway.shadow.store import ShadowStore

MAX_BATCH = 500  # messages per transaction at most (gateway.shadow.service.MAX_BATCH)
PRUNE_INTERVAL = 60.0  # s (gateway.shadow.service.PRUNE_INTERVAL)
START = 1_700_000_000.0
Sample = tuple[Any, str, float]
Message = tuple[float, str, dict[str, Sample]]


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def fs_type(folder: Path) -> str:
    """The filesystem type of ``folder`` (the longest mount point that holds it)."""
    best, kind = "", "?"
    path = str(folder.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mount, fstype, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, kind = mount, fstype
    return kind


def messages(args: argparse.Namespace, rng: random.Random) -> Iterator[Message]:
    """Each device polled every ``poll`` s (its own phase); a message per poll with the
    points that changed, each with probability rate * poll / (devices * points)."""
    n_points = args.devices * args.points
    p_change = min(1.0, args.rate * args.poll / n_points)
    phases = sorted((rng.uniform(0, args.poll), d) for d in range(args.devices))
    value = 0
    t = 0.0
    while t < args.seconds:
        for phase, d in phases:
            at = t + phase
            if at >= args.seconds:
                continue
            changed: dict[str, Sample] = {}
            for i in range(args.points):
                if rng.random() < p_change:
                    value += 1
                    changed[f"p{i}"] = (value, "good", START + at)
            if changed:
                yield at, f"dev{d}", changed
        t += args.poll


def transactions(args: argparse.Namespace, delay: float) -> Iterator[tuple[float, list[Any]]]:
    """``(time, batch)``: the messages each `report_many` records."""
    batch: list[Any] = []
    window_end = 0.0
    for at, device, samples in messages(args, random.Random(args.seed)):
        if batch and (at >= window_end or len(batch) >= MAX_BATCH):
            yield window_end, batch
            batch = []
        if not batch:
            window_end = at + delay
        batch.append((device, samples))
    if batch:
        yield window_end, batch


def prefill(path: Path, args: argparse.Namespace) -> None:
    """``--prefill`` changes of every point, a second apart, before the run's start."""
    store = ShadowStore(str(path))
    rows = args.prefill
    for r in range(rows):
        ts = START - rows + r
        store.report_many(
            [
                (f"dev{d}", {f"p{i}": (-r - 1, "good", ts) for i in range(args.points)})
                for d in range(args.devices)
            ]
        )
    store.close()


def run(
    template: Path, folder: Path, args: argparse.Namespace, delay: float, docs_only: bool
) -> dict[str, Any]:
    path = folder / "run.db"
    shutil.copyfile(template, path)
    with open(path, "rb+") as f:  # clean pages: the run's writes are counted, not the copy's
        os.fsync(f.fileno())
    clock = SimClock(START)
    merge: dict[str, Any] = {}  # the store's defaults unless given
    if args.merge_interval is not None:
        merge["merge_interval"] = args.merge_interval
    if args.merge_rows is not None:
        merge["merge_rows"] = args.merge_rows
    store = ShadowStore(
        str(path),
        max_age=7 * 86400.0,
        max_rows=100_000,
        # documents only: history paused (min_free above any free space), documents written
        min_free=1 << 62 if docs_only else 0,
        clock=clock,
        monotonic=clock,
        **merge,
    )
    before = io_counters()
    started = time.perf_counter()
    values = txns = 0
    next_prune = START
    for at, batch in transactions(args, delay):
        clock.now = START + at
        if clock.now >= next_prune:
            store.prune()
            next_prune += PRUNE_INTERVAL
        store.report_many(batch)
        txns += 1
        values += sum(len(samples) for _, samples in batch)
    clock.now = START + args.seconds
    store.close()
    elapsed = time.perf_counter() - started
    after = io_counters()
    written = after["write_bytes"] - before["write_bytes"]
    wchar = after["wchar"] - before["wchar"]
    return {
        "values": values,
        "transactions": txns,
        "bytes_written": wchar,
        "bytes_per_value": round(wchar / max(values, 1)),
        "write_bytes_per_value": round(written / max(values, 1)),
        "file_bytes": path.stat().st_size,
        "seconds_real": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--points", type=int, default=10, help="points per device")
    parser.add_argument("--rate", type=float, default=400.0, help="changed values per second")
    parser.add_argument("--poll", type=float, default=1.0, help="s between a device's polls")
    parser.add_argument(
        "--write-delay", type=float, nargs="+", default=[0.0, 0.1, 1.0], help="shadow.write_delay"
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds per run")
    parser.add_argument("--prefill", type=int, default=300, help="history rows per point first")
    parser.add_argument("--folder", default="/var/tmp", help="where the file goes (a real disk)")
    parser.add_argument("--no-documents-run", action="store_true", help="skip the share runs")
    parser.add_argument("--merge-interval", type=float, help="s; the store's default if not given")
    parser.add_argument("--merge-rows", type=int, help="the store's default if not given")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the documents-only runs say history paused
    fstype = fs_type(Path(args.folder))
    if fstype in ("tmpfs", "ramfs"):
        print(f"warning: {args.folder} is {fstype}: nothing reaches a disk", file=sys.stderr)
    result: dict[str, Any] = {
        "devices": args.devices,
        "points": args.points,
        "rate": args.rate,
        "poll_s": args.poll,
        "seconds": args.seconds,
        "prefill_rows_per_point": args.prefill,
        "filesystem": fstype,
        "runs": {},
    }
    print(
        f"{args.devices} devices x {args.points} points, {args.rate:g} changed values/s, "
        f"{args.seconds:g} s simulated per run, {args.prefill} history rows per point first "
        f"({fstype} under {args.folder})"
    )
    with tempfile.TemporaryDirectory(prefix="shadow-writes-", dir=args.folder) as name:
        folder = Path(name)
        template = folder / "template.db"
        started = time.perf_counter()
        prefill(template, args)
        print(
            f"template: {template.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f} s"
        )
        for delay in args.write_delay:
            figures = run(template, folder, args, delay, docs_only=False)
            line = (
                f"write_delay {delay:g}: {figures['bytes_per_value']:,} B written per value "
                f"(write_bytes {figures['write_bytes_per_value']:,}), "
                f"{figures['values']:,} values in {figures['transactions']:,} transactions, "
                f"{figures['seconds_real']} s"
            )
            if not args.no_documents_run:
                docs = run(template, folder, args, delay, docs_only=True)
                figures["documents_bytes_per_value"] = docs["bytes_per_value"]
                figures["history_bytes_per_value"] = (
                    figures["bytes_per_value"] - docs["bytes_per_value"]
                )
                line += (
                    f"; documents alone {docs['bytes_per_value']:,}, history "
                    f"{figures['history_bytes_per_value']:,}"
                )
            result["runs"][str(delay)] = figures
            print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
