"""Which OS accounts root may provision: regular login accounts, one roster name per uid.

:func:`refusals` guarantees that an account is refused (with a one-line reason) when

* its uid is outside ``/etc/login.defs``' ``UID_MIN..UID_MAX`` (system accounts, root, and the
  ``nobody``/overflow uid 65534 on a default system);
* its uid is the kernel's overflow uid (``/proc/sys/kernel/overflowuid``, 65534) even if
  ``UID_MAX`` was raised above it;
* another roster name resolves to the same uid (``useradd -o``): both names are refused, since
  provisioning both flips one token file between two identities on every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["uid_range", "overflow_uids", "refusals"]

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


def refusals(accounts: Mapping[str, HasUid], login_defs: Path = LOGIN_DEFS) -> dict[str, str]:
    """For each refused roster name, why (one line); names not in the result may be provisioned."""
    low, high = uid_range(login_defs)
    overflow = overflow_uids()
    why: dict[str, str] = {}
    by_uid: dict[int, list[str]] = {}
    for name, account in accounts.items():
        by_uid.setdefault(account.uid, []).append(name)
        if account.uid in overflow:
            why[name] = f"uid {account.uid} is the overflow uid (nobody), not a person's account: refusing"
        elif not low <= account.uid <= high:
            why[name] = (f"uid {account.uid} is outside UID_MIN..UID_MAX ({low}..{high} in {login_defs}): "
                         "a system account, refusing")
    for uid, names in by_uid.items():
        if len(names) > 1:
            for name in names:
                others = ", ".join(n for n in names if n != name)
                why.setdefault(name, f"uid {uid} also belongs to roster user {others}: one roster name per uid "
                                     "(remove the alias account or the roster entry)")
    return why
