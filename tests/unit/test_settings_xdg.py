"""The XDG rule of :mod:`claude_auth_sync.settings` (``xdg_choice``): honoured when its directory is in
use, the default (the unit's and the provisioner's) when only that one is, never when HOME is another."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_auth_sync.model import UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.settings import load_settings, settings_provenance, user_config_file, xdg_choice


@pytest.fixture
def user(tmp_path: Path) -> UserIdentity:
    (tmp_path / "home").mkdir()
    return UserIdentity(name="alice", uid=1000, gid=1000, home=tmp_path / "home")


def env(user: UserIdentity, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(user.home), "XDG_CONFIG_HOME": str(tmp_path / "xc"), "XDG_STATE_HOME": str(tmp_path / "xs"), **extra}


def put(directory: Path, name: str = "sync.log") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("x")


def test_unset_or_default_valued_variable_is_the_default(user: UserIdentity, tmp_path: Path) -> None:
    assert xdg_choice("XDG_STATE_HOME", user, {"HOME": str(user.home)}).rule == "default"
    same = xdg_choice("XDG_CONFIG_HOME", user, {"XDG_CONFIG_HOME": str(user.home / ".config")})
    assert (same.rule, same.chosen) == ("default", user.home / ".config/claude-auth-sync")


def test_neither_in_use_honours_the_variable(user: UserIdentity, tmp_path: Path) -> None:
    choice = xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path))
    assert (choice.rule, choice.chosen, choice.agrees_with_unit) == ("neither", tmp_path / "xs/claude-auth-sync", False)


def test_only_the_default_in_use_falls_back_to_it(user: UserIdentity, tmp_path: Path) -> None:
    put(user.home / ".local/state/claude-auth-sync")
    (tmp_path / "xs/claude-auth-sync").mkdir(parents=True)  # empty: not in use
    choice = xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path))
    assert (choice.rule, choice.chosen, choice.agrees_with_unit) == ("fallback", user.home / ".local/state/claude-auth-sync", True)


def test_both_in_use_honours_the_variable_and_says_the_unit_differs(user: UserIdentity, tmp_path: Path) -> None:
    put(user.home / ".config/claude-auth-sync", "vault-token")
    put(tmp_path / "xc/claude-auth-sync", "config.toml")
    choice = xdg_choice("XDG_CONFIG_HOME", user, env(user, tmp_path))
    assert (choice.rule, choice.chosen, choice.agrees_with_unit) == ("both", tmp_path / "xc/claude-auth-sync", False)


def test_another_home_never_falls_back_to_the_accounts(user: UserIdentity, tmp_path: Path) -> None:
    """A sandbox or container with its own HOME must never read or write the account's real files."""
    put(user.home / ".local/state/claude-auth-sync")
    choice = xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path, HOME=str(tmp_path / "sandbox-home")))
    assert (choice.rule, choice.chosen) == ("neither", tmp_path / "xs/claude-auth-sync")


def test_a_symlink_or_a_file_in_place_of_the_directory_counts_as_in_use(user: UserIdentity, tmp_path: Path) -> None:
    put(user.home / ".local/state/claude-auth-sync")
    (tmp_path / "xs").mkdir()
    (tmp_path / "xs/claude-auth-sync").symlink_to("/nonexistent")
    assert xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path)).rule == "both"


def test_settings_and_the_user_file_follow_the_rule(user: UserIdentity, tmp_path: Path) -> None:
    put(user.home / ".config/claude-auth-sync", "vault-token")
    put(user.home / ".local/state/claude-auth-sync")
    environ = env(user, tmp_path)
    assert user_config_file(user, environ) == user.home / ".config/claude-auth-sync/config.toml"
    s = load_settings(get_plugin_manager().settings_sections(), user, system_file=tmp_path / "none.toml", environ=environ)
    assert (s.config_dir, s.state_dir) == (user.home / ".config/claude-auth-sync", user.home / ".local/state/claude-auth-sync")
    assert settings_provenance(s)["state_dir"] == "default"
    put(tmp_path / "xs/claude-auth-sync")
    s = load_settings(get_plugin_manager().settings_sections(), user, system_file=tmp_path / "none.toml", environ=environ)
    assert s.state_dir == tmp_path / "xs/claude-auth-sync"


def test_the_merge_command_of_diagnose_is_safe_for_hostile_directory_names(user: UserIdentity, tmp_path: Path) -> None:
    """An XDG directory named with spaces, quotes and ``$(...)``: the next step diagnose prints, run
    by a real ``sh``, moves the files and executes nothing from the name."""
    import subprocess

    from claude_auth_sync.diagnose import _xdg_row

    hostile = tmp_path / "dot files'\"$(touch PWNED)`touch PWNED2`"
    put(user.home / ".config/claude-auth-sync", "vault-token")
    put(hostile / "claude-auth-sync", "config.toml")
    choice = xdg_choice("XDG_CONFIG_HOME", user, {"HOME": str(user.home), "XDG_CONFIG_HOME": str(hostile)})
    assert choice.rule == "both"
    row = _xdg_row(choice, {})
    assert row.state == "warn" and row.next_step
    done = subprocess.run(["/bin/sh", "-c", row.next_step], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert (user.home / ".config/claude-auth-sync/config.toml").exists() and not (hostile / "claude-auth-sync").exists()
    assert xdg_choice("XDG_CONFIG_HOME", user, {"HOME": str(user.home), "XDG_CONFIG_HOME": str(hostile)}).rule == "fallback"


def test_two_state_directories_get_a_command_that_leaves_the_units_log(user: UserIdentity, tmp_path: Path) -> None:
    import subprocess

    from claude_auth_sync.diagnose import _xdg_row

    put(user.home / ".local/state/claude-auth-sync")
    put(tmp_path / "xs/claude-auth-sync")
    choice = xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path))
    row = _xdg_row(choice, {})
    assert choice.rule == "both" and row.state == "warn" and row.next_step
    assert subprocess.run(["/bin/sh", "-c", row.next_step], capture_output=True, check=False).returncode == 0
    assert (user.home / ".local/state/claude-auth-sync/sync.log").exists()
    assert xdg_choice("XDG_STATE_HOME", user, env(user, tmp_path)).rule == "fallback"
