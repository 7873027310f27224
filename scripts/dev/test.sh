#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (as root), then run the whole suite.
# Idempotent: a second run only re-installs the package. Usage: sudo bash scripts/dev/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

# Pinned versions of the real components the tests drive.
CLAUDE_CODE_VERSION=2.1.332
VENV=${CAS_TEST_VENV:-/opt/claude-auth-sync-test/venv}

need_apt=()
for pair in shellcheck:shellcheck promtool:prometheus strace:strace tmux:tmux journalctl:systemd \
            systemd-analyze:systemd prometheus-node-exporter:prometheus-node-exporter node:nodejs npm:npm runuser:util-linux useradd:passwd ps:procps \
            systemd-nspawn:systemd-container nsenter:util-linux unshare:util-linux dbus-daemon:dbus sudo:sudo \
            amtool:prometheus-alertmanager openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -x /lib/systemd/systemd-journald ] || need_apt+=(systemd)
# The polkit rule's test: the container's polkitd (D-Bus activated on its system bus) answers
# systemctl run by a user. pkexec is not needed (systemctl asks polkit over D-Bus).
[ -x /usr/lib/polkit-1/polkitd ] || need_apt+=(polkitd)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# journald (tests run it in a namespace of its own) needs a machine id.
[ -s /etc/machine-id ] || systemd-machine-id-setup >/dev/null

if [ "$(claude --version 2>/dev/null | cut -d' ' -f1)" != "$CLAUDE_CODE_VERSION" ]; then
    npm install -g --silent "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" >/dev/null
fi
(cd tests/node && npm ci --silent --no-audit --no-fund >/dev/null)

# A virtual environment other OS users can reach (/root is 0700): Debian's python3, under /opt.
if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q "${repo}[test]"
chmod -R a+rX "$(dirname "$VENV")"

export CAS_TEST_VENV="$VENV"
exec "$VENV/bin/python" -m pytest "$@"
