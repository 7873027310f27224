"""What a usable ``claudeAiOauth`` object is: one model for the local file and the stored copy alike.

The same check decides whether the local file holds a login, whether a login may be backed up,
and whether a stored copy may be restored, so the agent can never restore an object that its own
classifier would afterwards call unusable.

Guarantees of :func:`oauth_problem`: an object it accepts is a JSON object of plain JSON values
(no NaN or Infinity, no Decimal, no huge integer), at most :data:`MAX_OBJECT_BYTES` when encoded,
whose expiry times are between 0 and :data:`MAX_TIMESTAMP_MS`,
whose known fields have Claude Code's types, and whose tokens are printable ASCII of at most
:data:`MAX_TOKEN_CHARS` characters (they go into an HTTP header: anything else is a bad copy, not a
login). The reason it returns never contains a value, only a field name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any


__all__ = ["same_oauth", "FIELD_TYPES", "MAX_OBJECT_BYTES", "MAX_TIMESTAMP_MS", "MAX_TOKEN_CHARS", "has_both_tokens", "oauth_problem"]

MAX_TOKEN_CHARS = 4096  # real tokens are ~110 characters; a 5 MB "token" is a bad copy (HTTP 431)
MAX_OBJECT_BYTES = 64 * 1024
MAX_TIMESTAMP_MS = 2**53 - 1  # JavaScript's largest exact integer: Claude Code's Number.MAX_SAFE_INTEGER
_TOKEN = re.compile(r"^[\x21-\x7e]*$")


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "accessToken": (str,),
    "refreshToken": (str,),
    "expiresAt": (int, type(None)),
    "subscriptionType": (str, type(None)),
}
"""Claude Code's known fields and their JSON types (``scopes`` is a list of strings or null);
unknown fields are kept, never judged. Plain checks: this runs on every start, a pydantic model
here cost a fifth of a no-op run."""


def _field_problems(oauth: Mapping[str, Any]) -> list[str]:
    bad = [key for key, types in FIELD_TYPES.items()
           if key in oauth and (not isinstance(oauth[key], types) or isinstance(oauth[key], bool))]
    scopes = oauth.get("scopes")
    if scopes is not None and not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
        bad.append("scopes")
    return sorted(bad)


def oauth_problem(oauth: Any) -> str | None:
    """Why ``oauth`` cannot be a ``claudeAiOauth`` object, or None when it can. Never echoes a value."""
    if not isinstance(oauth, Mapping):
        return "claudeAiOauth is not a JSON object"
    try:
        encoded = json.dumps(dict(oauth), allow_nan=False)
    except (TypeError, ValueError):
        return "claudeAiOauth holds values that are not plain JSON (NaN, Infinity or an unsupported number)"
    except RecursionError:
        return "claudeAiOauth is nested too deeply"
    if len(encoded) > MAX_OBJECT_BYTES:
        return f"claudeAiOauth is larger than {MAX_OBJECT_BYTES} bytes"
    fields = _field_problems(oauth)
    if fields:
        return f"claudeAiOauth has invalid fields: {', '.join(fields)}"
    for key in ("expiresAt", "refreshTokenExpiresAt", "refreshExpiresAt"):
        value = oauth.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= MAX_TIMESTAMP_MS:
            return f"claudeAiOauth.{key} is not a time Claude Code can represent"
    for key in ("accessToken", "refreshToken"):
        token = oauth.get(key, "")
        if len(token) > MAX_TOKEN_CHARS:
            return f"claudeAiOauth.{key} is longer than {MAX_TOKEN_CHARS} characters"
        if not _TOKEN.match(token):
            return f"claudeAiOauth.{key} holds characters a token never has"
    return None


def has_both_tokens(oauth: Any) -> bool:
    """True when both the access and the refresh token are non-empty strings."""
    return (
        isinstance(oauth, Mapping)
        and isinstance(oauth.get("accessToken"), str)
        and bool(oauth.get("accessToken"))
        and isinstance(oauth.get("refreshToken"), str)
        and bool(oauth.get("refreshToken"))
    )


def same_oauth(a: Any, b: Any) -> bool:
    """Equal as JSON (key order ignored). An object too deep to encode (a damaged copy) equals nothing."""
    try:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    except RecursionError:
        return False
