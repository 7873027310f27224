"""Wiring: plugins -> settings -> the selected backend, probe, restorer and sinks -> one cycle.

``run_cycle`` is what ``claude-auth-sync run`` does. Sinks are called one by one in isolation: a
failing sink is reported on stderr and never stops the others or changes the exit code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .cycle import HealthCycle, failure_event
from .errors import CasError
from .fileio import ensure_private_dir, flock_until, open_regular
from .fingerprint import oauth_fingerprints
from .last_check import LastCheckFile
from .hookspecs import PluginContext
from .model import ExitCode, Backend, Restorer, Probe, Sink, StatusEvent, UserIdentity
from .plugin_manager import Plugins, get_plugin_manager
from .settings import Settings, load_settings

__all__ = ["RunInProgress", "Runtime", "build_runtime", "changed_since", "emit_to_sinks", "run_cycle", "run_cycles",
           "run_lock", "load_runtime_settings"]

RUN_LOCK_NAME = "run.lock"
LAST_CHECK_NAME = "last-check.json"


@dataclass
class Runtime:
    plugins: Plugins
    settings: Settings
    user: UserIdentity
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def context(self) -> PluginContext:
        """What every factory gets: settings and user, never the process environment."""
        return PluginContext(settings=self.settings, user=self.user)

    def backend(self) -> Backend:
        return self.plugins.build("backend", self.settings.backend, self.context)

    def probe(self) -> Probe:
        """Only the probe sees the environment (it hands an allow-listed part to ``claude``)."""
        return self.plugins.build("probe", self.settings.probe,
                                  PluginContext(settings=self.settings, user=self.user, environ=self.environ))

    def restorer(self) -> Restorer:
        return self.plugins.build("restorer", self.settings.restorer, self.context)

    def validate_selection(self) -> None:
        """Every configured plugin name exists; otherwise PluginError naming the available ones."""
        self.plugins.select(self.plugins.backends(), self.settings.backend, "backend")
        self.plugins.select(self.plugins.probes(), self.settings.probe, "probe")
        self.plugins.select(self.plugins.restorers(), self.settings.restorer, "restorer")
        available = self.plugins.sinks()
        for name in self.settings.sinks:
            self.plugins.select(available, name, "sink")

    def sinks_or_report(self, stderr: TextIO | None = None) -> list[tuple[str, Sink]]:
        """Build every configured sink; one that fails to build is reported and left out."""
        built: list[tuple[str, Sink]] = []
        for name in self.settings.sinks:
            try:
                built.append((name, self.plugins.build("sink", name, self.context)))
            except Exception as err:
                print(f"claude-auth-sync: sink {name!r} unavailable: {err}", file=stderr or sys.stderr)
        return built


def load_runtime_settings(plugins: Plugins, user: UserIdentity, overrides: Mapping[str, Any] | None = None) -> Settings:
    return load_settings(plugins.settings_sections(), user, overrides=overrides)


def build_runtime(
    overrides: Mapping[str, Any] | None = None,
    *,
    plugins: Plugins | None = None,
    user: UserIdentity | None = None,
) -> Runtime:
    """Load plugins and settings. Raises ConfigurationError / PluginError (exit 78)."""
    plugins = plugins or get_plugin_manager()
    user = user or UserIdentity.current()
    settings = load_runtime_settings(plugins, user, overrides)
    runtime = Runtime(plugins=plugins, settings=settings, user=user)
    runtime.validate_selection()
    return runtime


def emit_to_sinks(sinks: list[tuple[str, Sink]], event: StatusEvent, stderr: TextIO | None = None) -> list[str]:
    """Hand ``event`` to every sink; return the names of those that failed (reported on stderr)."""
    failed: list[str] = []
    for name, sink in sinks:
        try:
            sink.emit(event)
        except Exception as err:  # isolate: one broken sink never hides the others
            failed.append(name)
            print(f"claude-auth-sync: sink {name!r} failed: {type(err).__name__}: {err}", file=stderr or sys.stderr)
    return failed


class RunInProgress(CasError):
    """Another run of the agent for this user holds the run lock (exit 75: the next run retries)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "another_run_in_progress"


@contextmanager
def run_lock(state_dir: Path, wait_s: float, *, claude_config_dir: Path | None = None) -> Iterator[None]:
    """Serialise runs of one user: an exclusive ``flock`` on ``<state_dir>/run.lock`` (0600) and,
    when it exists, on the Claude config directory itself (so two runs with different state
    directories, e.g. the unit's and a shell's with its own ``XDG_STATE_HOME``, still never work
    on one credentials file at once). Claude Code takes no flock there: it is never blocked.

    Waits up to ``wait_s`` seconds in all, then raises :class:`RunInProgress`. A lock belongs to
    its open file description, so it is released when the process ends, however it ends.
    """
    ensure_private_dir(state_dir)
    deadline = time.monotonic() + wait_s
    fds = [open_regular(state_dir / RUN_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)]
    try:
        _flock_until(fds[0], deadline, state_dir / RUN_LOCK_NAME, wait_s)
        if claude_config_dir is not None and claude_config_dir.is_dir():
            fds.append(os.open(claude_config_dir.resolve(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            _flock_until(fds[1], deadline, claude_config_dir, wait_s)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _flock_until(fd: int, deadline: float, shown: Path, wait_s: float) -> None:
    if not flock_until(fd, deadline):
        raise RunInProgress(
            f"another claude-auth-sync run for this user is still going (waited {wait_s:.0f}s for {shown})",
            remedy="nothing: that run reports its own result; this one ends WARN",
        )


ON_CHANGE_LOCK_WAIT_S = 300.0
"""A path-unit run waits this long for another run of the user (two probes of up to 120 s each):
its trigger would be lost if it gave up, since systemd does not watch while the service runs."""

MAX_RERUNS_ON_CHANGE = 2
"""A path-unit run whose file changed again meanwhile (systemd does not watch while the service
runs) runs the cycle again, at most this many times: changes during one run cost one more."""


def run_cycles(runtime: Runtime, *, on_change: bool,
               emit: Callable[[StatusEvent], list[str]]) -> tuple[StatusEvent, list[str]]:
    """One cycle, handed to ``emit`` (the sinks); for a path-unit run, again while the file changed
    after the cycle's last look (at most :data:`MAX_RERUNS_ON_CHANGE` more). Returns the last event
    and the sinks that failed on it. A bug inside a cycle becomes a FAIL event without its text."""
    for attempt in range(1 + (MAX_RERUNS_ON_CHANGE if on_change else 0)):
        try:
            event = run_cycle(runtime, on_change=on_change)
        except Exception as err:  # a bug: report FAIL without the exception text (it could hold data)
            event = failure_event(runtime.user.name,
                                  CasError(f"internal error: {type(err).__name__}", reason="internal_error"))
        failed = emit(event)
        ran = "total" in event.timings_ms  # a cycle ran (not a lock time-out or a plugin that would not build)
        if not on_change or not ran or not changed_since(runtime, event):
            break
    return event, failed


class Deferred:
    """A component built on first use: a run that ends early (an unchanged login seen by the path
    unit, a logged-out user) never imports hvac or prepares a probe. A factory's error (a
    PluginError, a refused token file) surfaces at that first use, inside the cycle, as its verdict."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._built: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._built is None:
            self._built = self._build()
        return getattr(self._built, name)


def changed_since(runtime: Runtime, event: StatusEvent) -> bool:
    """The local login is no longer the one ``event`` ended with (its token fingerprints): the file
    changed while the cycle ran, after its last read. Unreadable now: False (nothing to chase)."""
    try:
        login = runtime.restorer().read()
    except CasError:
        return False
    now = {key: value for key, value in oauth_fingerprints(login.oauth).items() if value}
    return now != {key: value for key, value in event.fingerprints.items() if value}


def run_cycle(runtime: Runtime, *, on_change: bool = False) -> StatusEvent:
    """Build the selected plugins and run one health cycle, one run per user at a time.

    ``on_change``: the run was started by a change of the credentials file (the path unit); a login
    verified within ``unchanged_window`` that did not change then ends at once. Timer and manual
    runs always probe. Never raises a CasError: building a plugin, the run lock and the cycle all
    end in an event.
    """
    try:
        backend: Backend = Deferred(runtime.backend)  # type: ignore[assignment]
        probe: Probe = Deferred(runtime.probe)  # type: ignore[assignment]
        restorer = runtime.restorer()
        assert runtime.settings.state_dir is not None
        wait = max(runtime.settings.run_lock_wait, ON_CHANGE_LOCK_WAIT_S) if on_change else runtime.settings.run_lock_wait
        with run_lock(runtime.settings.state_dir, wait, claude_config_dir=runtime.settings.claude_config_dir):
            return HealthCycle(
                user=runtime.user.name, backend=backend, probe=probe, restorer=restorer,
                last_check=LastCheckFile(runtime.settings.state_dir / LAST_CHECK_NAME),
                unchanged_window_s=runtime.settings.unchanged_window if on_change else 0.0,
            ).run()
    except CasError as err:
        return failure_event(runtime.user.name, err)
