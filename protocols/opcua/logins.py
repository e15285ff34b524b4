"""Password logins of the OPC UA server: the scrypt check off the event loop, a backoff per peer
address after failed logins, and a quota on the lines refusals log.

An audit: 6 clients sending wrong passwords for 20 s made 487 attempts, each an scrypt check
(~42 ms, `gateway.passwords.verify_password`) on the event loop (its lag p99 200 ms) and a
warning line without the peer's address. Now:

- after `FAILURES_ALLOWED` failed logins in a row from one address, its further logins are
  refused without a check for a backoff that starts at `BACKOFF_FIRST` seconds and doubles
  with each failed check after it, up to `BACKOFF_MAX`; a successful login ends it. A refusal
  answers as a wrong password does (BadUserAccessDenied), so the client learns nothing more;
- the check runs in a worker thread (`check`, at most `CHECKS_AT_ONCE` at a time: scrypt
  releases the GIL but takes 16 MiB and a core each). asyncua asks its user manager
  synchronously (``UserManager.get_user``, from ``InternalSession.activate_session``, which
  its processor calls without awaiting), so the server's message processor checks the
  password before it hands the ActivateSession request on, and the user manager takes that
  verdict (`checked`);
- a refusal's warning names the peer's address; at most `LOG_QUOTA` of them a `LOG_WINDOW`,
  then one line counts the rest, with the addresses they came from.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.passwords import verify_password
from gateway.streak import LogQuota

log = logging.getLogger("protocols.opcua.server")  # the server's lines, under its name

FAILURES_ALLOWED = 5  # failed logins in a row from one address before its backoff
BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 60.0
CHECKS_AT_ONCE = 2
PEERS_MAX = 10_000  # addresses remembered; the oldest are forgotten past this
LOG_QUOTA = 5
LOG_WINDOW = 60.0
ADDRESSES_SHOWN = 5

# A valid hash no password matches: a wrong name costs as much as a wrong password, so names
# cannot be probed by timing.
DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


@dataclass(frozen=True)
class Verdict:
    """A password checked for one ActivateSession request, before asyncua asks for it."""

    peer: str
    username: str | None = None
    password: str | None = None
    ok: bool | None = None  # None: not checked (a blocked address, or no user token)
    # refused unchecked: the address was blocked when the request came (its block may end
    # before asyncua asks, which must not then check on the loop)
    blocked: bool = False


# The login being activated by the task at hand: set by the message processor around its
# ActivateSession request, read by the user manager asyncua calls synchronously within it.
CURRENT: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar(
    "opcua_login", default=None
)


@contextmanager
def activating(verdict: Verdict) -> Iterator[None]:
    token = CURRENT.set(verdict)
    try:
        yield
    finally:
        CURRENT.reset(token)


@dataclass
class _Peer:
    failures: int = 0  # failed checks in a row
    until: float = 0.0  # logins refused unchecked until then (monotonic)


class Logins:
    """The users of one server (name -> scrypt hash) and the state of their logins."""

    def __init__(
        self, hashes: dict[str, str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.hashes = hashes
        self.clock = clock
        self.refused = 0  # logins refused, for the server's status
        self._peers: dict[str, _Peer] = {}
        self._quiet: Counter[str] = Counter()  # refusals not logged in this window, by address
        self._log = LogQuota(self._say_quiet, quota=LOG_QUOTA, interval=LOG_WINDOW)
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at the first check

    def blocked_for(self, peer: str) -> float:
        """Seconds ``peer``'s logins are still refused unchecked (0: not blocked)."""
        found = self._peers.get(peer)
        return max(0.0, found.until - self.clock()) if found is not None else 0.0

    async def check(self, peer: str, username: str, password: str | None) -> Verdict:
        """Check a login in a worker thread (not at all while ``peer`` is blocked)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(CHECKS_AT_ONCE)
        async with self._slots:
            if self.blocked_for(peer):  # again: it may have failed while this one waited
                return Verdict(peer, username, password, blocked=True)
            ok = await asyncio.to_thread(self._verify, username, password)
        self._counted(peer, username, ok)
        return Verdict(peer, username, password, ok)

    def login(self, username: str, password: str | None) -> bool:
        """asyncua's question (`UserManager.get_user`): the verdict `check` found for this
        request, or a check now, on the loop (a request the processor did not see first)."""
        verdict = CURRENT.get()
        peer = verdict.peer if verdict is not None else "an unknown address"
        if verdict is not None and verdict.blocked:
            ok = None
        elif verdict is not None and (verdict.username, verdict.password) == (username, password):
            ok = verdict.ok
        else:
            ok = None if self.blocked_for(peer) else self._verify(username, password)
            if ok is not None:
                self._counted(peer, username, ok)
        if ok:
            return True
        self.refused += 1
        if self._log.allow():
            blocked = self.blocked_for(peer)
            log.warning(
                "OPC UA login refused for user %r from %s%s",
                username,
                peer,
                f" (its logins are refused unchecked for {blocked:.0f} s more)" if blocked else "",
            )
        else:
            self._quiet[peer] += 1
        return False

    def close(self) -> None:
        """Say the count of refusals the window now open kept quiet (at a stop)."""
        self._log.close()

    def _verify(self, username: str, password: str | None) -> bool:
        stored = self.hashes.get(username)
        return verify_password(password or "", stored or DUMMY_HASH) and stored is not None

    def _counted(self, peer: str, username: str, ok: bool) -> None:
        found = self._peers.pop(peer, None)  # re-inserted last: the dict is oldest first
        if ok:
            return  # a success forgets the failures
        found = found or _Peer()
        found.failures += 1
        past = found.failures - FAILURES_ALLOWED
        if past >= 0:
            backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(past, 32))
            found.until = self.clock() + backoff
        self._peers[peer] = found
        while len(self._peers) > PEERS_MAX:
            del self._peers[next(iter(self._peers))]

    def _say_quiet(self, count: int) -> None:
        shown = ", ".join(f"{peer} ({n})" for peer, n in self._quiet.most_common(ADDRESSES_SHOWN))
        more = len(self._quiet) - ADDRESSES_SHOWN
        self._quiet.clear()
        log.warning(
            "%d more OPC UA logins refused in at most %.0f s without a line each, from %s%s",
            count,
            self._log.interval,
            shown,
            f" and {more} more addresses" if more > 0 else "",
        )
