"""Issue 13 item 1: the provisioner enables each user's path unit with the timer and writes the
per-instance drop-ins from the password database (homes are not always /home/<user>);
deprovisioning disables both and removes the drop-ins. Real OS accounts, real OpenBao,
``systemctl --root`` on a copy of the shipped units."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_provisioning import Sandbox, bao, make_users, sandbox  # noqa: F401 - fixtures
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real


@pytest.fixture
def user_elsewhere() -> Iterator[tuple[str, Path]]:
    """A real account whose home is outside /home."""
    name = f"caself{secrets.token_hex(3)}"
    home = Path(f"/srv/cas-homes-{secrets.token_hex(3)}/{name}")
    home.parent.mkdir(parents=True)
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name], check=True,
                   capture_output=True)
    yield name, home
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True)
    subprocess.run(["rm", "-rf", str(home.parent)], check=False)


def units(sandbox: Sandbox, user: str) -> dict[str, Any]:
    system = sandbox.sysroot / "etc/systemd/system"
    return {
        "timer": (system / "timers.target.wants" / f"claude-auth-sync@{user}.timer").is_symlink(),
        "path": (system / "paths.target.wants" / f"claude-auth-sync@{user}.path").is_symlink(),
        "watch": _read(system / f"claude-auth-sync@{user}.path.d/home.conf"),
        "bind": _read(system / f"claude-auth-sync@{user}.service.d/home.conf"),
    }


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def test_path_unit_and_drop_ins_follow_the_password_database(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, user_elsewhere: tuple[str, Path]  # noqa: F811
) -> None:
    (plain,) = make_users("plain")
    other, other_home = user_elsewhere
    sandbox.write_roster([plain, other])
    first = sandbox.run("--apply-policies", admin=True)
    assert first.rc == 0, first.stderr[-2000:]
    for user, home in ((plain, Path(f"/home/{plain}")), (other, other_home)):
        found = units(sandbox, user)
        assert found["timer"] and found["path"], found
        assert f"PathChanged={home}/.claude/.credentials.json\n" in found["watch"]
        assert found["bind"].endswith(f"[Service]\nBindPaths=\nBindPaths={home}\n")  # /home/%i replaced
        assert "enabled timer and path unit" in first.user(user)["actions"]

    again = sandbox.run()
    assert again.rc == 0 and all(not again.user(u)["changes"] for u in (plain, other))  # idempotent

    sandbox.write_roster([plain])
    gone = sandbox.run("--prune", admin=True)
    assert gone.rc == 0, gone.stderr[-2000:]
    assert units(sandbox, other) == {"timer": False, "path": False, "watch": None, "bind": None}
    assert units(sandbox, plain)["path"]


def test_a_home_no_unit_file_can_name_is_refused_for_that_user_only(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any  # noqa: F811
) -> None:
    odd, fine = make_users("odd", "fine")
    subprocess.run(["usermod", "--home", f"/home/{odd} with space", odd], check=True, capture_output=True)
    sandbox.write_roster([odd, fine])
    result = sandbox.run("--apply-policies", admin=True)
    assert result.rc == 78
    assert any("cannot be named in a unit file" in n for n in result.user(odd)["notes"]), result.user(odd)
    assert units(sandbox, odd)["path"] is False
    assert units(sandbox, fine)["path"] is True
