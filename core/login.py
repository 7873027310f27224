"""What the local login is, and how a stored copy is merged into Claude Code's file: pure data.

:func:`classify` tells the states of a credentials file apart (missing, not JSON, logged out, an
unusable object, blanked tokens, expired, healthy); :func:`merge_oauth` replaces only
``claudeAiOauth`` and keeps every other key in meaning and order. Both work on bytes and never
touch a file: the restorer plugin does the I/O, tests and the fleet view use the same rules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import CredentialsUnsupported
from .json_document import MAX_DOCUMENT_BYTES, DocumentUnsupported, dump_document, is_compact, parse_document, plain
from .model import LocalLogin, LoginState, OAuth
from .oauth import has_both_tokens, oauth_problem

__all__ = ["OAUTH_KEY", "classify", "merge_oauth"]

OAUTH_KEY = "claudeAiOauth"


def classify(path: Path, raw: bytes | None, *, now_ms: int | None = None) -> LocalLogin:
    """Tell apart: missing file, not JSON, no ``claudeAiOauth`` (logged out), an unusable object,
    blanked tokens, expired, healthy.

    :raises CredentialsUnsupported: valid JSON this tool will not rewrite (nested deeper than
        :data:`~claude_auth_sync.json_document.MAX_DEPTH` levels, or larger than 1 MiB).
    """
    if raw is None:
        return LocalLogin(LoginState.MISSING, path, detail="no credentials file")
    try:
        document = parse_document(raw)
    except DocumentUnsupported as err:
        raise CredentialsUnsupported(
            f"{path}: {err}; claude-auth-sync will not rewrite it and changed nothing",
            remedy=f"look at {path} (Claude Code's own files nest about 5 levels), move it aside and log in again",
        ) from None
    except ValueError:
        return LocalLogin(LoginState.NOT_JSON, path, detail="the file is not valid JSON")
    if not isinstance(document, dict):
        return LocalLogin(LoginState.NOT_JSON, path, detail="the file is not a JSON object")
    others = tuple(k for k in document if k != OAUTH_KEY)
    if OAUTH_KEY not in document or document[OAUTH_KEY] is None:
        return LocalLogin(LoginState.NO_OAUTH, path, other_keys=others, detail="no claudeAiOauth object (logged out)")
    try:
        oauth = plain(document[OAUTH_KEY])
    except ValueError:
        oauth = None
    problem = oauth_problem(oauth) if oauth is not None else "claudeAiOauth holds a number out of range"
    if problem is not None:
        return LocalLogin(LoginState.INVALID, path, other_keys=others, detail=problem)
    expires_at = oauth.get("expiresAt")
    if not has_both_tokens(oauth):
        return LocalLogin(
            LoginState.BLANKED, path, oauth=oauth, other_keys=others, expires_at_ms=expires_at,
            detail="access or refresh token is empty (Claude Code blanks them after invalid_grant)",
        )
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if expires_at is not None and expires_at <= now_ms:
        return LocalLogin(
            LoginState.EXPIRED, path, oauth=oauth, other_keys=others, expires_at_ms=expires_at,
            detail="access token expired (normal: the CLI refreshes it)",
        )
    return LocalLogin(LoginState.HEALTHY, path, oauth=oauth, other_keys=others, expires_at_ms=expires_at)


def merge_oauth(raw: bytes | None, oauth: OAuth) -> bytes:
    """The file content with ``claudeAiOauth`` replaced and every other key kept in meaning and order.

    Numbers, escapes and key order of the other keys survive exactly (:mod:`json_document`), and a
    compact file stays compact. An unparseable or non-object document contributes nothing (the
    caller keeps a copy of it).

    :raises CredentialsUnsupported: the document is too deep or too large to rewrite, or the result
        would be larger than the agent itself agrees to read back.
    :raises ValueError: ``oauth`` is not plain JSON data.
    """
    document: dict[str, Any] = {}
    if raw is not None:
        try:
            parsed = parse_document(raw)
        except DocumentUnsupported as err:
            raise CredentialsUnsupported(f"the credentials file: {err}; nothing was changed") from None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            document = parsed
    document[OAUTH_KEY] = dict(oauth)
    data = dump_document(document, compact=raw is not None and is_compact(raw))
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CredentialsUnsupported(
            f"the merged credentials file would be larger than {MAX_DOCUMENT_BYTES} bytes; nothing was changed",
            remedy="look at what fills the credentials file (other keys than claudeAiOauth) and trim it",
        )
    return data
