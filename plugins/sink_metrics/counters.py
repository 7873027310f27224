"""Run and action counters of the ``metrics`` sink, carried over from the previous textfile.

The textfile is rewritten on every run, so a counter's previous value can only come from the
file itself: :func:`previous_counts` reads it, :func:`counter_families` adds this run. Families:

``claude_auth_sync_runs_total{user,status}``     runs per status word (all three always written)
``claude_auth_sync_actions_total{user,action}``  runs per action (none, backup, restore, rollback;
                                                 all four always written)

Writing every label combination, zeros included, lets ``increase()`` see the first run of a kind
(a series that appears at 1 loses its first increment). Guarantees: a previous value that is
missing, not a finite non-negative integer below 2**53, or labelled with an unknown word counts as
0 (the counter restarts, which Prometheus' ``rate``/``increase`` treat as a reset); a previous file
is never trusted for anything but these numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from claude_auth_sync.model import Action, Status, StatusEvent

__all__ = ["COUNTER_HELP", "CounterKey", "counter_families", "previous_counts"]

#: (family short name, label value) -> count, e.g. ``("runs_total", "OK") -> 12``.
CounterKey = tuple[str, str]

COUNTER_HELP = {
    "runs_total": "Runs of claude-auth-sync per status word, carried over from the previous textfile.",
    "actions_total": "Runs of claude-auth-sync per action (none, backup, restore, rollback), carried over.",
}
_LABEL = {"runs_total": "status", "actions_total": "action"}
_WORDS = {"runs_total": [str(s) for s in Status], "actions_total": [str(a) for a in Action]}
_LINE = re.compile(
    r'^claude_auth_sync_(runs_total|actions_total)\{[^}\n]*\b(status|action)="([A-Za-z]+)"[^}\n]*\}[ \t]+(\S+)[ \t]*$',
    re.MULTILINE,
)
_MAX = 2**53


def _count(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value >= _MAX or value != int(value):
        return None
    return int(value)


def previous_counts(text: str | None) -> dict[CounterKey, int]:
    """The counters of a previous textfile; anything unusable is left out (counts as 0)."""
    counts: dict[CounterKey, int] = {}
    for family, label, word, raw in _LINE.findall(text or ""):
        value = _count(raw)
        if label == _LABEL[family] and word in _WORDS[family] and value is not None:
            counts[(family, word)] = value
    return counts


def counter_families(event: StatusEvent, previous: Mapping[CounterKey, int], user_label: str
                     ) -> list[tuple[str, list[tuple[str, float]]]]:
    """``[(short name, [(labels, value), ...]), ...]`` for both counters after ``event``."""
    this_run = {"runs_total": str(event.status), "actions_total": str(event.action)}
    families: list[tuple[str, list[tuple[str, float]]]] = []
    for family, words in _WORDS.items():
        samples = []
        for word in words:
            value = previous.get((family, word), 0) + (1 if this_run[family] == word else 0)
            samples.append((f'{user_label},{_LABEL[family]}="{word}"', value if value < _MAX else 0))
        families.append((family, samples))
    return families
