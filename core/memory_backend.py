"""An in-memory credential store (backend): every version kept like KV v2, check-and-set exactly
like the Vault backend. For tests, demos and plugin authors; each process starts empty.

It lives in the kernel (it touches no outside service) so that :mod:`claude_auth_sync.testing`
can ship it without importing a plugin; the ``memory`` plugin registers it as a backend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import BackendConflict, BackendRefused, BackendUnavailable
from .model import OAuth, BackendHealth, StoredCopy

__all__ = ["MemoryBackend"]


@dataclass
class MemoryBackend:
    """Versions of one user's OAuth object. ``fail_with`` makes every call raise (for tests)."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    ttl_s: int | None = None
    fail_with: BackendRefused | BackendUnavailable | None = None
    calls: list[str] = field(default_factory=list)

    def renew(self) -> BackendHealth:
        self._call("renew")
        return BackendHealth(ttl_s=self.ttl_s)

    def read_latest(self) -> StoredCopy | None:
        self._call("read_latest")
        if not self.versions:
            return None
        return StoredCopy(oauth=copy.deepcopy(self.versions[-1]), version=len(self.versions))

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int:
        self._call("write")
        current = len(self.versions) or None
        if current != expected_version:
            raise BackendConflict(f"check-and-set failed: expected version {expected_version}, found {current}")
        self.versions.append(copy.deepcopy(dict(oauth)))
        return len(self.versions)

    def describe(self) -> dict[str, Any]:
        return {"backend": "memory", "versions": len(self.versions)}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_with is not None:
            raise self.fail_with
