"""The ``memory`` credential store: an in-process dict, for tests and plugin authors.

Each process starts empty, so it is useful only when the cycle runs in the same process as the
test that inspects it (see :mod:`claude_auth_sync.testing`). It keeps every version, like KV v2,
and honours check-and-set exactly like the Vault backend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from claude_auth_sync.errors import StoreConflict, StoreRefused, StoreUnavailable
from claude_auth_sync.hookspecs import StoreSpec, hookimpl
from claude_auth_sync.model import OAuth, StoreHealth, StoredCopy

__all__ = ["MemoryStore"]


@dataclass
class MemoryStore:
    """Versions of one user's OAuth object. ``fail_with`` makes every call raise (for tests)."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    ttl_s: int | None = None
    fail_with: StoreRefused | StoreUnavailable | None = None
    calls: list[str] = field(default_factory=list)

    def renew(self) -> StoreHealth:
        self._call("renew")
        return StoreHealth(ttl_s=self.ttl_s)

    def read_latest(self) -> StoredCopy | None:
        self._call("read_latest")
        if not self.versions:
            return None
        return StoredCopy(oauth=copy.deepcopy(self.versions[-1]), version=len(self.versions))

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int:
        self._call("write")
        current = len(self.versions) or None
        if current != expected_version:
            raise StoreConflict(f"check-and-set failed: expected version {expected_version}, found {current}")
        self.versions.append(copy.deepcopy(dict(oauth)))
        return len(self.versions)

    def describe(self) -> dict[str, Any]:
        return {"backend": "memory", "versions": len(self.versions)}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_with is not None:
            raise self.fail_with


@hookimpl
def cas_credential_stores() -> list[StoreSpec]:
    return [StoreSpec("memory", lambda ctx: MemoryStore(), "in-process store for tests (starts empty)")]
