"""When a device or endpoint counts as down, and why: the one rule that ``GET /ready``
(`gateway.health`), the status line (`Gateway.summary`) and ``gateway status`` all read, so
none of them can call up what another calls down.

An adapter's status entry (``status["adapters"][name]``) is down when:

- its ``status()`` failed (``status_error``, a plugin's bug): it cannot say it is up, so a
  probe must not count it as up;
- it says ``connected: false``, which the runtime also sets while its run() restarts.

Anything else is up: a server has no ``connected`` at all, and a client that never connected
says ``connected: false`` from its first status on. Bridges are never down themselves: a
bridge whose source is down forwards nothing, and the source is the entry that says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def why_down(entry: Any) -> str | None:
    """None when the status entry ``entry`` is up, else why it is down ("" when it does not
    say). An entry that is not a mapping says nothing of a connection: up."""
    if not isinstance(entry, Mapping):
        return None
    if "status_error" in entry:
        return str(entry["status_error"])
    if entry.get("connected") is False:
        return str(entry.get("last_error") or entry.get("reason") or "")
    return None


def down(adapters: Mapping[str, Any]) -> dict[str, str]:
    """The entries of ``adapters`` (``status["adapters"]``) that are down, in their order,
    each with why (`why_down`)."""
    found: dict[str, str] = {}
    for name, entry in adapters.items():
        why = why_down(entry)
        if why is not None:
            found[name] = why
    return found
