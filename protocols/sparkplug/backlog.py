"""What an edge node keeps while it cannot publish, to send as historical DDATA after its births.

Each held message is one device's changed metrics at one moment, already encoded as a Sparkplug
payload whose metrics are named (not aliased), typed, timestamped and marked historical. Names,
because aliases belong to a session and the durable backlog outlives the process: a restart, or
a config that adds a point, gives the same metric another alias. The node turns them back into
aliases when it sends them (`SparkplugAdapter._replay`).

Two stores, one interface:

* `MemoryBacklog` (``buffer:``, the default): a bounded deque; the oldest message makes room
  for the newest; a restart loses it.
* `DurableBacklog` (``outbox:``): the MQTT endpoint's SQLite outbox (`gateway.uplink.outbox`),
  one row per message (topic: the device, payload: the metrics), with its bounds, drop policy,
  full-disk handling and crash safety. What was not sent before a stop or a crash is sent after
  the next start's births.

A message is `take`\\ n, then `done` once published or left out (its device is not born); a
session lost in between `rewind`\\ s, so the next one sends it again (DDATA is QoS 0 by the
specification: "published" means handed to the connection, as for the MQTT endpoint's QoS 0).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.streak import LogQuota
from gateway.uplink.outbox import Outbox, OutboxConfig

log = logging.getLogger(__name__)

__all__ = ["Backlog", "DurableBacklog", "Held", "MemoryBacklog"]

#: acknowledged rows are deleted at most this often while a backlog drains (one transaction)
COMMIT_S = 0.5
#: drops are logged at most this often, with a count
_DROP_LOG_S = 10.0


@dataclass(frozen=True, slots=True)
class Held:
    id: int
    device: str
    payload: bytes  # a Sparkplug payload: named, historical metrics


class Backlog(Protocol):
    """Messages held for a later session, oldest first."""

    def put(self, device: str, payload: bytes) -> None: ...

    def take(self, n: int) -> list[Held]:
        """Up to ``n`` messages not handed out yet, oldest first."""
        ...

    def done(self, ids: Iterable[int]) -> None:
        """These were sent (or left out): forget them (on disk: soon, in one transaction)."""
        ...

    def commit(self) -> None:
        """Forget what is done now (the end of a replay)."""
        ...

    def rewind(self) -> None:
        """The session ended: hand out again, first, what was taken and not done."""
        ...

    def __len__(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def status(self) -> dict[str, Any] | None:
        """The durable store's own figures; None in memory."""
        ...

    def close(self) -> None: ...


class _DropLog:
    """A bound's drops in the log, through `LogQuota`: the first drop of a 10 s window says
    the total at once, the rest of the window one more line with the total when it ends."""

    def __init__(self, name: str, what: str, total: Callable[[], int]) -> None:
        self.name, self.what, self.total = name, what, total
        self._quota = LogQuota(self._say, quota=1, interval=_DROP_LOG_S)

    def dropped(self) -> None:
        if self._quota.allow():
            self._say()

    def close(self) -> None:
        self._quota.close()

    def _say(self, _more: int = 0) -> None:
        log.warning(
            "Sparkplug %s: %s: %d messages held while disconnected dropped so far",
            self.name,
            self.what,
            self.total(),
        )


class MemoryBacklog:
    """``buffer:`` messages in memory, the oldest dropped past it; lost on restart."""

    def __init__(self, name: str, limit: int) -> None:
        self.limit = limit
        self._held: collections.deque[Held] = collections.deque()
        self._taken: dict[int, Held] = {}
        self._next_id = 1
        self._dropped = 0
        self._log = _DropLog(name, f"buffer of {limit} messages full", lambda: self._dropped)

    def put(self, device: str, payload: bytes) -> None:
        if self.limit <= 0:
            return
        if len(self) >= self.limit:
            if self._held:
                self._held.popleft()
            else:  # all of it handed out: the oldest of those
                self._taken.pop(next(iter(self._taken)))
            self._dropped += 1
            self._log.dropped()
        self._held.append(Held(self._next_id, device, payload))
        self._next_id += 1

    def take(self, n: int) -> list[Held]:
        out = [self._held.popleft() for _ in range(min(n, len(self._held)))]
        self._taken.update((h.id, h) for h in out)
        return out

    def done(self, ids: Iterable[int]) -> None:
        for i in ids:
            self._taken.pop(i, None)

    def commit(self) -> None:
        pass  # nothing waits: done forgets at once

    def rewind(self) -> None:
        self._held.extendleft(reversed(self._taken.values()))
        self._taken.clear()

    def __len__(self) -> int:
        return len(self._held) + len(self._taken)

    @property
    def dropped(self) -> int:
        return self._dropped

    def status(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self._log.close()
        self._held.clear()
        self._taken.clear()


class DurableBacklog:
    """``outbox:``: the messages in the SQLite outbox, kept across restarts."""

    def __init__(self, name: str, path: Path, config: OutboxConfig) -> None:
        self.store: Outbox | None = Outbox(path, config, name=name)
        self.name = name
        # a drop logs the file's total (an earlier run's drops included, as status says)
        self._log = _DropLog(name, f"outbox {path} (policy {config.policy})", lambda: self.dropped)
        self._refused = 0  # put after close: the endpoint is stopping, nothing can hold it

    def put(self, device: str, payload: bytes) -> None:
        store = self.store
        if store is None:
            self._refused += 1
            return
        before = store.total_dropped
        store.append(((device, payload, 0, False),))
        if store.total_dropped != before:
            self._log.dropped()

    def take(self, n: int) -> list[Held]:
        store = self.store
        if store is None:
            return []
        return [Held(r.id, r.topic, r.payload) for r in store.take(n)]

    def done(self, ids: Iterable[int]) -> None:
        store = self.store
        if store is not None:
            store.ack(ids)
            store.commit(within=COMMIT_S)

    def commit(self) -> None:
        if self.store is not None:
            self.store.commit()

    def rewind(self) -> None:
        if self.store is not None:
            self.store.commit()
            self.store.rewind()

    def __len__(self) -> int:
        return 0 if self.store is None else self.store.rows

    @property
    def dropped(self) -> int:
        return self._refused + (0 if self.store is None else self.store.total_dropped)

    def status(self) -> dict[str, Any] | None:
        return None if self.store is None else self.store.status()

    def close(self) -> None:
        self._log.close()
        store, self.store = self.store, None
        if store is None:
            return
        store.commit()
        rows = store.rows
        store.close()
        if rows:
            log.warning(
                "Sparkplug %s: %d messages kept in %s for the next start",
                self.name,
                rows,
                store.path,
            )
