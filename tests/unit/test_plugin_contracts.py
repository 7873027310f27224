"""Issue 12 item 4: hooks go through pluggy, factory results are checked, the environment reaches
only the probe, and plugins contribute to ``diagnose`` and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.cli import main
from claude_auth_sync.diagnose import check_backend
from claude_auth_sync.errors import PluginError
from claude_auth_sync.hookspecs import BackendSpec, CommandSpec, PluginContext, ProbeSpec, RestorerSpec, hookimpl
from claude_auth_sync.model import DiagnosticRow, UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.runner import build_runtime
from claude_auth_sync.testing import FakeProbe, MemoryBackend, MemoryRestorer, oauth_object


@pytest.fixture
def user(tmp_path: Path) -> UserIdentity:
    return UserIdentity(name="alice", uid=1000, gid=1000, home=tmp_path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CLAUDE_CONFIG_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "VAULT_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


class HalfBackend:
    """Has renew() but nothing else of the Backend protocol."""

    def renew(self) -> None: ...


def test_a_factory_returning_the_wrong_object_is_a_plugin_error_naming_the_plugin(user, clean_env, monkeypatch) -> None:
    class Sloppy:
        @hookimpl
        def cas_backends(self) -> list[BackendSpec]:
            return [BackendSpec("sloppy", lambda ctx: HalfBackend())]

    monkeypatch.setenv("CLAUDE_AUTH_SYNC_BACKEND", "sloppy")
    runtime = build_runtime(user=user, plugins=get_plugin_manager(extra_plugins=[("sloppy_plugin", Sloppy())]))
    with pytest.raises(PluginError) as caught:
        runtime.backend()
    message = str(caught.value)
    assert "sloppy_plugin" in message and "HalfBackend" in message
    assert "read_latest" in message and "write" in message and "renew" not in message.split("lacks")[1]


def test_only_the_probe_factory_sees_the_environment(user, clean_env, monkeypatch) -> None:
    seen: dict[str, dict[str, str]] = {}

    def capture(kind: str, built: Any) -> Any:
        def factory(ctx: PluginContext) -> Any:
            seen[kind] = dict(ctx.environ)
            return built
        return factory

    class Spy:
        @hookimpl
        def cas_backends(self) -> list[BackendSpec]:
            return [BackendSpec("spy", capture("backend", MemoryBackend()))]

        @hookimpl
        def cas_probes(self) -> list[ProbeSpec]:
            return [ProbeSpec("spy", capture("probe", FakeProbe()))]

        @hookimpl
        def cas_restorers(self) -> list[RestorerSpec]:
            return [RestorerSpec("spy", capture("restorer", MemoryRestorer()))]

    monkeypatch.setenv("CLAUDE_AUTH_SYNC_BACKEND", "spy")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_PROBE", "spy")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_RESTORER", "spy")
    monkeypatch.setenv("SOME_SECRET_TOKEN", "sk-should-reach-the-probe-only")
    runtime = build_runtime(user=user, plugins=get_plugin_manager(extra_plugins=[("spy", Spy())]))
    runtime.backend(), runtime.probe(), runtime.restorer()
    assert seen["probe"].get("SOME_SECRET_TOKEN") == "sk-should-reach-the-probe-only"
    assert seen["backend"] == {} and seen["restorer"] == {}


def test_a_third_party_backend_gets_diagnose_rows_of_its_own(user, clean_env, monkeypatch) -> None:
    backend = MemoryBackend(versions=[oauth_object("sk-ant-oat01-x", "sk-ant-ort01-x")])

    class ThirdParty:
        @hookimpl
        def cas_backends(self) -> list[BackendSpec]:
            return [BackendSpec("acme", lambda ctx: backend)]

        @hookimpl
        def cas_diagnose(self, component: object) -> list[DiagnosticRow]:  # fewer arguments than the spec
            return [DiagnosticRow("backend", "acme vault", "ok", f"{len(component.versions)} versions")] \
                if component is backend else []

    monkeypatch.setenv("CLAUDE_AUTH_SYNC_BACKEND", "acme")
    runtime = build_runtime(user=user, plugins=get_plugin_manager(extra_plugins=[("acme_plugin", ThirdParty())]))
    rows = {(r.group, r.name): r for r in check_backend(runtime)}
    assert rows[("backend", "backend")].detail == "acme (plugin acme_plugin)"
    assert rows[("backend", "acme vault")].detail == "1 versions"
    assert not any(r.name.startswith("token") for r in rows.values())  # no Vault rows for a non-Vault backend


def test_hook_calls_go_through_pluggy_and_are_traced() -> None:
    plugins = get_plugin_manager()
    calls: list[str] = []
    undo = plugins.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name), lambda *a: None)
    try:
        plugins.backends()
        plugins.sinks()
    finally:
        undo()
    assert calls.count("cas_backends") >= 3 and "cas_sinks" in calls  # once per providing plugin


def test_a_plugin_command_is_on_the_command_line(capsys, monkeypatch) -> None:
    ran: list[str] = []

    class Commands:
        @hookimpl
        def cas_commands(self) -> list[CommandSpec]:
            return [
                CommandSpec("hello", "say hello", lambda parser: parser.add_argument("name"),
                            lambda args: ran.append(args.name) or 0),
                CommandSpec("run", "an impostor of a kernel command", lambda parser: None, lambda args: 99),
            ]

    import claude_auth_sync.plugin_manager as manager

    real = manager.get_plugin_manager
    monkeypatch.setattr(manager, "get_plugin_manager", lambda **kw: real(extra_plugins=[("commands", Commands())]))
    assert main(["hello", "world"]) == 0 and ran == ["world"]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--json" in capsys.readouterr().out  # the kernel's run (the impostor has no options)


def test_the_policy_and_fleet_commands_come_from_plugins() -> None:
    plugins = get_plugin_manager()
    commands = plugins.commands()
    assert set(commands) >= {"policy", "fleet"}
    assert plugins.origins[("cas_commands", "policy")] == "backend_vault"
    assert plugins.origins[("cas_commands", "fleet")] == "admin"


@pytest.mark.parametrize("answer", [[object()], "abc", {"x": 1}, RuntimeError("boom sk-ant-oat01-SECRET")])
@pytest.mark.parametrize("hook", ["cas_commands", "cas_backends", "cas_sinks", "cas_settings_sections"])
def test_a_plugin_whose_hook_misbehaves_is_recorded_as_broken_and_skipped(hook: str, answer: object) -> None:
    """A hostile tester's finding: such a plugin crashed every command (run included) with exit 1
    and printed its exception text."""

    def misbehave(self):  # noqa: ANN001
        if isinstance(answer, Exception):
            raise answer
        return answer

    plugin = type("Bad", (), {hook: hookimpl(misbehave)})()
    plugins = get_plugin_manager(extra_plugins=[("bad_plugin", plugin)])
    getter = {"cas_commands": plugins.commands, "cas_backends": plugins.backends, "cas_sinks": plugins.sinks,
              "cas_settings_sections": plugins.settings_sections}[hook]
    result = getter()
    assert result  # the good plugins' records are all still there
    assert [b.name for b in plugins.broken] == ["bad_plugin"]
    assert "SECRET" not in plugins.broken[0].error


def test_the_cli_survives_a_broken_command_plugin(capsys, monkeypatch) -> None:
    class Bad:
        @hookimpl
        def cas_commands(self):  # noqa: ANN201
            return [object()]

    import claude_auth_sync.plugin_manager as manager

    real = manager.get_plugin_manager
    monkeypatch.setattr(manager, "get_plugin_manager", lambda **kw: real(extra_plugins=[("bad", Bad())]))
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert "claude-auth-sync" in capsys.readouterr().out
