"""The plugin manager: entry points, selection, duplicates, third-party swaps."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from claude_auth_sync.errors import PluginError
from claude_auth_sync.hookspecs import BackendSpec, hookimpl
from claude_auth_sync.model import ExitCode, ProbeOutcome, UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.runner import build_runtime, emit_to_sinks, run_cycle
from claude_auth_sync.testing import FakeProbe, MemoryRestorer, MemoryBackend, RecordingSink, oauth_object, plugin

BUILT_INS = {"probe_inference", "backend_vault", "backend_file", "backend_memory", "sink_file", "sink_journald",
             "sink_metrics", "restore_credentials_file"}


@pytest.fixture
def user(tmp_path: Path) -> UserIdentity:
    return UserIdentity(name="alice", uid=1000, gid=1000, home=tmp_path)


def test_built_ins_come_from_the_entry_point_group() -> None:
    plugins = get_plugin_manager()
    names = {name for name, _ in plugins.pm.list_name_plugin()}
    assert BUILT_INS <= names
    assert set(plugins.backends()) >= {"vault", "file", "memory"}
    assert set(plugins.sinks()) >= {"file", "journald"}
    assert set(plugins.probes()) == {"inference"}
    assert set(plugins.restorers()) == {"credentials_file"}
    assert plugins.broken == []


def test_unknown_backend_names_the_available_ones(user, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_BACKEND", "valut")
    with pytest.raises(PluginError) as caught:
        build_runtime(user=user)
    assert caught.value.exit_code == ExitCode.CONFIG
    assert "valut" in str(caught.value) and "file, memory, vault" in str(caught.value)


def test_duplicate_names_are_an_error_listing_both_sources() -> None:
    class Impostor:
        @hookimpl
        def cas_backends(self):
            return [BackendSpec("file", lambda ctx: MemoryBackend())]

    plugins = get_plugin_manager(extra_plugins=[("impostor", Impostor())])
    with pytest.raises(PluginError, match="backend_file and impostor"):
        plugins.backends()


def test_misspelt_hook_fails_check_pending() -> None:
    class Typo:
        @hookimpl
        def cas_sink(self):  # not a hook
            return []

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'cas_sink' in plugin"):
        get_plugin_manager(extra_plugins=[("typo", Typo())])


def test_third_party_plugin_replaces_backend_and_sink(
    user, monkeypatch, cas_backend: MemoryBackend, cas_sink: RecordingSink
) -> None:
    """The 'swapping backends in tests' use: registered the public way, selected by settings."""
    store, sink = cas_backend, cas_sink
    local = MemoryRestorer.with_document({"claudeAiOauth": oauth_object("sk-a", "sk-r"), "mcpOAuth": {}})
    probe = FakeProbe([ProbeOutcome.AUTHENTICATED])
    third_party = plugin(backend=store, probe=probe, restorer=local, sinks={"recorder": sink}, name="thirdparty")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_BACKEND", "thirdparty")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_PROBE", "thirdparty")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_RESTORER", "thirdparty")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_SINKS", '["recorder"]')
    runtime = build_runtime(plugins=get_plugin_manager(extra_plugins=[("thirdparty", third_party)]), user=user)
    event = run_cycle(runtime)
    assert emit_to_sinks(runtime.sinks_or_report(), event) == []
    assert event.exit_code == ExitCode.OK and event.action == "backup"
    assert store.versions == [oauth_object("sk-a", "sk-r")]
    assert sink.events == [event]


def test_a_failing_sink_never_stops_the_others(capsys, cas_backend: MemoryBackend, cas_sink: RecordingSink) -> None:
    class Exploding:
        def emit(self, event):
            raise OSError("disk on fire")

    good = cas_sink
    from claude_auth_sync.cycle import HealthCycle

    event = HealthCycle("alice", cas_backend, FakeProbe(), MemoryRestorer.with_document(
        {"claudeAiOauth": oauth_object("a", "r")})).run()
    failed = emit_to_sinks([("boom", Exploding()), ("good", good)], event)
    assert failed == ["boom"] and good.events == [event]
    assert "sink 'boom' failed" in capsys.readouterr().err


def test_broken_third_party_entry_point_is_recorded_not_fatal(tmp_path, monkeypatch) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[claude_auth_sync]\nbroken = broken_plugin_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = get_plugin_manager()
    assert [b.name for b in plugins.broken] == ["broken"]
    assert "ModuleNotFoundError" in plugins.broken[0].error
    assert "file" in plugins.backends()  # the built-ins still work
