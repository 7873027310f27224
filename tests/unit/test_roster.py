"""Roster validation: every problem is refused with the line it came from."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.admin.roster import Roster, RosterError, load_roster, parse_roster

REPO = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(RosterError) as info:
        parse_roster(text)
    return info.value.problems


def lines_of(text: str) -> list[int | None]:
    return [line for line, _ in problems(text)]


def test_the_shipped_example_roster_is_valid() -> None:
    roster = load_roster(REPO / "scripts/workstation/roster.yaml")
    assert isinstance(roster, Roster)
    assert roster.names() and len(set(roster.names())) == len(roster.names())
    assert all("@" in user.email for user in roster)


def test_a_valid_roster_keeps_order_and_values() -> None:
    roster = parse_roster(
        "# comment\nusers:\n  - os_user: alice\n    email: alice@example.com\n"
        "  - {os_user: bob_2, email: Bob.Smith+cc@corp.example.co.uk}\n"
    )
    assert roster.names() == ["alice", "bob_2"]
    assert roster.users[1].email == "Bob.Smith+cc@corp.example.co.uk"


def test_an_empty_user_list_is_valid() -> None:
    assert parse_roster("users: []\n").names() == []


@pytest.mark.parametrize(
    "name",
    ["Alice", "1alice", "al ice", "alice/../bob", "../etc", "alice*", "a" * 33, "root", "", "ali\u00e9", "..", "a/b",
     ".alice", "-alice", "alice.", "a..b", "j\u043ehn.doe", "john.doe@corp.example", "alice?", "a[b]", "12345"],
)
def test_invalid_user_names_are_refused_with_their_line(name: str) -> None:
    text = f"users:\n  - os_user: ok\n    email: ok@example.com\n  - os_user: '{name}'\n    email: x@example.com\n"
    found = problems(text)
    assert [line for line, _ in found] == [4]
    assert "users[1].os_user" in found[0][1]


def test_directory_names_with_dots_dashes_and_underscores_are_valid() -> None:
    """SSSD/AD names (issue 14 item 3): dotted, with dashes and digits, up to 32 characters."""
    names = ["john.doe", "j_doe-2", "a.b.c", "_svc.x", "x" * 32, "first.last-2.ext"]
    text = "users:\n" + "".join(f"  - os_user: {n}\n    email: u{i}@example.com\n" for i, n in enumerate(names))
    assert parse_roster(text).names() == names


@pytest.mark.parametrize(("name", "why"), [
    ("john.doe@corp.example", "use_fully_qualified_names"),
    ("John.Doe", "lowercased"),
    ("a..b", "'..'"),
    ("alice.", "ends with a dot"),
    (".alice", "starts with a dot"),
    ("a/b", "'/'"),
    ("a" * 33, "longer than 32"),
    ("j\u043ehn", "ASCII"),
])
def test_a_refused_name_says_why(name: str, why: str) -> None:
    (found,) = problems(f"users:\n  - os_user: '{name}'\n    email: x@example.com\n")
    assert why in found[1], found


def test_a_newline_in_a_name_is_refused() -> None:
    (found,) = problems('users:\n  - os_user: "alice\\n"\n    email: x@example.com\n')
    assert found[0] == 2 and "printable ASCII" in found[1], found


@pytest.mark.parametrize(
    "email",
    ["alice", "alice@", "@example.com", "alice@@example.com", "alice@example", "Alice <alice@example.com>",
     "alice @example.com", "alice@exa mple.com", "alice@example.c0m", "a..b@example.com", "alice@-example.com"],
)
def test_invalid_emails_are_refused_with_their_line(email: str) -> None:
    text = f'users:\n  - os_user: alice\n    email: "{email}"\n'
    found = problems(text)
    assert [line for line, _ in found] == [3]
    assert "users[0].email" in found[0][1]


def test_unknown_keys_are_refused_at_every_level() -> None:
    text = (
        "users:\n"
        "  - os_user: alice\n"
        "    email: alice@example.com\n"
        "    shell: /bin/sh\n"
        "groups: [wheel]\n"
    )
    found = problems(text)
    assert found == [(4, "users[0].shell: unknown key 'shell'"), (5, "groups: unknown key 'groups'")]


def test_duplicate_users_and_emails_are_refused_naming_both_lines() -> None:
    text = (
        "users:\n"
        "  - os_user: alice\n"
        "    email: alice@example.com\n"
        "  - os_user: bob\n"
        "    email: ALICE@example.com\n"
        "  - os_user: alice\n"
        "    email: carol@example.com\n"
    )
    found = problems(text)
    assert [line for line, _ in found] == [5, 6]
    assert "duplicate email" in found[0][1] and "first on line 3" in found[0][1]
    assert "duplicate os_user 'alice'" in found[1][1] and "first on line 2" in found[1][1]


def test_duplicate_mapping_keys_are_refused_instead_of_silently_keeping_the_last() -> None:
    text = "users:\n  - os_user: alice\n    email: alice@example.com\n    os_user: mallory\n"
    assert problems(text) == [(4, "duplicate key 'os_user'")]
    assert lines_of("users: []\nusers: []\n") == [2]


def test_missing_keys_and_wrong_types_name_the_entry() -> None:
    found = problems("users:\n  - email: a@example.com\n  - os_user: 42\n    email: b@example.com\n  - just-a-string\n")
    assert (2, "users[0]: missing key 'os_user'") in found
    assert any(line == 3 and "users[1].os_user" in msg for line, msg in found)
    assert any(line == 5 and "users[2]" in msg for line, msg in found)


def test_document_shape_and_syntax_errors() -> None:
    assert problems("") == [(None, "the roster is empty (expected a mapping with `users:`)")]
    assert lines_of("- alice\n") == [1]
    assert lines_of("users:\n") == [1]
    assert lines_of("{}\n") == [1]  # users is required
    assert lines_of("users: [\n  - os_user: a\n") == [2]
    merged = problems("users:\n  - <<: {email: a@example.com}\n    os_user: a\n")
    assert any(line == 2 and "merge keys" in msg for line, msg in merged)
    anchored = problems("base: &b {email: a@example.com}\nusers:\n  - <<: *b\n    os_user: a\n")
    assert anchored == [(1, "not valid YAML: YAML anchors (&b) are not allowed in the roster: write each entry out")]
    assert lines_of("users: []\n---\nusers: []\n") == [2]  # a second document


def test_all_problems_are_reported_together_as_a_configuration_error() -> None:
    text = "users:\n  - os_user: Bad\n    email: nope\n  - os_user: good\n    email: good@example.com\n    x: 1\n"
    with pytest.raises(RosterError) as info:
        parse_roster(text, "/etc/claude-auth-sync/roster.yaml")
    err = info.value
    assert isinstance(err, ConfigurationError) and err.exit_code == ExitCode.CONFIG
    assert [line for line, _ in err.problems] == [2, 3, 6]
    assert "/etc/claude-auth-sync/roster.yaml:2: users[0].os_user" in str(err)


def test_load_roster_refuses_missing_huge_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match="does not exist"):
        load_roster(tmp_path / "missing.yaml")
    with pytest.raises(RosterError, match="directory"):
        load_roster(tmp_path)
    huge = tmp_path / "huge.yaml"
    huge.write_text("users: []\n" + "#" * (1 << 20))
    with pytest.raises(RosterError, match="larger than 1 MiB"):
        load_roster(huge)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"users: []\n# \xff\xfe\n")
    with pytest.raises(RosterError, match="not UTF-8"):
        load_roster(binary)
    ok = tmp_path / "ok.yaml"
    ok.write_text("users:\n  - os_user: alice\n    email: alice@example.com\n")
    assert load_roster(ok).names() == ["alice"]


# -- issue 11, item 14: hostile rosters ------------------------------------------------------


def _finishes_within(seconds: float, func: Any) -> Any:
    """Run ``func`` in a daemon thread; fail (not hang) if it takes longer than ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    began = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds}s"
    box["elapsed"] = time.monotonic() - began
    return box


@pytest.mark.parametrize("text", [
    "&a [*a,*a,*a,*a,*a]",  # 19 bytes, recursive: expands without end
    "users: &u [*u, *u]\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nusers: [*b, *b, *b]\n",
])
def test_yaml_aliases_are_refused_at_once_never_expanded(text: str) -> None:
    box = _finishes_within(5.0, lambda: parse_roster(text))
    err = box.get("error")
    assert isinstance(err, RosterError), box
    assert box["elapsed"] < 1.0
    assert len(err.problems) == 1 and "are not allowed in the roster" in err.problems[0][1]
    assert len(str(err)) < 300


def test_a_fifo_roster_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "roster.yaml"
    os.mkfifo(fifo, 0o644)
    box = _finishes_within(5.0, lambda: load_roster(fifo))
    assert isinstance(box.get("error"), RosterError), box
    assert "not a regular file" in str(box["error"])


def _plain_roster(path: Path) -> Path:
    path.write_text("users:\n  - os_user: alice\n    email: alice@example.com\n")
    path.chmod(0o644)
    return path


def test_a_roster_someone_else_could_write_is_refused(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the suite runs as root"
    owned = _plain_roster(tmp_path / "owned.yaml")
    os.chown(owned, 65534, 65534)
    with pytest.raises(RosterError, match="owned by uid 65534"):
        load_roster(owned)
    for mode in (0o664, 0o646, 0o666):
        loose = _plain_roster(tmp_path / f"loose{mode:o}.yaml")
        loose.chmod(mode)
        with pytest.raises(RosterError, match="writable"):
            load_roster(loose)
    # A root-owned symlink to a user's file, and a user's symlink to a root file.
    link = tmp_path / "link.yaml"
    link.symlink_to(owned)
    with pytest.raises(RosterError, match="owned by uid 65534"):
        load_roster(link)
    good = _plain_roster(tmp_path / "good.yaml")
    user_link = tmp_path / "user-link.yaml"
    user_link.symlink_to(good)
    os.lchown(user_link, 65534, 65534)
    with pytest.raises(RosterError, match="symlink owned by uid 65534"):
        load_roster(user_link)
    # A root-owned file in a directory a user can write (they could swap it).
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RosterError, match="directory"):
        load_roster(_plain_roster(shared / "roster.yaml"))
    assert load_roster(good).names() == ["alice"]
    # setup-devvm.sh validates a checkout (any owner) before installing it as root:root 0644.
    assert load_roster(owned, trusted_only=False).names() == ["alice"]


@pytest.mark.parametrize("char", ["\x1b", "\x00", "\x07", "\ufffe"])
def test_a_control_character_in_the_roster_is_a_roster_error_not_an_internal_error(char: str) -> None:
    """PyYAML's reader refuses these when the loader is built; that used to escape as ReaderError
    (an "internal error" line) instead of a roster problem."""
    with pytest.raises(RosterError) as caught:
        parse_roster(f"users:\n  - name: alice{char}\n    email: a@example.com\n", "roster.yaml")
    assert "not valid YAML" in str(caught.value)
    assert char not in str(caught.value)
    assert caught.value.exit_code == ExitCode.CONFIG
