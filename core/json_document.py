"""Reading and rewriting Claude Code's credentials JSON without changing what it means.

Claude Code parses the file with ``JSON.parse``; this module reads and writes it so that every key
other than ``claudeAiOauth`` keeps its meaning exactly, whatever the file holds:

* numbers are kept as written (``1e400`` stays ``1E+400``, never ``Infinity``, which ``JSON.parse``
  rejects; a 5,000-digit integer stays that integer); ``NaN``/``Infinity`` literals are not JSON and
  make the document invalid, as they do for Claude Code;
* a lone surrogate escape (``"\\ud800"``) is written back escaped, never as invalid UTF-8;
* key order is kept; a document nested deeper than :data:`MAX_DEPTH` or larger than
  :data:`MAX_DOCUMENT_BYTES` is refused (:class:`DocumentUnsupported`) rather than half-handled.

Only plain data passes through; parsing never recurses without a bound and never hangs.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "DocumentUnsupported", "parse_document", "dump_document", "is_compact",
           "plain"]

MAX_DEPTH = 64  # Claude Code's own files nest about 5 levels
MAX_DOCUMENT_BYTES = 1 << 20


class DocumentUnsupported(ValueError):
    """Valid JSON that this tool will not rewrite (too deep or too large); the file stays as it is."""


def _exact_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= 1000 else Decimal(text)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_document(raw: bytes) -> Any:
    """Parse ``raw`` as Claude Code does, keeping numbers exact.

    Bytes that are not UTF-8 become U+FFFD, as Node's ``readFileSync(path, "utf8")`` makes them
    (so a stray Latin-1 byte in another key does not turn a file Claude Code uses into "not JSON");
    a BOM, ``NaN`` or ``Infinity`` is not JSON, as for ``JSON.parse``.

    :raises ValueError: not valid JSON.
    :raises DocumentUnsupported: larger than :data:`MAX_DOCUMENT_BYTES` or nested deeper than
        :data:`MAX_DEPTH`.
    """
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DocumentUnsupported(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    if _nesting_depth(raw) > MAX_DEPTH:
        raise DocumentUnsupported(f"the document is nested deeper than {MAX_DEPTH} levels")
    text = raw.decode("utf-8", errors="replace")
    return json.loads(text, parse_float=Decimal, parse_int=_exact_int, parse_constant=_not_json)


def _nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting outside strings (a linear scan: no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return deepest


def plain(value: Any) -> Any:
    """``value`` with exact numbers turned into Python ``int``/``float`` (for the OAuth object only).

    :raises ValueError: a number that is not a finite float or an integer of at most 1000 digits.
    """
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("a number out of range")
        return number
    return value


def dump_document(document: Any, *, compact: bool = False) -> bytes:
    """Serialise like ``JSON.stringify(document, null, 2)`` (``compact``: like ``JSON.stringify(document)``),
    keeping exact numbers as written.

    :raises ValueError: a non-finite float, or a value that is not JSON data.
    """
    if compact:
        return _dump_compact(document).encode("utf-8")
    return _dump(document, 0).encode("utf-8")


def is_compact(raw: bytes) -> bool:
    """True when ``raw`` was written without line breaks (keep it that way: never grow a file 3x)."""
    return b"\n" not in raw.strip()


def _dump_compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(key))}:{_dump_compact(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump_compact(item) for item in value) + "]"
    return _dump(value, 0)


def _string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as an escape, as JSON.stringify does
        encoded = json.dumps(text, ensure_ascii=True)
    return encoded


def _dump(value: Any, level: int) -> str:
    inner = "\n" + "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_string(str(key))}: {_dump(item, level + 1)}" for key, item in value.items()]
        return "{" + ",".join(items) + "\n" + "  " * level + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[" + ",".join(f"{inner}{_dump(item, level + 1)}" for item in value) + "\n" + "  " * level + "]"
    if isinstance(value, str):
        return _string(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a non-finite number cannot be written as JSON")
        return float.__repr__(value)
    raise ValueError(f"{type(value).__name__} is not JSON data")
