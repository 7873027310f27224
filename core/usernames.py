"""The OS user names claude-auth-sync accepts: one strict pattern for every place a name goes.

A roster user's name becomes a Vault KV path and a policy name (the Vault backend), a systemd
instance name (``claude-auth-sync@<user>.service/.timer/.path``, :mod:`claude_auth_sync.admin.timers`),
the subject the polkit rule compares, and a metrics label. All of them check it here first.

Accepted (:data:`USERNAME_PATTERN`): lowercase POSIX names and the dotted names SSSD/AD
directories give, e.g. ``alice``, ``john.doe``, ``j_doe-2``: 1-32 characters, first a lowercase
letter or ``_``, then lowercase letters, digits, ``_``, ``-`` and single dots between them.

Guaranteed refused, each with a reason of its own (:func:`username_problem`): ``/``, ``..``, a
leading dot or dash, a trailing dot, globs (``*?[]``), spaces, quotes, control characters and
newlines (also a trailing one: the pattern is anchored with ``\\A``/``\\Z``), anything outside
ASCII (look-alike letters such as Cyrillic ``о``), more than 32 characters, uppercase (Vault
stores policy names lowercased, so ``John`` and ``john`` would share one policy), all-digit names
(systemd reads ``User=1234`` as a uid) and fully-qualified ``name@domain`` names
(:data:`QUALIFIED_REASON`).

Why no escaping is needed for systemd (observed with systemd 252, tests/integration/
test_units_directory_names.py): every accepted character is valid verbatim in a unit name, the
instance is everything between the first ``@`` and the suffix (``claude-auth-sync@john.doe.service``
has the instance ``john.doe``), and ``User=%i`` passes it through unchanged. ``%I`` would not:
it undoes systemd's escaping, which maps ``-`` to ``/`` (``j_doe-2`` becomes ``j_doe/2``). And
``systemd-escape`` must not be applied to a name: it writes ``-`` as ``\\x2d`` and ``@`` as
``\\x40``, which ``%i`` keeps literally (the unit then fails with 217/USER).

``name@domain`` is refused by decision, not because systemd cannot carry it (systemd 252 takes a
raw ``@`` in an instance: ``%i`` is ``john.doe@corp.example``): the two spellings an
administrator may type (raw, or systemd-escape's ``\\x40``) would name two units of which only
one works, the per-host policy names (``claude-auth-sync-<user>@<host>``) rely on ``@`` never
being in a user name, and SSSD gives the short name by default.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ["QUALIFIED_REASON", "USERNAME_PATTERN", "USERNAME_RULE", "check_username", "username_problem"]

USERNAME_PATTERN = re.compile(r"\A(?=[a-z0-9_.-]{1,32}\Z)[a-z_][a-z0-9_-]*(?:\.[a-z0-9_-]+)*\Z")
USERNAME_RULE = ("1-32 characters: lowercase letters, digits, '_', '-' and single dots between them, "
                 "starting with a letter or '_'")
QUALIFIED_REASON = ("fully-qualified names (name@domain) are not supported: the name becomes a Vault path, a "
                    "policy name ('@' separates user and host in per-host policies) and a systemd instance name "
                    "(systemd-escape writes '@' as '\\x40', which User=%i does not undo); use the short login "
                    "name (SSSD: use_fully_qualified_names = False, its default)")


def username_problem(user: str) -> str | None:
    """Why ``user`` may not go into a path, a policy or a unit name (one line), or None if it may."""
    if USERNAME_PATTERN.fullmatch(user):
        return None
    if "@" in user:
        return QUALIFIED_REASON
    if not user.isascii() or not user.isprintable():
        return f"only printable ASCII is allowed ({USERNAME_RULE})"
    if user != user.lower() and USERNAME_PATTERN.fullmatch(user.lower()):
        return ("uppercase letters are not allowed: Vault stores policy names lowercased (SSSD: "
                "case_sensitive = false gives lowercase names)")
    if user.isdigit():
        return "an all-digit name would be read as a uid (systemd's User=)"
    for found, what in _SHAPES:
        if found(user):
            return f"{what} ({USERNAME_RULE})"
    return f"allowed: {USERNAME_RULE}"


_SHAPES = (
    (lambda u: not u, "empty"),
    (lambda u: len(u) > 32, "longer than 32 characters"),
    (lambda u: "/" in u, "contains '/'"),
    (lambda u: ".." in u, "contains '..'"),
    (lambda u: u[0] in ".-", "starts with a dot or a dash"),
    (lambda u: u.endswith("."), "ends with a dot"),
)


def check_username(user: str) -> str:
    """``user`` if it matches :data:`USERNAME_PATTERN`; else ConfigurationError (exit 78, reason
    ``invalid_user_name``) saying why."""
    problem = username_problem(user)
    if problem is not None:
        raise ConfigurationError(f"{user!r} is not a valid user name: {problem}", reason="invalid_user_name")
    return user
