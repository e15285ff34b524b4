"""Bounds on what the CoAP server keeps per request it receives, so that a flood cannot grow it.

Why. To answer a retransmitted CON with the response it already sent (RFC 7252 section 4.5),
aiocoap's `MessageManager` (0.4.x) remembers every request by (remote, message ID) for
EXCHANGE_LIFETIME (247 s): a dict entry that comes to hold the response (which refers to its
request), and one loop timer per request to forget it. Nothing caps that, and source addresses
can be spoofed: a flood of CONs with fresh message IDs holds arrival rate x 247 s of them
(13 MB/s at one flood's rate), and Python keeps the memory for itself once they go.

What instead. `FloodLimits.install` replaces that manager's two duplicate-detection methods
(``_deduplicate_message``, ``_store_response_for_duplicates``; aiocoap's dict stays, empty).
Requests are remembered in two insertion-ordered tables, so expiry takes entries off the front
(one sweep timer in all, not one per request), each with its own cap:

- safe requests (GET, FETCH): when full, the oldest entry is forgotten early. A retransmission
  of it is then rendered again, which RFC 7252 section 4.5 allows for idempotent requests: the
  client gets the current value. At the cap (10,000) that happens only to exchanges older than
  cap / arrival rate, past a CON's retransmission span (45 s) below 222 GETs a second.
- unsafe requests (PUT, POST, DELETE, PATCH, iPATCH; and every OSCORE request, whose outer
  code is POST or FETCH): never forgotten while a client may still retransmit them
  (MAX_TRANSMIT_SPAN, 45 s), so a retransmitted PUT is never written twice. When full, the
  oldest is forgotten if it is older than that, else a new one is dropped (no ACK: a CON client
  retransmits it later): up to cap / 45 s (222) a second are served. A GET flood cannot touch
  this table.

And before either, a token bucket caps new requests for the whole server (not per address:
addresses can be spoofed): beyond ``rate`` a second (``burst`` at once) a request is dropped
unanswered. Duplicates, and the ACKs and RSTs to our notifications, do not count. Drops are
counted (`FloodLimits.dropped`) and logged at most once per `LOG_INTERVAL`.

Observations (RFC 7641). aiocoap's `ObservableResource` keeps every observation it is asked for
until the client cancels it or a confirmable notification to it fails: one registered with a NON
request, or from an address that stays silent while the value does not change, stays for ever,
and each costs a notification per change (10,000 took 29 MB). `ObserveLimits` caps them:
``total`` (10,000) for the server and ``per_remote`` (100) per host (its address, whatever the
port: one host opening many sockets is still one), so that one client cannot take them all
(spoofed addresses can still take the total: that is the bound; a spoofed registration holds
its slot until a CON notification to it fails, within `server.CONFIRM_INTERVAL`). No
cap per resource: the total already bounds what one change costs, and a flood would only spread
over the resources. A registration beyond a cap is answered as a plain GET, without the Observe
option (RFC 7641 section 4.1), so the client knows it is not registered; refusals are counted
and logged as the drops are. A re-registration (the same token from the same endpoint, which
aiocoap treats as replacing the old one) keeps its one slot (over OSCORE, whose inner request has
no token, aiocoap ends the old one, which frees it, before the new one registers); an
observation that ends for any reason (a GET with Observe 1, an RST or a failed CON notification,
an error response, shutdown) frees its slot through aiocoap's cancellation callback.
Observations are not expired by age: an idle one is legitimate, and only an unacknowledged CON
notification (RFC 7641 section 4.5) tells a vanished client from a quiet one, which is why the
server sends one now and then to every observation, NON and quiet ones included (see
protocols/coap/server.py, "Vanished observers").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.streak import LogQuota
from gateway.text import counted

log = logging.getLogger(__name__)

#: RFC 7252 section 4.8.2, as aiocoap's default TransportTuning
EXCHANGE_LIFETIME = 247.0
#: RFC 7252 section 4.8.2: after this long a client retransmits a CON no more
MAX_TRANSMIT_SPAN = 45.0
#: CoAP request codes that are safe (RFC 7252 section 5.8, RFC 8132 for FETCH)
SAFE_CODES = frozenset({1, 5})  # GET, FETCH
#: Seconds between two log lines about dropped requests
LOG_INTERVAL = 10.0
#: Seconds between two sweeps of expired entries (while any are held)
SWEEP_INTERVAL = 5.0

_Key = tuple[Any, int]  # (remote, message ID)


class _Entry:
    __slots__ = ("expires", "response")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.response: Any = None  # the aiocoap.Message sent in answer, once there is one


class FloodLimits:
    """Duplicate detection with capped tables, and a rate limit on new requests; installed on
    the aiocoap message managers of one server context."""

    def __init__(
        self,
        name: str,
        *,
        rate: float = 2000.0,
        burst: float = 2000.0,
        safe_limit: int = 10_000,
        unsafe_limit: int = 10_000,
        lifetime: float = EXCHANGE_LIFETIME,
    ) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.lifetime = lifetime
        self.limits = {True: safe_limit, False: unsafe_limit}
        #: by safe (True) or unsafe (False): (remote, mid) -> entry, oldest first
        self.tables: dict[bool, OrderedDict[_Key, _Entry]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }
        self.dropped = {"rate": 0, "full": 0}  # since start
        self.forgotten = 0  # safe entries forgotten early, since start
        self._loop = asyncio.get_running_loop()
        self._tokens = burst
        self._filled = self._loop.time()
        # a flood's first line at once, then at most one per interval, with the count since
        self._log = LogQuota(self._say, quota=1, interval=LOG_INTERVAL)
        self._sweep_timer: asyncio.TimerHandle | None = None

    def held(self) -> int:
        """Requests remembered now, in both tables."""
        return sum(len(t) for t in self.tables.values())

    def install(self, context: Any) -> int:
        """Take over duplicate detection in each of ``context``'s message managers (aiocoap
        0.4.x); how many. One without the expected methods is left as it is, with a warning."""
        from aiocoap.messagemanager import MessageManager

        needed = ("_deduplicate_message", "_store_response_for_duplicates", "_send_initially")
        count = 0
        for interface in context.request_interfaces:
            manager = getattr(interface, "token_interface", None)
            if not isinstance(manager, MessageManager):
                continue
            if not all(hasattr(manager, a) for a in needed):
                log.warning("%s: this aiocoap's duplicate detection is not bounded", self.name)
                continue

            def deduplicate(message: Any, manager: Any = manager) -> bool:
                return self.deduplicate(manager, message)

            manager._deduplicate_message = deduplicate
            manager._store_response_for_duplicates = self.store
            count += 1
        return count

    def close(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        self._log.close()
        for table in self.tables.values():
            table.clear()

    # -- aiocoap's MessageManager calls these

    def deduplicate(self, manager: Any, message: Any) -> bool:
        """True when ``message`` (a request) goes no further: a duplicate (a CON's stored
        response is sent again), or dropped. As aiocoap's ``_deduplicate_message``."""
        from aiocoap.numbers.types import CON

        now = self._loop.time()
        key = (message.remote, message.mid)
        safe = int(message.code) in SAFE_CODES
        table = self.tables[safe]
        entry = table.get(key)
        if entry is not None and entry.expires > now:
            if message.mtype is CON and entry.response is not None:
                manager._send_initially(entry.response)  # its mid kept: not via send_message
            return True
        if not self._admit(now):
            self._drop("rate")
            return True
        self._expire(table, now)
        if len(table) >= self.limits[safe]:
            oldest = next(iter(table.values()))
            if not safe and now - (oldest.expires - self.lifetime) < MAX_TRANSMIT_SPAN:
                self._drop("full")  # it may still come again: it must not run twice
                return True
            table.popitem(last=False)
            self.forgotten += 1
        table.pop(key, None)  # an expired one: the new entry goes to the end
        table[key] = _Entry(now + self.lifetime)
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        return False

    def store(self, message: Any) -> None:
        """Keep a response for the duplicates of its request (as aiocoap's
        ``_store_response_for_duplicates``: every message sent comes through here)."""
        key = (message.remote, message.mid)
        for table in self.tables.values():
            entry = table.get(key)
            if entry is not None:
                entry.response = message
                return

    # -- inside

    def _admit(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _expire(self, table: OrderedDict[_Key, _Entry], now: float) -> None:
        while table:
            key, entry = next(iter(table.items()))
            if entry.expires > now:
                return
            del table[key]

    def _sweep(self) -> None:
        now = self._loop.time()
        for table in self.tables.values():
            self._expire(table, now)
        self._sweep_timer = None
        if self.held():
            self._sweep_timer = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _drop(self, why: str) -> None:
        self.dropped[why] += 1
        if self._log.allow():
            self._say(1)

    def _say(self, count: int) -> None:
        log.warning(
            "%s: %s dropped unanswered, a flood? Since start: %d over the limit of %g new"
            " requests a second (max_request_rate), %d PUTs (or other unsafe requests) with the"
            " most, %d, remembered (max_exchanges); legitimate traffic this high: raise them",
            self.name,
            counted(count, "CoAP request"),
            self.dropped["rate"],
            self.rate,
            self.dropped["full"],
            self.limits[False],
        )


class ObserveLimits:
    """Caps on the observations one server holds, in all and per remote endpoint; see the module
    docstring. The server's observable resources register through `add`."""

    def __init__(self, name: str, *, total: int = 10_000, per_remote: int = 100) -> None:
        self.name = name
        self.total = total
        self.per_remote = per_remote
        self.refused = 0  # registrations answered without Observe, since start
        #: (endpoint, token) -> the mark of the observation that holds the slot now
        self._held: dict[tuple[Any, object], object] = {}
        self._by_remote: dict[Any, int] = {}  # host -> slots held
        self._log = LogQuota(self._say, quota=1, interval=LOG_INTERVAL)

    def held(self) -> int:
        """Observations held now."""
        return len(self._held)

    async def add(
        self,
        add: Callable[[Any, Any], Awaitable[None]],
        request: Any,
        serverobservation: Any,
    ) -> None:
        """Register ``serverobservation`` (aiocoap's) through ``add`` (the resource's own
        ``add_observation``) if the caps allow; else let aiocoap answer without Observe."""
        release = self.admit(request.remote, request.token)
        if release is None:
            # aiocoap 0.4.x: an early deregistration makes the first response the only one,
            # without the Observe option (not accepting at all fails in aiocoap's cleanup)
            serverobservation.accept(_nothing)
            serverobservation.deregister()
            return
        try:
            await add(request, serverobservation)
        finally:
            accepted = serverobservation._accepted
            if not accepted:
                release()
        if not accepted:
            return
        cancel = serverobservation._cancellation_callback  # the resource's: it forgets the observer

        def cancelled() -> None:
            try:
                cancel()
            finally:
                release()

        serverobservation.accept(cancelled)

    def admit(self, remote: Any, token: bytes) -> Callable[[], None] | None:
        """Take a slot for an observation by ``remote`` with ``token``; the function that frees
        it (any number of calls), or None when a cap is reached (counted and logged)."""
        endpoint = getattr(remote, "underlying_address", None)  # OSCORE's: the UDP peer
        if endpoint is None:
            key: tuple[Any, object] = (remote, token)
            endpoint = remote
        else:  # OSCORE's inner request has no token (b""): each its own; aiocoap ends a renewed one
            key = (endpoint, object())
        sockaddr = getattr(endpoint, "sockaddr", None)
        host = sockaddr[0] if isinstance(sockaddr, tuple) and sockaddr else endpoint
        if key not in self._held:  # else a re-registration: it takes over the slot
            held = self._by_remote.get(host, 0)
            if len(self._held) >= self.total or held >= self.per_remote:
                self.refused += 1
                if self._log.allow():
                    self._say(1)
                return None
            self._by_remote[host] = held + 1
        mark = self._held[key] = object()

        def release() -> None:
            if self._held.get(key) is not mark:  # freed already, or taken over
                return
            del self._held[key]
            left = self._by_remote.pop(host) - 1
            if left:
                self._by_remote[host] = left

        return release

    def close(self) -> None:
        self._log.close()
        self._held.clear()
        self._by_remote.clear()

    def _say(self, count: int) -> None:
        log.warning(
            "%s: %s answered without Observe (a cap on observations reached), a flood?"
            " Since start: %d refused; at most %d observations in all, %d per host"
            " (max_observations, max_observations_per_client)",
            self.name,
            counted(count, "CoAP observe registration"),
            self.refused,
            self.total,
            self.per_remote,
        )


def _nothing() -> None:
    pass
