"""The running gateway's counters for Prometheus: ``GET /metrics`` (``gateway.metrics:``).

The same figures as the status file (`gateway status`), scraped over HTTP in Prometheus' text
format 0.0.4, so a fleet's gateways land in the dashboards and alerts its operators already
have. Every number in an adapter's, a bridge's or a section's status becomes one sample:
``protocol_brain_adapter_polls_total{adapter="plc",protocol="modbus",role="client"} 120``, a
nested key joined with ``_`` (``protocol_brain_adapter_outbox_backlog``), true/false as 1/0;
texts and lists are left out. The names follow the status keys, so a plugin's counters appear
without code of its own. Each family is typed from `KINDS`, the gateway's own status keys:
``counter`` (it only grows, and its name ends in ``_total``; a restart of its part starts it
again at zero, which ``rate()`` takes as a reset) or ``gauge``. A plugin's keys are typed by its
adapter's ``metric_kinds``, and are ``untyped`` otherwise, as is a family whose samples
disagree. Plus the process' own (``process_resident_memory_bytes`` and the rest of the names
Prometheus' client libraries use), read from /proc where there is one.

Rendering (`exposition`) is free of I/O; `MetricsServer` is a small HTTP/1.1 responder on the
event loop (the status is read where it changes, never from another thread), for one scraper
or a few, and for the container probes of `gateway.health` (``/health``, ``/ready``,
``/status``) on the same port: at most `MAX_CLIENTS` connections at once (a newcomer takes the
place of one that has sent nothing), `READ_TIMEOUT` to send a request, `WRITE_TIMEOUT` to take
the answer, each answer computed at most once per `CACHE_S`. No authentication or TLS: it
listens on 127.0.0.1 unless told otherwise (a reverse proxy or the firewall guards another
address).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl

from gateway.streak import FailureStreak

log = logging.getLogger("gateway.metrics")

PREFIX = "protocol_brain_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192  # bytes of request line and headers; a scraper sends a few hundred
READ_TIMEOUT = 2.0  # seconds for a request to arrive (a scraper sends it at once)
WRITE_TIMEOUT = 10.0  # seconds for the client to take the answer
MAX_CLIENTS = 8
CACHE_S = 1.0  # scrapers in a burst (several Prometheus replicas) share one page
MAX_CACHED = 32  # answers kept for CACHE_S, one per path and query
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")
Labels = tuple[tuple[str, str], ...]
MetricKind = Literal["counter", "gauge"]

# What the gateway's own status keys are. A sample takes the kind of the first part of its key
# path found here, from the top: ``writes_refused`` covers its reasons and ``exceptions`` its
# codes, while ``outbox`` and ``anomaly`` are not here so their keys speak for themselves.
_COUNTERS = (
    # adapters
    "polls polls_missed requests errors timeouts reconnects samples writes published"
    " acknowledged dropped lost encode_errors received bad_payloads connections_total"
    " connections_refused connections_evicted connections_idle_closed exceptions frame_errors"
    " writes_ok writes_refused registrations notifications notifications_sent refused"
    " observe_refused create_requests publishes updates logins_refused certificates_refused"
    " births deaths rebirths historical bad_commands bad_states stale_states sessions_ended"
    " seq_gaps not_born unknown_metrics stale_deaths type_errors over_max_points rebirths_asked"
    " name_collisions state_republished failovers run_failures history_reads history_values"
    " history_errors failbacks left_out expired too_large broadcasts alarm_events sessions_lost"
    " alarm_acks alarm_confirms events events_dropped condition_refreshes stale_updates"
    " future_updates untimed_updates windows late resent forgotten user_property_errors"
    " events_served acks_forwarded acks_refused conditions_gone condition_calls frames_ignored"
    " read_pauses unwanted unsubscribed requests_dropped retries"
    " sessions_expired passthrough_requests passthrough_writes passthrough_refused"
    " passthrough_busy passthrough_errors alarm_shelves alarm_unshelves alarm_events_suppressed"
    # outbox, optimizer, bridges, bus, shadow, loop
    " dropped_by_reason decisions forwarded failed scored_samples alarms computed skipped"
    " unrouted attempted succeeded reported rejected record_errors history_skipped"
    " history_merges history_capped stalls"
)
_GAUGES = (
    "connected inflight queued points_refused port connections map_entries map_errors"
    " observations items sessions variables bdSeq seq buffered online timestamp waiting"
    " nodes_online nodes_offline devices_online devices_offline points_learnt backlog"
    " backlog_bytes oldest_age_s disk_full drain_rate retrying max_qos retain_available"
    " max_packet_size topic_aliases topic_alias_max session_present open_windows tracked"
    " decision decide_ms_mean rows_per_publish_recent rtt_s devices writing history_paused"
    " history_staged history_merge_failing documents_paused documents_unsaved lag_ms_p50"
    " lag_ms_p99 lag_ms_max line_open requests_queued state_will_up"
    " passthrough_queued alarms_shelved"
)
KINDS: dict[str, MetricKind] = {
    **dict.fromkeys(_COUNTERS.split(), "counter"),
    **dict.fromkeys(_GAUGES.split(), "gauge"),
}
_PROCESS_KINDS: dict[str, MetricKind] = {"process_cpu_seconds_total": "counter"}


def exposition(
    status: Mapping[str, Any],
    *,
    gateway: str,
    version: str,
    started: float,
    entries: Mapping[str, tuple[str, str]],
    process: Mapping[str, float] | None = None,
    kinds: Mapping[str, Mapping[str, MetricKind]] | None = None,
) -> str:
    """The text page for ``status`` (`Gateway.status`); ``entries``: each adapter's
    (protocol, role) for its labels; ``process``: `process_metrics`; ``kinds``: an adapter's
    own `KINDS` for its keys (``Adapter.metric_kinds``), looked up before ours."""
    families: dict[str, list[tuple[Labels, float, MetricKind | None]]] = {}

    def add(name: str, labels: Labels, value: float, kind: MetricKind | None) -> None:
        families.setdefault(name, []).append((labels, value, kind))

    add(PREFIX + "info", (("gateway", gateway), ("version", version)), 1, "gauge")
    add(PREFIX + "start_time_seconds", (), started, "gauge")
    for section, value in status.items():
        if section == "adapters" and isinstance(value, Mapping):
            for name, counters in value.items():
                protocol, role = entries.get(name, ("", ""))
                labels = (("adapter", name), ("protocol", protocol), ("role", role))
                own = (kinds or {}).get(name, {})
                for path, number in _numbers(counters):
                    add(f"{PREFIX}adapter_{_joined(path)}", labels, number, _kind(path, own))
        elif section == "bridges" and isinstance(value, Mapping):
            for name, counters in value.items():
                for path, number in _numbers(counters):
                    add(f"{PREFIX}bridge_{_joined(path)}", (("bridge", name),), number, _kind(path))
        elif isinstance(value, Mapping):
            for path, number in _numbers(value, (section,)):
                add(PREFIX + _joined(path), (), number, _kind(path))
    for name, number in (process or {}).items():
        add(name, (), number, _PROCESS_KINDS.get(name, "gauge"))
    lines = []
    for name, samples in families.items():
        found = {kind for _, _, kind in samples}
        kind = found.pop() if len(found) == 1 else None
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"  # the counters' suffix in Prometheus' conventions and OpenMetrics
        lines.append(f"# TYPE {name} {kind or 'untyped'}")
        lines.extend(f"{name}{_labels(labels)} {_value(v)}" for labels, v, _ in samples)
    return "\n".join(lines) + "\n"


def _numbers(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """(key path, number) for every number or bool in a status value."""
    if isinstance(value, int | float):  # bools included, as 1 and 0
        if path:
            yield path, float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, (*path, str(key)))


def _kind(path: tuple[str, ...], own: Mapping[str, MetricKind] | None = None) -> MetricKind | None:
    for part in path:
        kind = (own or {}).get(part) or KINDS.get(part)
        if kind in ("counter", "gauge"):  # a plugin's typo must not break the page
            return kind
    return None


def _joined(path: tuple[str, ...]) -> str:
    return "_".join(_name(part) for part in path)


def _name(text: str) -> str:
    name = _NOT_NAME.sub("_", text)
    return f"_{name}" if name[:1].isdigit() else name


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(number: float) -> str:
    number = float(number)  # an int from a caller, in Python 3.11 without is_integer
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def process_metrics() -> dict[str, float]:
    """The process' memory, threads, CPU time and file descriptors, under the names of
    Prometheus' client libraries; empty where /proc is not there."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    found["process_resident_memory_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("VmSize:"):
                    found["process_virtual_memory_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    found["process_threads"] = int(line.split()[1])
        found["process_open_fds"] = len(os.listdir("/proc/self/fd"))
        times = os.times()
        found["process_cpu_seconds_total"] = times.user + times.system
        with open("/proc/self/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    found["process_max_fds"] = int(line.split()[3])
    return found


class Answer(NamedTuple):
    code: int  # the HTTP status
    content_type: str
    body: bytes


# A path besides /metrics: the query's parameters -> the HTTP status and a JSON document.
Route = Callable[[Mapping[str, str]], tuple[int, Mapping[str, Any]]]


class MetricsServer:
    """Answers ``GET /metrics`` with ``page()``, and each path of ``routes`` with the JSON its
    function returns (``/health``, ``/ready``, ``/status``: `gateway.health`); HEAD as GET
    without the body, another path 404 (the body names those here), another method 405.

    A connection that has not sent its request yet gives its place to a newcomer when all
    `MAX_CLIENTS` are taken (the oldest such goes), so idle connections cannot lock scrapers
    and probes out; one whose answer the client does not take within `WRITE_TIMEOUT` is
    dropped. Each answer is computed at most once per `CACHE_S` (per path and query)."""

    def __init__(
        self,
        host: str,
        port: int,
        page: Callable[[], str],
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._page = page
        self._routes = dict(routes or {})
        self._server: asyncio.Server | None = None
        # each connection's task -> its writer, and whether its request has arrived (oldest first)
        self._clients: dict[asyncio.Task[None], tuple[asyncio.StreamWriter, bool]] = {}
        self._cached: dict[str, tuple[float, Answer]] = {}  # path?query -> (when, answer)
        self._failing = FailureStreak(log, "metrics server")
        self.scrapes = 0

    @property
    def paths(self) -> list[str]:
        return ["/metrics", *self._routes]

    async def __aenter__(self) -> MetricsServer:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "metrics on http://%s:%d/metrics%s",
            self.host,
            self.port,
            f" (and {', '.join(self.paths[1:])})" if self._routes else "",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        # Dropped, not cancelled: each task ends on its own (asyncio logs a cancelled one).
        for writer, _ in list(self._clients.values()):
            writer.transport.abort()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or not self._make_room():
            writer.transport.abort()  # every place serves a request: a scraper retries later
            return
        self._clients[task] = (writer, False)
        try:
            head = await asyncio.wait_for(_read_head(reader), READ_TIMEOUT)
            self._clients[task] = (writer, True)
            await asyncio.wait_for(self._answer(head, writer), WRITE_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.transport.abort()  # gone, too slow or too much: nothing more to say
        finally:
            self._clients.pop(task, None)
            writer.close()

    def _make_room(self) -> bool:
        if len(self._clients) < MAX_CLIENTS:
            return True
        for task, (writer, asked) in self._clients.items():
            if not asked:
                del self._clients[task]  # its place is the newcomer's now
                writer.transport.abort()  # its read fails, and its task ends
                return True
        return False

    async def _answer(self, head: str, writer: asyncio.StreamWriter) -> None:
        method, _, rest = head.partition(" ")
        target, _, query = rest.partition(" ")[0].partition("?")
        if target not in self.paths:
            here = f"not found; here: {' '.join(self.paths)}\n"
            answer = Answer(404, TEXT_TYPE, here.encode())
        elif method not in ("GET", "HEAD"):
            answer = Answer(405, TEXT_TYPE, f"GET or HEAD {target}\n".encode())
        else:
            answer = self._get(target, query)
        await _respond(writer, answer, head_only=method == "HEAD")

    def _get(self, target: str, query: str) -> Answer:
        key = f"{target}?{query}"
        now = time.monotonic()
        at, answer = self._cached.get(key, (-math.inf, None))
        if answer is not None and now - at < CACHE_S:
            return answer
        try:
            if target == "/metrics":
                answer = Answer(200, CONTENT_TYPE, self._page().encode())
                self.scrapes += 1
            else:
                code, doc = self._routes[target](dict(parse_qsl(query, keep_blank_values=True)))
                body = json.dumps(doc, default=str, separators=(",", ":")) + "\n"
                answer = Answer(code, JSON_TYPE, body.encode())
        except Exception as exc:  # a bug of ours: this answer fails, the gateway goes on
            self._failing.failed(f"GET {target} failed: {exc!r}")
            return Answer(500, TEXT_TYPE, b"internal error: the gateway's log says which\n")
        self._failing.succeeded()
        if len(self._cached) >= MAX_CACHED:  # the queries are the clients' to choose
            self._cached.clear()
        self._cached[key] = (now, answer)
        return answer


async def _read_head(reader: asyncio.StreamReader) -> str:
    """The request line of a request whose headers arrived whole (the reader's limit,
    `MAX_REQUEST`, raises LimitOverrunError past it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1")


async def _respond(writer: asyncio.StreamWriter, answer: Answer, *, head_only: bool) -> None:
    lines = [
        f"HTTP/1.1 {answer.code} {HTTPStatus(answer.code).phrase}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        "Cache-Control: no-store",  # a probe's answer is about now
        "Connection: close",
    ]
    if answer.code == 405:
        lines.append("Allow: GET, HEAD")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    if not head_only:
        writer.write(answer.body)
    await writer.drain()
