"""The last verified login: a digest of the ``claudeAiOauth`` object this agent last found backed up
after a passing probe, and when. It lets a run started by a change of the credentials file that
did not change the login end at once (no inference, no Vault request). Beside it,
:class:`LoginHistoryFile` remembers whether the user has ever logged in, so a roster user who
never has is told from one who logged out (:class:`LoginHistoryFile` states the rule).

Guarantees: only a SHA-256 digest of the object's canonical JSON is kept (never a token; it cannot
be turned back into one); the file is 0600 in the private state directory, written atomically,
never through a symlink; a missing, damaged or hostile file reads as "no record" (a full run).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CasError
from .fileio import read_regular, read_tail, replace_private
from .status_line import rotated_log

__all__ = ["LastCheck", "LastCheckFile", "LoginHistory", "LoginHistoryFile", "oauth_digest"]


def oauth_digest(oauth: Any) -> str:
    """SHA-256 (hex) of the object's canonical JSON: equal objects, equal digests."""
    return hashlib.sha256(json.dumps(oauth, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class LastCheck:
    digest: str
    at: float  # epoch seconds of the passing probe


def _read_small_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in a small private state file, or None when it is missing, not a regular
    file (symlink, FIFO), over 4 KiB, not JSON or not an object: damaged state is no state."""
    try:
        raw = read_regular(path, max_bytes=4096)
        record = json.loads(raw) if raw is not None else None
    except (CasError, OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class LastCheckFile:
    """``<state_dir>/last-check.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> LastCheck | None:
        record = _read_small_object(self.path)
        if record is None:
            return None
        digest, at = record.get("digest"), record.get("at")
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(at, (int, float)):
            return None
        return LastCheck(digest, float(at))

    def record(self, oauth: Any, at: float) -> None:
        replace_private(self.path, json.dumps({"digest": oauth_digest(oauth), "at": at}).encode())

    def login_history(self) -> LoginHistoryFile:
        """The login history kept beside this file, with this file and the status log as evidence."""
        log = self.path.with_name(SYNC_LOG_NAME)
        return LoginHistoryFile(self.path.with_name(LOGIN_HISTORY_NAME), last_check=self,
                                logs=(log, rotated_log(log)))


# -- "never logged in": the agent's own memory of a login ------------------------------------------

LOGIN_HISTORY_NAME = "login-history.json"
SYNC_LOG_NAME = "sync.log"  # the file sink's log in the same state directory (ResolvedPaths.log_file)
MAX_LOG_SCAN_BYTES = 4 << 20  # the log and its rotated part are about 1 MiB each
FUTURE_SLACK_S = 300.0  # a recorded time further ahead than this is not trusted (clock or hostile edit)
# A status line that shows a login existed: an OK run, or any run that saw a token (a fingerprint field).
_LOGIN_LINE = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?:OK(?: |$)|(?:WARN|FAIL) .* (?:access|refresh)_fp=[0-9a-f]+(?: |$))",
    re.MULTILINE)


@dataclass(frozen=True)
class LoginHistory:
    """What the agent remembers: when it first saw a login (None: never), and since when it has been
    waiting for the first one (None: not recorded)."""

    login_seen_at: float | None = None
    awaiting_since: float | None = None


class LoginHistoryFile:
    """``<state_dir>/login-history.json``: has this user EVER logged in, as far as this agent knows?

    The rule ("never logged in"), decided from the agent's own state only (no Vault request, no
    inference): the user has logged in before when any of these holds, else the user is awaiting
    the first login:

    1. this file records ``login_seen_at``: written, once, by the first run that found a
       ``claudeAiOauth`` object in the credentials file, in whatever state (healthy, expired,
       blanked, invalid);
    2. ``last-check.json`` holds a valid record (a login was verified and backed up);
    3. ``sync.log`` or ``sync.log.1`` holds an ``OK`` line or a line with a token fingerprint
       (``access_fp=``/``refresh_fp=``): an agent from before this file existed saw a login.

    (2) and (3) are looked at only while this file has no record; what they show is then written
    here, so the log is scanned once, not on every run, and a log rotated away later changes
    nothing. The waiting starts at the first run that found no login and no such evidence
    (``awaiting_since``, kept until a login is seen). A missing, damaged or hostile file (symlink,
    FIFO, not JSON, wrong types, a time in the future) is "no record": the evidence is looked at
    again. Removing the state directory makes the agent forget: a logged-out user then counts as
    awaiting the first login again. Times are epoch seconds; the file holds no secret and is 0600.
    """

    def __init__(self, path: Path, *, last_check: LastCheckFile | None = None,
                 logs: tuple[Path, ...] = ()) -> None:
        self.path = path
        self.last_check = last_check
        self.logs = logs

    def read(self, now: float) -> LoginHistory | None:
        record = _read_small_object(self.path)
        if record is None:
            return None
        seen, since = _epoch(record.get("login_seen_at"), now), _epoch(record.get("awaiting_since"), now)
        if seen is None and since is None:
            return None
        return LoginHistory(seen, since)

    def note_login(self, now: float) -> None:
        """A run found a login: remember it for good (written once; later calls only read)."""
        history = self.read(now)
        if history is None or history.login_seen_at is None:
            self._write(LoginHistory(now, history.awaiting_since if history else None))

    def awaiting_since(self, now: float) -> float | None:
        """For a run that found no login: None when the user has logged in before (a logout), else
        since when the agent has been waiting for the first login (recorded on the first such run)."""
        history = self.read(now)
        if history is not None and history.login_seen_at is not None:
            return None
        if history is not None and history.awaiting_since is not None:
            return history.awaiting_since
        evidence = self._older_evidence()
        if evidence is not None:
            self._write(LoginHistory(min(evidence, now), None))
            return None
        self._write(LoginHistory(None, now))
        return now

    def _older_evidence(self) -> float | None:
        """When a login is shown by ``last-check.json`` or the status log (the time of the record,
        or 0.0 when only the log shows it), or None."""
        if self.last_check is not None:
            last = self.last_check.read()
            if last is not None:
                return last.at
        for log in self.logs:
            try:
                data = read_tail(log, max_bytes=MAX_LOG_SCAN_BYTES)
            except (CasError, OSError):
                continue
            if data and _LOGIN_LINE.search(data):
                return 0.0
        return None

    def _write(self, history: LoginHistory) -> None:
        try:
            replace_private(self.path, json.dumps(
                {"login_seen_at": history.login_seen_at, "awaiting_since": history.awaiting_since}).encode())
        except (CasError, OSError):
            pass  # read-only or full state directory: the next run decides again


def _epoch(value: Any, now: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value <= now + FUTURE_SLACK_S else None
