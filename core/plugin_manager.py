"""The plugin manager: loads the ``claude_auth_sync`` entry-point group and selects plugins.

Built-in plugins are registered through the same entry-point group as third-party ones, so the
external path is exercised on every run. Nothing is built at import time: call
:func:`get_plugin_manager` (tests get a fresh one each).

A third-party entry point that fails to import is recorded in :attr:`Plugins.broken` (shown by
``plugins`` and ``diagnose``) and skipped; a *configured* plugin that does not exist is an error
naming the available ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pluggy

from . import hookspecs
from .errors import PluginError
from .hookspecs import PROJECT, ProbeSpec, RestorerSpec, SettingsSection, SinkSpec, StoreSpec

__all__ = ["ENTRY_POINT_GROUP", "BrokenPlugin", "Plugins", "get_plugin_manager"]

ENTRY_POINT_GROUP = "claude_auth_sync"

S = TypeVar("S", StoreSpec, ProbeSpec, RestorerSpec, SinkSpec)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded: its name and the error's one-line summary."""

    name: str
    error: str


@dataclass
class Plugins:
    """A plugin manager plus the bookkeeping the CLI shows (sources, broken entry points)."""

    pm: pluggy.PluginManager
    broken: list[BrokenPlugin] = field(default_factory=list)

    def settings_sections(self) -> list[SettingsSection]:
        return [s for batch in self.pm.hook.cas_settings_sections() for s in batch]

    def stores(self) -> dict[str, StoreSpec]:
        return self._collect("cas_credential_stores", "backend")

    def probes(self) -> dict[str, ProbeSpec]:
        return self._collect("cas_probes", "probe")

    def restorers(self) -> dict[str, RestorerSpec]:
        return self._collect("cas_restorers", "restorer")

    def sinks(self) -> dict[str, SinkSpec]:
        return self._collect("cas_sinks", "sink")

    def select(self, available: dict[str, S], name: str, kind: str) -> S:
        """The spec called ``name``; a miss is a PluginError listing the valid choices."""
        try:
            return available[name]
        except KeyError:
            choices = ", ".join(sorted(available)) or "none"
            raise PluginError(
                f"no {kind} plugin named {name!r} (available: {choices})",
                reason=f"unknown_{kind}",
                remedy=f"set CLAUDE_AUTH_SYNC_{kind.upper()}{'S' if kind == 'sink' else ''} to one of: {choices}",
            ) from None

    def hooks_by_plugin(self) -> dict[str, list[str]]:
        """``plugin name -> [hook names it implements]`` for ``claude-auth-sync plugins``."""
        table: dict[str, list[str]] = {}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            table[name] = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        return table

    def _collect(self, hook_name: str, kind: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        origin: dict[str, str] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            for spec in impl.function() or []:
                if spec.name in found:
                    raise PluginError(
                        f"two {kind} plugins are named {spec.name!r}: {origin[spec.name]} and {impl.plugin_name}",
                        reason="duplicate_plugin",
                        remedy="uninstall or rename one of them",
                    )
                found[spec.name] = spec
                origin[spec.name] = impl.plugin_name
        return found


def get_plugin_manager(*, load_entry_points: bool = True, extra_plugins: Iterable[tuple[str, object]] = ()) -> Plugins:
    """A fresh plugin manager with the hookspecs, the entry-point plugins and ``extra_plugins``.

    :param load_entry_points: load the ``claude_auth_sync`` entry-point group (built-ins included).
    :param extra_plugins: ``(name, plugin)`` pairs registered after the entry points (tests).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm=pm)
    if load_entry_points:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as err:  # a broken third-party plugin must not stop the agent
                plugins.broken.append(BrokenPlugin(ep.name, f"{type(err).__name__}: {err}"[:200]))
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    return plugins

