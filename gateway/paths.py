"""Where the gateway keeps its own files (outboxes, OPC UA certificates, OSCORE sequence numbers).

Path templates in the config may use ``{state}``, the state folder, and ``{name}``, the device or
endpoint. The state folder is ``$PROTOCOL_BRAIN_STATE_DIR``; ``gateway run``, ``gateway status`` and
``gateway demo`` default it to ``.protocol-brain`` next to the config file, so a service started
from ``/`` keeps its state with its config, not in ``/.protocol-brain``, and ``gateway status``
finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "PROTOCOL_BRAIN_STATE_DIR"
STATE_FOLDER = ".protocol-brain"


def state_dir() -> str:
    """The state folder: ``$PROTOCOL_BRAIN_STATE_DIR``, else ``.protocol-brain`` in the cwd."""
    return os.environ.get(STATE_ENV) or STATE_FOLDER


def config_state_dir(config_file: str | os.PathLike[str]) -> str:
    """The state folder ``gateway run`` of ``config_file`` uses (`use_config_state_dir`),
    without setting it: for ``gateway validate``, which runs nothing."""
    folder = Path(os.path.abspath(config_file)).parent / STATE_FOLDER
    return os.environ.get(STATE_ENV) or str(folder)


def use_config_state_dir(config_file: str | os.PathLike[str]) -> None:
    """Default the state folder to ``.protocol-brain`` next to the config (an explicit
    ``$PROTOCOL_BRAIN_STATE_DIR`` wins)."""
    os.environ[STATE_ENV] = config_state_dir(config_file)


def state_path(template: str, name: str, state: str | None = None) -> Path:
    """A configured path template with ``{state}`` (``state``, else `state_dir`) and ``{name}``
    filled in."""
    folder = state_dir() if state is None else state
    return Path(template.replace("{state}", folder).replace("{name}", name)).expanduser()


def keep_from_others() -> int:
    """Make what this process creates from now on unreadable to other users (the umask gains
    ``007``: 022 becomes 027, as the service unit's ``UMask=0027``); returns the old umask.

    ``gateway run`` keeps queued payloads (outboxes), device state (the shadow), OSCORE
    contexts and private keys in files it creates; started from a shell with the usual umask
    022 they would be readable by every user of the box."""
    old = os.umask(0o077)
    os.umask(old | 0o007)
    return old
