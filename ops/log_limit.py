"""Rate-limited logging: one line per message template per interval, with a count of the rest.

While the broker is down, the Kafka clients log the same failure for every retry (about 4,000
lines in 30 s were measured for one worker). Operators need to know that it is happening and for
how long, not every retry. The filter keys records by logger, level and message template (before
arguments are filled in), lets the first through, drops the rest for `interval_s`, and adds to the
next line let through how many were dropped.

streamrec's own records are keyed by the whole message instead: each of its warnings states one
fact (which partition lost which offsets, which range is answered again), and a broker that loses
data produces several such facts within seconds that an operator needs all of. The same line
repeated is still limited.
"""

from __future__ import annotations

import logging
import time

DEFAULT_INTERVAL_S = 10.0
OWN_LOGGERS = "streamrec"


class RateLimitFilter(logging.Filter):
    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        # (logger, level, template) -> [when last let through, how many dropped since]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == OWN_LOGGERS or record.name.startswith(OWN_LOGGERS + ".")
        key = (record.name, record.levelno, record.getMessage() if own else str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            # Appended to the template, not to the arguments, so %-formatting still applies.
            record.msg = f"{record.msg} [{int(entry[1])} more like this in the last {now - entry[0]:.0f} s]"
        self._seen[key] = [now, 0]
        return True


def limit_handlers(logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S) -> RateLimitFilter:
    """Add one shared RateLimitFilter to every handler of `logger` (the root logger: records of
    every library pass through its handlers)."""
    limit = RateLimitFilter(interval_s)
    for handler in logger.handlers:
        handler.addFilter(limit)
    return limit
