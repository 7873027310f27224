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

from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

__all__ = ["MAX_OBJECT_BYTES", "MAX_TIMESTAMP_MS", "MAX_TOKEN_CHARS", "ClaudeAiOauth", "has_both_tokens", "oauth_problem"]

MAX_TOKEN_CHARS = 4096  # real tokens are ~110 characters; a 5 MB "token" is a bad copy (HTTP 431)
MAX_OBJECT_BYTES = 64 * 1024
MAX_TIMESTAMP_MS = 2**53 - 1  # JavaScript's largest exact integer: Claude Code's Number.MAX_SAFE_INTEGER
_TOKEN = re.compile(r"^[\x21-\x7e]*$")


class ClaudeAiOauth(BaseModel):
    """Claude Code's ``claudeAiOauth`` object. Unknown fields are kept, never dropped."""

    model_config = ConfigDict(extra="allow")

    accessToken: str = ""
    refreshToken: str = ""
    expiresAt: StrictInt | None = None
    scopes: list[str] | None = None
    subscriptionType: str | None = None


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
    try:
        ClaudeAiOauth.model_validate(dict(oauth))
    except ValidationError as err:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in err.errors(include_url=False)})
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
