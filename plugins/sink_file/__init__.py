"""The ``file`` sink: the private status log ``$XDG_STATE_HOME/claude-auth-sync/sync.log``.

One line per cycle, exactly as the contract says: an ISO-8601 UTC timestamp, the status word
(``OK``, ``WARN``, ``FAIL``), then ``key=value`` fields (``user=``, ``action=``, ``reason=`` on
anything but a plain OK, timings, fingerprints). The file is 0600 in a 0700 directory and is never
opened through a symlink. Values that are not plain tokens are JSON-quoted, so a line is always
one line. The event carries no secret, so the log cannot hold one.
"""

from __future__ import annotations

from pathlib import Path

from claude_auth_sync.fileio import append_private
from claude_auth_sync.hookspecs import SinkSpec, hookimpl
from claude_auth_sync.model import StatusEvent
from claude_auth_sync.settings import ResolvedPaths
from claude_auth_sync.status_line import format_status_line

__all__ = ["FileSink", "format_status_line"]

class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: StatusEvent) -> None:
        append_private(self.path, format_status_line(event))


@hookimpl
def cas_sinks() -> list[SinkSpec]:
    return [SinkSpec("file", lambda ctx: FileSink(ResolvedPaths.of(ctx.settings).log_file), "the private sync.log")]
