"""Bandwidth traces: loading, splitting, augmenting, and two synthetic mobile generators.

A trace is ``time_seconds<TAB>Mbit_per_s`` per line (blank lines and ``#`` comments ignored).
The FCC traces are fixed broadband; the policy is judged on mobile links, so training mixes
augmented FCC traces (time and bandwidth scaled, noise, inserted outages) with `synth_markov`
(LTE-like levels with fades, handovers and outages). `synth_walk` is a different generator (a
random walk of log-bandwidth with tunnels and periodic handover dips) used only to make
evaluation traces, with its own seeds.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.text import counted
from models.files import data_files

__all__ = [
    "Trace",
    "TraceError",
    "augment",
    "load_dir",
    "load_trace",
    "Scan",
    "scan_dir",
    "split",
    "synth_markov",
    "synth_walk",
    "write_trace",
]


log = logging.getLogger(__name__)


class TraceError(ValueError):
    """A file or folder that is not a usable trace (message says which and why)."""


@dataclass(frozen=True)
class Trace:
    name: str  # a file's path below the folder it was read from
    times: np.ndarray  # seconds, increasing from 0
    mbps: np.ndarray  # Mbit/s, >= 0
    notes: tuple[str, ...] = field(default=(), compare=False)  # what reading it repaired

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0

    def resample(self, dt: float, length: float, offset: float = 0.0) -> np.ndarray:
        """Bandwidth (bit/s) at ``offset + k*dt`` for ``length`` seconds, step-held, looping."""
        n = int(round(length / dt))
        period = max(self.duration, dt)
        t = (offset + np.arange(n) * dt) % period
        idx = np.searchsorted(self.times, t, side="right") - 1
        return np.asarray(self.mbps[np.clip(idx, 0, len(self.mbps) - 1)] * 1e6, dtype=np.float64)


def load_trace(path: str | os.PathLike[str], name: str | None = None) -> Trace:
    """Read one trace file; what was repaired on the way is in ``Trace.notes``.

    Lenient where real logs differ harmlessly from the format and strict where a guess could
    change the figures: a header line is skipped, commas and ``;`` separate like whitespace,
    columns after the second are ignored, rows whose rate is NaN, infinite or negative (or that
    are not numbers after the first line) are dropped and counted, and rows sharing a timestamp
    become one row with their mean rate. Times going backwards, or a file with more unreadable
    rows than samples, or fewer than two samples, is a `TraceError` (the file is not used).
    """
    p = Path(path)
    label = name if name is not None else str(p)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is fine
    except FileNotFoundError:
        raise TraceError(f"{label}: no such file") from None
    except UnicodeDecodeError:
        raise TraceError(f"{label}: not UTF-8 text") from None
    except OSError as exc:
        raise TraceError(f"{label}: {exc.strerror or exc}") from None
    times: list[float] = []
    rates: list[float] = []
    header = ""
    first_bad = ""
    bad_rows = bad_rates = extra_cols = 0
    separators = False
    seen_row = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank lines and '#' comments (a trace's provenance) carry no sample
        parts = _fields(line)
        numbers = _numbers(parts[:2]) if len(parts) >= 2 else None
        if numbers is None:
            if not seen_row:  # the first line of a spreadsheet export names its columns
                seen_row = True
                header = line.strip()[:40]
                continue
            bad_rows += 1
            first_bad = first_bad or f"line {lineno}: {line.strip()[:40]!r}"
            continue
        seen_row = True
        separators = separators or any(c in line for c in ",;")
        extra_cols += len(parts) > 2
        t, r = numbers
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            bad_rates += 1
            continue
        if times and t < times[-1]:
            raise TraceError(
                f"{label}: line {lineno}: times go backwards ({t:g} after {times[-1]:g})"
            )
        times.append(t)
        rates.append(r)
    if bad_rows > len(times):
        raise TraceError(
            f"{label}: not a trace ({bad_rows} lines are not two numbers, first {first_bad})"
        )
    if header and not times:
        raise TraceError(f"{label}: not a trace (no line of two numbers after {header!r})")
    t_arr, r_arr, dups = _merge_equal_times(np.asarray(times), np.asarray(rates))
    if len(t_arr) < 2:
        dropped = [f"{counted(bad_rows, 'line')} not two numbers ({first_bad})"] if bad_rows else []
        dropped += [f"{counted(bad_rates, 'rate')} NaN, infinite or negative"] if bad_rates else []
        why = f" ({'; '.join(dropped)})" if dropped else ""
        raise TraceError(f"{label}: fewer than two samples{why}")
    notes = []
    if header:
        notes.append(f"skipped a header line {header!r}")
    if separators:
        notes.append("read commas or semicolons as separators")
    if extra_cols:
        notes.append(f"ignored the columns after the second on {counted(extra_cols, 'row')}")
    if bad_rows:
        notes.append(f"dropped {counted(bad_rows, 'row')} that are not two numbers ({first_bad})")
    if bad_rates:
        notes.append(f"dropped {counted(bad_rates, 'row')} with a NaN, infinite or negative value")
    if dups:
        notes.append(
            f"merged {counted(dups, 'row')} repeating a timestamp (rows at one time: mean rate)"
        )
    return Trace(p.name if name is None else name, t_arr - t_arr[0], r_arr, notes=tuple(notes))


def _fields(line: str) -> list[str]:
    """A line's fields: split at ``;`` if it has one, else at commas if it has one, else at
    whitespace. One separator per line, so decimal commas (``0,5;1,2`` or ``0,5<TAB>1,2``) are
    never read as two numbers: they fail to parse and are counted, not guessed at."""
    text = line.strip()
    for sep in (";", ","):
        if sep in text:
            return [part.strip() for part in text.split(sep)]
    return text.split()


def _numbers(parts: list[str]) -> tuple[float, float] | None:
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def _merge_equal_times(times: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows sharing a timestamp (mobile logs have them) as one row with their mean rate; the
    number of rows merged away. ``times`` must not decrease."""
    if len(times) < 2 or (np.diff(times) > 0).all():
        return times, rates, 0
    uniq, start, count = np.unique(times, return_index=True, return_counts=True)
    means = np.add.reduceat(rates, start) / count
    return uniq, means, int(len(times) - len(uniq))


@dataclass(frozen=True)
class Scan:
    """What `scan_dir` found: the usable traces (named by their path below the folder) and,
    per unusable file, why it was skipped."""

    traces: list[Trace]
    skipped: dict[str, str]


def scan_dir(path: str | os.PathLike[str]) -> Scan:
    """Every trace file below ``path``, subfolders included, in path order; hidden files and
    folders, README* and LICENSE* are not looked at. A file that is not a usable trace is
    skipped (`Scan.skipped` says why); a folder with no usable trace at all is a `TraceError`."""
    p = Path(path)
    if not p.is_dir():
        raise TraceError(f"{p}: not a folder")
    files = data_files(p)  # sorted by the name: trace i's workload and RTT come from seed + i
    if not files:
        raise TraceError(f"{p}: no trace files")
    traces: list[Trace] = []
    skipped: dict[str, str] = {}
    for rel, file in files:
        try:
            traces.append(load_trace(file, name=rel))
        except TraceError as exc:
            skipped[rel] = str(exc).removeprefix(f"{rel}:").strip()
    if not traces:
        first = next(iter(skipped.items()))
        more = f" (and {counted(len(skipped) - 1, 'other file')})" if len(skipped) > 1 else ""
        raise TraceError(f"{p}: no usable trace: {first[0]}: {first[1]}{more}")
    return Scan(traces, skipped)


def load_dir(path: str | os.PathLike[str]) -> list[Trace]:
    """`scan_dir`'s traces; each skipped file and each repair is logged as a warning."""
    scan = scan_dir(path)
    for rel, why in scan.skipped.items():
        log.warning("%s: skipped %s: %s", path, rel, why)
    for t in scan.traces:
        for note in t.notes:
            log.warning("%s: %s: %s", path, t.name, note)
    return scan.traces


def split(
    traces: list[Trace], holdout: float = 0.25, seed: int = 0
) -> tuple[list[Trace], list[Trace]]:
    """(train, held out), a seeded shuffle by name so the split is the same on every machine."""
    order = sorted(traces, key=lambda t: t.name)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(order))
    n_out = max(1, int(round(len(order) * holdout))) if len(order) > 1 else 0
    out = [order[i] for i in sorted(idx[:n_out])]
    keep = [order[i] for i in sorted(idx[n_out:])]
    return keep, out


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a name may have a folder in it
    lines = [f"{t:.1f}\t{r:.6f}" for t, r in zip(trace.times, trace.mbps, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def augment(trace: Trace, rng: np.random.Generator) -> Trace:
    """Time-scale (0.5-2x), bandwidth-scale (log-uniform 0.1-10x), 1 s multiplicative noise,
    and outages (0-20 s of nothing, about one a minute): a broadband trace made mobile-like."""
    ts = rng.uniform(0.5, 2.0)
    times = trace.times * ts
    grid = np.arange(0.0, times[-1], 1.0)
    idx = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 1)
    rates = trace.mbps[idx] * math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
    rates = rates * rng.lognormal(0.0, rng.uniform(0.05, 0.5), len(rates))
    _outages(rates, rng, per_s=1 / 60)
    return Trace(trace.name + "+aug", grid, np.maximum(rates, 0.0))


def _outages(rates: np.ndarray, rng: np.random.Generator, per_s: float) -> None:
    n = rng.poisson(per_s * len(rates))
    for _ in range(n):
        start = int(rng.integers(0, len(rates)))
        rates[start : start + int(rng.uniform(1, 20))] = 0.0


def synth_markov(rng: np.random.Generator, duration: float = 600.0, name: str = "markov") -> Trace:
    """LTE-like: levels from a log-uniform 0.05-50 Mbit/s held for exp(15 s), lognormal fast
    fading, handover dips (0.5-2 s at 2 %) and outages (2-30 s, about one per 3 minutes)."""
    n = int(duration)
    rates = np.empty(n)
    i = 0
    while i < n:
        level = math.exp(rng.uniform(math.log(0.05), math.log(50.0)))
        hold = max(1, int(rng.exponential(15.0)))
        rates[i : i + hold] = level
        i += hold
    rates *= rng.lognormal(0.0, 0.35, n)
    for _ in range(rng.poisson(n / 40)):
        s = int(rng.integers(0, n))
        rates[s : s + int(rng.uniform(1, 3))] *= 0.02
    _outages(rates, rng, per_s=1 / 180)
    return Trace(name, np.arange(n, dtype=np.float64), np.maximum(rates, 0.0))


def synth_walk(rng: np.random.Generator, duration: float = 600.0, name: str = "walk") -> Trace:
    """Evaluation only, unlike the training generators: an Ornstein-Uhlenbeck walk of
    log-bandwidth around a per-trace mean (0.3-30 Mbit/s), handover dips every 20-90 s
    (vehicle speed), and tunnels (5-40 s of nothing, about one per 5 minutes)."""
    n = int(duration)
    mean = rng.uniform(math.log(0.3), math.log(30.0))
    theta, sigma = rng.uniform(0.02, 0.2), rng.uniform(0.15, 0.6)
    x = mean
    logr = np.empty(n)
    for i in range(n):
        x += theta * (mean - x) + sigma * rng.standard_normal()
        logr[i] = x
    rates = np.exp(logr)
    t = 0.0
    while True:
        t += rng.uniform(20, 90)
        if t >= n:
            break
        rates[int(t) : int(t) + int(rng.uniform(1, 4))] *= 0.01
    for _ in range(rng.poisson(n / 300)):
        s = int(rng.integers(0, n))
        rates[s : s + int(rng.uniform(5, 40))] = 0.0
    return Trace(name, np.arange(n, dtype=np.float64), rates)
