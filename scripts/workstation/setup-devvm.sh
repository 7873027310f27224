#!/usr/bin/env bash
# Install claude-auth-sync on a workstation and provision the roster users (runbook step 2).
#
# Run as root with the admin Vault token:
#   export VAULT_ADDR=https://vault.example.org VAULT_TOKEN=...   # never on the command line
#   sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN scripts/workstation/setup-devvm.sh [provisioner args]
#
# What it does (idempotent: a second run changes nothing but re-installing the package):
#   1. the package into its own venv, /opt/claude-auth-sync/venv (Debian's /usr/bin/python3),
#      world-readable so the per-user services can run it;
#   2. the roster (validated first) to /etc/claude-auth-sync/roster.yaml (root, 0644), and
#      /etc/claude-auth-sync/config.toml with the Vault address (VAULT_ADDR, VAULT_CACERT) if
#      there is none yet: the timers run without these variables. An existing config.toml that
#      anybody but root could have written is repaired to root:root 0644 and the script stops
#      (exit 78) without using it: its vault.addr receives the admin token and every user's token,
#      so a person reads it before the next run; a symlink or non-regular file there stops it too;
#   3. the systemd units to /etc/systemd/system/, and the polkit rule that lets each person start
#      their own claude-auth-sync@<user>.service (only their own) to /etc/polkit-1/rules.d/;
#   4. /usr/local/bin/t3-provision-users and /usr/local/bin/claude-auth-sync -> the venv;
#   5. enables (and, under a running systemd, starts) the hourly t3-provision-users.timer;
#   6. runs the provisioner in the foreground with --apply-policies (plus any arguments given
#      here, e.g. --prune or --dry-run) and exits with its status.
#
# CAS_ROOT=/some/dir installs below that directory instead of / (for tests; the venv is not
# relocatable, so this is no image builder): units are
# then enabled with `systemctl --root`, nothing is started, and the provisioner gets --roster,
# --config, --systemd-root and --state-dir below it. CAS_PYTHON overrides the interpreter for the venv.
set -euo pipefail

die() { printf 'setup-devvm: %s\n' "$*" >&2; exit 1; }
log() { printf 'setup-devvm: %s\n' "$*" >&2; }

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
root=${CAS_ROOT:-}
root=${root%/}
python=${CAS_PYTHON:-/usr/bin/python3}
prefix="$root/opt/claude-auth-sync"
venv="$prefix/venv"
etc_dir="$root/etc/claude-auth-sync"
unit_dir="$root/etc/systemd/system"
bin_dir="$root/usr/local/bin"
state_dir="$root/var/lib/claude-auth-sync"

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN $0)"
[ -n "${VAULT_TOKEN:-}" ] || die "VAULT_TOKEN (the admin token) is not set; export it, never pass it as an argument"
[ -f "$repo/pyproject.toml" ] || die "cannot find the repository next to $0"
[ -f "$repo/scripts/workstation/roster.yaml" ] || die "no roster at scripts/workstation/roster.yaml"
[ -x "$python" ] || die "$python is missing (apt-get install python3 python3-venv)"

umask 022

# 1. the package, in its own virtual environment
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    install -d -m 0755 "$prefix"
    "$python" -m venv "$venv"
fi
log "installing claude-auth-sync from $repo"
# Not editable: the checkout may live in a directory the users cannot read.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$repo"
chmod -R a+rX,go-w "$prefix"

# 2. the roster, validated before it replaces the installed one
install -d -m 0755 -o root -g root "$etc_dir"
"$venv/bin/python" - "$repo/scripts/workstation/roster.yaml" <<'PY'
import sys
from pathlib import Path
from claude_auth_sync.admin.roster import RosterError, load_roster
try:
    load_roster(Path(sys.argv[1]), trusted_only=False)  # the checkout; installed below as root:root 0644
except RosterError as err:
    sys.exit(f"setup-devvm: {err}")
PY
install_file() { # mode source destination: replace only when the content differs
    if ! cmp -s -- "$2" "$3"; then
        install -m "$1" -o root -g root -- "$2" "$3.new"
        mv -f -- "$3.new" "$3"
        log "installed $3"
    else
        chown root:root -- "$3"
        chmod "$1" -- "$3"
    fi
}
install_file 0644 "$repo/scripts/workstation/roster.yaml" "$etc_dir/roster.yaml"

# The system settings the units read (they get no VAULT_ADDR): created once, never overwritten,
# but always made root:root 0644: whoever can write it chooses where every user's token goes.
config="$etc_dir/config.toml"
if [ -L "$config" ] || { [ -e "$config" ] && [ ! -f "$config" ]; }; then
    die "$config is a symlink or not a regular file: inspect it, remove it and rerun"
fi
if [ -f "$config" ]; then
    was=$(stat -c '%U:%G %a' -- "$config")
    if [ "$was" != "root:root 644" ]; then
        chown root:root -- "$config"
        chmod 0644 -- "$config"
        # Someone else could have written it: its vault.addr would receive the admin token and every
        # user's token. Made safe, but not used in this run: a person reads it first.
        log "repaired $config (was $was, now root:root 644), but not trusted in this run: anyone who could" \
            "write it chose where tokens go; read it (vault.addr, cacert), then rerun"
        exit 78
    fi
fi
"$venv/bin/python" - "$config" <<'PY'
import json, os, sys, tomllib
from pathlib import Path
from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.plugins.backend_vault.store import check_address
path = Path(sys.argv[1])
addr, cacert = os.environ.get("VAULT_ADDR", ""), os.environ.get("VAULT_CACERT", "")
if path.exists():
    configured = tomllib.loads(path.read_text()).get("vault", {}).get("addr")
    if addr and configured != addr:
        print(f"setup-devvm: warning: {path} has vault.addr = {configured!r}, not VAULT_ADDR {addr!r}; "
              "the timers use the file", file=sys.stderr)
    sys.exit(0)
if not addr:
    sys.exit(f"setup-devvm: no {path} and no VAULT_ADDR: export VAULT_ADDR=https://vault.example.org")
try:
    check_address(addr, False)
except ConfigurationError as err:
    sys.exit(f"setup-devvm: {err}")
lines = ["# Written once by setup-devvm.sh: settings of every claude-auth-sync agent and of",
         "# t3-provision-users (environment variables override them). Edit freely.", "[vault]",
         f"addr = {json.dumps(addr)}"]
if cacert:
    lines.append(f"cacert = {json.dumps(cacert)}")
tmp = path.with_name(path.name + ".new")
tmp.write_text("\n".join(lines) + "\n")
tmp.chmod(0o644)
tmp.rename(path)
print(f"setup-devvm: wrote {path}", file=sys.stderr)
PY

# 3. the systemd units
install -d -m 0755 "$unit_dir"
for unit in claude-auth-sync@.service claude-auth-sync@.timer claude-auth-sync@.path t3-provision-users.service t3-provision-users.timer; do
    install_file 0644 "$repo/deploy/systemd/$unit" "$unit_dir/$unit"
done
# ... and the polkit rule that lets a person start their own instance (runbook: "rerun the service")
install -d -m 0755 "$root/etc/polkit-1/rules.d"
install_file 0644 "$repo/deploy/polkit/50-claude-auth-sync.rules" "$root/etc/polkit-1/rules.d/50-claude-auth-sync.rules"

# 4. the commands the units run
install -d -m 0755 "$bin_dir"
ln -sfn -- "/opt/claude-auth-sync/venv/bin/t3-provision-users" "$bin_dir/t3-provision-users"
ln -sfn -- "/opt/claude-auth-sync/venv/bin/claude-auth-sync" "$bin_dir/claude-auth-sync"

# 5. the hourly provisioning timer
provision=("$venv/bin/t3-provision-users")
if [ -n "$root" ]; then
    systemctl --root="$root" --quiet enable t3-provision-users.timer
    provision+=(--roster "$etc_dir/roster.yaml" --config "$etc_dir/config.toml" --systemd-root "$root"
                --state-dir "$state_dir")
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl --quiet enable --now t3-provision-users.timer
else
    log "systemd is not running: enabling units without starting them"
    systemctl --quiet enable t3-provision-users.timer
fi

# 6. the foreground provisioner: applies the Vault stack, mints tokens, enables the user timers
log "running the provisioner (admin run)"
exec "${provision[@]}" --apply-policies "$@"
