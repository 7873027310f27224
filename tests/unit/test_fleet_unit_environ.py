"""The fleet view's reading of ``/etc/default/claude-auth-sync`` and of root's environment
(:mod:`claude_auth_sync.admin.unit_environ`): systemd's ``EnvironmentFile=`` syntax, hostile files
refused by the trusted-file check, only settings variables, and root's per-user variables never."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from claude_auth_sync.admin.trusted_file import UntrustedFile
from claude_auth_sync.admin.unit_environ import (
    MAX_ENVIRONMENT_BYTES, parse_environment_file, read_environment_file, settings_variables, unit_environ,
)
from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.plugin_manager import get_plugin_manager

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files owned by others")


def sections():
    return get_plugin_manager().settings_sections()


# ---------------------------------------------------------------------------- systemd's syntax


def test_plain_assignments_comments_and_blank_lines() -> None:
    found, problems = parse_environment_file(
        "# comment\n; another\n\n   \nVAULT_ADDR=https://vault.example:8200\n  VAULT_NAMESPACE = team-a  \n")
    assert found == {"VAULT_ADDR": "https://vault.example:8200", "VAULT_NAMESPACE": "team-a"}
    assert problems == []


def test_export_lines_are_ignored_as_systemd_ignores_them() -> None:
    found, problems = parse_environment_file("export VAULT_ADDR=https://x.example\nexport X=\n")
    assert found == {}
    assert problems == ["line 1: not a variable name (systemd ignores it)",
                        "line 2: not a variable name (systemd ignores it)"]


def test_quotes_escapes_and_continuations() -> None:
    text = ("A='single $quoted \\n'\n"
            'B="double \\"q\\" \\$x \\n"\n'
            "C=unquoted\\ with\\ escapes\n"
            "D=continued \\\nline\n"
            'E="spans\\\nlines"\n'
            "F=a#not-a-comment\n"
            "G=\n"
            'H=""\n'
            "I='a'\"b\"\n")
    found, problems = parse_environment_file(text)
    assert found == {"A": "single $quoted \\n", "B": 'double "q" $x \\n', "C": "unquoted with escapes",
                     "D": "continued line", "E": "spanslines", "F": "a#not-a-comment", "G": "", "H": "",
                     "I": "ab"}
    assert problems == []


def test_later_lines_win_and_lines_without_equals_are_ignored() -> None:
    found, problems = parse_environment_file("VAULT_ADDR=https://a.example\nJUNK\nVAULT_ADDR=https://b.example\n")
    assert found == {"VAULT_ADDR": "https://b.example"}
    assert problems == ["line 2: no '=' (systemd ignores it)"]


@pytest.mark.parametrize("value", ["\x1b]0;pwned\x07", "\x9b31m", '"two\nlines"', "x\x7f"])
def test_control_characters_are_kept_as_systemd_252_keeps_them(value: str) -> None:
    """systemd 252 hands a value with control characters to the process (test_review_unit_environ_systemd)."""
    found, problems = parse_environment_file(f"VAULT_NAMESPACE={value}\nVAULT_ADDR=https://ok.example\n")
    assert found == {"VAULT_NAMESPACE": value.strip('"'), "VAULT_ADDR": "https://ok.example"}
    assert problems == []


def test_a_nul_byte_makes_systemd_refuse_the_whole_file() -> None:
    found, problems = parse_environment_file("VAULT_NAMESPACE=a\x00b\nVAULT_ADDR=https://ok.example\n")
    assert found == {}
    assert len(problems) == 1 and "NUL" in problems[0] and "a\x00b" not in problems[0]


def test_invalid_utf8_in_an_assignment_makes_systemd_refuse_the_whole_file() -> None:
    found, problems = parse_environment_file(b"VAULT_ADDR=https://ok.example\nVAULT_NAMESPACE=\xff\xfe\n"
                                             .decode("utf-8", errors="surrogateescape"))
    assert found == {}
    assert problems == ["line 2: invalid UTF-8: systemd refuses the whole file (every assignment in it ignored)"]


def test_invalid_utf8_in_a_comment_is_harmless() -> None:
    found, problems = parse_environment_file(b"# \xff\nVAULT_ADDR=https://ok.example\n"
                                             .decode("utf-8", errors="surrogateescape"))
    assert found == {"VAULT_ADDR": "https://ok.example"} and problems == []


def test_a_tab_is_allowed_and_trailing_blanks_are_trimmed() -> None:
    found, _ = parse_environment_file("VAULT_NAMESPACE=a\tb \t \n")
    assert found == {"VAULT_NAMESPACE": "a\tb"}


def test_a_comment_ending_in_a_backslash_swallows_the_next_line_as_systemd_252_does() -> None:
    found, problems = parse_environment_file("# note \\\nHTTPS_PROXY=http://hidden.example\n; x \\\\\nVAULT_ADDR=https://x.example\n")
    assert found == {"VAULT_ADDR": "https://x.example"}
    assert len(problems) == 1 and "line 1" in problems[0]


def test_the_end_of_the_file_ends_an_open_value() -> None:
    for text, expected in (("A='abc", "abc"), ('A="ab\\', "ab"), ("A=x\\", "x"), ("A=x  ", "x"), ("A=", ""),
                           ("A='abc\nB=1\n", "abc\nB=1\n")):
        found, _ = parse_environment_file(text)
        assert found == {"A": expected}, text


# ---------------------------------------------------------------------------- the trusted file


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


def test_an_absent_file_is_an_empty_one(tmp_path: Path) -> None:
    assert read_environment_file(tmp_path / "absent") == ({}, [])


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_group_or_world_writable_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "default", "VAULT_ADDR=https://evil.example\n", mode)
    with pytest.raises(UntrustedFile, match="writable"):
        read_environment_file(path)


@root_only
def test_a_file_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "default", "VAULT_ADDR=https://evil.example\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(UntrustedFile, match="owned by uid 65534"):
        read_environment_file(path)


@root_only
def test_a_symlink_owned_by_another_account_is_refused(tmp_path: Path) -> None:
    target = write(tmp_path / "target", "VAULT_ADDR=https://evil.example\n")
    link = tmp_path / "default"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UntrustedFile, match="symlink"):
        read_environment_file(link)


def test_a_file_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)  # not sticky: anyone could replace the file
    path = write(directory / "default", "VAULT_ADDR=https://evil.example\n")
    with pytest.raises(UntrustedFile, match="directory"):
        read_environment_file(path)


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = write(tmp_path / "default", b"# x\n" * (MAX_ENVIRONMENT_BYTES // 4 + 1))
    with pytest.raises(ConfigurationError, match="larger than"):
        read_environment_file(path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "default"
    os.mkfifo(path, 0o644)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            read_environment_file(path)
        except BaseException as err:  # noqa: BLE001 - recorded
            outcome.append(err)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert outcome and isinstance(outcome[0], ConfigurationError)
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


# ---------------------------------------------------------------------------- what the child gets


def test_roots_per_user_variables_never_reach_the_child_in_any_spelling(tmp_path: Path) -> None:
    path = write(tmp_path / "default", "VAULT_CLIENT_CERT=vault-client.crt\nVAULT_CLIENT_KEY=vault-client.key\n")
    root = {"PATH": "/usr/bin", "VAULT_CLIENT_CERT": "/root/c.crt", "VAULT_CLIENT_KEY": "/root/c.key",
            "CLAUDE_AUTH_SYNC_VAULT__CLIENT_CERT": "/root/c.crt", "claude_auth_sync_vault__client_key": "/root/c.key",
            "CLAUDE_AUTH_SYNC_VAULT__TOKEN_FILE": "/root/t", "XDG_CONFIG_HOME": "/root/.config",
            "CLAUDE_AUTH_SYNC_VAULT": '{"client_cert": "/root/c.crt"}', "CLAUDE_AUTH_SYNC_NO_SUCH": "x"}
    unit = unit_environ(sections(), root, path)
    assert unit.environ == {"PATH": "/usr/bin", "VAULT_CLIENT_CERT": "vault-client.crt",
                            "VAULT_CLIENT_KEY": "vault-client.key"}
    assert set(unit.dropped) == set(root) - {"PATH"}
    assert unit.overrides == []


def test_roots_site_variables_apply_and_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "default", "VAULT_ADDR=https://unit.example\nVAULT_NAMESPACE=team-a\n")
    root = {"VAULT_ADDR": "https://chosen.example", "VAULT_NAMESPACE": "team-a", "CLAUDE_AUTH_SYNC_BACKEND": "vault"}
    unit = unit_environ(sections(), root, path)
    assert unit.environ == {"VAULT_ADDR": "https://chosen.example", "VAULT_NAMESPACE": "team-a",
                            "CLAUDE_AUTH_SYNC_BACKEND": "vault"}
    assert unit.overrides == ["CLAUDE_AUTH_SYNC_BACKEND", "VAULT_ADDR"]  # the same value is no override


def test_only_settings_and_proxy_variables_are_taken_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "default", "LD_PRELOAD=/tmp/evil.so\nHTTPS_PROXY=http://p:3128\nPATH=/evil\n"
                                       "no_proxy=vault.lab\nCLAUDE_AUTH_SYNC_VAULT__NAMESPACE=team-b\n")
    unit = unit_environ(sections(), {"PATH": "/usr/bin"}, path)
    assert unit.environ == {"PATH": "/usr/bin", "CLAUDE_AUTH_SYNC_VAULT__NAMESPACE": "team-b",
                            "HTTPS_PROXY": "http://p:3128", "no_proxy": "vault.lab"}
    assert sorted(p.split(":")[0] for p in unit.problems) == ["LD_PRELOAD", "PATH"]


def test_proxies_are_the_units_never_roots_shell(tmp_path: Path) -> None:
    """The unit never sees the administrator's shell: root's proxy variables are left out (named),
    the file's apply; with no file, no proxy at all."""
    root = {"PATH": "/usr/bin", "HTTPS_PROXY": "http://root-only:3128", "http_proxy": "http://root-only:3128",
            "NO_PROXY": "vault.lab"}
    unit = unit_environ(sections(), root, write(tmp_path / "default", "NO_PROXY=vault.lab\n"))
    assert unit.environ == {"PATH": "/usr/bin", "NO_PROXY": "vault.lab"}
    assert sorted(unit.dropped) == ["HTTPS_PROXY", "http_proxy"]  # NO_PROXY: the same as the unit's
    bare = unit_environ(sections(), root, tmp_path / "absent")
    assert bare.environ == {"PATH": "/usr/bin"}


def test_the_settings_know_the_vault_variables() -> None:
    known = settings_variables(sections())
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY",
                 "CLAUDE_AUTH_SYNC_VAULT__ADDR", "claude_auth_sync_backend", "XDG_CONFIG_HOME"):
        assert known.knows(name), name
    assert not known.knows("HTTPS_PROXY") and not known.knows("vault_addr")
