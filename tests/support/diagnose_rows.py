"""Finding rows in ``claude-auth-sync diagnose --json`` wherever the document keeps them."""

from __future__ import annotations

from typing import Any

__all__ = ["rows_named"]


def rows_named(document: Any, name: str) -> list[dict[str, Any]]:
    """Every diagnose row (an object with group, name, state) called ``name``, wherever the JSON keeps it."""
    if isinstance(document, dict):
        found = [document] if document.get("name") == name and "group" in document and "state" in document else []
        return found + [row for value in document.values() for row in rows_named(value, name)]
    if isinstance(document, list):
        return [row for item in document for row in rows_named(item, name)]
    return []
