"""Fingerprints: the only form in which a token may ever be shown.

A fingerprint is the first 8 hex digits of the SHA-256 of the token. It identifies a token in
logs and diagnose output without revealing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["fingerprint", "oauth_fingerprints"]


def fingerprint(token: str | None) -> str | None:
    """Return the first 8 hex digits of SHA-256(token), or None for a missing/empty token."""
    if not token:
        return None
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def oauth_fingerprints(oauth: Mapping[str, Any] | None) -> dict[str, str | None]:
    """Fingerprints of the access and refresh token of a ``claudeAiOauth`` object."""
    if not oauth:
        return {"access": None, "refresh": None}
    access = oauth.get("accessToken")
    refresh = oauth.get("refreshToken")
    return {
        "access": fingerprint(access) if isinstance(access, str) else None,
        "refresh": fingerprint(refresh) if isinstance(refresh, str) else None,
    }
