"""A fast uplink simulator: telemetry and alarms through an MQTT connection over a traced link.

Time advances in ticks of ``dt`` (0.1 s); a decision holds for ``interval`` (1 s). Per tick:
arrivals join the backlog; if connected, the decision forms publishes (flush when ``max_batch``
samples wait or the oldest is ``deadline`` old; QoS 1 publishes only while fewer than
``window`` are unacknowledged) and alarms go at once, QoS 1, alone; the link sends bytes FIFO at
the trace's bandwidth. A publish is delivered half a base RTT after its last byte leaves; a
QoS 1 publish is acknowledged one RTT after (a PUBACK down the link, which frees the window).

Connection drops: after ``drop_after`` s without bandwidth, or at random (handover failures).
What sat in the socket is lost if QoS 0; QoS 1 publishes (sent or not, unacknowledged) go again
after the reconnect, which costs a TLS + CONNECT handshake. The backlog (the outbox) keeps
everything not handed to the connection, so QoS 1 is never lost.

Radio energy follows the LTE model of Huang et al. (MobiSys 2012): a promotion (0.26 s at
1.21 W, no data) when data goes out from idle, ``1.288 W + 0.438 W per Mbit/s`` while sending,
and a tail of 11.576 s at 1.06 W after the last activity (a send or an acknowledgement).

Bytes: every publish pays TCP/IP + TLS headers per 1,400-byte segment and the MQTT header; the
payload is one sample (a plain publish) or the batch format of `gateway.optimizer.batch`,
zlib-compressed or not, with ratios measured on real batch payloads (`compression_ratio`).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import random
from dataclasses import dataclass, field

import numpy as np

from gateway.optimizer.actions import Decision
from gateway.optimizer.batch import encode_batch
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.features import LinkStats
from models.optimizer.workload import Workload

__all__ = ["LinkModel", "Packet", "Totals", "UplinkSim", "compression_ratio", "publish_bytes"]

TOPIC = "plant-gw/press-line-4/temperature_zone_12"
BATCH_TOPIC = "protocol-brain/plant-gw/batch"


@dataclass(frozen=True)
class LinkModel:
    base_rtt: float = 0.08
    seg_overhead: int = 69  # IPv4 20 + TCP 20 (+12 options) + TLS record 17
    mss: int = 1400
    ack_bytes: int = 73  # a PUBACK in its own TCP segment
    tcp_ack_bytes: int = 52  # QoS 0: a bare TCP ACK
    reconnect_bytes: int = 6000  # TCP + TLS handshake + CONNECT/CONNACK
    reconnect_time: float = 2.0
    drop_after: float = 3.0  # seconds of no bandwidth before the connection is lost
    drop_rate: float = 1 / 900  # random connection losses per second (handover failures)
    socket_buffer: int = 256 * 1024  # bytes handed to the connection at most
    ack_timeout: float = 3.0
    promo_time: float = 0.26
    promo_power: float = 1.21
    tail_time: float = 11.576
    tail_power: float = 1.06
    tx_base: float = 1.288
    tx_per_mbps: float = 0.438


@functools.cache
def _sample_payload(i: int) -> bytes:
    value = round(20.0 + 5.0 * math.sin(i / 7.0) + (i * 7919 % 97) / 100.0, 3)
    ts = f"2025-03-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.{(i * 37) % 1000:03d}Z"
    doc = {"id": f"plant-gw/cloud/{184467 + i}", "value": value, "quality": "good", "ts": ts}
    doc["unit"] = "degC"
    return json.dumps(doc, separators=(",", ":")).encode()


@functools.cache
def _batch_sizes(n: int) -> tuple[int, int]:
    items = [(TOPIC, _sample_payload(i)) for i in range(n)]
    return len(encode_batch(items)), len(encode_batch(items, compress=True))


_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@functools.cache
def compression_ratio(n: int) -> float:
    """Compressed / plain size of an n-sample batch (zlib 6 on the real format), interpolated."""
    logs = [math.log(g) for g in _GRID]
    ratios = [_batch_sizes(g)[1] / _batch_sizes(g)[0] for g in _GRID]
    return float(np.interp(math.log(max(1, n)), logs, ratios))


@functools.cache
def publish_bytes(n: int, compress: bool) -> int:
    """MQTT packet bytes (header, topic, payload) of a publish carrying n samples."""
    if n == 1 and not compress:
        return 2 + 2 + len(TOPIC) + len(_sample_payload(0))
    per_item = _batch_sizes(64)[0] / 64
    plain = 18 + per_item * n
    payload = plain * compression_ratio(n) if compress else plain
    return int(4 + 2 + len(BATCH_TOPIC) + payload)


class Packet:
    __slots__ = ("alarm", "arrivals", "delivered", "handed", "qos", "rem", "samples", "size")

    def __init__(self, arrivals: list[float], qos: int, size: int, handed: float, alarm: bool):
        self.arrivals = arrivals
        self.samples = len(arrivals)
        self.qos = qos
        self.size = size  # wire bytes, headers included
        self.rem = float(size)
        self.handed = handed
        self.alarm = alarm
        self.delivered = False


@dataclass
class Totals:
    """Physical figures of a run (what the operator sees beside the reward)."""

    samples: int = 0
    alarms: int = 0
    tel_latency: list[float] = field(default_factory=list)
    alarm_latency: list[float] = field(default_factory=list)
    deadline_misses: int = 0
    energy: float = 0.0
    bytes_up: float = 0.0
    bytes_down: float = 0.0
    lost: int = 0
    lost_qos1: int = 0
    cost: float = 0.0
    publishes: int = 0
    batched_samples: int = 0


def _wire(size: int, link: LinkModel) -> int:
    return size + link.seg_overhead * max(1, -(-size // link.mss))


class UplinkSim:
    """One episode: a bandwidth series (bit/s per tick) and a workload."""

    def __init__(
        self,
        bandwidth: np.ndarray,
        workload: Workload,
        weights: RewardWeights | None = None,
        *,
        link: LinkModel | None = None,
        dt: float = 0.1,
        interval: float = 1.0,
        seed: int = 0,
        record: bool = False,
    ) -> None:
        self.bw = bandwidth.tolist()
        self.w = weights or RewardWeights()
        self.link = link or LinkModel()
        self.dt = dt
        self.ticks_per_step = max(1, int(round(interval / dt)))
        self.n_ticks = len(self.bw)
        self.rand = random.Random(seed)
        self.record = record
        self.tel = workload.telemetry.tolist()
        self.alarm_times = workload.alarms.tolist()
        self.tel_i = 0
        self.alarm_i = 0
        self.k = 0  # tick index
        self.queue: collections.deque[float] = collections.deque()
        self.alarm_queue: list[float] = []
        self.fifo: collections.deque[Packet] = collections.deque()
        self.fifo_bytes = 0.0
        self.inflight: collections.deque[tuple[float, Packet]] = collections.deque()
        self.qos1_out = 0  # QoS 1 telemetry publishes handed out, not acknowledged
        self.resend: list[Packet] = []
        self.connected = True
        self.reconnect_at = 0.0
        self.dead_for = 0.0
        self.radio_on = False
        self.promo_until = -1.0
        self.last_active = -1e9
        self.totals = Totals()
        # measured, as the uplink measures them
        self.rtt = 0.0
        self.goodput = 0.0
        self.arrival_rate = 0.0
        self._delivered_bytes = 0.0
        self._arrived = 0
        self.timeouts_seen: set[int] = set()
        self.prev: tuple[int, ...] = (0, 0, 0, 1, 1)

    @property
    def t(self) -> float:
        return self.k * self.dt

    @property
    def done(self) -> bool:
        return self.k >= self.n_ticks

    def stats(self) -> LinkStats:
        t = self.t
        timeouts = sum(1 for _, p in self.inflight if t - p.handed > self.link.ack_timeout)
        timeouts += sum(1 for p in self.fifo if p.qos and t - p.handed > self.link.ack_timeout)
        return LinkStats(
            backlog=len(self.queue),
            backlog_age=t - self.queue[0] if self.queue else 0.0,
            goodput=self.goodput,
            rtt=self.rtt,
            timeouts=timeouts,
            arrival_rate=self.arrival_rate,
            inflight=len(self.inflight) + sum(1 for p in self.fifo if p.qos),
            connected=self.connected,
            prev=self.prev,
        )

    # --- one decision interval ----------------------------------------------------------------

    def step(self, d: Decision) -> float:
        """Run one interval under ``d``; returns its cost (>= 0; the reward is its negative)."""
        tot = self.totals
        cost0 = tot.cost
        self._delivered_bytes = 0.0
        self._arrived = 0
        for _ in range(self.ticks_per_step):
            if self.k >= self.n_ticks:
                break
            self._tick(d)
            self.k += 1
        span = self.ticks_per_step * self.dt
        a = 0.5  # EWMA weight of the newest interval
        self.goodput = (1 - a) * self.goodput + a * self._delivered_bytes / span
        self.arrival_rate = (1 - a) * self.arrival_rate + a * self._arrived / span
        if self.done:
            self._truncate()
        return tot.cost - cost0

    def _tick(self, d: Decision) -> None:
        link, w, tot, dt = self.link, self.w, self.totals, self.dt
        t = self.k * self.dt
        end = t + dt
        bw = self.bw[self.k]
        # arrivals
        tel, i = self.tel, self.tel_i
        q = self.queue
        while i < len(tel) and tel[i] <= t:  # arrived by now (so never sent before arriving)
            q.append(tel[i])
            i += 1
        self._arrived += i - self.tel_i
        tot.samples += i - self.tel_i
        self.tel_i = i
        al, j = self.alarm_times, self.alarm_i
        while j < len(al) and al[j] <= t:
            self.alarm_queue.append(al[j])
            j += 1
        tot.alarms += j - self.alarm_i
        self.alarm_i = j
        # connection state
        self.dead_for = self.dead_for + dt if bw < 1000.0 else 0.0
        if self.connected and (
            self.dead_for >= link.drop_after or self.rand.random() < link.drop_rate * dt
        ):
            self._drop(end)
        if not self.connected and t >= self.reconnect_at and bw >= 1000.0:
            self._reconnect(t)
        # hand publishes to the connection
        if self.connected:
            for a in self.alarm_queue:
                self._hand([a], 1, publish_bytes(1, False), t, alarm=True)
            self.alarm_queue.clear()
            while q and self.fifo_bytes < link.socket_buffer:
                if len(q) < d.max_batch and t - q[0] < d.deadline - 1e-9:
                    break
                if d.qos and self.qos1_out >= d.window:
                    break
                n = min(d.max_batch, len(q))
                arrivals = [q.popleft() for _ in range(n)]
                self._hand(arrivals, d.qos, publish_bytes(n, d.compress), t, alarm=False)
                tot.batched_samples += n
        # send bytes
        sent = 0.0
        busy = 0.0
        if self.connected and self.fifo and bw > 0:
            start = t
            if not self.radio_on:
                self.radio_on = True
                self.promo_until = t + link.promo_time
                tot.energy += link.promo_power * link.promo_time
                tot.cost += w.energy * link.promo_power * link.promo_time
            start = max(t, self.promo_until)
            if start < end:
                cap = bw * (end - start) / 8.0
                rate = bw / 8.0
                fifo = self.fifo
                while fifo and cap > 0:
                    p = fifo[0]
                    take = p.rem if p.rem < cap else cap
                    p.rem -= take
                    cap -= take
                    sent += take
                    if p.rem <= 1e-9:
                        fifo.popleft()
                        self.fifo_bytes -= p.size
                        self._sent(p, start + sent / rate)
                busy = sent / rate
                self.last_active = max(self.last_active, start + busy)
                power = link.tx_base + link.tx_per_mbps * min(bw / 1e6, 10.0)
                tot.energy += power * busy
                tot.cost += w.energy * power * busy
                tot.bytes_up += sent
                tot.cost += w.bytes * sent / 1000.0
        # acknowledgements
        inflight = self.inflight
        while inflight and inflight[0][0] < end:
            at, p = inflight.popleft()
            rtt = at - p.handed
            self.rtt = rtt if self.rtt <= 0 else 0.8 * self.rtt + 0.2 * rtt
            if not p.alarm:
                self.qos1_out -= 1
            tot.bytes_down += link.ack_bytes
            tot.cost += w.bytes * link.ack_bytes / 1000.0
            self.last_active = max(self.last_active, at)
        # radio tail
        if self.radio_on and t >= self.promo_until:
            idle = dt - busy
            tail_left = self.last_active + link.tail_time - t
            if tail_left <= 0:
                self.radio_on = False
            else:
                e = link.tail_power * min(idle, tail_left)
                tot.energy += e
                tot.cost += w.energy * e

    def _hand(self, arrivals: list[float], qos: int, size: int, t: float, *, alarm: bool) -> None:
        wire = _wire(size, self.link)
        p = Packet(arrivals, qos, wire, t, alarm)
        self.fifo.append(p)
        self.fifo_bytes += wire
        self.totals.publishes += 1
        if qos and not alarm:
            self.qos1_out += 1

    def _sent(self, p: Packet, tc: float) -> None:
        """The last byte of ``p`` left at ``tc``."""
        link, w, tot = self.link, self.w, self.totals
        if not p.delivered:
            p.delivered = True
            at = tc + link.base_rtt / 2
            self._deliver(p, at)
        if p.qos:
            self.inflight.append((tc + link.base_rtt, p))
        else:
            tot.bytes_down += link.tcp_ack_bytes
            tot.cost += w.bytes * link.tcp_ack_bytes / 1000.0

    def _deliver(self, p: Packet, at: float) -> None:
        w, tot = self.w, self.totals
        if p.alarm:
            for a in p.arrivals:
                lat = at - a
                tot.cost += w.alarm_latency * lat
                if lat > w.alarm_deadline:
                    tot.deadline_misses += 1
                    tot.cost += w.deadline_miss
                if self.record:
                    tot.alarm_latency.append(lat)
        else:
            s = 0.0
            for a in p.arrivals:
                s += at - a
            tot.cost += w.latency * s
            if self.record:
                tot.tel_latency.extend(at - a for a in p.arrivals)
            self._delivered_bytes += p.size

    def _drop(self, t: float) -> None:
        tot, w = self.totals, self.w
        again: list[Packet] = []
        for _, p in self.inflight:
            again.append(p)
        for p in self.fifo:
            if p.qos:
                again.append(p)
            elif not p.delivered:
                tot.lost += p.samples
                tot.cost += w.loss * p.samples
        for p in again:
            p.rem = float(p.size)
        self.resend = again + self.resend
        self.inflight.clear()
        self.fifo.clear()
        self.fifo_bytes = 0.0
        self.connected = False
        self.reconnect_at = t + self.link.reconnect_time

    def _reconnect(self, t: float) -> None:
        self.connected = True
        hs = Packet([], 0, self.link.reconnect_bytes, t, False)
        self.fifo.append(hs)
        self.fifo_bytes += hs.size
        for p in self.resend:
            p.handed = t
            self.fifo.append(p)
            self.fifo_bytes += p.size
        self.resend = []

    def _truncate(self) -> None:
        """End of episode: whatever has not arrived is charged its age so far (a lower bound);
        so is undelivered alarm traffic. QoS 1 is not lost: it is still in the outbox."""
        t = self.t
        tot, w = self.totals, self.w
        waiting = list(self.queue)
        alarms = list(self.alarm_queue)
        for p in [*self.fifo, *self.resend, *(p for _, p in self.inflight)]:
            if p.delivered:
                continue
            (alarms if p.alarm else waiting).extend(p.arrivals)
        for a in waiting:
            tot.cost += w.latency * (t - a)
            if self.record:
                tot.tel_latency.append(t - a)
        for a in alarms:
            tot.cost += w.alarm_latency * (t - a)
            if t - a > w.alarm_deadline:
                tot.deadline_misses += 1
                tot.cost += w.deadline_miss
            if self.record:
                tot.alarm_latency.append(t - a)
        self.queue.clear()
        self.alarm_queue.clear()
