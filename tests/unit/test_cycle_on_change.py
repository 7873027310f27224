"""Issue 13, items 2 and 7: a run started by a rewrite that changed nothing costs nothing; a Vault
outage still probes."""

from __future__ import annotations

import json
from pathlib import Path

from claude_auth_sync.cycle import HealthCycle
from claude_auth_sync.errors import BackendUnavailable
from claude_auth_sync.last_check import LastCheckFile
from claude_auth_sync.model import Action, ExitCode, ProbeOutcome, Status
from claude_auth_sync.testing import FakeProbe, MemoryBackend, MemoryRestorer, oauth_object

GOOD = oauth_object("sk-ant-oat01-change-good", "sk-ant-ort01-change-good")
OTHER = oauth_object("sk-ant-oat01-change-other", "sk-ant-ort01-change-other")
A, F = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def cycle(tmp_path: Path, backend: MemoryBackend, local: MemoryRestorer, probe: FakeProbe, clock: Clock,
          window: float = 3600) -> HealthCycle:
    return HealthCycle(user="alice", backend=backend, probe=probe, restorer=local,
                       last_check=LastCheckFile(tmp_path / "last-check.json"), unchanged_window_s=window,
                       wall_clock=clock)


def test_an_unchanged_verified_login_costs_no_inference_and_no_backend_request(tmp_path: Path) -> None:
    backend, local, clock = MemoryBackend(), MemoryRestorer.with_document({"claudeAiOauth": GOOD}), Clock()
    first = cycle(tmp_path, backend, local, FakeProbe([A]), clock).run()
    assert (first.status, first.action) == (Status.OK, Action.BACKUP)
    calls_after_first = list(backend.calls)

    clock.now += 600
    local.raw = json.dumps({"claudeAiOauth": GOOD}, indent=4).encode()  # Claude Code rewrote it, same login
    probe = FakeProbe([A])
    second = cycle(tmp_path, backend, local, probe, clock).run()
    assert (second.status, second.action, second.reason) == (Status.OK, Action.NONE, "unchanged_since_last_check")
    assert probe.runs == 0 and backend.calls == calls_after_first
    assert "sk-ant" not in (tmp_path / "last-check.json").read_text()


def test_after_the_window_the_timer_run_probes_again(tmp_path: Path) -> None:
    backend, local, clock = MemoryBackend(), MemoryRestorer.with_document({"claudeAiOauth": GOOD}), Clock()
    cycle(tmp_path, backend, local, FakeProbe([A]), clock).run()
    clock.now += 3601
    probe = FakeProbe([A])
    event = cycle(tmp_path, backend, local, probe, clock).run()
    assert probe.runs == 1 and event.reason is None and "renew" in backend.calls[-2:]


def test_a_changed_login_is_probed_and_backed_up(tmp_path: Path) -> None:
    backend, local, clock = MemoryBackend(), MemoryRestorer.with_document({"claudeAiOauth": GOOD}), Clock()
    cycle(tmp_path, backend, local, FakeProbe([A]), clock).run()
    local.raw = json.dumps({"claudeAiOauth": OTHER}).encode()
    probe = FakeProbe([A])
    event = cycle(tmp_path, backend, local, probe, clock).run()
    assert (probe.runs, event.action) == (1, Action.BACKUP) and backend.versions == [GOOD, OTHER]


def test_a_blanked_login_is_never_taken_for_unchanged(tmp_path: Path) -> None:
    backend, local, clock = MemoryBackend(), MemoryRestorer.with_document({"claudeAiOauth": GOOD}), Clock()
    cycle(tmp_path, backend, local, FakeProbe([A]), clock).run()
    local.raw = json.dumps({"claudeAiOauth": oauth_object("", "", expires_at_ms=0)}).encode()
    event = cycle(tmp_path, backend, local, FakeProbe(accept=lambda login: login.backupable, restorer=local), clock).run()
    assert (event.status, event.action) == (Status.OK, Action.RESTORE)
    assert json.loads(local.raw)["claudeAiOauth"] == GOOD


def test_a_damaged_or_planted_record_means_a_full_run(tmp_path: Path) -> None:
    backend, local, clock = MemoryBackend(), MemoryRestorer.with_document({"claudeAiOauth": GOOD}), Clock()
    cycle(tmp_path, backend, local, FakeProbe([A]), clock).run()
    for planted in (b"{", b'{"digest": "x", "at": 1}', b"[]"):
        (tmp_path / "last-check.json").write_bytes(planted)
        probe = FakeProbe([A])
        cycle(tmp_path, backend, local, probe, clock).run()
        assert probe.runs == 1


def test_a_backend_outage_still_says_whether_the_login_works(tmp_path: Path) -> None:
    for outcome, word in ((A, "authenticated"), (F, "auth_failed")):
        backend = MemoryBackend(versions=[GOOD], fail_with=BackendUnavailable("sealed", reason="vault_sealed"))
        local = MemoryRestorer.with_document({"claudeAiOauth": GOOD})
        event = cycle(tmp_path, backend, local, FakeProbe([outcome]), Clock(), window=0).run()
        assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_sealed")
        assert event.details["probe_outcome"] == word and local.writes == 0


# -- issue 13 item 4: changes while a path-unit run is going (systemd does not watch then) ----------


def _runtime(tmp_path: Path, monkeypatch, backend: MemoryBackend, probe: FakeProbe, local: MemoryRestorer):
    from claude_auth_sync.model import UserIdentity
    from claude_auth_sync.plugin_manager import get_plugin_manager
    from claude_auth_sync.runner import build_runtime
    from claude_auth_sync.testing import plugin

    for name, value in (("BACKEND", "t"), ("PROBE", "t"), ("RESTORER", "t"), ("SINKS", "[]")):
        monkeypatch.setenv(f"CLAUDE_AUTH_SYNC_{name}", value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
    user = UserIdentity(name="alice", uid=1000, gid=1000, home=tmp_path)
    return build_runtime(plugins=get_plugin_manager(extra_plugins=[("t", plugin(
        backend=backend, probe=probe, restorer=local, name="t"))]), user=user)


def test_a_blanking_right_after_a_path_run_is_repaired_in_the_same_run(tmp_path: Path, monkeypatch) -> None:
    from claude_auth_sync.runner import run_cycles

    backend = MemoryBackend(versions=[GOOD])
    local = MemoryRestorer.with_document({"claudeAiOauth": OTHER})  # a rotation: OTHER is new and good
    probe = FakeProbe(accept=lambda login: login.backupable, restorer=None)
    probe.restorer = local
    runtime = _runtime(tmp_path, monkeypatch, backend, probe, local)
    events = []

    def emit(event):
        events.append(event)
        if len(events) == 1:  # another Claude Code process blanks the file just after our last look
            local.raw = json.dumps({"claudeAiOauth": oauth_object("", "", expires_at_ms=0)}).encode()
        return []

    last, failed = run_cycles(runtime, on_change=True, emit=emit)
    assert [(e.action, e.reason) for e in events] == [(Action.BACKUP, None), (Action.RESTORE, "restored_latest_backup")]
    assert json.loads(local.raw)["claudeAiOauth"] == OTHER and backend.versions == [GOOD, OTHER]
    assert last is events[-1] and failed == []


def test_a_timer_run_never_reruns_and_reruns_are_bounded(tmp_path: Path, monkeypatch) -> None:
    from claude_auth_sync.runner import MAX_RERUNS_ON_CHANGE, run_cycles

    backend = MemoryBackend()
    local = MemoryRestorer.with_document({"claudeAiOauth": GOOD})
    probe = FakeProbe([A])
    runtime = _runtime(tmp_path, monkeypatch, backend, probe, local)
    counter = iter(range(100))

    def rotate(event):  # the file changes after every cycle
        n = next(counter)
        local.raw = json.dumps({"claudeAiOauth": oauth_object(f"sk-ant-oat01-r{n}", f"sk-ant-ort01-r{n}")}).encode()
        return []

    run_cycles(runtime, on_change=False, emit=rotate)
    assert probe.runs == 1
    run_cycles(runtime, on_change=True, emit=rotate)
    assert probe.runs == 1 + 1 + MAX_RERUNS_ON_CHANGE


def test_a_run_that_could_not_even_start_is_never_rerun(tmp_path: Path, monkeypatch) -> None:
    """A hostile tester's finding: a lock time-out (no cycle ran, no fingerprints) looked like a
    change and was retried twice, writing three WARN lines."""
    import fcntl
    import os

    from claude_auth_sync.runner import run_cycles

    local = MemoryRestorer.with_document({"claudeAiOauth": GOOD})
    probe = FakeProbe([A])
    monkeypatch.setattr("claude_auth_sync.runner.ON_CHANGE_LOCK_WAIT_S", 0.3)
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_RUN_LOCK_WAIT", "0.2")
    runtime = _runtime(tmp_path, monkeypatch, MemoryBackend(), probe, local)
    state = tmp_path / "state" / "claude-auth-sync"
    state.mkdir(parents=True)
    fd = os.open(state / "run.lock", os.O_RDWR | os.O_CREAT, 0o600)
    events = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last, _ = run_cycles(runtime, on_change=True, emit=lambda e: events.append(e) or [])
    finally:
        os.close(fd)
    assert [e.reason for e in events] == ["another_run_in_progress"] and probe.runs == 0
