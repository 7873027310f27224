"""Which OS accounts root may provision: regular login accounts, one roster name per uid.

:func:`refusals` guarantees that an account is refused (with a one-line reason) when

* its uid is outside ``/etc/login.defs``' ``UID_MIN..UID_MAX`` (system accounts, root, and the
  ``nobody``/overflow uid 65534 on a default system);
* its uid is the kernel's overflow uid (``/proc/sys/kernel/overflowuid``, 65534) even if
  ``UID_MAX`` was raised above it;
* another roster name resolves to the same uid (``useradd -o``): both names are refused, since
  provisioning both flips one token file between two identities on every run;
* the password database names the uid differently from the roster (``getpwuid(uid).pw_name`` is
  not the roster name: an alias line, SSSD's ``case_sensitive = Preserving`` giving ``John.Doe``
  for ``john.doe``, or SSSD's fully-qualified names): the agent runs as the uid and calls itself
  by that name, so its Vault path and policy would not be the ones provisioned for the roster name.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["name_of_uid", "uid_range", "overflow_uids", "refusals"]

LOGIN_DEFS = Path("/etc/login.defs")
DEFAULT_UID_MIN = 1000
DEFAULT_UID_MAX = 60000


class HasUid(Protocol):
    @property
    def uid(self) -> int: ...


def _login_defs(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return values
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("UID_MIN", "UID_MAX") and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


def uid_range(path: Path = LOGIN_DEFS) -> tuple[int, int]:
    """``(UID_MIN, UID_MAX)`` of login.defs (1000 and 60000, the shadow defaults, when unset)."""
    values = _login_defs(path)
    return values.get("UID_MIN", DEFAULT_UID_MIN), values.get("UID_MAX", DEFAULT_UID_MAX)


def overflow_uids() -> set[int]:
    """The uids that stand for "unknown user": 65534 and the kernel's configured overflow uid."""
    found = {65534}
    try:
        found.add(int(Path("/proc/sys/kernel/overflowuid").read_text().strip()))
    except (OSError, ValueError):
        pass
    return found


def name_of_uid(uid: int) -> str | None:
    """The name the password database gives ``uid`` (what the agent, running as it, calls itself)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def refusals(accounts: Mapping[str, HasUid], login_defs: Path = LOGIN_DEFS,
             uid_name: Callable[[int], str | None] = name_of_uid) -> dict[str, str]:
    """For each refused roster name, why (one line); names not in the result may be provisioned.
    A name refused for several reasons gets the first: its uid, a shared uid, then its name."""
    why = _uid_refusals(accounts, login_defs)
    for name, reason in (*_shared_uid_refusals(accounts), *_name_refusals(accounts, uid_name)):
        why.setdefault(name, reason)
    return why


def _uid_refusals(accounts: Mapping[str, HasUid], login_defs: Path) -> dict[str, str]:
    low, high = uid_range(login_defs)
    overflow = overflow_uids()
    why: dict[str, str] = {}
    for name, account in accounts.items():
        if account.uid in overflow:
            why[name] = f"uid {account.uid} is the overflow uid (nobody), not a person's account: refusing"
        elif not low <= account.uid <= high:
            why[name] = (f"uid {account.uid} is outside UID_MIN..UID_MAX ({low}..{high} in {login_defs}): "
                         "a system account, refusing")
    return why


def _shared_uid_refusals(accounts: Mapping[str, HasUid]) -> list[tuple[str, str]]:
    by_uid: dict[int, list[str]] = {}
    for name, account in accounts.items():
        by_uid.setdefault(account.uid, []).append(name)
    return [(name, f"uid {uid} also belongs to roster user {', '.join(n for n in names if n != name)}: one roster "
                   "name per uid (remove the alias account or the roster entry)")
            for uid, names in by_uid.items() if len(names) > 1 for name in names]


def _name_refusals(accounts: Mapping[str, HasUid], uid_name: Callable[[int], str | None]) -> list[tuple[str, str]]:
    found = []
    for name, account in accounts.items():
        canonical = uid_name(account.uid)
        if canonical is not None and canonical != name:
            found.append((name, f"the password database names uid {account.uid} {canonical!r}, not {name!r} (an "
                                "alias, SSSD case_sensitive = Preserving or fully-qualified names): the agent runs "
                                f"under {canonical!r}; put that name in the roster or fix the directory's name format"))
    return found
