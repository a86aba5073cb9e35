"""Commands that start workers and brokers (the demo, the benches) stop them when stopped
themselves: SIGTERM and SIGINT run their `finally` blocks (local/processes.py `stop_on_signals`)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import sys, time
from streamrec.local.processes import stop_on_signals
stop_on_signals()
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)
finally:
    open(sys.argv[1], "w").write("cleaned up")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_runs_the_cleanup(tmp_path: Path, sig: signal.Signals) -> None:
    marker = tmp_path / "marker"
    # SIGINT ignored at start, as a non-interactive shell starts its background jobs.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(sig)
        assert child.wait(timeout=20) == 130, "stopped by the signal, through KeyboardInterrupt"
    finally:
        child.kill()
    assert marker.read_text() == "cleaned up", "the finally block ran"
