"""Liveness and readiness for container probes: ``GET /health``, ``/ready`` and ``/status``.

Served by the metrics listener (``gateway.metrics``, `gateway.metrics.MetricsServer`), so one
port answers Prometheus and the orchestrator (Kubernetes' probes, Docker's HEALTHCHECK, Nomad's
checks), which read the status code: 2xx passes, anything else (or no answer) fails.

- ``/health``, liveness: a failure restarts the process, so it fails only where a restart
  helps. 200 while the gateway starts and runs: the answer itself proves the event loop turns.
  503 when the loop is pathologically late (`gateway.looplag`): the 99th percentile of its last
  minute of heartbeats is ``metrics.liveness_lag`` (10 s, `LIVE_LAG_MS`, by default) or more,
  a loop that spends its time in long stalls (a plugin's blocking call, repeated) yet answers
  in between. A busy gateway, its loop a few hundred ms late, passes: restarted, it would come
  back as busy, its sessions lost. A loop blocked for good answers nothing, which the probe's
  own timeout counts as a failure. A device that is down never fails it: that is readiness,
  and a restart does not bring it back.
- ``/ready``, readiness: 503 while the gateway starts (a reload's start too), then 200 when
  every enabled device and endpoint is up by the rule that ``gateway status`` and the status
  line read too (`gateway.down`), else 503 naming each that is down and why.
  ``?require=any`` (at least one up) or ``?require=none`` (started is enough) relax it;
  ``?only=a,b`` counts those entries alone. A name the gateway does not have, or another
  ``require``, is a 400 that says so.
- ``/status``: the document the status file holds (``gateway status --json``), as of now.

The verdicts are pure functions of the status; `Probes` binds them to a running gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from gateway.down import down
from gateway.metrics import Route

__all__ = ["LIVE_LAG_MS", "Probes", "down", "liveness", "readiness"]

# ms of event-loop lag, at the 99th percentile of the last minute, from which /health fails
# by default (``metrics.liveness_lag``): 6 heartbeats in 600 (or more) came 10 s late.
# systemd's watchdog kills a loop blocked 30 s.
LIVE_LAG_MS = 10_000.0
REQUIRE = ("all", "any", "none")

Verdict = tuple[int, dict[str, Any]]  # the HTTP status and the JSON body


def liveness(
    started: bool, loop: Mapping[str, Any] | None, limit_ms: float = LIVE_LAG_MS
) -> Verdict:
    """``/health``: ``loop`` is `LoopMonitor.figures` (None without a monitor); ``limit_ms``,
    the lag from which it fails."""
    doc: dict[str, Any] = {"status": "ok", "state": "running" if started else "starting"}
    if loop:
        doc["loop"] = dict(loop)
    lag = (loop or {}).get("lag_ms_p99")
    if isinstance(lag, int | float) and lag >= limit_ms:
        doc["status"] = "unhealthy"
        doc["reason"] = (
            f"the event loop ran {lag:.0f} ms late (99th percentile of its last minute; the"
            f" limit is {limit_ms:.0f} ms): something blocks it again and again; the log"
            " names the code"
        )
        return 503, doc
    return 200, doc


def readiness(
    query: Mapping[str, str], names: Collection[str], adapters: Mapping[str, Any] | None
) -> Verdict:
    """``/ready``: ``names``, the gateway's enabled devices and endpoints; ``adapters``, their
    status (``status["adapters"]``), None while the gateway starts."""
    require = query.get("require", "all")
    if require not in REQUIRE:
        return _bad(f"require={require!r}: expected one of {', '.join(REQUIRE)}")
    only = [n for n in query.get("only", "").split(",") if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        there = ", ".join(sorted(names)) or "none"
        return _bad(f"only: no device or endpoint named {', '.join(unknown)} (there are: {there})")
    doc: dict[str, Any] = {"require": require}
    if only:
        doc["only"] = only
    if adapters is None:
        return 503, {"status": "starting", **doc, "reason": "the gateway is starting"}
    counted = only or list(adapters)
    everything_down = down(adapters)
    off = {n: everything_down[n] for n in counted if n in everything_down}
    up = [n for n in counted if n not in off]
    ready = {"all": not off, "any": bool(up) or not counted, "none": True}[require]
    doc.update(up=up, down=off)
    if ready:
        return 200, {"status": "ready", **doc}
    why = "; ".join(f"{n}: {reason}" if reason else n for n, reason in off.items())
    return 503, {"status": "not ready", **doc, "reason": f"down: {why}"}


def _bad(reason: str) -> Verdict:
    return 400, {"status": "bad request", "reason": reason}


class Probes:
    """The routes of one gateway for `MetricsServer`: ``/health``, ``/ready``, ``/status``.

    ``started``: whether every adapter has started; ``status``: the gateway's status (called
    only once started: before, an adapter has not entered and may not answer);
    ``loop``: the loop monitor's figures, if there is one; ``snapshot``: the status file's
    document, as of now; ``live_lag_ms``: the lag from which ``/health`` fails."""

    def __init__(
        self,
        *,
        gateway: str,
        names: Collection[str],
        started: Callable[[], bool],
        status: Callable[[], Mapping[str, Any]],
        snapshot: Callable[[], Mapping[str, Any]],
        loop: Callable[[], Mapping[str, Any]] | None = None,
        live_lag_ms: float = LIVE_LAG_MS,
    ) -> None:
        self.gateway = gateway
        self.names = frozenset(names)
        self._started = started
        self._status = status
        self._snapshot = snapshot
        self._loop = loop
        self.live_lag_ms = live_lag_ms

    def routes(self) -> dict[str, Route]:
        return {"/health": self.health, "/ready": self.ready, "/status": self.status}

    def health(self, query: Mapping[str, str]) -> Verdict:
        loop = self._loop() if self._loop is not None else None
        code, doc = liveness(self._started(), loop, self.live_lag_ms)
        return code, {"gateway": self.gateway, **doc}

    def ready(self, query: Mapping[str, str]) -> Verdict:
        adapters = self._status()["adapters"] if self._started() else None
        code, doc = readiness(query, self.names, adapters)
        return code, {"gateway": self.gateway, **doc}

    def status(self, query: Mapping[str, str]) -> Verdict:
        return 200, dict(self._snapshot())
