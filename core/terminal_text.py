"""Text that came from a user or from Vault, made safe to show in root's terminal.

A ``sync.log`` line, a token's metadata or an error message quoting either is attacker-chosen
text. Shown as rich markup it can crash the renderer (``[/bold]``) or restyle the screen; shown
raw, its escape sequences can retitle or clear the terminal, fake output or plant OSC 8 links.

Guarantees of :func:`safe_text`: the result holds no C0 or C1 control character, no DEL (so no
ESC, BEL, CSI or OSC sequence survives), no Unicode format character (bidi overrides,
zero-width joiners), no line or paragraph separator and no lone surrogate (which would crash
the encoder); each such character becomes ``?`` (tabs and line breaks become a space). It is
at most ``max_len`` characters long. :func:`safe_markup` additionally escapes rich markup;
:func:`plain` returns a :class:`rich.text.Text`, which rich never parses for markup or emoji.
"""

from __future__ import annotations

import unicodedata

from rich.markup import escape
from rich.text import Text

__all__ = ["safe_text", "safe_markup", "plain", "MAX_LEN"]

MAX_LEN = 500
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SPACES = frozenset("\t\n\r")


def _safe_char(char: str) -> str:
    if char in _SPACES:
        return " "
    if unicodedata.category(char) in _UNSAFE_CATEGORIES:
        return "?"
    return char


def safe_text(value: object, max_len: int = MAX_LEN) -> str:
    """``str(value)`` with every control/format character replaced, cut to ``max_len`` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > max_len:
        text = text[: max_len - 1] + "…"
    if text.isascii() and text.isprintable():
        return text
    return "".join(_safe_char(c) for c in text)


def safe_markup(value: object, max_len: int = MAX_LEN) -> str:
    """:func:`safe_text`, then rich markup escaped: safe to interpolate into a markup string."""
    return escape(safe_text(value, max_len))


def plain(value: object, max_len: int = MAX_LEN, style: str = "") -> Text:
    """A rich :class:`Text` of :func:`safe_text` (never parsed as markup), optionally styled."""
    return Text(safe_text(value, max_len), style=style)
