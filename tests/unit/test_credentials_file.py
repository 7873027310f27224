"""The credentials-file write path: classify, merge, atomic write, symlinks, owners, lock, rollback."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claude_auth_sync.plugins.restore_credentials_file.credentials_file import CREDENTIALS_NAME, CredentialsFile
from claude_auth_sync.login import classify, merge_oauth
from claude_auth_sync.errors import ConcurrentChange, CredentialsBusy, CredentialsUnsafe
from claude_auth_sync.plugins.restore_credentials_file.lock import lock_paths
from claude_auth_sync.model import LoginState
from claude_auth_sync.testing import oauth_object

GOOD = oauth_object("sk-ant-oat01-good", "sk-ant-ort01-good")
OTHER = oauth_object("sk-ant-oat01-other", "sk-ant-ort01-other")
MCP = {"server": {"accessToken": "mcp-secret", "expiresAt": 1, "scopes": ["a", "b"]}}
NOBODY = 65534


def make(tmp_path: Path, document: dict | bytes | None) -> CredentialsFile:
    config = tmp_path / ".claude"
    config.mkdir(mode=0o700, exist_ok=True)
    if document is not None:
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        (config / CREDENTIALS_NAME).write_bytes(data)
        os.chmod(config / CREDENTIALS_NAME, 0o600)
    return CredentialsFile(config, lock_wait_timeout_s=0.5)


# -- classify ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (None, LoginState.MISSING),
        (b"{not json", LoginState.NOT_JSON),
        (b"[1, 2]", LoginState.NOT_JSON),
        (b'{"mcpOAuth": {}}', LoginState.NO_OAUTH),
        (b'{"claudeAiOauth": null, "mcpOAuth": {}}', LoginState.NO_OAUTH),
        (json.dumps({"claudeAiOauth": {"accessToken": 5}}).encode(), LoginState.INVALID),
        (json.dumps({"claudeAiOauth": "a string"}).encode(), LoginState.INVALID),
        (json.dumps({"claudeAiOauth": oauth_object("a", "r", scopes="user:inference")}).encode(), LoginState.INVALID),
        (json.dumps({"claudeAiOauth": oauth_object("a\r\nX-Evil: 1", "r")}).encode(), LoginState.INVALID),
        (json.dumps({"claudeAiOauth": oauth_object("a" * 5000, "r")}).encode(), LoginState.INVALID),
        (b'{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", "expiresAt": 1e400}}', LoginState.INVALID),
        (b'{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r"}, "x": NaN}', LoginState.NOT_JSON),
        (b"\xef\xbb\xbf{}", LoginState.NOT_JSON),
        (b'{"claudeAiOauth": {"accessToken": "\xff"}}', LoginState.INVALID),  # U+FFFD, as Node decodes it
        (json.dumps({"claudeAiOauth": oauth_object("", "", expires_at_ms=0)}).encode(), LoginState.BLANKED),
        (json.dumps({"claudeAiOauth": oauth_object("a", "")}).encode(), LoginState.BLANKED),
        (json.dumps({"claudeAiOauth": oauth_object("a", "r", expires_at_ms=1000)}).encode(), LoginState.EXPIRED),
        (json.dumps({"claudeAiOauth": GOOD, "mcpOAuth": MCP}).encode(), LoginState.HEALTHY),
    ],
)
def test_classify_tells_the_states_apart(raw, state) -> None:
    login = classify(Path("x"), raw)
    assert login.state == state
    assert login.backupable == (state in (LoginState.HEALTHY, LoginState.EXPIRED))


def test_classify_keeps_unknown_oauth_fields() -> None:
    oauth = {**GOOD, "rateLimitTier": "enterprise", "future": {"x": [1]}}
    assert classify(Path("x"), json.dumps({"claudeAiOauth": oauth}).encode()).oauth == oauth


# -- merge (property-based) ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=12).filter(lambda k: k != "claudeAiOauth"), json_values, max_size=6),
       old=st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_merge_preserves_everything_outside_claude_ai_oauth(extra, old) -> None:
    document = dict(extra)
    if old is not None:
        document["claudeAiOauth"] = old
    merged = json.loads(merge_oauth(json.dumps(document).encode(), GOOD))
    assert merged["claudeAiOauth"] == GOOD
    assert {k: v for k, v in merged.items() if k != "claudeAiOauth"} == extra
    assert [k for k in merged if k != "claudeAiOauth"] == list(extra)  # order kept too


# -- restore / rollback -----------------------------------------------------------------------


def test_restore_merges_atomically_with_0600_and_keeps_a_pre_restore_copy(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER, "mcpOAuth": MCP})
    before = cf.path.read_bytes()
    os.chmod(cf.path, 0o644)
    snapshot = cf.restore(GOOD, expected=OTHER)
    assert json.loads(cf.path.read_bytes()) == {"claudeAiOauth": GOOD, "mcpOAuth": MCP}
    assert stat.S_IMODE(cf.path.stat().st_mode) == 0o600
    assert snapshot.previous_bytes == before
    copy = cf.config_dir / ".credentials.json.pre-restore"
    assert copy.read_bytes() == before and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not [p for p in cf.config_dir.iterdir() if ".tmp-" in p.name]
    assert not any(p.exists() for p in lock_paths(cf.config_dir))  # lock released

    cf.rollback(snapshot)
    assert cf.path.read_bytes() == before  # the exact previous bytes


def test_restore_into_missing_file_and_rollback_removes_it(tmp_path) -> None:
    cf = make(tmp_path, None)
    snapshot = cf.restore(GOOD, expected=None)
    assert json.loads(cf.path.read_bytes()) == {"claudeAiOauth": GOOD}
    cf.rollback(snapshot)
    assert not cf.path.exists()


def test_concurrent_change_is_not_overwritten(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER, "mcpOAuth": MCP})
    before = cf.path.read_bytes()
    with pytest.raises(ConcurrentChange):
        cf.restore(GOOD, expected=oauth_object("what-we-saw", "before"))
    assert cf.path.read_bytes() == before


def test_unparseable_file_is_kept_beside_with_a_timestamp(tmp_path) -> None:
    cf = make(tmp_path, b'{"claudeAiOauth": {"accessToken": "half')
    snapshot = cf.restore(GOOD, expected=None)
    assert snapshot.kept_copy is not None and snapshot.kept_copy.name.startswith(".credentials.json.corrupt-")
    assert snapshot.kept_copy.read_bytes() == b'{"claudeAiOauth": {"accessToken": "half'
    assert stat.S_IMODE(snapshot.kept_copy.stat().st_mode) == 0o600
    assert json.loads(cf.path.read_bytes()) == {"claudeAiOauth": GOOD}


def test_stale_temp_files_of_a_crashed_run_are_removed(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER})
    leftover = cf.config_dir / ".credentials.json.tmp-999-deadbeef"
    leftover.write_text("partial")
    cf.restore(GOOD, expected=OTHER)
    assert not leftover.exists()


# -- refusals -----------------------------------------------------------------------------------


def test_symlinked_credentials_file_is_refused_and_target_untouched(tmp_path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"claudeAiOauth": OTHER}))
    os.chown(target, NOBODY, NOBODY)
    cf = make(tmp_path, None)
    cf.path.symlink_to(target)
    before = target.read_bytes()
    with pytest.raises(CredentialsUnsafe, match="symlink"):
        cf.read()
    with pytest.raises(CredentialsUnsafe, match="symlink"):
        cf.restore(GOOD, expected=None)
    assert target.read_bytes() == before and cf.path.is_symlink()


def test_config_dir_symlink_to_a_foreign_directory_is_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CREDENTIALS_NAME).write_text(json.dumps({"claudeAiOauth": OTHER}))
    os.chown(foreign, NOBODY, NOBODY)
    link = tmp_path / ".claude"
    link.symlink_to(foreign)
    cf = CredentialsFile(link, lock_wait_timeout_s=0.5)
    before = (foreign / CREDENTIALS_NAME).read_bytes()
    with pytest.raises(CredentialsUnsafe, match="owned by uid 65534"):
        cf.restore(GOOD, expected=None)
    assert (foreign / CREDENTIALS_NAME).read_bytes() == before
    assert sorted(p.name for p in foreign.iterdir()) == [CREDENTIALS_NAME]


def test_config_dir_symlink_to_own_directory_is_fine(tmp_path) -> None:
    real = tmp_path / "dotfiles-claude"
    real.mkdir(mode=0o700)
    (tmp_path / ".claude").symlink_to(real)
    cf = CredentialsFile(tmp_path / ".claude", lock_wait_timeout_s=0.5)
    cf.restore(GOOD, expected=None)
    assert json.loads((real / CREDENTIALS_NAME).read_bytes()) == {"claudeAiOauth": GOOD}


def test_file_owned_by_someone_else_is_refused(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER})
    os.chown(cf.path, NOBODY, NOBODY)
    before = cf.path.read_bytes()
    with pytest.raises(CredentialsUnsafe, match="owned by uid 65534"):
        cf.restore(GOOD, expected=OTHER)
    assert cf.path.read_bytes() == before


# -- the lock -----------------------------------------------------------------------------------


def test_a_live_claude_code_lock_makes_restore_wait_then_warn_without_writing(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER})
    before = cf.path.read_bytes()
    first, _ = lock_paths(cf.config_dir)
    first.mkdir()  # Claude Code holds it (fresh mtime)
    started = time.monotonic()
    with pytest.raises(CredentialsBusy) as caught:
        cf.restore(GOOD, expected=OTHER)
    assert caught.value.exit_code == 75
    assert 0.4 < time.monotonic() - started < 5
    assert cf.path.read_bytes() == before
    assert first.is_dir()  # a foreign lock is never removed


def test_a_lock_older_than_60s_is_stale_and_taken(tmp_path) -> None:
    cf = make(tmp_path, {"claudeAiOauth": OTHER})
    first, _ = lock_paths(cf.config_dir)
    first.mkdir()
    old = time.time() - 120
    os.utime(first, (old, old))
    cf.restore(GOOD, expected=OTHER)
    assert json.loads(cf.path.read_bytes())["claudeAiOauth"] == GOOD
    assert not first.exists()
