"""Issue 14 item 3 (XDG): a real OS user whose shell sets ``XDG_CONFIG_HOME``/``XDG_STATE_HOME`` to
other directories gets the same token and log as the unit, which runs without them.

A fresh account (``useradd``, random suffix, ``userdel --remove`` afterwards) is provisioned like
``t3-provision-users`` does (a periodic token from the real OpenBao in ``~/.config/claude-auth-sync``,
the user's own file). The installed ``claude-auth-sync`` then runs *as that user* (``runuser`` with an
explicit environment): once as the unit runs it (no XDG variables), then as an interactive shell
with ``XDG_*`` pointing into ``~/dotfiles``: ``check`` finds the unit's run, ``run`` finds the token
and writes the same log, ``diagnose`` names the directory it took and why. When both directories
hold files, ``diagnose`` warns and its next step, run as the user, makes them agree again.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.testing import oauth_object
from tests.support.cli import STUB_CLAUDE, fp
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

ACCESS, REFRESH = "sk-ant-oat01-XDG-secret-access", "sk-ant-ort01-XDG-secret-refresh"
VENV = Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv"))
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "diagnose.schema.json").read_text())


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: apt-get install {package} (scripts/dev/test.sh does)")
    return path


class Account:
    """One real OS user, its files, and the installed CLI run as it."""

    def __init__(self, name: str, bao: OpenBaoServer) -> None:
        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid, self.home = name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        self.bao = bao
        self.token = ""

    def write(self, path: Path, text: str) -> None:
        """``text`` into ``path`` (0600, parents 0700 below the home), all owned by the user."""
        for parent in reversed(path.relative_to(self.home).parents[:-1]):
            directory = self.home / parent
            if not directory.exists():
                directory.mkdir(mode=0o700)
                os.chown(directory, self.uid, self.gid)
        path.write_text(text)
        path.chmod(0o600)
        os.chown(path, self.uid, self.gid)

    def provision(self) -> None:
        """As t3-provision-users: the policy, a periodic token, ``~/.config/claude-auth-sync/vault-token``."""
        self.bao.write_policy(policy_name(self.name), render_policy(self.name, VaultSettings()))
        self.token = self.bao.create_periodic_token([policy_name(self.name)], period="768h",
                                                    display_name=f"claude-auth-sync-{self.name}", no_default_policy=True)
        self.write(self.home / ".config/claude-auth-sync/vault-token", self.token + "\n")

    def unit_env(self) -> dict[str, str]:
        """What the service gets: the account's HOME, no XDG variable (site settings via our variables)."""
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8", "CLAUDE_AUTH_SYNC_VAULT__ADDR": self.bao.addr, "CLAUDE_AUTH_SYNC_SINKS": '["file"]',
                "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": str(STUB_CLAUDE), "STUB_CLAUDE_ACCEPT": fp(ACCESS)}

    def shell_env(self) -> dict[str, str]:
        """An interactive shell whose profile moves the XDG base directories into ~/dotfiles."""
        return {**self.unit_env(), "XDG_CONFIG_HOME": str(self.home / "dotfiles/config"),
                "XDG_STATE_HOME": str(self.home / "dotfiles/state")}

    def run(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """The installed console script as the user, with exactly ``env``."""
        if os.environ.get("PYTHONPATH"):  # to run these tests against another tree
            env = {**env, "PYTHONPATH": os.environ["PYTHONPATH"]}
        argv = [tool("runuser", "util-linux"), "-u", self.name, "--", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in env.items()), str(VENV / "bin/claude-auth-sync"), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", check=False)
        for secret in (ACCESS, REFRESH, self.token):
            assert not secret or secret not in result.stdout + result.stderr, "a secret in the output"
        return result

    def diagnose(self, env: dict[str, str]) -> dict:
        result = self.run(env, "diagnose", "--json")
        data = json.loads(result.stdout)
        jsonschema.validate(data, SCHEMA)
        return data


@pytest.fixture
def account(bao: OpenBaoServer) -> Iterator[Account]:
    tool("useradd", "passwd")
    name = f"casxdg{secrets.token_hex(3)}"
    subprocess.run([tool("useradd", "passwd"), "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    try:
        user = Account(name, bao)
        user.provision()
        user.write(user.home / ".claude/.credentials.json", json.dumps({"claudeAiOauth": oauth_object(ACCESS, REFRESH)}))
        # The shell's XDG directories exist and hold other programs' files, as they would.
        user.write(user.home / "dotfiles/config/git/config", "[user]\n")
        user.write(user.home / "dotfiles/state/less/history", "")
        yield user
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run([tool("userdel", "passwd"), "--remove", name], capture_output=True)


def paths_rows(data: dict) -> dict[str, dict]:
    return {row["name"]: row for row in data["checks"] if row["group"] == "paths"}


def test_a_shell_with_other_xdg_dirs_sees_the_units_token_and_log(account: Account) -> None:
    unit = account.run(account.unit_env(), "run")
    assert unit.returncode == 0, unit.stdout + unit.stderr[-2000:]
    log = account.home / ".local/state/claude-auth-sync/sync.log"
    assert log.read_text().count(" OK ") == 1

    check = account.run(account.shell_env(), "check")
    assert "no run recorded" not in check.stdout, check.stdout
    assert check.returncode == 0 and check.stdout.startswith("CLAUDE-AUTH-SYNC OK"), check.stdout + check.stderr[-2000:]

    shell = account.run(account.shell_env(), "run")
    assert shell.returncode == 0, shell.stdout + shell.stderr[-2000:]  # the token was found: no "token missing"
    assert log.read_text().count(" OK ") == 2, "the shell's run went to the unit's log"
    assert not (account.home / "dotfiles/state/claude-auth-sync").exists()
    assert not (account.home / "dotfiles/config/claude-auth-sync").exists()

    data = account.diagnose(account.shell_env())
    assert data["exit_code"] == 0 or data["summary"]["fail"] == 0
    rows = paths_rows(data)
    for variable, default in (("XDG_CONFIG_HOME", ".config"), ("XDG_STATE_HOME", ".local/state")):
        values = rows[variable]["values"]
        assert (values["rule"], values["used_dir"]) == ("fallback", str(account.home / default / "claude-auth-sync"))
        assert rows[variable]["state"] == "info" and "the unit's and the provisioner's" in rows[variable]["detail"]
    table = account.run({**account.shell_env(), "COLUMNS": "100"}, "diagnose")
    assert "XDG_CONFIG_HOME" in table.stdout and "absent or empty" in table.stdout, table.stdout

    # The unit's own view: no paths row at all (nothing to explain).
    assert paths_rows(account.diagnose(account.unit_env())) == {}


def test_both_directories_in_use_is_named_with_a_fix_that_works(account: Account) -> None:
    own = account.home / "dotfiles/config/claude-auth-sync/config.toml"
    account.write(own, "[inference]\ntimeout = 60\n")

    shell = account.run(account.shell_env(), "run")
    assert shell.returncode == 78, shell.stdout + shell.stderr[-2000:]  # honoured: the token is not there
    data = account.diagnose(account.shell_env())
    row = paths_rows(data)["XDG_CONFIG_HOME"]
    assert row["state"] == "warn" and row["values"]["rule"] == "both"
    assert str(account.home / ".config/claude-auth-sync") in row["detail"]
    fix = row["next_step"]
    assert fix.startswith("mv -n ") and any(step["step"] == fix for step in data["next_steps"])

    done = subprocess.run([tool("runuser", "util-linux"), "-u", account.name, "--", "/bin/sh", "-c", fix],
                          capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    assert (account.home / ".config/claude-auth-sync/config.toml").read_text() == "[inference]\ntimeout = 60\n"
    assert (account.home / ".config/claude-auth-sync/vault-token").exists()
    assert paths_rows(account.diagnose(account.shell_env()))["XDG_CONFIG_HOME"]["values"]["rule"] == "fallback"
    for env in (account.shell_env(), account.unit_env()):  # one token, one settings file, for both
        result = account.run(env, "run")
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    verbose = account.run({**account.unit_env(), "COLUMNS": "200"}, "diagnose", "--verbose")
    assert re.search(r"inference\.timeout\s+60\.0\s+" + re.escape(str(account.home / ".config/claude-auth-sync/config.toml")),
                     verbose.stdout), verbose.stdout
