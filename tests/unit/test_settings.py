"""Settings: defaults, files, standard variables, CLAUDE_AUTH_SYNC_* and flags, in that precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.settings import load_settings, settings_provenance


@pytest.fixture
def user(tmp_path: Path) -> UserIdentity:
    return UserIdentity(name="alice", uid=1000, gid=1000, home=tmp_path / "home")


@pytest.fixture
def sections():
    return get_plugin_manager().settings_sections()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("CLAUDE_AUTH_SYNC_", "VAULT_", "XDG_")) or key == "CLAUDE_CONFIG_DIR":
            monkeypatch.delenv(key)


def load(sections, user, tmp_path, **kwargs):
    kwargs.setdefault("system_file", tmp_path / "etc.toml")
    kwargs.setdefault("user_file", tmp_path / "user.toml")
    return load_settings(sections, user, **kwargs)


def test_contract_defaults(sections, user, tmp_path) -> None:
    s = load(sections, user, tmp_path)
    assert s.backend == "vault" and s.sinks == ["file", "journald"]
    assert s.section("inference").model == "haiku" and s.section("inference").timeout == 120
    assert s.section("inference").claude_bin is None
    vault = s.section("vault")
    assert (vault.addr, vault.mount, vault.path_prefix, vault.token_file) == (None, "secret", "workstation/claude-users", None)
    assert s.section("journald").socket == "/run/systemd/journal/socket"
    assert s.claude_config_dir == user.home / ".claude"
    assert s.state_dir == user.home / ".local/state/claude-auth-sync"
    assert s.config_dir == user.home / ".config/claude-auth-sync"


def test_precedence_files_env_flags(sections, user, tmp_path, monkeypatch) -> None:
    (tmp_path / "etc.toml").write_text('backend = "file"\n[vault]\naddr = "https://etc:8200"\nmount = "kv"\n')
    (tmp_path / "user.toml").write_text('[vault]\naddr = "https://user:8200"\n')
    s = load(sections, user, tmp_path)
    assert (s.backend, s.section("vault").addr, s.section("vault").mount) == ("file", "https://user:8200", "kv")

    monkeypatch.setenv("VAULT_ADDR", "https://standard:8200")
    assert load(sections, user, tmp_path).section("vault").addr == "https://standard:8200"

    monkeypatch.setenv("CLAUDE_AUTH_SYNC_VAULT__ADDR", "https://ours:8200")
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_SINKS", '["file"]')
    s = load(sections, user, tmp_path)
    assert s.section("vault").addr == "https://ours:8200" and s.sinks == ["file"]

    s = load(sections, user, tmp_path, overrides={"backend": "memory"})
    assert s.backend == "memory"
    where = settings_provenance(s)
    assert where["backend"] == "command line"
    assert where["vault.addr"] == "environment"
    assert where["vault.mount"] == str(tmp_path / "etc.toml")
    assert where["probe"] == "default"


def test_neighbouring_standard_variables(sections, user, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cc"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    s = load(sections, user, tmp_path)
    assert s.claude_config_dir == tmp_path / "cc"
    assert s.state_dir == tmp_path / "state/claude-auth-sync"
    assert s.config_dir == tmp_path / "config/claude-auth-sync"
    assert str(s.section("vault").cacert) == "/etc/ssl/vault-ca.pem"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("CLAUDE_AUTH_SYNC_INFERENCE__TIMEOUT", "-3", "inference.timeout"),
        ("CLAUDE_AUTH_SYNC_VAULT__MOUNT", "../etc", "vault.mount"),
        ("CLAUDE_AUTH_SYNC_SINKS", "not json", "sinks"),
    ],
)
def test_invalid_settings_name_the_field(sections, user, tmp_path, monkeypatch, variable, value, field) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load(sections, user, tmp_path)
    assert caught.value.exit_code == 78
    assert field.split(".")[0] in str(caught.value)


def test_unknown_key_in_a_file_is_refused(sections, user, tmp_path) -> None:
    (tmp_path / "etc.toml").write_text("[vault]\nadress = 'https://typo'\n")
    with pytest.raises(ConfigurationError, match="adress"):
        load(sections, user, tmp_path)


def test_broken_toml_is_a_configuration_error(sections, user, tmp_path) -> None:
    (tmp_path / "user.toml").write_text("[vault\naddr=")
    with pytest.raises(ConfigurationError, match="not valid TOML") as caught:
        load(sections, user, tmp_path)
    assert str(tmp_path / "user.toml") in str(caught.value)
