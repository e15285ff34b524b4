"""Bandwidth traces: loading, splitting, augmenting, and two synthetic mobile generators.

A trace is ``time_seconds<TAB>Mbit_per_s`` per line (blank lines and ``#`` comments ignored).
The FCC traces are fixed broadband; the policy is judged on mobile links, so training mixes
augmented FCC traces (time and bandwidth scaled, noise, inserted outages) with `synth_markov`
(LTE-like levels with fades, handovers and outages). `synth_walk` is a different generator (a
random walk of log-bandwidth with tunnels and periodic handover dips) used only to make
evaluation traces, with its own seeds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Trace",
    "TraceError",
    "augment",
    "load_dir",
    "load_trace",
    "split",
    "synth_markov",
    "synth_walk",
    "write_trace",
]


class TraceError(ValueError):
    """A file or folder that is not a usable trace (message says which and why)."""


@dataclass(frozen=True)
class Trace:
    name: str
    times: np.ndarray  # seconds, increasing from 0
    mbps: np.ndarray  # Mbit/s, >= 0

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


def load_trace(path: str | os.PathLike[str]) -> Trace:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is fine
    except FileNotFoundError:
        raise TraceError(f"{p}: no such file") from None
    except UnicodeDecodeError:
        raise TraceError(f"{p}: not UTF-8 text") from None
    except OSError as exc:
        raise TraceError(f"{p}: {exc.strerror or exc}") from None
    times: list[float] = []
    rates: list[float] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank lines and '#' comments (a trace's provenance) carry no sample
        parts = line.split()
        if len(parts) != 2:
            raise TraceError(f"{p}:{lineno}: expected 'time<TAB>Mbit/s', found {line[:40]!r}")
        try:
            t, r = float(parts[0]), float(parts[1])
        except ValueError:
            raise TraceError(f"{p}:{lineno}: not two numbers: {line[:40]!r}") from None
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            raise TraceError(f"{p}:{lineno}: bandwidth must be a finite number >= 0")
        if times and t <= times[-1]:
            raise TraceError(f"{p}:{lineno}: times must increase")
        times.append(t)
        rates.append(r)
    if len(times) < 2:
        raise TraceError(f"{p}: fewer than two samples")
    t0 = times[0]
    return Trace(p.name, np.asarray(times) - t0, np.asarray(rates))


def load_dir(path: str | os.PathLike[str]) -> list[Trace]:
    p = Path(path)
    if not p.is_dir():
        raise TraceError(f"{p}: not a folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    files = [f for f in files if not f.name.upper().startswith(("README", "LICENSE"))]
    if not files:
        raise TraceError(f"{p}: no trace files")
    return [load_trace(f) for f in files]


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
