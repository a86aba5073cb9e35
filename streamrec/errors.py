"""User-facing failures: one line that names the setting or command that fixes it.

Code that meets a mistake a user can make (a setting that does not parse, a broker that does not
answer, a missing or corrupt file, a busy port) raises `UserError(message, hint)`; the `streamrec`
command prints it as one line on stderr and exits with status 2. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import socket
import time

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; `hint` names the setting or command that fixes it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def line(self, prog: str = "streamrec") -> str:
        return f"{prog}: error: {self}"


def port_in_use(exc: OSError, port: int, setting: str, zero: str = "pick one") -> UserError | None:
    """The UserError for a listener that could not bind because its port is taken, else None.
    `zero` says what the setting's 0 does (the metrics port picks one, the page's turns it off)."""
    if exc.errno != errno.EADDRINUSE:
        return None
    return UserError(f"port {port} is already in use", f"set {setting} to a free port, or 0 to {zero}")


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """`host:port[,host:port...]` as (host, port) pairs; a UserError naming KAFKA_BOOTSTRAP otherwise."""
    pairs = []
    for part in bootstrap.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"KAFKA_BOOTSTRAP={bootstrap!r} is not host:port[,host:port]",
                "e.g. KAFKA_BOOTSTRAP=127.0.0.1:19092",
            )
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def require_broker(bootstrap: str, timeout_s: float = 2.0) -> None:
    """Fail fast, in one line, when no broker of `bootstrap` accepts a connection within `timeout_s`
    (a Kafka client would otherwise retry for tens of seconds and end in a traceback)."""
    deadline = time.monotonic() + timeout_s
    pairs = parse_bootstrap(bootstrap)
    while True:
        for host, port in pairs:
            try:
                with socket.create_connection((host, port), timeout=min(1.0, timeout_s)):
                    return
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise UserError(
                f"no Kafka broker answers at {bootstrap}",
                "start the local one with `streamrec broker up`, or point KAFKA_BOOTSTRAP at yours",
            )
        time.sleep(0.2)
