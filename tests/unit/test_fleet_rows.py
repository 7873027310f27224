"""The fleet view's row for one user: a missing path unit is something an administrator fixes."""

from __future__ import annotations

import time

from claude_auth_sync.admin.fleet import _row

FACTS = {"ok": True, "last": {"status": "OK", "at": time.time() - 60, "reason": None}, "log_error": None,
         "login": {"state": "healthy", "expires_at_ms": None}, "vault": None}


def test_both_units_enabled_needs_nothing() -> None:
    assert _row("alice", "a@example.com", FACTS, (True, True), time.time(), None)["needs"] == []


def test_a_missing_path_unit_is_an_admin_need() -> None:
    row = _row("alice", "a@example.com", FACTS, (True, False), time.time(), None)
    assert row["path_enabled"] is False
    assert any("path unit" in need and need.startswith("admin: ") for need in row["needs"]), row["needs"]
    assert not any("timer and" in need for need in row["needs"])
