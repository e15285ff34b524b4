"""The topic filters a persistent session holds at a broker, remembered across restarts.

A broker keeps a persistent session's subscriptions until the session ends, whatever the
gateway's config says now: a filter taken out of the config (a restart with a changed config,
a reload) would go on delivering, for a day with the default expiry. MQTT cannot ask a broker
which filters a session holds, so the endpoint writes them down, one small JSON file per
endpoint and broker under the state folder (``{state}/mqtt-sessions/ENDPOINT@HOST_PORT.json``,
written whole with `gateway.storefiles.write_atomic`): before each SUBSCRIBE the filters about to
be subscribed and those it may still hold, so that the file never knows less than the session;
after the leftovers are unsubscribed, only the wanted ones. When the broker says the session is
present, the remembered filters that are no longer wanted are unsubscribed
(`protocols.mqtt.client`).

The file names the client id: a session of another id is another session, and its filters say
nothing of this one. A file that cannot be read is set aside (``.bad``, `gateway.storefiles`)
and taken as none. Without one (the first start of a version that writes it) nothing can be
known of what the session holds: that is logged once, and messages on a topic that no filter of
the config matches are dropped and counted all the same.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

from gateway.paths import state_path
from gateway.storefiles import set_aside_said, write_atomic

__all__ = ["FOLDER", "SessionFilters"]

log = logging.getLogger(__name__)
FOLDER = "mqtt-sessions"
VERSION = 1


def _safe(text: str) -> str:
    """A file-name part: letters, digits, ``.``, ``_`` and ``-``; anything else ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


class SessionFilters:
    """The record of one endpoint's session at one broker (`load`, `save`)."""

    def __init__(self, endpoint: str, host: str, port: int, client_id: str) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        name = f"{_safe(endpoint)}@{_safe(host)}_{port}.json"
        self.path = state_path(f"{{state}}/{FOLDER}", endpoint) / name
        self._saved: list[str] | None = None  # what the file holds, as last written or read
        self._save_failed = False

    def load(self) -> list[str] | None:
        """The filters remembered for this client id; None when there is no record (no file,
        another client id's, or a damaged one, which is set aside and logged)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("MQTT %s: cannot read %s: %s", self.endpoint, self.path, exc)
            return None
        try:
            doc = json.loads(text)
            filters = doc["filters"]
            if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
                raise ValueError("filters is no list of strings")
            owner = doc["client_id"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "MQTT %s: the session record %s is damaged (%s): %s; taken as none",
                self.endpoint,
                self.path,
                exc,
                set_aside_said(self.path),
            )
            return None
        if owner != self.client_id:
            return None  # another client id's session: nothing of this one
        self._saved = sorted(set(filters))
        return list(self._saved)

    def save(self, filters: Iterable[str]) -> None:
        """Write ``filters`` as what the session holds (nothing written when unchanged). A
        failure is logged (once until a write works) and the connection goes on: the record
        is for the next start."""
        wanted = sorted(set(filters))
        if wanted == self._saved:
            return
        doc = {"version": VERSION, "client_id": self.client_id, "filters": wanted}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as exc:
            if not self._save_failed:
                log.warning(
                    "MQTT %s: cannot write the session record %s: %s (a filter removed from the"
                    " config later may go on being delivered until the session expires)",
                    self.endpoint,
                    self.path,
                    exc,
                )
            self._save_failed = True
            return
        self._save_failed = False
        self._saved = wanted

    def say_unknown(self, address: str) -> None:
        """A present session of which nothing is recorded (once: the record is written next)."""
        log.info(
            "MQTT %s: %s kept the session, but no record of its subscriptions is here (%s;"
            " the first start of a gateway that keeps one, or the file was lost): filters"
            " removed from the config cannot be unsubscribed; what they deliver is dropped and"
            " counted (status 'unwanted') until the session expires",
            self.endpoint,
            address,
            self.path,
        )
