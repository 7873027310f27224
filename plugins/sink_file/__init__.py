"""The ``file`` sink: the private status log ``$XDG_STATE_HOME/claude-auth-sync/sync.log``.

One line per cycle, exactly as the contract says: an ISO-8601 UTC timestamp, the status word
(``OK``, ``WARN``, ``FAIL``), then ``key=value`` fields (``user=``, ``action=``, ``reason=`` on
anything but a plain OK, timings, fingerprints). The file is 0600 in a 0700 directory and is never
opened through a symlink. Values that are not plain tokens are JSON-quoted, so a line is always
one line. The event carries no secret, so the log cannot hold one.

Bounded: once the log reaches :data:`MAX_LOG_BYTES` it is renamed to ``sync.log.1`` (replacing the
previous one) and a new ``sync.log`` begins with the next line, so the log never grows past about
twice that and the latest lines are never lost (readers look at both files).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from claude_auth_sync.fileio import append_private
from claude_auth_sync.hookspecs import SinkSpec, hookimpl
from claude_auth_sync.model import StatusEvent
from claude_auth_sync.settings import ResolvedPaths
from claude_auth_sync.status_line import format_status_line, rotated_log

__all__ = ["MAX_LOG_BYTES", "FileSink", "format_status_line"]


MAX_LOG_BYTES = 1 << 20  # about 3,500 lines: a year of timer runs, weeks of busy path-unit runs


class FileSink:
    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def emit(self, event: StatusEvent) -> None:
        self._rotate_if_full()
        append_private(self.path, format_status_line(event))

    def _rotate_if_full(self) -> None:
        """``sync.log`` -> ``sync.log.1`` once it is full: only our own regular file, by rename."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_size >= self.max_bytes:
            os.rename(self.path, rotated_log(self.path))


@hookimpl
def cas_sinks() -> list[SinkSpec]:
    return [SinkSpec("file", lambda ctx: FileSink(ResolvedPaths.of(ctx.settings).log_file), "the private sync.log")]
