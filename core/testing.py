"""Fakes for tests, shipped for plugin authors too (also a pytest plugin: ``pytest11`` entry point).

* :class:`MemoryBackend` (re-exported from the ``memory`` backend): versions in a list, check-and-set.
* :class:`FakeProbe`: answers from a script of outcomes; can simulate the CLI refreshing the file.
* :class:`MemoryRestorer`: an in-memory credentials file with the real classify/merge logic.
* :class:`RecordingSink`: keeps every event it receives.
* :func:`plugin`: wraps any of them in a plugin object with proper hookimpls, registered the
  public way (``get_plugin_manager(extra_plugins=[("name", plugin(...))])``).

Fixtures: ``cas_backend``, ``cas_restorer``, ``cas_sink``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from .login import classify, merge_oauth
from .errors import ConcurrentChange
from .hookspecs import ProbeSpec, RestorerSpec, SinkSpec, BackendSpec, hookimpl
from .model import (
    Backend,
    Restorer,
    LocalLogin,
    LoginState,
    OAuth,
    Probe,
    ProbeOutcome,
    ProbeResult,
    RestoreSnapshot,
    Sink,
    StatusEvent,
)
from .memory_backend import MemoryBackend

__all__ = [
    "MemoryBackend",
    "FakeProbe",
    "MemoryRestorer",
    "RecordingSink",
    "plugin",
    "oauth_object",
]


def oauth_object(access: str, refresh: str, *, expires_at_ms: int = 4_102_444_800_000, **extra: Any) -> dict[str, Any]:
    """A ``claudeAiOauth`` object as Claude Code writes it (expiry defaults to year 2100)."""
    return {
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": expires_at_ms,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "enterprise",
        **extra,
    }


@dataclass
class FakeProbe:
    """Returns the next outcome of ``script`` on each run (the last one repeats).

    ``on_run`` is called before each answer (e.g. to rewrite the credentials like the CLI would).
    ``accept`` makes the answer depend on the local login instead: authenticated when
    ``accept(restorer.read())`` is true, else auth_failed.
    """

    script: list[ProbeOutcome] = field(default_factory=lambda: [ProbeOutcome.AUTHENTICATED])
    on_run: Callable[[int], None] | None = None
    accept: Callable[[LocalLogin], bool] | None = None
    restorer: Restorer | None = None
    runs: int = 0

    def run(self) -> ProbeResult:
        index = self.runs
        self.runs += 1
        if self.on_run is not None:
            self.on_run(index)
        if self.accept is not None and self.restorer is not None:
            ok = self.accept(self.restorer.read())
            outcome = ProbeOutcome.AUTHENTICATED if ok else ProbeOutcome.AUTH_FAILED
        else:
            outcome = self.script[min(index, len(self.script) - 1)]
        status = {ProbeOutcome.AUTH_FAILED: 401, ProbeOutcome.UNAVAILABLE: 529}.get(outcome)
        reason = {
            ProbeOutcome.AUTHENTICATED: "ok",
            ProbeOutcome.AUTH_FAILED: "http_401",
            ProbeOutcome.UNAVAILABLE: "http_529",
            ProbeOutcome.BROKEN: "cli_missing",
        }[outcome]
        return ProbeResult(outcome=outcome, reason=reason, http_status=status, cli_version="fake")

    def describe(self) -> dict[str, Any]:
        return {"probe": "fake", "runs": self.runs}


@dataclass
class MemoryRestorer:
    """The credentials file in memory, using the real classify and merge of the file restorer."""

    raw: bytes | None = None
    writes: int = 0
    pending: RestoreSnapshot | None = None  # a restore neither kept nor rolled back yet
    fail_rollback: Exception | None = None  # raise this from rollback() (lock busy, disk full)

    @classmethod
    def with_document(cls, document: dict[str, Any]) -> MemoryRestorer:
        return cls(raw=json.dumps(document).encode())

    def document(self) -> dict[str, Any]:
        return json.loads(self.raw or b"{}")

    def read(self) -> LocalLogin:
        from pathlib import Path

        return classify(Path("memory:.credentials.json"), self.raw)

    def restore(self, oauth: OAuth, *, expected: OAuth | None) -> RestoreSnapshot:
        current = self.read().oauth
        if (dict(current) if current else None) != (dict(expected) if expected else None):
            raise ConcurrentChange("changed meanwhile")
        previous = self.raw
        self.raw = merge_oauth(self.raw, oauth)
        self.writes += 1
        self.pending = RestoreSnapshot(path=self.read().path, previous_bytes=previous,
                                       written_digest=hashlib.sha256(self.raw).hexdigest())
        return self.pending

    def rollback(self, snapshot: RestoreSnapshot) -> None:
        """Like the file restorer: only what the restore wrote (or a blanked login) is rolled back."""
        if self.fail_rollback is not None:
            raise self.fail_rollback
        self.pending = None
        ours = self.raw is not None and hashlib.sha256(self.raw).hexdigest() == snapshot.written_digest
        if not ours and self.read().state != LoginState.BLANKED:
            raise ConcurrentChange("a newer login replaced the restored copy")
        self.raw = snapshot.previous_bytes
        self.writes += 1

    def keep(self, snapshot: RestoreSnapshot) -> None:
        self.pending = None

    def pending_restore(self) -> RestoreSnapshot | None:
        """Like the file restorer: the restore nobody kept or rolled back, while the file holds it."""
        snapshot = self.pending
        if snapshot is None or self.raw is None or hashlib.sha256(self.raw).hexdigest() != snapshot.written_digest:
            self.pending = None
            return None
        return snapshot


@dataclass
class RecordingSink:
    events: list[StatusEvent] = field(default_factory=list)

    def emit(self, event: StatusEvent) -> None:
        self.events.append(event)


def plugin(
    *,
    backend: Backend | None = None,
    probe: Probe | None = None,
    restorer: Restorer | None = None,
    sinks: dict[str, Sink] | None = None,
    name: str = "test",
) -> object:
    """A plugin object offering the given fakes under ``name`` (sinks under their own keys)."""

    class _TestPlugin:
        @hookimpl
        def cas_backends(self) -> Iterable[BackendSpec]:
            return [BackendSpec(name, lambda ctx: backend, "test backend")] if backend is not None else []

        @hookimpl
        def cas_probes(self) -> Iterable[ProbeSpec]:
            return [ProbeSpec(name, lambda ctx: probe, "test probe")] if probe is not None else []

        @hookimpl
        def cas_restorers(self) -> Iterable[RestorerSpec]:
            return [RestorerSpec(name, lambda ctx: restorer, "test restorer")] if restorer is not None else []

        @hookimpl
        def cas_sinks(self) -> Iterable[SinkSpec]:
            return [SinkSpec(sink_name, (lambda ctx, s=sink: s), "test sink") for sink_name, sink in (sinks or {}).items()]

    return _TestPlugin()


@pytest.fixture
def cas_backend() -> MemoryBackend:
    """An empty in-memory backend."""
    return MemoryBackend()


@pytest.fixture
def cas_restorer() -> MemoryRestorer:
    """An in-memory credentials file with no content yet."""
    return MemoryRestorer()


@pytest.fixture
def cas_sink() -> RecordingSink:
    """A sink that records every status event."""
    return RecordingSink()
