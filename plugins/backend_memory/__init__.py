"""The ``memory`` credential store: an in-process store, for tests and plugin authors.

Each process starts empty, so it is useful only when the cycle runs in the same process as the
test that inspects it (see :mod:`claude_auth_sync.testing`). The store itself is
:class:`claude_auth_sync.memory_backend.MemoryBackend`; this plugin only offers it as a backend.
"""

from __future__ import annotations

from claude_auth_sync.hookspecs import BackendSpec, hookimpl
from claude_auth_sync.memory_backend import MemoryBackend

__all__ = ["MemoryBackend"]


@hookimpl
def cas_backends() -> list[BackendSpec]:
    return [BackendSpec("memory", lambda ctx: MemoryBackend(), "in-process store for tests (starts empty)")]
