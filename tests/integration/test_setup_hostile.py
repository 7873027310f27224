"""setup-devvm.sh against hostile or unusual inputs, below a test root (``CAS_ROOT``; the real
script, pip, ``systemctl --root`` and OpenBao; no booted systemd needed: the booted life cycle is
tests/integration/test_setup_real_systemd.py).

Covered: a roster or config.toml that is a symlink (refused, the target untouched), a relative
``VAULT_CACERT`` (refused, no config written), control characters in a roster diff (shown inert),
a dry run in every mode below the root (nothing changes), uninstall without any installation, an
edited /etc/default/claude-auth-sync (never overwritten, kept by a purge).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_provisioning import snapshot
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/workstation/setup-devvm.sh"


def run(root: Path, bao: OpenBaoServer, *args: str, admin: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "CAS_ROOT": str(root),
            "VAULT_ADDR": bao.addr, "HOME": str(root.parent)}
    if admin:
        full["VAULT_TOKEN"] = bao.root_token
    full.update(env or {})
    result = subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=600,
                            cwd=cwd)
    assert bao.root_token not in result.stdout + result.stderr
    return result


def test_hostile_roster_config_and_cacert(tmp_path: Path, bao: OpenBaoServer) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # A dry run of a first install below the root creates nothing at all.
    plan = run(root, bao, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert list(root.iterdir()) == [] and "would install" in plan.stderr

    first = run(root, bao, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    etc = root / "etc/claude-auth-sync"
    default = root / "etc/default/claude-auth-sync"
    assert default.read_bytes() == (REPO / "deploy/default/claude-auth-sync").read_bytes()

    # Every mode's dry run changes nothing below the root.
    before = snapshot(root, links=False)
    for args in (("--dry-run",), ("--upgrade", "--dry-run"), ("--uninstall", "--dry-run"),
                 ("--uninstall", "--purge", "--dry-run")):
        result = run(root, bao, *args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert snapshot(root, links=False) == before, args

    # A hand edit with an escape sequence: kept as it is, the diff shows it inert, and the
    # provisioner then refuses the roster (YAML allows no control characters): 78.
    original = (etc / "roster.yaml").read_text()
    (etc / "roster.yaml").write_text(original + "# \x1b]0;owned\x07 edited\n")
    kept = run(root, bao, "--json")
    assert kept.returncode == 78, kept.stderr[-2000:]
    assert "\x1b" not in kept.stderr and "\x07" not in kept.stderr and "^[]0;owned^G" in kept.stderr
    assert "\x1b" in (etc / "roster.yaml").read_text()  # the hand edit itself is kept as it is
    (etc / "roster.yaml").write_text(original)

    # The roster or config.toml a symlink to a root file: refused, the target never written.
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    for name in ("roster.yaml", "config.toml"):
        saved = (etc / name).read_bytes()
        (etc / name).unlink()
        (etc / name).symlink_to(victim)
        refused = run(root, bao)
        assert refused.returncode != 0 and "symlink" in refused.stderr, refused.stderr[-2000:]
        assert victim.read_text() == "root's file\n"
        (etc / name).unlink()
        (etc / name).write_bytes(saved)

    # A relative VAULT_CACERT would be read later from another directory: refused, no config written.
    (etc / "config.toml").unlink()
    relative = run(root, bao, env={"VAULT_CACERT": "ca.pem"})
    assert relative.returncode != 0 and "VAULT_CACERT" in relative.stderr
    assert not (etc / "config.toml").exists()
    cacert = tmp_path / "ca.pem"
    cacert.write_text("-----BEGIN CERTIFICATE-----\n")
    written = run(root, bao, "--json", env={"VAULT_CACERT": str(cacert)})
    assert written.returncode == 0, written.stderr[-2000:]
    assert f'cacert = "{cacert}"' in (etc / "config.toml").read_text()

    # An administrator's /etc/default/claude-auth-sync is never overwritten (install, upgrade), and
    # a purge keeps it and says so (one unchanged from the shipped example goes: the booted test).
    default.write_text("# the site's proxy\nHTTPS_PROXY=http://proxy.example:3128\n")
    for args in ((), ("--upgrade",)):
        rerun = run(root, bao, *args)
        assert rerun.returncode == 0, (args, rerun.stderr[-2000:])
        assert default.read_text().startswith("# the site's proxy\n"), args
    # Unit names planted to be globbed or split: skipped and reported, never offboarded (run from a
    # directory holding a file a glob would expand to: a valid name, never to be used as one).
    wants = root / "etc/systemd/system/timers.target.wants"
    for name in ("claude-auth-sync@*.timer", "claude-auth-sync@x y.timer", "claude-auth-sync@a\nb.path"):
        (wants / name).write_text("")
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "casglobbed").write_text("")
    purged = run(root, bao, "--uninstall", "--purge", cwd=here)
    assert purged.returncode == 0, purged.stdout[-3000:] + purged.stderr[-3000:]
    assert "casglobbed" not in purged.stdout + purged.stderr
    assert purged.stderr.count("skipped") == 3 and "'x y'" in purged.stderr and "'a\\nb'" in purged.stderr
    assert not etc.exists() and not (root / "opt/claude-auth-sync").exists()
    assert default.read_text().startswith("# the site's proxy\n") and f"kept {default}" in purged.stderr
    for name in ("claude-auth-sync@*.timer", "claude-auth-sync@x y.timer", "claude-auth-sync@a\nb.path"):
        (wants / name).unlink()  # the plants (never units of a user) are the administrator's to remove
    again = run(root, bao, "--uninstall", "--purge", cwd=here)  # a finished purge, run again: nothing to do
    assert again.returncode == 0 and "nothing to offboard" in again.stderr, again.stderr[-2000:]


def test_uninstall_of_nothing_and_upgrade_before_install(tmp_path: Path, bao: OpenBaoServer) -> None:
    root = tmp_path / "root"
    root.mkdir()
    nothing = run(root, bao, "--uninstall", admin=False)
    assert nothing.returncode == 0, nothing.stderr
    assert list(root.iterdir()) == []
    upgrade = run(root, bao, "--upgrade", admin=False)
    assert upgrade.returncode != 0 and "install first" in upgrade.stderr
    # A purge of nothing (nothing installed, no unit, no recorded token) is idempotent: exit 0.
    purge = run(root, bao, "--uninstall", "--purge", admin=False)
    assert purge.returncode == 0 and "nothing to offboard" in purge.stderr, purge.stderr
    assert list(root.iterdir()) == []
    # Tokens still recorded (a plain uninstall left the state file): the package is needed to revoke them.
    state = root / "var/lib/claude-auth-sync"
    state.mkdir(parents=True, mode=0o700)
    (state / "tokens.json").write_text('{"version": 2, "users": {"alice": {"accessor": "a1"}}}')
    refused = run(root, bao, "--uninstall", "--purge", admin=False)
    assert refused.returncode != 0 and "install it again" in refused.stderr, refused.stderr
    assert (state / "tokens.json").exists()
