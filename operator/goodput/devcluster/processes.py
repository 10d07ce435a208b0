"""Helpers for the local processes that tests and the demo start (control plane, Prometheus, emulator)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable


def kill_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when the thread that started it dies, so an
    interpreter that is SIGKILLed leaves no process behind. Only from the main thread:
    PR_SET_PDEATHSIG fires on the exit of the spawning *thread*, not the process."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def _set() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return _set
