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
from .hookspecs import PROJECT, BackendSpec, CommandSpec, PluginContext, ProbeSpec, RestorerSpec, SettingsSection, SinkSpec
from .model import Backend, DiagnosticRow, Probe, Restorer, Sink

__all__ = ["ENTRY_POINT_GROUP", "BrokenPlugin", "Plugins", "get_plugin_manager"]

ENTRY_POINT_GROUP = "claude_auth_sync"

S = TypeVar("S", BackendSpec, ProbeSpec, RestorerSpec, SinkSpec, CommandSpec)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded: its name and the error's one-line summary."""

    name: str
    error: str


KINDS: dict[str, tuple[str, type]] = {
    "backend": ("cas_backends", Backend),
    "probe": ("cas_probes", Probe),
    "restorer": ("cas_restorers", Restorer),
    "sink": ("cas_sinks", Sink),
}
"""Each selectable kind: its provider hook and the Protocol its factory's object must satisfy."""

RECORD_TYPES: dict[str, type] = {
    "cas_backends": BackendSpec, "cas_probes": ProbeSpec, "cas_restorers": RestorerSpec, "cas_sinks": SinkSpec,
    "cas_commands": CommandSpec,
}
"""The record each provider hook must return (a sequence of them)."""


@dataclass
class Plugins:
    """A plugin manager plus the bookkeeping the CLI shows (sources, broken entry points).

    Every hook is called through pluggy, one plugin at a time (``subset_hook_caller``), so each
    record keeps the name of the plugin that offered it: duplicate names are reported with both
    sources, a factory's wrong object names its plugin, and ``cas_diagnose`` is asked of exactly
    the plugin that provided a component.
    """

    pm: pluggy.PluginManager
    broken: list[BrokenPlugin] = field(default_factory=list)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    _collected: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def settings_sections(self) -> list[SettingsSection]:
        """Every plugin's settings sections (a plugin whose hook breaks is recorded and skipped)."""
        sections: list[SettingsSection] = []
        for impl in self.pm.hook.cas_settings_sections.get_hookimpls():
            try:
                results = self._only(impl.plugin_name, "cas_settings_sections")()
                batch = [section for result in results for section in (result or [])]
            except Exception as err:
                self._mark_broken(impl.plugin_name, f"cas_settings_sections raised {type(err).__name__}")
                continue
            if all(isinstance(section, SettingsSection) for section in batch):
                sections.extend(batch)
            else:
                self._mark_broken(impl.plugin_name, "cas_settings_sections returned something other than SettingsSection")
        return sections

    def backends(self) -> dict[str, BackendSpec]:
        return self._collect("cas_backends", "backend")

    def probes(self) -> dict[str, ProbeSpec]:
        return self._collect("cas_probes", "probe")

    def restorers(self) -> dict[str, RestorerSpec]:
        return self._collect("cas_restorers", "restorer")

    def sinks(self) -> dict[str, SinkSpec]:
        return self._collect("cas_sinks", "sink")

    def commands(self) -> dict[str, CommandSpec]:
        return self._collect("cas_commands", "command")

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

    def build(self, kind: str, name: str, ctx: PluginContext) -> Any:
        """Build the selected ``kind`` plugin ``name`` and check its object against the Protocol.

        :raises PluginError: unknown name (listing the choices), or an object that lacks a method
            of the Protocol (naming the plugin, the object's type and what is missing).
        """
        hook_name, protocol = KINDS[kind]
        spec = self.select(self._collect(hook_name, kind), name, kind)
        component = spec.factory(ctx)
        missing = [m for m in _protocol_methods(protocol) if not callable(getattr(component, m, None))]
        if missing:
            origin = self.origins.get((hook_name, name), "?")
            raise PluginError(
                f"the {kind} {name!r} of plugin {origin!r} built a {type(component).__name__}, which lacks "
                f"{', '.join(missing)} of {protocol.__name__}",
                reason="plugin_error", remedy=f"fix or uninstall the plugin {origin!r}",
            )
        return component

    def origin(self, kind: str, name: str) -> str | None:
        """The plugin that offered the ``kind`` called ``name``."""
        return self.origins.get((KINDS[kind][0], name))

    def diagnose(self, plugin_name: str, ctx: PluginContext, component: object) -> list[DiagnosticRow]:
        """The ``cas_diagnose`` rows of one plugin about a component it provided."""
        caller = self._only(plugin_name, "cas_diagnose")
        return [row for batch in caller(ctx=ctx, component=component) for row in batch or []]

    def hooks_by_plugin(self) -> dict[str, list[str]]:
        """``plugin name -> [hook names it implements]`` for ``claude-auth-sync plugins``."""
        table: dict[str, list[str]] = {}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            table[name] = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        return table

    def _only(self, plugin_name: str, hook_name: str) -> Any:
        """A caller of ``hook_name`` that reaches only the plugin ``plugin_name`` (through pluggy)."""
        others = [p for name, p in self.pm.list_name_plugin() if name != plugin_name and p is not None]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _collect(self, hook_name: str, kind: str) -> dict[str, Any]:
        """:meth:`_gather`, once per hook: the plugins are all registered when the manager is built,
        and one run asks for the same records many times (selection, building, sinks)."""
        if hook_name not in self._collected:
            self._collected[hook_name] = self._gather(hook_name, kind)
        return dict(self._collected[hook_name])

    def _gather(self, hook_name: str, kind: str) -> dict[str, Any]:
        """Every record ``hook_name`` offers, by name, each remembered with its plugin.

        A plugin whose hook raises or hands back anything but a sequence of the hook's record type
        is recorded in :attr:`broken` (by exception type only: its text could hold anything) and
        skipped, exactly like one whose entry point does not import; two records of one name are a
        PluginError naming both plugins.
        """
        found: dict[str, Any] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            specs = self._specs_of(impl.plugin_name, hook_name)
            for spec in specs:
                key = (hook_name, spec.name)
                if spec.name in found:
                    raise PluginError(
                        f"two {kind} plugins are named {spec.name!r}: {self.origins[key]} and {impl.plugin_name}",
                        reason="duplicate_plugin",
                        remedy="uninstall or rename one of them",
                    )
                found[spec.name] = spec
                self.origins[key] = impl.plugin_name
        return found

    def _specs_of(self, plugin_name: str, hook_name: str) -> list[Any]:
        record = RECORD_TYPES.get(hook_name)
        try:
            batches = self._only(plugin_name, hook_name)()
            specs = [spec for batch in batches for spec in (batch or [])]
        except Exception as err:  # a third-party hook that breaks must not stop the agent
            self._mark_broken(plugin_name, f"{hook_name} raised {type(err).__name__}")
            return []
        if record is not None and not all(isinstance(spec, record) and isinstance(spec.name, str) for spec in specs):
            self._mark_broken(plugin_name, f"{hook_name} returned something other than {record.__name__} records")
            return []
        return specs

    def _mark_broken(self, plugin_name: str, why: str) -> None:
        if not any(b.name == plugin_name and b.error == why for b in self.broken):
            self.broken.append(BrokenPlugin(plugin_name, why))


def _protocol_methods(protocol: type) -> list[str]:
    return sorted(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))


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

