#!/usr/bin/env bash
# Quick start on a fresh machine, for the user running it: install claude-auth-sync into its own
# virtual environment and run one real health cycle on the embedded `file` backend (no Vault).
# The cycle makes one real Haiku inference with your own Claude Code login (`claude` must be
# installed and logged in: claude auth login --claudeai --sso --email <enterprise-email>).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CAS_VENV:-$HOME/.local/share/claude-auth-sync/venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q .
echo "installed: $("$venv/bin/claude-auth-sync" --version) in $venv"
status=0
CLAUDE_AUTH_SYNC_BACKEND=file CLAUDE_AUTH_SYNC_SINKS='["file"]' "$venv/bin/claude-auth-sync" run || status=$?
echo "exit status $status (0 OK, 1 log in again, 75 try later, 78 fix configuration)"
# The agent's paths follow the password database's home (as under its systemd unit), not $HOME.
home=$(getent passwd "$(id -un)" | cut -d: -f6)
echo "private log: ${XDG_STATE_HOME:-$home/.local/state}/claude-auth-sync/sync.log"
exit "$status"
