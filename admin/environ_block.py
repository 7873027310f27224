"""Remove a secret from the process's *original* environment block (``/proc/<pid>/environ``).

``os.environ.pop`` (``unsetenv``) only drops a pointer from libc's ``environ`` array: the
``NAME=value`` bytes the kernel placed on the stack at ``execve`` stay where they are, and
``/proc/<pid>/environ`` of this process and of every child it forks afterwards still shows them.

:func:`scrub` overwrites the value bytes of every ``NAME=`` entry inside that block (the range
``env_start..env_end`` the kernel reports in ``/proc/self/stat``) with NUL bytes, in place.
Afterwards ``/proc/self/environ`` and that of every later fork shows ``NAME=`` followed by NULs
(the value's length, never its content). Call it before forking and before ``os.environ.pop``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

__all__ = ["scrub", "environ_block_range"]

_ENV_START_FIELD = 50  # 1-based field numbers of proc(5) /proc/pid/stat
_ENV_END_FIELD = 51


def environ_block_range() -> tuple[int, int] | None:
    """``(env_start, env_end)`` of this process, or None if the kernel does not say."""
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields 3.. (comm may hold spaces and parentheses)
    try:
        start, end = int(fields[_ENV_START_FIELD - 3]), int(fields[_ENV_END_FIELD - 3])
    except (IndexError, ValueError):
        return None
    return (start, end) if 0 < start < end else None


def scrub(name: str) -> int:
    """Overwrite the value of every ``name=...`` entry of the original environment block with NULs.

    Returns how many entries were scrubbed (0 if there were none or the block is unknown).
    """
    where = environ_block_range()
    if where is None:
        return 0
    start, end = where
    block = ctypes.string_at(start, end - start)
    prefix = name.encode() + b"="
    scrubbed, offset = 0, 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefix) and len(entry) > len(prefix):
            ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
            scrubbed += 1
        offset += len(entry) + 1
    return scrubbed
