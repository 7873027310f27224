"""Sinks are independent: a failing sink is reported once on stderr and never stops the others
(core/runner.py ``emit_to_sinks`` and ``Runtime.sinks_or_report``). The exit code is the event's,
which no sink can change; the CLI-level proof (real journald, missing socket) is in
``tests/integration/test_journald_sink.py``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from claude_auth_sync.hookspecs import SinkSpec, hookimpl
from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent, UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.plugins.sink_journald import JournaldSink
from claude_auth_sync.plugins.sink_metrics import MetricsSink
from claude_auth_sync.runner import build_runtime, emit_to_sinks
from claude_auth_sync.testing import RecordingSink

EVENT = StatusEvent(timestamp="2026-11-28T20:10:45Z", status=Status.FAIL, exit_code=ExitCode.FAIL, user="alice",
                    action=Action.ROLLBACK, reason="auth_failed_after_restore")


class Exploding:
    def emit(self, event: StatusEvent) -> None:
        raise RuntimeError("boom")


def test_every_sink_gets_the_event_whatever_fails_before_it(tmp_path: Path) -> None:
    first, middle, last = RecordingSink(), RecordingSink(), RecordingSink()
    stderr = io.StringIO()
    sinks = [
        ("journald", JournaldSink(str(tmp_path / "no-journal" / "socket"))),  # JournalUnavailable
        ("first", first),
        ("exploding", Exploding()),  # any exception type
        ("middle", middle),
        ("metrics", MetricsSink(tmp_path / "no-textfile-dir")),  # MetricsUnavailable
        ("last", last),
    ]

    failed = emit_to_sinks(sinks, EVENT, stderr=stderr)

    assert failed == ["journald", "exploding", "metrics"]
    assert first.events == middle.events == last.events == [EVENT]
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("claude-auth-sync: sink 'journald' failed: JournalUnavailable: ")
    assert lines[1] == "claude-auth-sync: sink 'exploding' failed: RuntimeError: boom"
    assert lines[2].startswith("claude-auth-sync: sink 'metrics' failed: MetricsUnavailable: ")
    assert EVENT.exit_code == ExitCode.FAIL  # frozen: no sink can change the outcome


def test_no_failure_means_no_stderr_output() -> None:
    stderr = io.StringIO()
    assert emit_to_sinks([("a", RecordingSink()), ("b", RecordingSink())], EVENT, stderr=stderr) == []
    assert stderr.getvalue() == ""


def test_a_sink_that_cannot_even_be_built_is_left_out_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cas_sink: RecordingSink
) -> None:
    recorder = cas_sink

    def refuse(ctx: object) -> None:
        raise OSError("cannot build")

    class TestSinks:
        @hookimpl
        def cas_sinks(self) -> list[SinkSpec]:
            return [SinkSpec("unbuildable", refuse), SinkSpec("recorder", lambda ctx: recorder)]

    for name in ("CLAUDE_AUTH_SYNC_SINKS", "CLAUDE_AUTH_SYNC_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    plugins = get_plugin_manager(extra_plugins=[("test-sinks", TestSinks())])
    user = UserIdentity(name="alice", uid=0, gid=0, home=tmp_path)
    runtime = build_runtime({"sinks": ["unbuildable", "recorder"], "backend": "memory"}, plugins=plugins, user=user)
    stderr = io.StringIO()

    built = runtime.sinks_or_report(stderr=stderr)
    assert [name for name, _ in built] == ["recorder"]
    assert emit_to_sinks(built, EVENT, stderr=stderr) == []
    assert recorder.events == [EVENT]
    assert stderr.getvalue().splitlines() == ["claude-auth-sync: sink 'unbuildable' unavailable: cannot build"]


def test_the_private_log_is_bounded_and_keeps_the_latest_lines(tmp_path) -> None:
    """Issue 14: sync.log grew forever. It rotates to sync.log.1 at its size cap; check still sees
    the last OK across the rotation."""
    from claude_auth_sync.check import read_log
    from claude_auth_sync.cycle import HealthCycle, failure_event
    from claude_auth_sync.errors import CasError
    from claude_auth_sync.plugins.sink_file import FileSink
    from claude_auth_sync.status_line import rotated_log as rotated
    from claude_auth_sync.testing import FakeProbe, MemoryBackend, MemoryRestorer, oauth_object

    log = tmp_path / "state" / "sync.log"
    sink = FileSink(log, max_bytes=2000)
    ok = HealthCycle("alice", MemoryBackend(), FakeProbe(), MemoryRestorer.with_document(
        {"claudeAiOauth": oauth_object("a", "r")})).run()
    for _ in range(40):
        sink.emit(ok)
    warn = failure_event("alice", CasError("x", reason="vault_unreachable"))
    sink.emit(warn)
    assert log.stat().st_size < 2000 + 400 and rotated(log).stat().st_size >= 2000
    assert (log.stat().st_mode & 0o777, rotated(log).stat().st_mode & 0o777) == (0o600, 0o600)
    records = read_log(log)
    assert records[-1].status == "FAIL" or records[-1].fields.get("reason") == "vault_unreachable"
    assert any(r.status == "OK" for r in records)  # the last OK before the rotation is still seen
    total = log.stat().st_size + rotated(log).stat().st_size
    assert total < 3 * 2000 + 400
