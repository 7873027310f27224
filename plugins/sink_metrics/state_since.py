"""How long the ``metrics`` sink's user has been in a state, for alerts that need a duration.

The textfile is rewritten on every run, so a start time can only be carried over from the file
itself (like the counters of :mod:`.counters`). Families (all labelled ``user``):

``claude_auth_sync_last_status_change_timestamp_seconds``          Unix time of the first run of the
                                                                    current streak of one status word
                                                                    (``WARN for N days``, mass FAIL)
``claude_auth_sync_awaiting_first_login_since_timestamp_seconds``  Unix time since which the agent waits
                                                                    for the user's first login (event
                                                                    detail ``awaiting_first_login_since``);
                                                                    present only in that state
``claude_auth_sync_vault_token_expiry_timestamp_seconds``          Unix time at which the Vault token
                                                                    expires unless renewed: the run's time
                                                                    plus ``store_ttl_s``; a run that did
                                                                    not renew carries the previous value

Guarantees: a previous value is used only when it is a finite positive number not after this run
(``status_change``) or finite and positive (``vault expiry``); anything else in a previous file
(missing, damaged, hostile) starts the streak at this run or leaves the expiry out. A previous
file from before the streak metric existed starts the streak at that file's last run, when it had
the same status word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from claude_auth_sync.model import StatusEvent

__all__ = ["STATE_HELP", "PreviousState", "previous_state", "previous_value", "state_families"]

STATE_HELP = {
    "last_status_change_timestamp_seconds":
        "Unix time of the first run of the current streak of the same status word (carried over from the previous textfile).",
    "awaiting_first_login_since_timestamp_seconds":
        "Unix time since which the agent waits for the user's first login; present only while the user never logged in.",
    "vault_token_expiry_timestamp_seconds":
        "Unix time at which the user's Vault token expires unless renewed, as of the last run that renewed it.",
}
_STATUS = re.compile(r'^claude_auth_sync_last_status\{[^}\n]*\bstatus="(OK|WARN|FAIL)"[^}\n]*\}[ \t]+1[ \t]*$', re.MULTILINE)


def previous_value(text: str, short: str) -> float | None:
    """The value of the one-line sample ``claude_auth_sync_<short>`` in a previous textfile: a finite
    number above 0, else None (absent, not a number, NaN, infinite, 0 or negative)."""
    match = re.search(rf"^claude_auth_sync_{short}(?:\{{[^}}\n]*\}})?[ \t]+(\S+)[ \t]*$", text, re.MULTILINE)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class PreviousState:
    """What a previous textfile says; None where it says nothing usable."""

    status: str | None = None
    status_since_s: float | None = None
    last_run_s: float | None = None
    vault_expiry_s: float | None = None


def previous_state(text: str | None) -> PreviousState:
    if not text:
        return PreviousState()
    statuses = _STATUS.findall(text)
    return PreviousState(
        status=statuses[0] if len(statuses) == 1 else None,
        status_since_s=previous_value(text, "last_status_change_timestamp_seconds"),
        last_run_s=previous_value(text, "last_run_timestamp_seconds"),
        vault_expiry_s=previous_value(text, "vault_token_expiry_timestamp_seconds"),
    )


def _number(details: Mapping[str, object], key: str) -> float | None:
    value = details.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def state_families(event: StatusEvent, previous: PreviousState, user_label: str, run_s: float
                   ) -> list[tuple[str, list[tuple[str, float]]]]:
    """``[(short name, [(labels, value)])]`` for the families above, after ``event`` (at ``run_s``)."""
    since = run_s
    if previous.status == str(event.status):
        carried = previous.status_since_s or previous.last_run_s
        if carried is not None and carried <= run_s:
            since = carried
    families = [("last_status_change_timestamp_seconds", [(user_label, since)])]
    awaiting = _number(event.details, "awaiting_first_login_since")
    if awaiting is not None and awaiting <= run_s:
        families.append(("awaiting_first_login_since_timestamp_seconds", [(user_label, awaiting)]))
    ttl = _number(event.details, "store_ttl_s")
    expiry = run_s + ttl if ttl is not None else previous.vault_expiry_s
    if expiry is not None:
        families.append(("vault_token_expiry_timestamp_seconds", [(user_label, expiry)]))
    return families
