"""The roster: which OS users this workstation provisions, and their Enterprise e-mail.

Source ``scripts/workstation/roster.yaml``, installed as ``/etc/claude-auth-sync/roster.yaml``
(root, 0644)::

    users:
      - os_user: alice
        email: alice@example.com

Validation is strict and every problem names the line it came from (the YAML node marks are
kept while the document is converted), so an operator can fix a 500-line roster without
guessing:

* unknown keys (anywhere), duplicate mapping keys (PyYAML would silently keep the last one);
* ``os_user`` must match the one strict user-name pattern (:mod:`claude_auth_sync.usernames`: the
  same check guards the Vault paths, the policy names and the systemd instance names): lowercase
  POSIX names and SSSD/AD's dotted names (``john.doe``, ``j_doe-2``), never ``root``; each refusal
  says why (``..``, ``/``, a leading dot or dash, a trailing dot, a glob, non-ASCII look-alikes,
  more than 32 characters, uppercase, ``name@domain``);
* ``email`` must be a plain ``local@domain.tld`` address (no display name, no whitespace);
* duplicate ``os_user`` and duplicate ``email`` entries (one Enterprise identity per OS user:
  credentials are never shared between users);
* YAML anchors and aliases (``&a``/``*a``): refused while the document is composed, before
  anything is expanded, so a few bytes of nested aliases ("billion laughs") cost nothing.

:func:`load_roster` reads the file only after :func:`claude_auth_sync.admin.trusted_file.open_trusted`
accepted it (a regular file, never a FIFO, owned by root and not group/world-writable, in a
directory only root can write), and at most 1 MiB of it. Duplicate uids and accounts outside
``/etc/login.defs``' UID range are checked against the OS by the provisioner
(:mod:`claude_auth_sync.admin.accounts`).

All problems of a file are reported together in one :class:`RosterError` (exit 78).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.fileio import open_regular
from claude_auth_sync.usernames import username_problem

__all__ = ["DEFAULT_ROSTER", "Roster", "RosterError", "RosterUser", "load_roster", "parse_roster"]

DEFAULT_ROSTER = Path("/etc/claude-auth-sync/roster.yaml")

# Deliberately simple and strict: one "@", no whitespace or quotes, a dotted domain with a
# letter-only TLD. Enterprise SSO addresses look like this; anything else is a typo.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_RESERVED_USERS = frozenset({"root"})


class RosterUser(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    os_user: str = Field(description="login name of the OS account")
    email: str = Field(description="the user's Enterprise e-mail (for `claude auth login --email`)")

    @field_validator("os_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        problem = username_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} is not a valid user name: {problem}")
        if value in _RESERVED_USERS:
            raise ValueError(f"{value!r} may not be provisioned")
        return value

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        if not _EMAIL.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not a plain e-mail address (name@domain.tld)")
        return value


class Roster(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    users: list[RosterUser]

    def names(self) -> list[str]:
        return [u.os_user for u in self.users]

    def __iter__(self) -> Iterator[RosterUser]:  # type: ignore[override]
        return iter(self.users)


class RosterError(ConfigurationError):
    """The roster is missing or invalid; ``problems`` holds ``(line, message)`` pairs."""

    default_reason = "invalid_roster"

    def __init__(self, path: str, problems: list[tuple[int | None, str]]) -> None:
        self.path = path
        self.problems = sorted(problems, key=lambda p: (p[0] or 0, p[1]))
        lines = [f"{path}:{line}: {msg}" if line else f"{path}: {msg}" for line, msg in self.problems]
        super().__init__(
            "invalid roster:\n  " + "\n  ".join(lines),
            remedy=f"fix {path} (source: scripts/workstation/roster.yaml)",
        )


@dataclass
class _Marked:
    """Where each value of the converted document came from: loc tuple -> 1-based line."""

    lines: dict[tuple[Any, ...], int]

    def line(self, loc: tuple[Any, ...]) -> int | None:
        # The most specific location we know (a missing key's error points at its mapping).
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc)


def _convert(node: yaml.Node, loader: yaml.SafeLoader, loc: tuple[Any, ...], marks: _Marked,
             problems: list[tuple[int | None, str]], depth: int = 0) -> Any:
    line = node.start_mark.line + 1
    marks.lines.setdefault(loc, line)
    if depth > 20:
        problems.append((line, "document nested too deeply"))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append((key_node.start_mark.line + 1, "mapping keys must be plain strings"))
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append((key_node.start_mark.line + 1, "YAML merge keys (<<) are not allowed"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                problems.append((key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                continue
            marks.lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, loader, loc + (key,), marks, problems, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, loader, loc + (i,), marks, problems, depth + 1) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses anchors and aliases instead of sharing nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not allowed in the "
                                              "roster: write each entry out", event.start_mark)
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, f"YAML anchors (&{event.anchor}) are not allowed in the "
                                              "roster: write each entry out", event.start_mark)
        return super().compose_node(parent, index)


def parse_roster(text: str, source: str = "roster.yaml") -> Roster:
    """Validate roster text; raises :class:`RosterError` listing every problem with its line.

    Anchors and aliases are refused at the first one, before any expansion.
    """
    problems: list[tuple[int | None, str]] = []
    try:
        loader = _NoAliasLoader(text)  # its reader refuses control characters already here
    except yaml.YAMLError as err:
        raise RosterError(source, [(None, f"not valid YAML: {err}")]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise RosterError(source, [(None, "the roster is empty (expected a mapping with `users:`)")])
        marks = _Marked({})
        document = _convert(root, loader, (), marks, problems)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise RosterError(source, [(mark.line + 1 if mark else None, f"not valid YAML: {err.problem or err}")]) from None
    except yaml.YAMLError as err:
        raise RosterError(source, [(None, f"not valid YAML: {err}")]) from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        raise RosterError(source, [(root.start_mark.line + 1, "the roster must be a mapping with a `users:` list")])
    problems.extend(_duplicates(document, marks))
    roster: Roster | None = None
    try:
        roster = Roster.model_validate(document)
    except ValidationError as err:
        for e in err.errors(include_url=False):
            loc = tuple(e["loc"])
            what = _where(loc) or "roster"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            elif e["type"] == "missing":
                msg = f"missing key {loc[-1]!r}"
                what = _where(loc[:-1]) or "roster"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            problems.append((marks.line(loc), f"{what}: {msg}"))
    if problems or roster is None:
        raise RosterError(source, problems)
    return roster


def _duplicates(document: dict[Any, Any], marks: _Marked) -> list[tuple[int | None, str]]:
    """Duplicate users and e-mails, checked on the raw entries so they show with other errors."""
    problems: list[tuple[int | None, str]] = []
    users = document.get("users")
    if not isinstance(users, list):
        return problems
    seen: dict[str, dict[str, int | None]] = {"os_user": {}, "email": {}}
    for index, entry in enumerate(users):
        if not isinstance(entry, dict):
            continue
        for key in ("os_user", "email"):
            value = entry.get(key)
            if not isinstance(value, str):
                continue
            norm = value.lower() if key == "email" else value
            line = marks.line(("users", index, key))
            if norm in seen[key]:
                why = "" if key == "os_user" else ": every OS user has their own Enterprise identity"
                problems.append((line, f"users[{index}].{key}: duplicate {key} {value!r} "
                                       f"(first on line {seen[key][norm]}){why}"))
            else:
                seen[key][norm] = line
    return problems


def _read_roster_bytes(path: Path, trusted_only: bool) -> bytes:
    """At most 1 MiB + 1 of the roster, after the file passed the trust checks (or the FIFO check)."""
    from .trusted_file import open_trusted

    fd = open_trusted(path) if trusted_only else open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read((1 << 20) + 1)


def load_roster(path: Path = DEFAULT_ROSTER, *, trusted_only: bool = True) -> Roster:
    """Read and validate the roster file.

    Refuses (:class:`RosterError`, exit 78, one problem line) anything but a regular file (a FIFO
    is refused without blocking), a file larger than 1 MiB and, with ``trusted_only`` (the
    default; ``setup-devvm.sh`` turns it off only to validate a checkout before installing it as
    root:root 0644), a file owned by anyone but root or writable by group or world, a symlink to
    such a file, or one in a directory others can write.
    """
    try:
        data = _read_roster_bytes(path, trusted_only)
    except FileNotFoundError:
        raise RosterError(str(path), [(None, "the roster file does not exist")]) from None
    except IsADirectoryError:
        raise RosterError(str(path), [(None, "the roster is a directory")]) from None
    except ConfigurationError as err:
        raise RosterError(str(path), [(None, str(err))]) from None
    except OSError as err:
        raise RosterError(str(path), [(None, f"cannot read the roster: {err.strerror}")]) from None
    if len(data) > 1 << 20:
        raise RosterError(str(path), [(None, "the roster is larger than 1 MiB")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RosterError(str(path), [(None, "the roster is not UTF-8")]) from None
    return parse_roster(text, str(path))
