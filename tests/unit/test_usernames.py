"""The one user-name check (issue 14 item 3): dotted SSSD/AD names accepted, hostile names refused
with a reason, and every accepted name usable verbatim as a systemd instance name (checked with
the real ``systemd-escape``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.admin.accounts import refusals
from claude_auth_sync.admin.timers import SystemdTimers, dropins, instance, path_unit, service_unit, timer_unit
from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault import policy
from claude_auth_sync.usernames import USERNAME_PATTERN, check_username, username_problem

GOOD = ["alice", "john.doe", "j_doe-2", "_svc", "a.b.c", "first.last-2", "x" * 32, "a-", "a_.b"]
HOSTILE = [
    "", ".", "..", "../etc", "a/b", "/abs", "a/../b", "a*", "a?", "a[b]", "{a,b}", ".alice", "-alice", "alice.",
    "a..b", "a" * 33, "x" * 31 + ".y", "alice\n", "alice\r", "al\tice", "al ice", "alice\x00", "al'ice", 'al"ice',
    "al\\ice", "al%ice", "al$ice", "alice$", "j\u043ehn", "\u0430lice", "ali\u00e9", "alice\u200b", "ａlice", "Alice",
    "JOHN.DOE", "john.doe@corp.example", "john.doe\\x40corp.example", "j_doe\\x2d2", "12345", "1alice", "root}\npath",
]


@pytest.mark.parametrize("name", GOOD)
def test_directory_names_pass(name: str) -> None:
    assert check_username(name) == name
    assert policy.check_username(name) == name  # the Vault backend uses the same check


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_a_reason(name: str) -> None:
    why = username_problem(name)
    assert why
    with pytest.raises(ConfigurationError) as err:
        check_username(name)
    assert err.value.reason == "invalid_user_name" and err.value.exit_code == ExitCode.CONFIG
    assert why in err.value.message
    for call in (instance, timer_unit, path_unit, service_unit, policy.policy_name):
        with pytest.raises(ConfigurationError):
            call(name)


@pytest.mark.parametrize(("name", "reason"), [
    ("john.doe@corp.example", "use_fully_qualified_names"), ("John.Doe", "lowercased"), ("12345", "uid"),
    ("a..b", "'..'"), ("a/b", "'/'"), ("alice.", "ends with a dot"), ("-alice", "starts with a dot or a dash"),
    ("a" * 33, "longer than 32"), ("j\u043ehn", "printable ASCII"), ("alice\n", "printable ASCII"), ("", "empty"),
])
def test_each_refusal_names_its_reason(name: str, reason: str) -> None:
    assert reason in (username_problem(name) or "")


@given(st.one_of(st.text(max_size=40), st.text(alphabet="az09._-/@*\\ \nA\u043e", min_size=1, max_size=34)))
def test_whatever_passes_is_safe_in_a_path_a_policy_and_a_unit_name(name: str) -> None:
    if username_problem(name) is None:
        assert name.isascii() and name == name.lower() and 1 <= len(name) <= 32
        assert "/" not in name and ".." not in name and "@" not in name and not name.endswith(".")
        assert name[0] not in ".-" and not any(c in name for c in "*?[]{}\\%$ \n\t\"'")
    else:
        assert not USERNAME_PATTERN.fullmatch(name)


def test_no_name_needs_systemd_escaping_but_the_dash_which_systemd_takes_verbatim() -> None:
    """The real ``systemd-escape``: every accepted name without '-' comes back unchanged (no
    escaping needed); '-' is escaped as \\x2d, and unescaping a verbatim '-' gives '/' (why the
    service says ``User=%i``, never ``%I``)."""
    escape = shutil.which("systemd-escape")
    assert escape, "systemd-escape is missing (package systemd)"
    plain = [n for n in GOOD if "-" not in n]
    out = subprocess.run([escape, "--", *plain], capture_output=True, text=True, check=True).stdout.split()
    assert out == plain
    dashed = subprocess.run([escape, "--", "j_doe-2"], capture_output=True, text=True, check=True).stdout.strip()
    assert dashed == "j_doe\\x2d2"
    undone = subprocess.run([escape, "--unescape", "--", "j_doe-2"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert undone == "j_doe/2"
    unit = Path(__file__).resolve().parents[2] / "deploy/systemd/claude-auth-sync@.service"
    assert "\nUser=%i\n" in unit.read_text()


def test_unit_and_dropin_names_carry_the_dotted_name_verbatim() -> None:
    assert (service_unit("john.doe"), timer_unit("john.doe"), path_unit("john.doe")) == (
        "claude-auth-sync@john.doe.service", "claude-auth-sync@john.doe.timer", "claude-auth-sync@john.doe.path")
    assert sorted(dropins("john.doe", "/srv/homes/john.doe")) == [
        "claude-auth-sync@john.doe.path.d/home.conf", "claude-auth-sync@john.doe.service.d/home.conf"]


def test_enabled_users_reads_dotted_names_and_ignores_hostile_links(tmp_path: Path) -> None:
    wants = tmp_path / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    for name in ("john.doe", "alice", "a..b", "x.", ".hidden", "a@b", "Upper"):
        os.symlink("/etc/systemd/system/claude-auth-sync@.timer", wants / f"claude-auth-sync@{name}.timer")
    os.symlink("/etc/systemd/system/other.timer", wants / "claude-auth-sync@bob.timer")  # not ours
    assert SystemdTimers(tmp_path, "/bin/false").enabled_users() == {"john.doe", "alice"}


class _Acct:
    def __init__(self, uid: int) -> None:
        self.uid = uid


def test_a_roster_name_the_password_database_spells_otherwise_is_refused(tmp_path: Path) -> None:
    """SSSD case_sensitive = Preserving (``John.Doe`` for ``john.doe``), fully-qualified names or an
    alias line: the agent would call itself by the other name, so the roster name is refused."""
    names = {5001: "John.Doe", 5002: "j.smith", 5003: "ann@corp.example"}
    defs = tmp_path / "login.defs"
    defs.write_text("UID_MIN 1000\nUID_MAX 60000\n")
    why = refusals({"john.doe": _Acct(5001), "j.smith": _Acct(5002), "ann": _Acct(5003)}, defs, names.get)
    assert set(why) == {"john.doe", "ann"}
    assert "'John.Doe'" in why["john.doe"] and "case_sensitive" in why["john.doe"]
    assert "'ann@corp.example'" in why["ann"]
