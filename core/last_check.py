"""The last verified login: a digest of the ``claudeAiOauth`` object this agent last found backed up
after a passing probe, and when. It lets a run started by a change of the credentials file that
did not change the login end at once (no inference, no Vault request).

Guarantees: only a SHA-256 digest of the object's canonical JSON is kept (never a token; it cannot
be turned back into one); the file is 0600 in the private state directory, written atomically,
never through a symlink; a missing, damaged or hostile file reads as "no record" (a full run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CasError
from .fileio import read_regular, replace_private

__all__ = ["LastCheck", "LastCheckFile", "oauth_digest"]


def oauth_digest(oauth: Any) -> str:
    """SHA-256 (hex) of the object's canonical JSON: equal objects, equal digests."""
    return hashlib.sha256(json.dumps(oauth, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class LastCheck:
    digest: str
    at: float  # epoch seconds of the passing probe


class LastCheckFile:
    """``<state_dir>/last-check.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> LastCheck | None:
        try:
            raw = read_regular(self.path, max_bytes=4096)
            record = json.loads(raw) if raw is not None else None
        except (CasError, OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        digest, at = record.get("digest"), record.get("at")
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(at, (int, float)):
            return None
        return LastCheck(digest, float(at))

    def record(self, oauth: Any, at: float) -> None:
        replace_private(self.path, json.dumps({"digest": oauth_digest(oauth), "at": at}).encode())
