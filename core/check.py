"""``claude-auth-sync check``: a monitoring plugin (Nagios, Icinga, Checkmk, NRPE) on ``nagiosplugin``.

Reads state only — the credentials file and the private log — and never makes an inference or a
network call. Prints ``CLAUDE-AUTH-SYNC <STATE> - <summary> | <perfdata>`` and exits 0 OK,
1 WARNING, 2 CRITICAL, 3 UNKNOWN, as the Monitoring Plugins development guidelines say.

Guarantees:

* every metric (seconds: ``access_ttl``, ``refresh_ttl``, ``vault_ttl``, ``last_ok_age``,
  ``last_run_age``) is judged by a ``nagiosplugin.ScalarContext`` against Monitoring Plugins ranges
  (``nagiosplugin.Range``: ``10`` = 0..10, ``10:`` = at least 10, ``~:10`` = at most 10,
  ``10:20``, ``@10:20`` = alert inside); its perfdata carries exactly the ranges applied, so a
  monitoring system re-evaluating the perfdata reaches the same state;
* ``-w/-c METRIC=RANGE`` replace the default of that metric only (:data:`DEFAULT_THRESHOLDS`);
  an empty range switches that threshold off; a bad one is UNKNOWN (exit 3) naming it;
* findings that are not numbers (a FAIL or WARN last run, a broken login, no run recorded) are
  results of their own; the state is the worst result, CRITICAL ranking above UNKNOWN (a problem
  that needs a person is never hidden behind one that could not be measured);
* text that came from the log (a ``reason=``) is inert: no control character, no ``|``, bounded;
* ``-t`` is a real deadline: the reading runs in a thread the plugin stops waiting for, so even a
  read stuck in the kernel (a hung NFS or FUSE home, where ``SIGALRM``-based timeouts such as
  nagiosplugin's never fire) ends in ``UNKNOWN`` with a message after ``-t`` seconds.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nagiosplugin
from nagiosplugin.output import Output

from .cycle import refresh_expiry_ms
from .errors import CasError
from .fileio import read_tail
from .model import REFRESH_WARN_S, STORE_TTL_WARN_S, TIMER_PERIOD_S, LoginState
from .oauth import MAX_TIMESTAMP_MS
from .status_line import LogRecord, parse_log_line, rotated_log
from .terminal_text import safe_text

__all__ = ["DEFAULT_THRESHOLDS", "DEFAULT_TIMEOUT_S", "Finding", "Measured", "LogRecord", "UsageError", "build_check",
           "command_check", "measure", "measure_runtime", "parse_log_line", "parse_thresholds", "read_log", "render",
           "run_within", "unknown_line"]

NAME = "claude-auth-sync"
DEFAULT_TIMEOUT_S = 10
LAST_OK_WARN_S = 2 * TIMER_PERIOD_S  # two timer runs without an OK
LAST_OK_CRIT_S = 4 * TIMER_PERIOD_S
DEFAULT_THRESHOLDS: Mapping[str, tuple[str, str]] = {
    "access_ttl": ("", ""),  # Claude Code refreshes it by itself: measured, not judged
    "refresh_ttl": (f"{REFRESH_WARN_S}:", "0:"),  # low is bad
    "vault_ttl": (f"{STORE_TTL_WARN_S}:", "0:"),
    "last_ok_age": (str(LAST_OK_WARN_S), str(LAST_OK_CRIT_S)),  # high is bad
    "last_run_age": ("", str(2 * TIMER_PERIOD_S)),  # two timer periods without any run
}
_STATES = (nagiosplugin.Ok, nagiosplugin.Warn, nagiosplugin.Critical, nagiosplugin.Unknown)
_RANK = {0: 0, 1: 1, 3: 2, 2: 3}  # OK < WARNING < UNKNOWN < CRITICAL
_TTL_DIGITS = re.compile(r"[0-9]{1,12}")
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
T = TypeVar("T")


class UsageError(ValueError):
    """A bad -w/-c/-t value: the plugin ends UNKNOWN (3) with this message."""


def _inert(text: object, max_len: int = 200) -> str:
    """Text from a user's file made safe for a plugin line: no control character, no ``|``."""
    return safe_text(text, max_len).replace("|", "/")


def read_log(path: Path, limit: int = 200) -> list[LogRecord]:
    """The last ``limit`` well-formed records of the private log (at most its last 64 KiB read, and
    of ``sync.log.1`` after a rotation; never through a symlink, never blocking on a FIFO: those
    raise a ConfigurationError)."""
    data = read_tail(path)
    if data is None:
        return []
    if data.count(b"\n") < limit:  # just rotated: the earlier lines are in sync.log.1
        data = (read_tail(rotated_log(path)) or b"") + data
    lines = data.decode("utf-8", errors="replace").splitlines()[-limit:]
    return [r for r in (parse_log_line(line) for line in lines) if r is not None]


@dataclass(frozen=True)
class Finding:
    """A state that is not a number: ``state`` 0..3 and an inert, bounded ``text``."""

    state: int
    text: str


@dataclass(frozen=True)
class Measured:
    """What ``check`` measured for one user: metrics in whole seconds and findings. JSON-able (it
    crosses the pipe from the privilege-dropped child of ``check --all``) and token-free."""

    user: str
    metrics: dict[str, int] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "metrics": self.metrics, "findings": [[f.state, f.text] for f in self.findings]}

    @classmethod
    def from_json(cls, data: Any) -> Measured:
        """Parsed back, every field checked (unknown metrics, states and shapes dropped, texts made
        inert); a malformed answer is an UNKNOWN finding, never an exception."""
        if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict) \
                or not isinstance(data.get("findings", []), list):
            return cls(str(data.get("user") if isinstance(data, dict) else "?"), {},
                       (Finding(UNKNOWN, "the state read as the user came back malformed"),))
        metrics = {k: v for k, v in data.get("metrics", {}).items()
                   if k in DEFAULT_THRESHOLDS and isinstance(v, int) and not isinstance(v, bool)}
        pairs = [item for item in data.get("findings", []) if isinstance(item, list) and len(item) == 2]
        findings = tuple(Finding(s, _inert(t)) for s, t in pairs
                         if s in (OK, WARNING, CRITICAL, UNKNOWN) and not isinstance(s, bool) and isinstance(t, str))
        return cls(str(data.get("user")), metrics, findings)


def measure(user: str, records: list[LogRecord], login_state: LoginState | None, oauth: Any, now: float) -> Measured:
    """The metrics and findings of one user from their log records and local login."""
    metrics: dict[str, int] = {}
    findings: list[Finding] = []
    if isinstance(oauth, dict):
        expires = oauth.get("expiresAt")
        if isinstance(expires, int) and not isinstance(expires, bool) and 0 < expires <= MAX_TIMESTAMP_MS:
            metrics["access_ttl"] = int(expires / 1000 - now)
    refresh_ms = refresh_expiry_ms(oauth)
    if refresh_ms is not None:
        metrics["refresh_ttl"] = int(refresh_ms / 1000 - now)
    if login_state in (LoginState.MISSING, LoginState.NO_OAUTH):
        findings.append(Finding(WARNING, "not logged in (no Claude Code login to keep alive)"))
    elif login_state in (LoginState.NOT_JSON, LoginState.INVALID, LoginState.BLANKED):
        findings.append(Finding(CRITICAL, f"local login {login_state}"))
    if not records:
        findings.append(Finding(UNKNOWN, "no run recorded in the private log"))
        return Measured(user, metrics, tuple(findings))
    last = records[-1]
    # Ages are never negative: a line stamped in the future (a clock set back) counts as "just now".
    metrics["last_run_age"] = max(0, int(now - last.when.timestamp()))
    ttl = last.fields.get("store_ttl_s") or ""
    if _TTL_DIGITS.fullmatch(ttl):
        metrics["vault_ttl"] = int(ttl) - metrics["last_run_age"]
    oks = [r for r in records if r.status == "OK"]
    if oks:
        metrics["last_ok_age"] = max(0, int(now - oks[-1].when.timestamp()))
    if last.status in ("FAIL", "WARN"):  # any WARN reason is a WARNING (awaiting_first_login included)
        reason = _inert(last.fields.get("reason") or "?", 80)
        findings.append(Finding(CRITICAL if last.status == "FAIL" else WARNING, f"last run {last.status} ({reason})"))
    return Measured(user, metrics, tuple(findings))


def measure_runtime(runtime: Any, now: float) -> Measured:
    """Read the login (through the configured restorer) and the log of ``runtime``'s user, then
    :func:`measure`. An error reading either is an UNKNOWN finding naming it, never an exception."""
    from .settings import ResolvedPaths

    user = runtime.user.name
    try:
        login = runtime.restorer().read()
        records = read_log(ResolvedPaths.of(runtime.settings).log_file)
    except CasError as err:
        return Measured(user, {}, (Finding(UNKNOWN, _inert(err.message)),))
    except OSError as err:
        return Measured(user, {}, (Finding(UNKNOWN, f"cannot read {_inert(err.filename, 120)}: "
                                                    f"{os.strerror(err.errno or 0)}"),))
    return measure(user, records, login.state, login.oauth, now)


def parse_thresholds(warning: Iterable[str] = (), critical: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """The thresholds in force: :data:`DEFAULT_THRESHOLDS` with ``METRIC=RANGE`` items replacing a
    metric's warning (``warning``) or critical (``critical``) range. Items may also be given
    comma-separated. Raises :class:`UsageError` naming a bad item."""
    table = {name: list(pair) for name, pair in DEFAULT_THRESHOLDS.items()}
    for index, items in ((0, warning), (1, critical)):
        for item in (part.strip() for arg in items for part in arg.split(",")):
            name, sep, spec = item.partition("=")
            option = "-w" if index == 0 else "-c"
            if not sep or name not in table:
                raise UsageError(f"{option} {safe_text(item, 60)!r}: expected METRIC=RANGE with METRIC one of "
                                 f"{', '.join(table)} (e.g. {option} last_ok_age=43200)")
            try:
                nagiosplugin.Range(spec)
            except ValueError:
                raise UsageError(f"{option} {safe_text(item, 60)!r}: {safe_text(spec, 40)!r} is not a Monitoring "
                                 "Plugins range ([@][START:][END], START may be ~)") from None
            table[name][index] = spec
    return {name: (pair[0], pair[1]) for name, pair in table.items()}


def _duration(seconds: int) -> str:
    seconds = abs(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def describe(metric: str, value: int) -> str:
    """What a metric's value means, for the status line."""
    if metric.endswith("_ttl"):
        what = {"access_ttl": "access token", "refresh_ttl": "refresh token", "vault_ttl": "Vault token"}[metric]
        if value == 0:
            return f"{what} expires now"
        return f"{what} expired {_duration(value)} ago" if value < 0 else f"{what} expires in {_duration(value)}"
    if metric == "last_ok_age":
        return f"no OK for {_duration(value)}"
    return f"no run for {_duration(value)} (timer period {TIMER_PERIOD_S // 3600}h)"


class _MetricContext(nagiosplugin.ScalarContext):
    """A ScalarContext whose result says what the value means (the range rule is nagiosplugin's).

    An empty threshold is "none": judged as ``~:`` (never alerts; nagiosplugin would read ``""``
    as ``0:`` and alert on a negative TTL) and printed empty in the perfdata."""

    def __init__(self, name: str, warning: str, critical: str) -> None:
        super().__init__(name, warning or "~:", critical or "~:")
        self.shown = (warning, critical)

    def performance(self, metric: nagiosplugin.Metric, resource: Any) -> nagiosplugin.Performance:
        return nagiosplugin.Performance(metric.name, metric.value, metric.uom, *self.shown)

    def evaluate(self, metric: nagiosplugin.Metric, resource: Any) -> nagiosplugin.Result:
        result = super().evaluate(metric, resource)
        return nagiosplugin.Result(result.state, describe(self.name, metric.value), metric)

    def describe(self, metric: nagiosplugin.Metric) -> None:
        return None


class _FindingContext(nagiosplugin.Context):
    """A finding's state as it was measured; no perfdata."""

    def evaluate(self, metric: nagiosplugin.Metric, resource: Any) -> nagiosplugin.Result:
        state, text = metric.value
        return nagiosplugin.Result(_STATES[state], text, metric)


class _UserState(nagiosplugin.Resource):
    """One user's measured state as metrics; labels prefixed ``<user>_`` with ``check --all``."""

    def __init__(self, measured: Measured, prefix: str) -> None:
        self.measured = measured
        self.prefix = prefix

    @property
    def name(self) -> str:
        return NAME

    def probe(self) -> Iterator[nagiosplugin.Metric]:
        for metric, value in self.measured.metrics.items():
            yield nagiosplugin.Metric(self.prefix + metric, value, "s", context=metric)
        for index, finding in enumerate(self.measured.findings):
            yield nagiosplugin.Metric(f"{self.prefix}finding{index}", (finding.state, finding.text), context="finding")


def _rank(state: Any) -> int:
    return _RANK[int(state)]


class _Results(nagiosplugin.Results):
    """The worst state wins, with CRITICAL above UNKNOWN."""

    @property
    def most_significant_state(self) -> Any:
        return max(self.by_state, key=_rank)


def _user_of(result: nagiosplugin.Result) -> str:
    return result.metric.resource.measured.user


def _problems(results: Iterable[nagiosplugin.Result]) -> list[nagiosplugin.Result]:
    return sorted((r for r in results if r.state != nagiosplugin.Ok), key=lambda r: -_rank(r.state))


class _Summary(nagiosplugin.Summary):
    """One user: ``alice: <problems>``. ``--all``: users named per state, worst first; a state with
    more than :data:`DETAILED_USERS` users lists names only, at most :data:`NAMED_USERS` (``-v``
    lists every problem), so the status line stays short for NRPE."""

    def __init__(self, fleet: bool) -> None:
        self.fleet = fleet

    def ok(self, results: nagiosplugin.Results) -> str:
        users = list(dict.fromkeys(_user_of(r) for r in results))
        return _group("ok", [(u, "") for u in users]) if self.fleet else f"{users[0]}: last run OK"

    def problem(self, results: nagiosplugin.Results) -> str:
        problems = _problems(results)
        if not self.fleet:
            return f"{_user_of(problems[0])}: " + "; ".join(dict.fromkeys(str(r.hint) for r in problems))
        worst: dict[str, list[nagiosplugin.Result]] = {}
        for result in problems:  # worst first: a user's list holds the results of their worst state
            mine = worst.setdefault(_user_of(result), [result])
            if mine[0] is not result and mine[0].state == result.state:
                mine.append(result)
        groups: list[str] = []
        for state in sorted({r[0].state for r in worst.values()}, key=lambda s: -_rank(s)):
            users = [(user, "; ".join(str(x.hint) for x in r)) for user, r in worst.items() if r[0].state == state]
            groups.append(_group(state.text, users))
        healthy = [(u, "") for u in dict.fromkeys(_user_of(r) for r in results) if u not in worst]
        return "; ".join(groups + ([_group("ok", healthy)] if healthy else []))

    def verbose(self, results: nagiosplugin.Results) -> list[str]:
        return [f"{r.state.text.upper()} {_user_of(r)}: {r.hint}" for r in _problems(results)]

    def empty(self) -> str:
        return "no user to check"


DETAILED_USERS = 5
NAMED_USERS = 20


def _group(state: str, users: list[tuple[str, str]]) -> str:
    """``warning: bob (why), carol (why)``; past DETAILED_USERS names only, past NAMED_USERS a count."""
    if len(users) <= DETAILED_USERS:
        return f"{state}: " + ", ".join(f"{u} ({why})" if why else u for u, why in users)
    names = ", ".join(u for u, _ in users[:NAMED_USERS])
    more = f" and {len(users) - NAMED_USERS} more" if len(users) > NAMED_USERS else ""
    return f"{state}: {len(users)} users: {names}{more}"


def build_check(measured: Sequence[Measured], thresholds: Mapping[str, tuple[str, str]], *, fleet: bool = False,
                ) -> nagiosplugin.Check:
    """A nagiosplugin Check over ``measured`` (one user, or every roster user with ``fleet``), run."""
    contexts = [_MetricContext(name, warn, crit) for name, (warn, crit) in thresholds.items()]
    check = nagiosplugin.Check(*contexts, _FindingContext("finding"), _Summary(fleet), _Results(), name=NAME)
    for item in measured:
        check.add(_UserState(item, f"{item.user}_" if fleet else ""))
    check()
    return check


def render(check: nagiosplugin.Check, verbose: int = 0) -> str:
    """The plugin output (nagiosplugin's format: status line, perfdata after ``|``; with ``-v``
    the problems one a line and the perfdata on lines of their own)."""
    output = Output(logging.StreamHandler(io.StringIO()), verbose=min(verbose, 3))
    output.add(check)
    return str(output)


def unknown_line(message: str) -> str:
    """The one-line UNKNOWN output for a problem that stopped the check."""
    return f"{NAME.upper()} UNKNOWN - {_inert(message, 300)}\n"


def run_within(seconds: float, job: Callable[[], T], what: str) -> T:
    """``job()``, or — when it has not returned after ``seconds`` — the UNKNOWN timeout line and
    exit 3 at once (``os._exit``: a thread stuck in the kernel cannot be joined, only left)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = job()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, name="check-read", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        sys.stdout.write(unknown_line(f"timeout: check aborted after {seconds:g}s ({what} did not finish: "
                                      "a hung file system? raise -t if it is only slow)"))
        sys.stdout.flush()
        os._exit(UNKNOWN)
    if "error" in box:
        raise box["error"]
    return box["value"]


def command_check(overrides: Mapping[str, Any] | None = None, *, warning: Sequence[str] = (),
                  critical: Sequence[str] = (), timeout: float | None = None, verbose: int = 0) -> int:
    """The plugin for the user running it: prints its output, returns 0..3."""
    from .runner import build_runtime

    try:
        thresholds = parse_thresholds(warning, critical)
    except UsageError as err:
        sys.stdout.write(unknown_line(str(err)))
        return UNKNOWN

    def read() -> Measured:
        try:
            runtime = build_runtime(overrides)
        except CasError as err:
            return Measured(_current_user(), {}, (Finding(UNKNOWN, _inert(err.message)),))
        return measure_runtime(runtime, time.time())

    measured = run_within(timeout or DEFAULT_TIMEOUT_S, read, "reading the login and the log")
    check = build_check([measured], thresholds)
    sys.stdout.write(render(check, verbose))
    sys.stdout.flush()
    return int(check.exitcode)


def _current_user() -> str:
    from .model import UserIdentity

    return UserIdentity.current().name
