"""``claude-auth-sync diagnose``: hostile log text is inert, a hostile log file is never followed (issue 11, 12-13)."""

from __future__ import annotations

import io
import os
import time
from datetime import UTC, datetime

import pytest
from rich.console import Console

from claude_auth_sync.diagnose import render_table
from tests.support.cli import Sandbox

pytestmark = pytest.mark.real

HOSTILE = "[/bold][red]x\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil.example\x1b\\link\x9b31m:skull:"
CONTROLS = ("\x1b", "\x07", "\x9b")


def test_render_table_shows_user_text_literally_and_without_control_characters() -> None:
    data = {"user": "alice", "settings": {"vault.addr": {"value": HOSTILE, "source": "user file"}},
            "checks": [{"group": "private log", "name": "last run", "state": "fail", "detail": HOSTILE,
                        "next_step": HOSTILE}]}
    data["checks"][0]["values"] = {"reason": HOSTILE, "ran_at_epoch": 10**30}  # absurd numbers render too
    for verbose in (False, True):  # the settings table (verbose) shows the hostile setting value
        out = io.StringIO()
        render_table(data, Console(file=out, width=400, force_terminal=False, emoji=False), verbose=verbose)
        text = out.getvalue()
        assert text.count("[/bold][red]x") == (3 if verbose else 2)  # detail, next step (, setting)
        assert not any(c in text for c in CONTROLS)


def stamp() -> str:
    return datetime.fromtimestamp(time.time() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_diagnose_never_follows_or_blocks_on_its_log_and_shows_its_text_inert(tmp_path) -> None:
    box = Sandbox(tmp_path)
    box.log_file.parent.mkdir(parents=True, mode=0o700)
    box.log_file.write_text(f"{stamp()} FAIL user=x action=none reason={HOSTILE}\n")
    table = box.run("diagnose", COLUMNS="300", timeout=60)
    assert "Traceback" not in table.stderr, table.stderr[-2000:]
    assert "[/bold][red]x" in table.stdout
    assert not any(c in table.stdout + table.stderr for c in CONTROLS)

    box.log_file.unlink()
    os.mkfifo(box.log_file, 0o600)
    began = time.monotonic()
    piped = box.run("diagnose", "--json", timeout=60)
    assert time.monotonic() - began < 40  # the log check used to wait its 15 s bound on the FIFO, then fail
    assert "not a regular file" in piped.stdout, piped.stdout[-2000:]
