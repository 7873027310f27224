"""The settings environment each user's unit runs with, as root's fleet view reconstructs it.

``claude-auth-sync@<user>.service`` starts the agent with systemd's own small environment plus
``EnvironmentFile=-/etc/default/claude-auth-sync`` (:data:`ENVIRONMENT_FILE`); it never sees the
administrator's shell. :func:`unit_environ` builds what the fleet view's child (running as the
user) resolves its settings from:

1. root's environment with **every** settings variable and every transport variable removed
   (what is left, ``PATH``, ``LANG``..., is process plumbing, not settings);
2. the settings variables and the transport variables (:func:`is_transport`: every ``*_proxy``
   in any case and the CA bundle variables, read by requests the way the agent's Vault client
   reads them) of :data:`ENVIRONMENT_FILE`, exactly those the unit would get: a proxy or CA
   bundle in root's shell is not the unit's, and one set for the units is;
3. root's own *site-wide* settings variables on top (``VAULT_ADDR``, ``VAULT_CACERT``,
   ``VAULT_NAMESPACE``, ``CLAUDE_AUTH_SYNC_VAULT__ADDR``, ``CLAUDE_AUTH_SYNC_BACKEND``...): an
   administrator who runs ``sudo --preserve-env=VAULT_ADDR claude-auth-sync diagnose --all``
   chooses where every user's token is looked up, as documented before; :attr:`UnitEnviron.overrides`
   names them so the caller can say that the rows then differ from the units;
4. never root's *per-user* variables (:data:`PER_USER_VARIABLES`: the client certificate and key,
   the token file, the state, config and Claude directories, the XDG variables): a value of
   root's names root's files, which the user's child cannot read and the user's unit never uses.
   Nor root's whole-section JSON variables (``CLAUDE_AUTH_SYNC_VAULT='{...}'``), which could
   carry such a path. :attr:`UnitEnviron.dropped` names what was left out.

Inside a variable set, the usual precedence holds (a ``CLAUDE_AUTH_SYNC_`` variable beats its
standard twin, e.g. the file's ``CLAUDE_AUTH_SYNC_VAULT__ADDR`` beats root's ``VAULT_ADDR``).

:func:`read_environment_file` guarantees: the file passes the same trusted-file check as the
system settings file (:func:`~claude_auth_sync.admin.trusted_file.read_trusted`: regular file, root's,
not group/world-writable, no foreign symlink or directory; a refusal is exit 78), at most
:data:`MAX_ENVIRONMENT_BYTES` are read, and an absent file is an empty one (the unit's ``-``).
:func:`parse_environment_file` reads ``KEY=VALUE`` lines exactly as systemd 252's ``EnvironmentFile=``
does (``#``/``;`` comment lines, a comment ending in ``\\`` continuing on the next, quotes, backslash
escapes and continuations, trailing blanks trimmed, the end of the file ending an open value), keeps
only assignments systemd accepts (a valid name; control characters in a value are kept, as systemd
keeps them) and, like ``EnvironmentFile=-``, ignores the whole file when systemd refuses it (a NUL
byte, invalid UTF-8 in an assignment); a real-systemd differential test holds it to that.
:func:`unit_environ` then takes only the settings and proxy variables: ``export X=1`` is a line
systemd ignores (invalid name), ``LD_PRELOAD`` is not a setting. Ignored lines are
reported by number and reason, never by value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from claude_auth_sync.hookspecs import SettingsSection
from claude_auth_sync.settings import ENV_PREFIX, Settings

__all__ = ["CA_VARIABLES", "ENVIRONMENT_FILE", "MAX_ENVIRONMENT_BYTES", "PER_USER_VARIABLES",
           "UnitEnviron", "enter_unit_environ", "is_transport", "parse_environment_file", "read_environment_file", "settings_variables",
           "unit_environ"]

ENVIRONMENT_FILE = Path("/etc/default/claude-auth-sync")
MAX_ENVIRONMENT_BYTES = 64 * 1024
#: Settings variables whose value names one account's files: root's never apply to a user.
PER_USER_VARIABLES = frozenset({
    "CLAUDE_CONFIG_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY",
    "CLAUDE_AUTH_SYNC_CLAUDE_CONFIG_DIR", "CLAUDE_AUTH_SYNC_STATE_DIR", "CLAUDE_AUTH_SYNC_CONFIG_DIR",
    "CLAUDE_AUTH_SYNC_VAULT__TOKEN_FILE", "CLAUDE_AUTH_SYNC_VAULT__CLIENT_CERT", "CLAUDE_AUTH_SYNC_VAULT__CLIENT_KEY",
})
#: The CA bundle variables requests (and OpenSSL's default paths) read: like the proxies, the unit's.
CA_VARIABLES = frozenset({"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"})


def is_transport(name: str) -> bool:
    """A variable the agent's Vault client reads for its connection, taken from the unit's file
    only (the unit never sees the administrator's shell): every ``*_proxy`` in **any** case
    (``HTTPS_PROXY``, ``no_proxy``, ``Https_Proxy``, ``socks_proxy``: urllib's
    ``getproxies_environment``, which requests uses, lower-cases the name), and :data:`CA_VARIABLES`."""
    return name.lower().endswith("_proxy") or name in CA_VARIABLES


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHITESPACE, _NEWLINE = " \t\n\r", "\n\r"


@dataclass(frozen=True)
class SettingsVariables:
    """The variable names the settings read: ``standard`` (case-sensitive), ``prefixed`` leaf
    variables and ``sections`` (whole-section JSON), the last two upper-cased (pydantic matches
    ``CLAUDE_AUTH_SYNC_*`` case-insensitively)."""

    standard: frozenset[str]
    prefixed: frozenset[str]
    sections: frozenset[str]

    def knows(self, name: str) -> bool:
        upper = name.upper()
        return name in self.standard or upper in self.prefixed or upper in self.sections

    def is_settings(self, name: str) -> bool:
        """Known, or anything else the settings' prefix would route (removed from the child too)."""
        return self.knows(name) or name.upper().startswith(ENV_PREFIX)

    def per_user(self, name: str) -> bool:
        return name in PER_USER_VARIABLES or name.upper() in PER_USER_VARIABLES


def settings_variables(sections: Sequence[SettingsSection]) -> SettingsVariables:
    """Every variable the settings (the root model and the plugins' ``sections``) read."""
    standard = {"CLAUDE_CONFIG_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME"}
    prefixed = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
    names: set[str] = set()
    for section in sections:
        standard.update(section.standard_env.values())
        names.add(f"{ENV_PREFIX}{section.name}".upper())
        prefixed.update(f"{ENV_PREFIX}{section.name}__{name}".upper() for name in section.model.model_fields)
    return SettingsVariables(frozenset(standard), frozenset(prefixed), frozenset(names))


def parse_environment_file(text: str) -> tuple[dict[str, str], list[str]]:
    """``(assignments, problems)`` of an ``EnvironmentFile=`` text, read as systemd 252 reads it
    (a port of its ``parse_env_file_internal`` and ``load_env_file_push``, checked against the real
    systemd by ``tests/integration/test_review_unit_environ_systemd.py``).

    ``assignments`` holds what systemd would set (later lines win); ``problems`` says, per line
    number, why an assignment was ignored (never its value). ``text`` is the file decoded with
    ``surrogateescape``: as systemd refuses a file with a NUL byte or with invalid UTF-8 in any
    assignment (with ``EnvironmentFile=-...`` the *whole* file is then ignored), so is it here.
    A comment ending in ``\\`` continues on the next line (systemd up to 253; 254 changed it).
    Values may hold control characters (systemd hands them to the process); settings filtering
    is the caller's."""
    if "\x00" in text:
        return {}, ["a NUL byte: systemd refuses the whole file (every assignment in it ignored)"]
    found: dict[str, str] = {}
    problems: list[str] = []
    state, key, value, line, start = "pre_key", "", "", 1, 1
    trail = -1  # where trailing unquoted blanks begin in value (-1: none)
    broken: list[int] = []  # lines with invalid UTF-8 in an assignment: the whole file is refused

    def push(chomp: bool) -> None:
        name = key.rstrip(_WHITESPACE)
        text_value = value if trail < 0 or not chomp else value[:trail]
        if _invalid_utf8(name) or _invalid_utf8(text_value):
            broken.append(start)
        elif not _NAME.fullmatch(name):
            problems.append(f"line {start}: not a variable name (systemd ignores it)")
        else:
            found[name] = text_value

    for char in text:
        if state == "pre_key":
            if char in "#;":
                state = "comment"
            elif char not in _WHITESPACE:
                state, key, value, trail, start = "key", char, "", -1, line
        elif state == "key":
            if char in _NEWLINE:
                problems.append(f"line {start}: no '=' (systemd ignores it)")
                state = "pre_key"
            elif char == "=":
                state, trail = "pre_value", -1
            else:
                key += char
        elif state == "comment":
            if char == "\\":
                state = "comment_escape"
            elif char in _NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":  # systemd 252: the escaped character, a newline too, stays comment
            if char in _NEWLINE:
                problems.append(f"line {line}: a comment ending in '\\' makes the next line a comment too "
                                "(systemd 252; from 254 it is not)")
            state = "comment"
        elif state in ("pre_value", "value"):
            if char in _NEWLINE:
                push(chomp=state == "value")
                state = "pre_key"
            elif state == "pre_value" and char in _WHITESPACE:
                pass
            elif char == "'" and state == "pre_value":
                state = "single"
            elif char == '"' and state == "pre_value":
                state = "double"
            elif char == "\\":
                state, trail = "value_escape", -1
            else:
                if char in _WHITESPACE:
                    trail = len(value) if trail < 0 else trail
                else:
                    trail = -1
                value += char
                state = "value"
        elif state == "value_escape":
            state = "value"
            if char not in _NEWLINE:
                value += char
        elif state == "single":
            if char == "'":
                state = "pre_value"
            else:
                value += char
        elif state == "double":
            if char == '"':
                state = "pre_value"
            elif char == "\\":
                state = "double_escape"
            else:
                value += char
        elif state == "double_escape":
            state = "double"
            if char in '"\\`$':
                value += char
            elif char != "\n":
                value += "\\" + char
        if char == "\n":
            line += 1
    if state in ("single", "double", "double_escape"):
        problems.append(f"line {start}: an unterminated quote (systemd takes the rest of the file as the value)")
    if state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):  # the end: pushed
        push(chomp=state == "value")
    if broken:
        return {}, [f"line {broken[0]}: invalid UTF-8: systemd refuses the whole file (every assignment in it ignored)"]
    return found, problems


def _invalid_utf8(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def read_environment_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """:func:`parse_environment_file` of a trusted file (absent: empty); raises UntrustedFile,
    NotARegularFile or ConfigurationError (too large) otherwise (exit 78)."""
    from .trusted_file import read_trusted

    try:
        data = read_trusted(path, MAX_ENVIRONMENT_BYTES)
    except FileNotFoundError:
        return {}, []
    return parse_environment_file(data.decode("utf-8", errors="surrogateescape"))


@dataclass(frozen=True)
class UnitEnviron:
    """The child's environment, and what of root's environment changed it or was left out (names)."""

    environ: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def unit_environ(sections: Sequence[SettingsSection], root_environ: Mapping[str, str],
                 path: Path = ENVIRONMENT_FILE) -> UnitEnviron:
    """The environment a user's fleet child resolves settings from (see the module docstring)."""
    known = settings_variables(sections)
    from_file, problems = read_environment_file(path)

    def taken(name: str) -> bool:
        return known.knows(name) or is_transport(name)

    problems += [f"{name}: not a setting, not used by the fleet view" for name in from_file if not taken(name)]
    environ = {name: value for name, value in root_environ.items()
               if not known.is_settings(name) and not is_transport(name)}
    environ.update({name: value for name, value in from_file.items() if taken(name)})
    overrides: list[str] = []
    dropped: list[str] = [name for name, value in root_environ.items()
                          if is_transport(name) and from_file.get(name) != value]
    for name, value in root_environ.items():
        if not known.is_settings(name):
            continue
        if known.per_user(name) or not known.knows(name) or name.upper() in known.sections:
            dropped.append(name)
            continue
        if from_file.get(name) != value:
            overrides.append(name)
        environ[name] = value
    return UnitEnviron(environ, sorted(overrides), sorted(dropped), problems)


def enter_unit_environ(environ: Mapping[str, str]) -> None:
    """In a forked child running as the user: make ``environ`` (:attr:`UnitEnviron.environ`) its
    whole process environment. Not only the settings' mapping: pydantic reads ``CLAUDE_AUTH_SYNC_*``
    and requests reads the proxy and CA-bundle variables straight from ``os.environ``, so nothing
    of root's shell may be left there. Never call it in the parent (root's own process)."""
    os.environ.clear()
    os.environ.update(environ)
