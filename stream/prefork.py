"""A pre-forking supervisor for the worker: import once, fork a fresh serving process on each death.

A cold worker start spends about 2 s importing Python modules (torch alone about 1.5 s on this
2-core machine) before it can answer a click. With `STREAMREC_WORKER_PREFORK=1`, `streamrec
worker` imports the worker's modules once in a parent process that serves nothing, and runs the
worker in a forked child. When the child dies (an agent's exit 70, a crash, a SIGKILL of the
child), the parent forks a new child at once, which skips the imports: the restart costs only
opening state and rejoining the group. The parent starts no threads and no event loop before
forking (torch's thread pools start on first use), so the child begins clean.

- SIGTERM or SIGINT to the parent is passed to the child; the parent exits with the child's code.
- A child that exits 0 (a clean stop) or 2 (a user error: a setting or file to fix, reported in
  one line) ends the parent too: a new child would only fail the same way.
- A child that keeps dying of its own accord (an error exit, an abort) is restarted with a growing
  pause (0, 0.5, 1, 2, ... 30 s), reset once a child has lived for a minute, so a crash loop does
  not spin a core. A child killed from outside (SIGKILL) is replaced at once.
- The child asks the kernel for SIGTERM when the parent dies (Linux `PR_SET_PDEATHSIG`), so a
  SIGKILLed parent does not leave a worker holding partitions.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from streamrec.errors import EXIT_USER_ERROR

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
HEALTHY_AFTER_S = 60.0
MAX_PAUSE_S = 30.0


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("streamrec worker: cannot ask to be stopped with the supervisor (not Linux?)")


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class _Supervisor:
    def __init__(self, run_child: Callable[[], int]) -> None:
        self.run_child = run_child
        self.child = 0
        self.stopping = False

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child:
            os.kill(self.child, signum)

    def fork(self) -> None:
        self.child = os.fork()
        if self.child:
            return
        # In the child: default signal handling (Faust installs its own), die with the parent.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        code = 1
        try:
            code = self.run_child()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def wait(self) -> int:
        while True:
            try:
                _, status = os.waitpid(self.child, 0)
                self.child = 0
                return status
            except InterruptedError:
                continue

    def serve(self) -> int:
        quick_deaths = 0
        while True:
            started = time.monotonic()
            self.fork()
            status = self.wait()
            code = _exit_code(status)
            if self.stopping or code in (0, EXIT_USER_ERROR):
                return code
            lived = time.monotonic() - started
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            quick_deaths = 0 if lived > HEALTHY_AFTER_S or killed else quick_deaths + 1
            pause = 0.0 if quick_deaths <= 1 else min(MAX_PAUSE_S, 0.5 * 2 ** (quick_deaths - 2))
            print(
                f"streamrec worker: the serving process exited with {code} after {lived:.1f} s; "
                f"starting a new one{f' in {pause:.1f} s' if pause else ''}",
                file=sys.stderr,
                flush=True,
            )
            if pause:
                time.sleep(pause)


def supervise(run_child: Callable[[], int]) -> int:
    """Run `run_child` in forked children until one exits 0 or the supervisor is told to stop;
    returns the last child's exit code."""
    supervisor = _Supervisor(run_child)
    previous = {sig: signal.signal(sig, supervisor.forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
