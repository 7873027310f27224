#!/usr/bin/env bash
# Install, upgrade or uninstall claude-auth-sync on a workstation (runbook step 2).
#
#   setup-devvm.sh [--dry-run] [provisioner args]   install, then the admin provisioner run
#   setup-devvm.sh [--dry-run] --upgrade            new package, units, polkit rule, runbook only
#   setup-devvm.sh [--dry-run] --uninstall [--purge]
#
# Install: as root with the admin Vault token in the environment (never on the command line):
#   export VAULT_ADDR=https://vault.example.org VAULT_TOKEN=...   [VAULT_CACERT=/path/ca.pem]
#   sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT scripts/workstation/setup-devvm.sh
# It installs, idempotently (a second run changes nothing but re-installing the package):
#   1. the package into its own venv, /opt/claude-auth-sync/venv (Debian's /usr/bin/python3),
#      world-readable so the per-user services can run it;
#   2. the roster (validated first) to /etc/claude-auth-sync/roster.yaml (root, 0644), the way
#      dpkg treats a conffile: installed when absent; replaced by the checkout's when the installed
#      one is still what this script installed last (its SHA-256 is kept in
#      /var/lib/claude-auth-sync/roster.yaml.installed-sha256) -- the old one is kept as
#      roster.yaml.old and the diff shown; a hand-edited one is never overwritten: it is kept, the
#      checkout's is put beside it as roster.yaml.dist and the diff shown;
#   3. /etc/claude-auth-sync/config.toml with the Vault address (VAULT_ADDR, and VAULT_CACERT for
#      a private CA) if there is none yet: the timers run without these variables. An existing
#      config.toml that anybody but root could have written is repaired to root:root 0644 and the
#      script stops (exit 78) without using it: its vault.addr receives the admin token and every
#      user's token, so a person reads it before the next run; a symlink or non-regular file there
#      stops it too;
#   4. the systemd units to /etc/systemd/system/, the polkit rule that lets each person start their
#      own claude-auth-sync@<user>.service to /etc/polkit-1/rules.d/, the runbook the units'
#      Documentation= names to /usr/share/doc/claude-auth-sync/runbook.md;
#   5. /usr/local/bin/t3-provision-users and /usr/local/bin/claude-auth-sync -> the venv, and
#      /etc/default/claude-auth-sync (the units' optional EnvironmentFile=), the commented example
#      deploy/default/claude-auth-sync, only when absent: an existing one is never overwritten;
#   6. enables (and, under a running systemd, starts) the hourly t3-provision-users.timer;
#   7. runs the provisioner in the foreground with --apply-policies (plus any arguments given
#      here, e.g. --prune or --json) and exits with its status.
#
# --dry-run changes nothing at all: it prints what would be done (and, when a venv and a roster
# are installed, the provisioner's own --dry-run plan).
# --upgrade (no admin token needed; VAULT_TOKEN is ignored): steps 1, 4 and 5, then a
# daemon-reload. Nothing running is restarted, the roster and config.toml are left alone: the
# next timer run uses the new version.
# --uninstall: disables and stops every claude-auth-sync@*.timer/.path and the provisioner's
# timer, removes the units, the provisioner's drop-ins, the polkit rule, the runbook, the commands
# and /opt/claude-auth-sync. /etc/claude-auth-sync, /etc/default/claude-auth-sync,
# /var/lib/claude-auth-sync and the users' files are kept. Offboard users first
# (t3-provision-users --offboard USER) to revoke their tokens.
# --uninstall --purge also offboards every user it knows (unit names, roster, state file; a name
# the user-name check refuses is skipped and reported, never passed on): t3-provision-users
# --offboard --force, which removes their token file and state directory (never the credentials
# file) and revokes their tokens when VAULT_TOKEN holds an admin token. Then it removes
# /etc/claude-auth-sync, /var/lib/claude-auth-sync and /etc/default/claude-auth-sync (the latter
# only when unchanged from deploy/default/claude-auth-sync; an edited one is kept, and said).
# When an offboarding fails (no admin token, Vault unreachable: tokens are left to revoke), the
# units are still disabled, stopped and removed, but /opt/claude-auth-sync (and the two commands),
# /etc/claude-auth-sync and /var/lib/claude-auth-sync are kept (the tool, the Vault address, the
# accessors), the script
# says what is left and the command that finishes the purge, and exits with the offboarding's
# status (1 no admin token, 75 Vault unreachable, 78 a person must act). That command, rerun,
# finishes it.
#
# CAS_ROOT=/some/dir works below that directory instead of / (for tests; the venv is not
# relocatable, so this is no image builder): units are then enabled with `systemctl --root`,
# nothing is started, and the provisioner gets --roster, --config, --systemd-root and --state-dir
# below it. CAS_PYTHON overrides the interpreter for the venv.
set -euo pipefail

die() { printf 'setup-devvm: %s\n' "$*" >&2; exit 1; }
log() { printf 'setup-devvm: %s\n' "$*" >&2; }

mode=install dry=0 purge=0
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1 ;;
        --upgrade) mode=upgrade ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
    shift
done
[ "$purge" -eq 0 ] || [ "$mode" = uninstall ] || die "--purge goes with --uninstall"
[ "$mode" = install ] || [ $# -eq 0 ] || die "unexpected arguments for --$mode: $*"

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
root=${CAS_ROOT:-}
root=${root%/}
python=${CAS_PYTHON:-/usr/bin/python3}
prefix="$root/opt/claude-auth-sync"
venv="$prefix/venv"
etc_dir="$root/etc/claude-auth-sync"
unit_dir="$root/etc/systemd/system"
bin_dir="$root/usr/local/bin"
doc_dir="$root/usr/share/doc/claude-auth-sync"
polkit_rule="$root/etc/polkit-1/rules.d/50-claude-auth-sync.rules"
state_dir="$root/var/lib/claude-auth-sync"
roster="$etc_dir/roster.yaml"
roster_sum="$state_dir/roster.yaml.installed-sha256"
config="$etc_dir/config.toml"
env_file="$root/etc/default/claude-auth-sync"
env_example="$repo/deploy/default/claude-auth-sync"
units=(claude-auth-sync@.service claude-auth-sync@.timer claude-auth-sync@.path
       t3-provision-users.service t3-provision-users.timer)
commands=(t3-provision-users claude-auth-sync)

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT $0)"
if [ "$mode" = install ] && [ "$dry" -eq 0 ] && [ -z "${VAULT_TOKEN:-}" ]; then
    die "VAULT_TOKEN (the admin token) is not set; export it, never pass it as an argument" \
        "(an upgrade needs none: $0 --upgrade)"
fi
if [ "$mode" = upgrade ]; then
    [ -z "${VAULT_TOKEN:-}" ] || log "--upgrade needs no admin token: VAULT_TOKEN is ignored"
    unset VAULT_TOKEN
fi
[ -f "$repo/pyproject.toml" ] || die "cannot find the repository next to $0"
[ -f "$repo/scripts/workstation/roster.yaml" ] || die "no roster at scripts/workstation/roster.yaml"
[ -f "$repo/docs/runbook.md" ] || die "no runbook at docs/runbook.md"
[ -f "$env_example" ] || die "no example environment file at deploy/default/claude-auth-sync"
[ -x "$python" ] || [ "$mode" = uninstall ] || die "$python is missing (apt-get install python3 python3-venv)"

umask 022
booted=0
[ -z "$root" ] && [ -d /run/systemd/system ] && booted=1
systemctl_() { if [ -n "$root" ]; then systemctl --root="$root" "$@"; else systemctl "$@"; fi; }

# do_ DESCRIPTION COMMAND...: run it, or only say it in a dry run.
do_() {
    local what=$1; shift
    if [ "$dry" -eq 0 ]; then "$@"; elif [ -n "$what" ]; then log "would $what"; fi
}

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("claude-auth-sync"))' 2>/dev/null \
        || echo "none"
}

# 1. the package, in its own virtual environment
install_package() {
    local shipped
    shipped=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)
    if [ ! -x "$venv/bin/python" ]; then
        do_ "create $venv ($python -m venv)" install -d -m 0755 "$prefix"
        do_ "" "$python" -m venv "$venv"
    fi
    if [ "$dry" -eq 1 ]; then
        log "would install claude-auth-sync $shipped from $repo into $venv (installed: $(installed_version))"
        return
    fi
    log "installing claude-auth-sync $shipped from $repo (installed: $(installed_version))"
    # Not editable: the checkout may live in a directory the users cannot read.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$repo"
    chmod -R a+rX,go-w "$prefix"
}

# install_file MODE SOURCE DESTINATION: replace only when the content differs
install_file() {
    if ! cmp -s -- "$2" "$3"; then
        if [ "$dry" -eq 1 ]; then log "would install $3"; return; fi
        install -m "$1" -o root -g root -- "$2" "$3.new"
        mv -f -- "$3.new" "$3"
        log "installed $3"
    elif [ "$(stat -c '%U:%G %a' -- "$3")" != "root:root ${1#0}" ]; then
        do_ "chown root:root and chmod $1 $3" chown root:root -- "$3"
        do_ "" chmod "$1" -- "$3"
    fi
}

install_dir() { # MODE DIRECTORY
    [ -d "$2" ] || do_ "create $2" install -d -m "$1" -o root -g root -- "$2"
}

# 2. the roster, validated, then installed as dpkg installs a conffile (see the header)
validate_roster() {
    if [ ! -x "$venv/bin/python" ]; then
        log "would validate scripts/workstation/roster.yaml once the package is installed"
        return
    fi
    "$venv/bin/python" - "$repo/scripts/workstation/roster.yaml" <<'PY'
import sys
from pathlib import Path
from claude_auth_sync.admin.roster import RosterError, load_roster
try:
    load_roster(Path(sys.argv[1]), trusted_only=False)  # the checkout; installed below as root:root 0644
except RosterError as err:
    sys.exit(f"setup-devvm: {err}")
except Exception as err:  # e.g. yaml.ReaderError for a control character: one line, never a traceback
    sys.exit(f"setup-devvm: {sys.argv[1]} is not a valid roster ({type(err).__name__}): fix it, then rerun")
PY
}

sha() { sha256sum -- "$1" | cut -d' ' -f1; }

record_roster() {
    install_dir 0700 "$state_dir"
    if [ "$dry" -eq 0 ] && [ "$(cat -- "$roster_sum" 2>/dev/null || true)" != "$(sha "$roster")" ]; then
        sha "$roster" > "$roster_sum.new" && mv -f -- "$roster_sum.new" "$roster_sum"
    fi
}

install_roster() {
    local shipped="$repo/scripts/workstation/roster.yaml"
    if [ -L "$roster" ] || { [ -e "$roster" ] && [ ! -f "$roster" ]; }; then
        die "$roster is a symlink or not a regular file: inspect it, remove it and rerun"
    fi
    if [ ! -e "$roster" ] || cmp -s -- "$shipped" "$roster"; then
        install_file 0644 "$shipped" "$roster"
        record_roster
        return
    fi
    # cat -v: a control character in either file is shown, never sent to the terminal as is
    { diff -u --label "$roster (installed)" --label "$shipped (checkout)" -- "$roster" "$shipped" || true; } \
        | cat -v >&2
    if [ "$(cat -- "$roster_sum" 2>/dev/null || true)" = "$(sha "$roster")" ]; then
        # Unchanged since this script installed it: the checkout's edit (runbook step 1) is taken.
        do_ "keep the previous roster as $roster.old" cp -p -- "$roster" "$roster.old"
        install_file 0644 "$shipped" "$roster"
        record_roster
        log "roster updated from the checkout (diff above); the previous one is $roster.old"
    else
        install_file 0644 "$shipped" "$roster.dist"
        log "kept $roster: it was edited by hand since it was installed (diff above: installed vs checkout)." \
            "The checkout's roster is $roster.dist; to take it: install -m 0644 $roster.dist $roster, then rerun"
    fi
}

# 3. the system settings the units read (they get no VAULT_ADDR): created once, never overwritten,
# but always made root:root 0644: whoever can write it chooses where every user's token goes.
install_config() {
    if [ -L "$config" ] || { [ -e "$config" ] && [ ! -f "$config" ]; }; then
        die "$config is a symlink or not a regular file: inspect it, remove it and rerun"
    fi
    if [ -f "$config" ]; then
        local was
        was=$(stat -c '%U:%G %a' -- "$config")
        if [ "$was" != "root:root 644" ]; then
            if [ "$dry" -eq 1 ]; then
                log "would repair $config (is $was) and stop (exit 78) for a person to read it"
                return
            fi
            chown root:root -- "$config"
            chmod 0644 -- "$config"
            # Someone else could have written it: its vault.addr would receive the admin token and
            # every user's token. Made safe, but not used in this run: a person reads it first.
            log "repaired $config (was $was, now root:root 644), but not trusted in this run: anyone who could" \
                "write it chose where tokens go; read it (vault.addr, cacert), then rerun"
            exit 78
        fi
    fi
    if [ ! -x "$venv/bin/python" ]; then
        [ -f "$config" ] || log "would write $config (vault.addr = ${VAULT_ADDR:-<unset>}${VAULT_CACERT:+, cacert = $VAULT_CACERT})"
        return
    fi
    CAS_DRY="$dry" "$venv/bin/python" - "$config" <<'PY'
import json, os, sys, tomllib
from pathlib import Path
from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.plugins.backend_vault.store import check_address
path, dry = Path(sys.argv[1]), os.environ["CAS_DRY"] == "1"
addr, cacert = os.environ.get("VAULT_ADDR", ""), os.environ.get("VAULT_CACERT", "")
if path.exists():
    vault = tomllib.loads(path.read_text()).get("vault", {})
    if addr and vault.get("addr") != addr:
        print(f"setup-devvm: warning: {path} has vault.addr = {vault.get('addr')!r}, not VAULT_ADDR {addr!r}; "
              "the timers use the file", file=sys.stderr)
    if cacert and vault.get("cacert") != cacert:
        print(f"setup-devvm: warning: {path} has vault.cacert = {vault.get('cacert')!r}, not VAULT_CACERT "
              f"{cacert!r}; the timers use the file", file=sys.stderr)
    sys.exit(0)
if not addr:
    sys.exit(f"setup-devvm: no {path} and no VAULT_ADDR: export VAULT_ADDR=https://vault.example.org")
try:
    check_address(addr, False)
except ConfigurationError as err:
    sys.exit(f"setup-devvm: {err}")
if cacert and not (os.path.isabs(cacert) and os.path.isfile(cacert)):
    sys.exit(f"setup-devvm: VAULT_CACERT {cacert!r} is not an absolute path to a file: the timers read it later, "
             "from any directory")
lines = ["# Written once by setup-devvm.sh: settings of every claude-auth-sync agent and of",
         "# t3-provision-users (environment variables override them). Edit freely.", "[vault]",
         f"addr = {json.dumps(addr)}"]
if cacert:
    lines.append(f"cacert = {json.dumps(cacert)}")
if dry:
    print(f"setup-devvm: would write {path}: " + "; ".join(lines[3:]), file=sys.stderr)
    sys.exit(0)
tmp = path.with_name(path.name + ".new")
tmp.write_text("\n".join(lines) + "\n")
tmp.chmod(0o644)
tmp.rename(path)
print(f"setup-devvm: wrote {path}", file=sys.stderr)
PY
}

# 4. and 5. the units, the polkit rule, the runbook, the commands
install_files() {
    install_dir 0755 "$unit_dir"
    for unit in "${units[@]}"; do
        install_file 0644 "$repo/deploy/systemd/$unit" "$unit_dir/$unit"
    done
    install_dir 0755 "$root/etc/polkit-1/rules.d"
    install_file 0644 "$repo/deploy/polkit/50-claude-auth-sync.rules" "$polkit_rule"
    install_dir 0755 "$root/usr/share/doc"
    install_dir 0755 "$doc_dir"
    install_file 0644 "$repo/docs/runbook.md" "$doc_dir/runbook.md"
    install_env_file
    install_dir 0755 "$bin_dir"
    for command in "${commands[@]}"; do
        if [ "$(readlink -- "$bin_dir/$command" || true)" != "/opt/claude-auth-sync/venv/bin/$command" ]; then
            do_ "link $bin_dir/$command -> /opt/claude-auth-sync/venv/bin/$command" \
                ln -sfn -- "/opt/claude-auth-sync/venv/bin/$command" "$bin_dir/$command"
        fi
    done
}

# The units' optional EnvironmentFile=: the commented example, only when there is none (all
# comments, so it changes nothing); an administrator's file, whatever it holds, is never touched.
install_env_file() {
    if [ -e "$env_file" ] || [ -L "$env_file" ]; then
        return
    fi
    install_dir 0755 "$root/etc/default"
    if [ "$dry" -eq 1 ]; then log "would install $env_file (the commented example)"; return; fi
    install -m 0644 -o root -g root -- "$env_example" "$env_file.new"
    mv -f -- "$env_file.new" "$env_file"
    log "installed $env_file (the commented example: edit it for proxies, a namespace, ...)"
}

daemon_reload() {
    [ "$booted" -eq 1 ] && do_ "systemctl daemon-reload" systemctl daemon-reload
    return 0
}

# 6. and 7. the hourly timer, then the foreground provisioner (mints tokens, enables user timers)
provision() {
    local provisioner=("$venv/bin/t3-provision-users")
    [ -z "$root" ] || provisioner+=(--roster "$roster" --config "$config" --systemd-root "$root"
                                    --state-dir "$state_dir")
    daemon_reload
    if ! systemctl_ --quiet is-enabled t3-provision-users.timer 2>/dev/null; then
        if [ "$booted" -eq 1 ]; then
            do_ "enable and start t3-provision-users.timer" systemctl --quiet enable --now t3-provision-users.timer
        else
            [ -n "$root" ] || log "systemd is not running: enabling units without starting them"
            do_ "enable t3-provision-users.timer" systemctl_ --quiet enable t3-provision-users.timer
        fi
    fi
    if [ "$dry" -eq 1 ]; then
        if [ -x "${provisioner[0]}" ] && [ -f "$roster" ] && [ -f "$config" ]; then
            log "would run the provisioner; its plan (its own --dry-run, with the installed roster):"
            [ -z "${VAULT_TOKEN:-}" ] || provisioner+=(--apply-policies)
            exec "${provisioner[@]}" --dry-run "$@"
        fi
        log "would run the provisioner: ${provisioner[*]} --apply-policies $*"
        exit 0
    fi
    log "running the provisioner (admin run)"
    exec "${provisioner[@]}" --apply-policies "$@"
}

# --uninstall
# Every claude-auth-sync@<user> timer/path enabled or loaded, NUL-terminated: a file name (which
# root alone can plant, but may hold a newline, a space or a glob) is carried as it is, never split.
instances() {
    {
        find "$unit_dir" -mindepth 2 -maxdepth 2 \( -name 'claude-auth-sync@?*.timer' -o -name 'claude-auth-sync@?*.path' \) \
            -printf '%f\0' 2>/dev/null || true
        if [ "$booted" -eq 1 ]; then  # systemd's unit names hold no newline
            systemctl list-units --all --plain --no-legend 'claude-auth-sync@*' 2>/dev/null | cut -d' ' -f1 | tr '\n' '\0'
        fi
    } | grep -zE '^claude-auth-sync@.+\.(timer|path|service)$' | sort -zu || true
}

# --purge: every user's agent files (and tokens, with an admin token), before anything is removed.
# The names come from unit file names, the roster and the state file: each is checked with the
# project's user-name check (claude_auth_sync.usernames) and a refused one is skipped and reported;
# the accepted ones are kept in an array (no word splitting, no pathname expansion). Status: 0 when
# every offboarding succeeded, else the last failing one's (1, 75, 78).
offboard_all() {
    local names=() users=() listed user status=0 flags=(--force)
    mapfile -d '' -t names < <(instances | sed -zn 's/^claude-auth-sync@\(.*\)\.\(timer\|path\|service\)$/\1/p')
    if ! listed=$("$venv/bin/python" - "$roster" "$state_dir/tokens.json" "${names[@]}" <<'PY'
import json, sys
from pathlib import Path
from claude_auth_sync.admin.roster import load_roster
from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.terminal_text import safe_text
from claude_auth_sync.usernames import check_username
roster, state, *names = sys.argv[1:]
found = [(name, "the unit names") for name in names]
try:
    if Path(roster).is_file():
        found += [(name, str(roster)) for name in load_roster(Path(roster)).names()]
    if Path(state).is_file():
        found += [(name, str(state)) for name in json.loads(Path(state).read_text())["users"]]
except Exception as err:  # one line, never a traceback: without the full list nothing may be removed
    sys.exit(f"setup-devvm: cannot list the users to offboard ({type(err).__name__}: "
             f"{safe_text(err, 200)}): fix it, then rerun")
valid: set[str] = set()
refused: set[str] = set()
for name, source in found:
    try:
        valid.add(check_username(name if isinstance(name, str) else repr(name)))
    except ConfigurationError as err:
        if str(err) not in refused:
            refused.add(str(err))
            print(f"setup-devvm: skipped a name from {safe_text(source, 200)} (not offboarded): {safe_text(err, 300)}",
                  file=sys.stderr)
print("\n".join(sorted(valid)))  # accepted names hold no newline
PY
    ); then
        return 78
    fi
    [ -z "$listed" ] || mapfile -t users <<<"$listed"
    [ "$dry" -eq 0 ] || flags+=(--dry-run)
    [ -z "$root" ] || flags+=(--roster "$roster" --config "$config" --systemd-root "$root" --state-dir "$state_dir")
    for user in "${users[@]}"; do
        "$venv/bin/t3-provision-users" --offboard "$user" "${flags[@]}" || status=$?
    done
    return "$status"
}

# Does the provisioner's state file record a token (a token that may still have to be revoked)?
tokens_recorded() {
    [ -s "$state_dir/tokens.json" ] && grep -q '"accessor"' "$state_dir/tokens.json"
}

uninstall() {
    local list=() unit purge_status=0
    mapfile -d '' -t list < <(instances)
    if [ "$purge" -eq 1 ]; then
        if [ -x "$venv/bin/t3-provision-users" ]; then
            offboard_all || purge_status=$?
        elif [ ${#list[@]} -gt 0 ] || tokens_recorded; then
            die "--purge needs the installed package to revoke the recorded tokens and remove the users' files" \
                "safely (as each user): install it again ($0), then $0 --uninstall --purge"
        else  # a purge finished before, or a plain uninstall of a host that never minted a token
            log "the package is not installed and no unit or recorded token is left: nothing to offboard"
        fi
    fi
    # One unit at a time: a name systemctl refuses must not keep the others running.
    local stop=("${list[@]}")
    if [ "$booted" -eq 1 ]; then
        for unit in "${stop[@]}" t3-provision-users.timer t3-provision-users.service; do
            do_ "disable and stop $unit" systemctl --quiet disable --now -- "$unit" 2>/dev/null || true
        done
    else
        for unit in "${list[@]}" t3-provision-users.timer; do
            [[ $unit == *.service ]] || do_ "disable $unit" systemctl_ --quiet disable -- "$unit" 2>/dev/null || true
        done
    fi
    for unit in "${units[@]}"; do
        [ ! -e "$unit_dir/$unit" ] || do_ "remove $unit_dir/$unit" rm -f -- "$unit_dir/$unit"
    done
    local dropin
    for dropin in "$unit_dir"/claude-auth-sync@?*.service.d/home.conf "$unit_dir"/claude-auth-sync@?*.path.d/home.conf; do
        [ -f "$dropin" ] || continue
        do_ "remove $dropin" rm -f -- "$dropin"
        [ "$dry" -eq 1 ] || rmdir --ignore-fail-on-non-empty -- "$(dirname -- "$dropin")"
    done
    [ ! -e "$polkit_rule" ] || do_ "remove $polkit_rule" rm -f -- "$polkit_rule"
    [ ! -e "$doc_dir" ] || do_ "remove $doc_dir" rm -rf -- "$doc_dir"
    if [ "$purge_status" -ne 0 ]; then
        # Tokens are left to revoke: keep what finishing needs (dpkg keeps a package whose removal
        # script failed), say what is left and the one command that finishes.
        daemon_reload
        local would="" kept="kept"
        [ "$dry" -eq 0 ] || { would="would be "; kept="would keep"; }
        log "the purge is not finished: an offboarding above failed (status $purge_status; tokens are left to revoke)." \
            "Every unit is ${would}disabled, stopped and removed; what is left:"
        log "  $kept $prefix, $bin_dir/t3-provision-users and $bin_dir/claude-auth-sync: the package, to finish"
        log "  $kept $etc_dir: roster.yaml and config.toml (the Vault address)"
        log "  $kept $state_dir: tokens.json, the accessors still to revoke"
        [ ! -e "$env_file" ] || log "  $kept $env_file"
        log "  the users' token files that hold a token still to revoke (the offboarding above names them)"
        log "finish it with the admin token in the environment (export VAULT_ADDR and VAULT_TOKEN, never on" \
            "the command line), once Vault answers:"
        log "  sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT $repo/scripts/workstation/setup-devvm.sh --uninstall --purge"
        return "$purge_status"
    fi
    for command in "${commands[@]}"; do
        if [ "$(readlink -- "$bin_dir/$command" || true)" = "/opt/claude-auth-sync/venv/bin/$command" ]; then
            do_ "remove $bin_dir/$command" rm -f -- "$bin_dir/$command"
        fi
    done
    [ ! -e "$prefix" ] || do_ "remove $prefix" rm -rf -- "$prefix"
    daemon_reload
    if [ "$purge" -eq 0 ]; then
        local kept="$etc_dir, $state_dir"
        [ ! -e "$env_file" ] || kept+=", $env_file"
        log "kept $kept and the users' files (--purge removes them)"
    else
        [ ! -e "$etc_dir" ] || do_ "remove $etc_dir" rm -rf -- "$etc_dir"
        [ ! -e "$state_dir" ] || do_ "remove $state_dir" rm -rf -- "$state_dir"
        if [ -L "$env_file" ] || { [ -e "$env_file" ] && ! cmp -s -- "$env_example" "$env_file"; }; then
            log "kept $env_file: it differs from the shipped example (edited by an administrator); remove it by hand"
        elif [ -e "$env_file" ]; then
            do_ "remove $env_file (the unchanged example)" rm -f -- "$env_file"
        fi
    fi
    if [ "$purge" -eq 0 ] && tokens_recorded; then
        log "tokens recorded in $state_dir/tokens.json stay valid until their period (768h) runs out;" \
            "offboard users before uninstalling to revoke them: t3-provision-users --offboard USER"
    fi
    [ "$dry" -eq 1 ] || log "uninstalled"
    return 0
}

# Before anything changes: what would stop the install half-way.
preflight() {
    local file
    for file in "$roster" "$config"; do
        if [ -L "$file" ] || { [ -e "$file" ] && [ ! -f "$file" ]; }; then
            die "$file is a symlink or not a regular file: inspect it, remove it and rerun"
        fi
    done
    if [ ! -e "$config" ] && [ -n "${VAULT_CACERT:-}" ] && { [[ $VAULT_CACERT != /* ]] || [ ! -f "$VAULT_CACERT" ]; }; then
        die "VAULT_CACERT '$VAULT_CACERT' is not an absolute path to a file: the timers read it later, from any directory"
    fi
}

case $mode in
    install)
        preflight
        install_package
        install_dir 0755 "$etc_dir"
        validate_roster
        install_roster
        install_config
        install_files
        provision "$@"
        ;;
    upgrade)
        [ -x "$venv/bin/python" ] || die "not installed yet ($venv is missing): install first, without --upgrade"
        install_package
        install_files
        daemon_reload
        [ "$dry" -eq 1 ] || log "upgraded to $(installed_version); nothing was restarted: the next timer run uses it"
        ;;
    uninstall)
        uninstall
        ;;
esac
