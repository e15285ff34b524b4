"""The open-file limit of ``gateway run``: raised from the usual soft 1,024 towards the hard limit.

Every connection a server accepts is a file descriptor. Under systemd's default soft limit of
1,024, a peer that opens a thousand idle connections to one server left none for the others
(accept failed with EMFILE in a busy loop, the status file could not be written, and a device or
broker connection lost at that moment could not be made again). The servers cap their own
connections; the limit is raised as well so that their caps, not the process's, decide. Raising
the soft limit up to the hard one needs no privilege, and every part of the gateway waits on its
sockets with epoll (asyncio), never select(), which fails past descriptor 1,023.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

WANTED = 65_536  # the unit file's LimitNOFILE too (examples/protocol-brain.service)


def raise_open_files(wanted: int = WANTED) -> int | None:
    """Raise the soft limit on open files to ``wanted`` (at most the hard limit); the limit now,
    or None where the platform has none to raise."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a sandbox that refuses: go on with what is set
            log.debug("open-file limit stays at %d: %s", soft, exc)
            return soft
        return target
    return soft
