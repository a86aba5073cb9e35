"""The local Kafka-protocol broker (noida-db) for development, the demo, tests and benchmarks.

noida-db is a single static binary from PyPI that speaks the Kafka wire protocol; it persists to
its data directory and survives restarts. Every command it runs prints a harmless
"weak version 'GLIBC_2.39' not found" line on this Debian 12 base: that one line is filtered out
and anything else on stderr is reported. With KAFKA_BOOTSTRAP pointing at a real Kafka cluster,
none of this is used.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_HARMLESS = "weak version `GLIBC_2.39' not found"


class BrokerError(RuntimeError):
    """The local broker did not start or stop."""


def noida_binary() -> str:
    beside = Path(sys.executable).parent / "noida-db"
    found = str(beside) if beside.exists() else shutil.which("noida-db")
    if not found:
        raise BrokerError("noida-db is not installed: run `make setup` (it comes from PyPI noida-db==0.2.3)")
    return found


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nothing listens on now. The sockets are held open together while the OS
    picks, because it may hand the same port out twice in a row once the first socket is closed
    (seen: a worker's metrics and dashboard ports equal)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A port nothing listens on now (use `free_ports` for several at once)."""
    return free_ports(1)[0]


def _real_errors(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if _HARMLESS not in line and line.strip())


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class LocalBroker:
    """A noida-db Kafka endpoint on 127.0.0.1:`port` with its data under `data_dir`."""

    data_dir: Path
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [noida_binary(), *args, "--data-dir", str(self.data_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_open(self.port):
            raise BrokerError(f"port {self.port} is already in use; pick another (KAFKA_BOOTSTRAP)")
        proc = self._run("up", "--only", "kafka", "--kafka-port", str(self.port))
        if proc.returncode != 0:
            raise BrokerError(f"noida-db up failed ({proc.returncode}): {_real_errors(proc.stderr)}")
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise BrokerError(f"noida-db did not listen on {self.port} within {timeout_s}s: see {self.log_path}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop the broker. One holding much data (a long benchmark: millions of messages, all in
        memory) takes longer to persist it than `noida-db down` waits, so it is asked again."""
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self._run("down")
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"noida-db down failed ({proc.returncode}): {_real_errors(proc.stderr)}; "
                    f"stop it with `noida-db down --data-dir {self.data_dir}`"
                )
            time.sleep(2.0)

    def running(self) -> bool:
        return port_open(self.port)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "noida.log"
