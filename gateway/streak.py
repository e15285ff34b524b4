"""A run of the same failure, logged at its start and its end instead of once per attempt.

Some failures repeat on every message until something outside changes (a full disk under the
shadow store, a bridge target that rejects everything): a traceback per message would flood the
log, and on a full disk fill it further. A `FailureStreak` logs the first failure of a run (with
its traceback unless the caller says the message is enough) and, after a run of more than one,
logs once when an attempt succeeds again.
"""

from __future__ import annotations

import logging


class FailureStreak:
    def __init__(self, log: logging.Logger, what: str, *, level: int = logging.ERROR) -> None:
        self.log = log
        self.what = what  # who fails, as the log line starts: "shadow", "bridge up"
        self.level = level  # of the first line (a client's bad request is not our error)
        self.in_run = 0  # failures since the last success (callers keep their own totals)

    def failed(self, message: str, *, traceback: bool = True) -> None:
        """Call from an ``except`` block; ``message`` says what failed and why."""
        self.in_run += 1
        if self.in_run == 1:
            self.log.log(
                self.level,
                "%s: %s (until it works again, further failures are counted, not logged)",
                self.what,
                message,
                exc_info=traceback,
            )

    def succeeded(self) -> None:
        if self.in_run > 1:  # after a lone failure the first line said all there is
            self.log.warning("%s: works again after %d failures", self.what, self.in_run)
        self.in_run = 0
