"""Hook specifications: the four extension points of claude-auth-sync, plus settings.

Every hook is a *provider* hook: it returns small frozen records (a name and a factory) that the
core collects, checks for duplicate names, and selects from by the configured name. The core then
calls the selected objects itself, so one broken sink never hides another and no plugin decides
the cycle's outcome. Plugins return data and never print.

A plugin module or object implements any subset of these hooks with the ``hookimpl`` marker::

    from claude_auth_sync.hookspecs import hookimpl, SinkSpec

    class SlackSink:
        def emit(self, event): ...

    @hookimpl
    def cas_sinks():
        return [SinkSpec(name="slack", factory=lambda ctx: SlackSink())]

and registers it under the entry-point group ``claude_auth_sync`` (the built-ins do the same).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .model import Backend, DiagnosticRow, Restorer, Probe, Sink, UserIdentity  # noqa: F401 - named in string annotations
    from .settings import Settings

__all__ = [
    "PROJECT",
    "hookimpl",
    "PluginContext",
    "SettingsSection",
    "BackendSpec",
    "ProbeSpec",
    "RestorerSpec",
    "SinkSpec",
    "CommandSpec",
    "cas_settings_sections",
    "cas_backends",
    "cas_probes",
    "cas_restorers",
    "cas_sinks",
    "cas_commands",
    "cas_diagnose",
]

PROJECT = "claude_auth_sync"
_hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

T = TypeVar("T")


@dataclass(frozen=True)
class PluginContext:
    """What a factory gets: the resolved settings and the OS user the cycle runs for.

    A plugin reads its own section with ``ctx.settings.section("<name>")``; it never reads the
    environment itself. ``environ`` is empty for every factory but the probe's: the probe gets the
    process environment, captured once by the core, and passes an allow-listed part to ``claude``.
    """

    settings: Settings
    user: UserIdentity
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SettingsSection:
    """A plugin's own settings section.

    :param name: the section name (``vault`` -> ``CLAUDE_AUTH_SYNC_VAULT__ADDR``, ``[vault]`` in TOML).
    :param model: a pydantic ``BaseModel`` with defaults for every field and ``extra="forbid"``.
    :param standard_env: neighbouring tools' variables that feed a field, e.g.
        ``{"addr": "VAULT_ADDR"}``; the ``CLAUDE_AUTH_SYNC_`` variable still wins over them.
    """

    name: str
    model: type[BaseModel]
    standard_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Spec(Generic[T]):
    name: str
    factory: Callable[[PluginContext], T]
    description: str = ""


@dataclass(frozen=True)
class BackendSpec(_Spec["Backend"]):
    """A credential store (backend): selected by ``CLAUDE_AUTH_SYNC_BACKEND``."""


@dataclass(frozen=True)
class ProbeSpec(_Spec["Probe"]):
    """A health probe: selected by ``CLAUDE_AUTH_SYNC_PROBE``."""


@dataclass(frozen=True)
class RestorerSpec(_Spec["Restorer"]):
    """Local credentials access (read, restore, roll back): selected by ``CLAUDE_AUTH_SYNC_RESTORER``."""


@dataclass(frozen=True)
class SinkSpec(_Spec["Sink"]):
    """A status sink: every sink named in ``CLAUDE_AUTH_SYNC_SINKS`` receives every event."""


@dataclass(frozen=True)
class CommandSpec:
    """A ``claude-auth-sync`` subcommand a plugin contributes (the Vault plugin's ``policy``, the
    administrator's ``fleet`` behind ``diagnose --all``).

    :param name: the subcommand name.
    :param help: one line for ``--help``.
    :param add_arguments: adds the command's options to its ``argparse`` parser.
    :param run: runs it with the parsed arguments; returns the exit code; may raise a CasError.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@_hookspec
def cas_settings_sections() -> Sequence[SettingsSection]:
    """Declare the plugin's settings sections.

    Called once, before settings are loaded, so the root settings model can include the
    sections (environment ``CLAUDE_AUTH_SYNC_<SECTION>__<FIELD>``, TOML table ``[<section>]``).

    :returns: a sequence of :class:`SettingsSection`; section names must be unique across plugins.

    Must never: read the environment or files itself, or return a model without defaults.

    Example::

        @hookimpl
        def cas_settings_sections():
            return [SettingsSection("vault", VaultSettings, {"addr": "VAULT_ADDR"})]
    """


@_hookspec
def cas_backends() -> Sequence[BackendSpec]:
    """Offer credential stores (where the ``claudeAiOauth`` object is backed up).

    Called when the core selects the backend named by ``CLAUDE_AUTH_SYNC_BACKEND``; only the
    selected spec's factory is called, once per cycle, with a :class:`PluginContext`.

    :returns: a sequence of :class:`BackendSpec`. The object the factory builds implements
        :class:`claude_auth_sync.model.Backend`: ``renew()``, ``read_latest()`` (only the
        latest version, never an older one), ``write(oauth, expected_version=...)`` (check-and-set)
        and ``describe()``; it raises :class:`~claude_auth_sync.errors.BackendRefused` (exit 78) or
        :class:`~claude_auth_sync.errors.BackendUnavailable` (exit 75).

    Must never: store anything but the OAuth object it is given, put a secret into an exception
    message or ``describe()``, or fall back silently to another store.

    Example::

        @hookimpl
        def cas_backends():
            return [BackendSpec("memory", lambda ctx: MemoryBackend())]
    """


@_hookspec
def cas_probes() -> Sequence[ProbeSpec]:
    """Offer health probes (a real check that the local login works).

    Called when the core selects the probe named by ``CLAUDE_AUTH_SYNC_PROBE``. The cycle calls
    ``run()`` once, and a second time after a restore.

    :returns: a sequence of :class:`ProbeSpec` whose factory builds a
        :class:`claude_auth_sync.model.Probe`; ``run()`` returns a ``ProbeResult`` classified as
        authenticated, auth_failed, unavailable or broken, and never raises for those.

    Must never: modify the credentials file itself, or put response bodies or tokens in the result.

    Example::

        @hookimpl
        def cas_probes():
            return [ProbeSpec("inference", lambda ctx: InferenceProbe(ctx))]
    """


@_hookspec
def cas_restorers() -> Sequence[RestorerSpec]:
    """Offer local-credentials access: how a stored OAuth object is merged into the local login.

    Called when the core selects ``CLAUDE_AUTH_SYNC_RESTORER`` (default ``credentials_file``).
    The object implements :class:`claude_auth_sync.model.Restorer`: ``read()``,
    ``restore(oauth, expected=...)`` returning a snapshot, and ``rollback(snapshot)``.

    :returns: a sequence of :class:`RestorerSpec`.

    Must never: lose or alter any key other than ``claudeAiOauth``, write non-atomically, or write
    without Claude Code's lock.

    Example::

        @hookimpl
        def cas_restorers():
            return [RestorerSpec("credentials_file", lambda ctx: CredentialsFile(ctx))]
    """


@_hookspec
def cas_sinks() -> Sequence[SinkSpec]:
    """Offer status sinks (the private log file, journald, metrics, ...).

    Called when the core builds the sinks named by ``CLAUDE_AUTH_SYNC_SINKS``. Every active sink's
    ``emit(event)`` receives every :class:`~claude_auth_sync.model.StatusEvent`; the core calls
    each one in isolation, so a failing sink is reported on stderr and never stops the others or
    changes the exit code.

    :returns: a sequence of :class:`SinkSpec`.

    Must never: print, or receive/write a secret (the event carries fingerprints only).

    Example::

        @hookimpl
        def cas_sinks():
            return [SinkSpec("file", lambda ctx: FileSink(ctx))]
    """


@_hookspec
def cas_commands() -> Sequence[CommandSpec]:
    """Offer subcommands of ``claude-auth-sync``.

    Called once when the command line is built, before settings are loaded; a command's ``run``
    loads what it needs itself (for example with :func:`claude_auth_sync.runner.build_runtime`).

    :returns: a sequence of :class:`CommandSpec`; names must not clash with the kernel's commands
        (``run``, ``diagnose``, ``check``, ``plugins``) or with each other.

    Must never: print from ``add_arguments``, import heavy modules at hook time (``run`` is
    imported on every cycle), or put a secret on stdout.

    Example::

        @hookimpl
        def cas_commands():
            return [CommandSpec("policy", "the Vault policy USER's token needs",
                                lambda parser: parser.add_argument("user"), run_policy)]
    """


@_hookspec
def cas_diagnose(ctx: PluginContext, component: object) -> Sequence[DiagnosticRow]:
    """Contribute rows to ``claude-auth-sync diagnose`` about a component this plugin provided.

    Called only on the plugin that offered the selected backend, probe or restorer, once per
    component, with the object its factory built; a plugin that knows nothing to add returns
    an empty sequence. The kernel adds its own generic rows (name, reachability, whether the
    stored copy matches the local login) around them.

    :param ctx: the settings and user (no environment).
    :param component: the built backend, probe or restorer object.
    :returns: a sequence of :class:`~claude_auth_sync.model.DiagnosticRow` (group, name, state,
        detail, next step); a problem row carries the command that fixes it.

    Must never: put a secret (a token, a Vault token, a secret value) into a row, change anything,
    or raise for an unreachable service (return a ``warn`` row instead).

    Example::

        @hookimpl
        def cas_diagnose(ctx, component):
            if not isinstance(component, VaultBackend):
                return []
            return [DiagnosticRow("backend", "token TTL", "ok", "", values={"ttl_s": 2761200})]
    """
