"""SIGTERM as ``SystemExit(143)``, deferred while a critical step (a lock step) is in progress.

The CLI runs its work inside :func:`sigterm_raises_systemexit`, so ``finally`` blocks (lock
release, temp-file removal) run when systemd stops the service; code that must not be interrupted
half-way (taking or releasing a lock directory) runs inside :func:`critical`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["SIGTERM_EXIT_CODE", "critical", "sigterm_raises_systemexit"]

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM

_critical_depth = 0  # only touched from the main thread / its signal handler
_sigterm_deferred = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _sigterm_deferred
    if _critical_depth:
        _sigterm_deferred = True
        return
    raise SystemExit(SIGTERM_EXIT_CODE)


@contextmanager
def critical() -> Iterator[None]:
    """Defer our SIGTERM handler's SystemExit until the block is done."""
    global _critical_depth, _sigterm_deferred
    main = threading.current_thread() is threading.main_thread()
    if main:
        _critical_depth += 1
    try:
        yield
    finally:
        if main:
            _critical_depth -= 1
            if not _critical_depth and _sigterm_deferred:
                _sigterm_deferred = False
                raise SystemExit(SIGTERM_EXIT_CODE)


@contextmanager
def sigterm_raises_systemexit() -> Iterator[None]:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread for the block.

    The CLI runs its work inside this so that ``finally`` blocks (and hence lock
    release) run on SIGTERM.  The previous handler is restored on exit.
    Must be called from the main thread (Python only allows that).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("sigterm_raises_systemexit() must be used in the main thread")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
