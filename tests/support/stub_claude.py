#!/usr/bin/python3
"""A stub ``claude`` executable for fast tests: answers like the real CLI's ``-p --output-format json``.

It reads ``$CLAUDE_CONFIG_DIR/.credentials.json`` and accepts the access token whose SHA-256
fingerprint (first 8 hex) is listed in ``STUB_CLAUDE_ACCEPT`` (comma-separated), so no token is
ever put in the environment. ``STUB_CLAUDE_MODE``: ``auto`` (default), ``429``, ``529``, ``500``,
``hang``, ``crash``. ``STUB_CLAUDE_REFRESH_TO``: when set to ``ACCESS:REFRESH`` the stub rewrites
the file's tokens on success, like the CLI's own refresh, and from then on accepts ACCESS (the
token the server issued) without refreshing again. ``STUB_CLAUDE_TRIGGER_FP`` and
``STUB_CLAUDE_ON_TRIGGER``: when the rejected token has that fingerprint, act as another process
first (take Claude Code's lock, or write a new login: see ``another_process``). Only Debian's /usr/bin/python3 stdlib.

The probe passes the CLI an allow-listed environment, so the ``STUB_CLAUDE_*`` knobs are also read
from the parent's (the agent's) initial environment in ``/proc/<ppid>/environ``; the stub's own
environment wins.
"""

import hashlib
import json
import os
import sys
import time


def result(is_error, text, status=None, code=0):
    record = {"type": "result", "subtype": "success", "is_error": is_error, "duration_ms": 1, "num_turns": 1,
              "result": text, "session_id": "stub"}
    if status is not None:
        record["api_error_status"] = status
    print(json.dumps(record))
    sys.exit(code)


def knobs():
    """STUB_CLAUDE_* from the parent's initial environment, overridden by our own environment."""
    found = {}
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                name, _, value = entry.decode("utf-8", "replace").partition("=")
                if name.startswith("STUB_CLAUDE_"):
                    found[name] = value
    except OSError:
        pass
    found.update({k: v for k, v in os.environ.items() if k.startswith("STUB_CLAUDE_")})
    return found


def another_process(path, action):
    """What another process does while this (rejected) probe runs: ``lock`` takes Claude Code's
    refresh lock and keeps it (a fresh mkdir lock); ``login:ACCESS:REFRESH`` writes a new login."""
    if action == "lock":
        os.makedirs(os.path.join(os.path.dirname(path), ".oauth_refresh.lock"), exist_ok=True)
    elif action.startswith("login:"):
        _, access, refresh = action.split(":", 2)
        with open(path) as handle:
            document = json.load(handle)
        document["claudeAiOauth"] = {"accessToken": access, "refreshToken": refresh, "expiresAt": 4102444800000,
                                     "scopes": ["user:inference"], "subscriptionType": "enterprise"}
        tmp = path + ".stub-tmp"
        with open(tmp, "w") as handle:
            json.dump(document, handle)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)


def main():
    knob = knobs()
    if "--version" in sys.argv:
        print("2.1.332 (Claude Code)")
        return
    mode = knob.get("STUB_CLAUDE_MODE", "auto")
    if mode == "hang":
        time.sleep(3600)
    if mode == "crash":
        sys.stderr.write("Segmentation fault\n")
        sys.exit(139)
    if mode in ("429", "500", "529"):
        result(True, f"API Error: {mode}", int(mode), 1)
    path = os.path.join(os.environ.get("CLAUDE_CONFIG_DIR", os.path.expanduser("~/.claude")), ".credentials.json")
    try:
        with open(path) as handle:
            oauth = json.load(handle).get("claudeAiOauth") or {}
    except (OSError, ValueError):
        result(True, "Not logged in · Please run /login", None, 1)
    token = oauth.get("accessToken") or ""
    accepted = [fp for fp in knob.get("STUB_CLAUDE_ACCEPT", "").split(",") if fp]
    refresh_to = knob.get("STUB_CLAUDE_REFRESH_TO")
    issued = refresh_to.split(":", 1)[0] if refresh_to else None  # the server accepts what it issued
    if token and token == issued:
        result(False, "ok")
    if token and hashlib.sha256(token.encode()).hexdigest()[:8] in accepted:
        if refresh_to:
            with open(path) as handle:
                document = json.load(handle)
            access, refresh = refresh_to.split(":", 1)
            document["claudeAiOauth"]["accessToken"] = access
            document["claudeAiOauth"]["refreshToken"] = refresh
            tmp = path + ".stub-tmp"
            with open(tmp, "w") as handle:
                json.dump(document, handle)
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
        result(False, "ok")
    if token and hashlib.sha256(token.encode()).hexdigest()[:8] == knob.get("STUB_CLAUDE_TRIGGER_FP"):
        another_process(path, knob.get("STUB_CLAUDE_ON_TRIGGER", ""))
    result(True, "Failed to authenticate. API Error: 401 {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"Invalid bearer token\"}}", 401, 1)


main()
