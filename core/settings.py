"""Settings: one pydantic-settings root, plugin sections added through ``cas_settings_sections``.

Precedence, lowest to highest (each layer overrides the ones before it):

1. defaults (in the models);
2. ``/etc/claude-auth-sync/config.toml`` (root's);
3. ``$XDG_CONFIG_HOME/claude-auth-sync/config.toml`` (the user's; default ``~/.config/...``);
4. the neighbouring tools' standard variables: ``CLAUDE_CONFIG_DIR``, ``XDG_STATE_HOME``,
   ``XDG_CONFIG_HOME`` (see below), and those a plugin section declares (``VAULT_ADDR``, ``VAULT_CACERT``);
5. ``CLAUDE_AUTH_SYNC_*`` variables (nested delimiter ``__``);
6. command-line flags.

``XDG_CONFIG_HOME`` / ``XDG_STATE_HOME`` (one rule, :func:`xdg_choice`): the systemd unit runs
without the login shell's variables and the provisioner writes the Vault token under the home from
the password database, so both always use the defaults ``~/.config/claude-auth-sync`` and
``~/.local/state/claude-auth-sync``. A variable pointing elsewhere is honoured, i.e.
``$XDG_..._HOME/claude-auth-sync`` is used, whenever that directory is in use (exists and is not
empty). When it is not in use but the default directory is, and ``HOME`` is the account's home, the
default is used instead, so an interactive shell and the unit read the same token and the same log
(``diagnose`` says so in its ``paths`` rows). When both are in use, the variable wins and ``diagnose``
warns that the unit uses the other one, with the command that merges them. A process given another
``HOME`` (a test sandbox, a container) gets exactly what its variables say.

Settings are resolved once per process and passed to plugins in a ``PluginContext``; no plugin
reads the environment itself. Invalid settings raise :class:`ConfigurationError` (exit 78).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationError, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .errors import CasError, ConfigurationError
from .fileio import open_regular
from .hookspecs import SettingsSection
from .model import UserIdentity

__all__ = [
    "ENV_PREFIX",
    "SYSTEM_CONFIG_FILE",
    "Settings",
    "ResolvedPaths",
    "XdgChoice",
    "load_settings",
    "settings_provenance",
    "user_config_file",
    "xdg_choice",
    "xdg_choices",
]

ENV_PREFIX = "CLAUDE_AUTH_SYNC_"
SYSTEM_CONFIG_FILE = Path("/etc/claude-auth-sync/config.toml")
APP_DIR = "claude-auth-sync"
MAX_SETTINGS_BYTES = 256 * 1024


#: The XDG variables this tool follows, and their defaults below the account's home.
XDG_DEFAULTS: dict[str, Path] = {"XDG_CONFIG_HOME": Path(".config"), "XDG_STATE_HOME": Path(".local/state")}


@dataclass(frozen=True)
class XdgChoice:
    """Which directory one XDG variable leads to, and why (``rule``):

    * ``default``: the variable is unset, empty or names the default itself;
    * ``variable``: ``$VAR/claude-auth-sync`` is in use and the default is not (or ``HOME`` is not
      the account's): honoured;
    * ``fallback``: ``$VAR/claude-auth-sync`` is absent or empty, the default is in use and ``HOME``
      is the account's: the default, which the unit and the provisioner use;
    * ``both``: both are in use: the variable's (honoured), but the unit uses ``default_dir``;
    * ``neither``: neither is in use: the variable's (honoured).
    """

    variable: str
    value: str | None
    xdg_dir: Path | None
    default_dir: Path
    chosen: Path
    rule: str

    @property
    def agrees_with_unit(self) -> bool:
        """Whether a run started by the unit (no XDG variables) uses the same directory."""
        return self.chosen == self.default_dir


def _in_use(path: Path) -> bool:
    """Exists and is not an empty directory (anything unreadable or not a directory counts as in use:
    the code that opens it refuses it with its own error)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return True  # a symlink, a file...
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.lexists(path)


def _home_is_accounts(user: UserIdentity, environ: Mapping[str, str]) -> bool:
    home = environ.get("HOME")
    return not home or os.path.realpath(home) == os.path.realpath(user.home)


def xdg_choice(variable: str, user: UserIdentity, environ: Mapping[str, str] | None = None) -> XdgChoice:
    """The ``claude-auth-sync`` directory ``variable`` (``XDG_CONFIG_HOME``/``XDG_STATE_HOME``) leads
    to for ``user`` in ``environ``, by the rule in this module's docstring. Never creates anything."""
    env = os.environ if environ is None else environ
    default_dir = user.home / XDG_DEFAULTS[variable] / APP_DIR
    value = env.get(variable) or None
    if value is None or Path(value) / APP_DIR == default_dir:
        return XdgChoice(variable, value, None, default_dir, default_dir, "default")
    xdg_dir = Path(value) / APP_DIR
    if not xdg_dir.is_absolute():  # refused later by the settings' own validation (exit 78)
        return XdgChoice(variable, value, xdg_dir, default_dir, xdg_dir, "variable")
    xdg_used, default_used = _in_use(xdg_dir), _in_use(default_dir) and _home_is_accounts(user, env)
    if default_used and not xdg_used:
        return XdgChoice(variable, value, xdg_dir, default_dir, default_dir, "fallback")
    rule = "both" if default_used else ("variable" if xdg_used else "neither")
    return XdgChoice(variable, value, xdg_dir, default_dir, xdg_dir, rule)


def xdg_choices(user: UserIdentity, environ: Mapping[str, str] | None = None) -> list[XdgChoice]:
    """:func:`xdg_choice` for each variable in :data:`XDG_DEFAULTS`."""
    return [xdg_choice(variable, user, environ) for variable in XDG_DEFAULTS]


def user_config_file(user: UserIdentity, environ: Mapping[str, str] | None = None) -> Path:
    """``config.toml`` in the configuration directory :func:`xdg_choice` picks
    (``$XDG_CONFIG_HOME/claude-auth-sync``, default ``~/.config/claude-auth-sync``)."""
    return xdg_choice("XDG_CONFIG_HOME", user, environ).chosen / "config.toml"


class Settings(BaseSettings):
    """The root settings. Plugin sections are added as fields by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    backend: str = Field("vault", description="credential store: vault, file or memory")
    sinks: list[str] = Field(default_factory=lambda: ["file", "journald"], description="status sinks")
    probe: str = Field("inference", description="health probe")
    restorer: str = Field("credentials_file", description="local credentials access")
    claude_config_dir: Path | None = Field(None, description="Claude Code's config dir (CLAUDE_CONFIG_DIR)")
    state_dir: Path | None = Field(None, description="private log directory ($XDG_STATE_HOME/claude-auth-sync)")
    config_dir: Path | None = Field(None, description="user config directory ($XDG_CONFIG_HOME/claude-auth-sync)")
    lock_wait_timeout: float = Field(30.0, gt=0, le=600, description="seconds to wait for Claude Code's lock")
    run_lock_wait: float = Field(10.0, ge=0, le=600, description="seconds a run waits for another run of the same user")
    unchanged_window: float = Field(
        5 * 3600, ge=0, le=86400,
        description="seconds an unchanged, verified login needs no new probe (0: always probe); below the 6 h timer",
    )

    @field_validator("claude_config_dir", "state_dir", "config_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(
                f"must be an absolute path, not {str(value)!r} (a relative path means another directory for "
                "every process that starts from somewhere else)"
            )
        return value

    # Set on the per-load subclass by load_settings(); not settings themselves.
    _toml_files: ClassVar[tuple[tuple[Path, dict[str, Any]], ...]] = ()
    _standard_env: ClassVar[dict[str, Any]] = {}
    _overrides: ClassVar[dict[str, Any]] = {}

    def section(self, name: str) -> Any:
        """A plugin's own section (``settings.section("vault")``)."""
        try:
            return getattr(self, name)
        except AttributeError:
            raise ConfigurationError(f"no settings section {name!r}", reason="invalid_settings") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return tuple(source for _, source in _sources(settings_cls, init_settings, env_settings))


class _StandardEnvSource(PydanticBaseSettingsSource):
    """The neighbouring tools' variables, mapped onto our fields (already computed)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


def _sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> list[tuple[str, PydanticBaseSettingsSource]]:
    """The sources with a label each, highest precedence first."""
    toml_files: tuple[tuple[Path, dict[str, Any]], ...] = getattr(settings_cls, "_toml_files", ())
    standard: dict[str, Any] = getattr(settings_cls, "_standard_env", {})
    sources: list[tuple[str, PydanticBaseSettingsSource]] = [
        ("command line", init_settings),
        ("environment", env_settings),
        ("standard variable", _StandardEnvSource(settings_cls, standard)),
    ]
    for path, data in reversed(toml_files):  # the user file overrides the system file
        sources.append((str(path), _StandardEnvSource(settings_cls, data)))
    return sources


def _standard_env_values(sections: Sequence[SettingsSection], environ: Mapping[str, str], user: UserIdentity) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if environ.get("CLAUDE_CONFIG_DIR"):
        values["claude_config_dir"] = environ["CLAUDE_CONFIG_DIR"]
    for field_name, variable in (("state_dir", "XDG_STATE_HOME"), ("config_dir", "XDG_CONFIG_HOME")):
        choice = xdg_choice(variable, user, environ)
        if choice.xdg_dir is not None and choice.chosen == choice.xdg_dir:  # else the default (provenance "default")
            values[field_name] = str(choice.xdg_dir)
    for section in sections:
        for field_name, variable in section.standard_env.items():
            if environ.get(variable):
                values.setdefault(section.name, {})[field_name] = environ[variable]
    return values


def _settings_class(
    sections: Sequence[SettingsSection], toml_files: Sequence[tuple[Path, dict[str, Any]]], environ: Mapping[str, str],
    user: UserIdentity,
) -> type[Settings]:
    seen: dict[str, SettingsSection] = {}
    fields: dict[str, Any] = {}
    for section in sections:
        if section.name in seen or section.name in Settings.model_fields:
            raise ConfigurationError(f"settings section {section.name!r} is declared twice", reason="plugin_error")
        seen[section.name] = section
        fields[section.name] = (section.model, Field(default_factory=section.model))
    cls = create_model("Settings", __base__=Settings, **fields)
    cls._toml_files = tuple(toml_files)
    cls._standard_env = _standard_env_values(sections, environ, user)
    return cls


def load_settings(
    sections: Sequence[SettingsSection],
    user: UserIdentity,
    *,
    overrides: Mapping[str, Any] | None = None,
    system_file: Path = SYSTEM_CONFIG_FILE,
    user_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the settings once, with every path filled in for ``user``.

    :param overrides: command-line flags (highest precedence), only keys that were given.
    :raises ConfigurationError: on any invalid value, naming the field and the source files.
    """
    env = os.environ if environ is None else environ
    user_file = user_file or user_config_file(user, env)
    files = [
        (path, data)
        for path, data in (
            (system_file, read_settings_file(system_file, owners=(0,))),
            (user_file, read_settings_file(user_file, owners=(0, user.uid))),
        )
        if data is not None
    ]
    cls = _settings_class(sections, files, env, user)
    cls._overrides = dict(overrides or {})
    where = ", ".join(str(f) for f, _ in files) or "no settings file"
    try:
        settings = cls(**dict(overrides or {}))
    except SettingsError as err:  # a value that does not parse at all, e.g. a list that is not JSON
        raise ConfigurationError(
            f"invalid settings: {err}", reason="invalid_settings",
            remedy=f"fix the CLAUDE_AUTH_SYNC_* variables or the settings file ({where}); lists are JSON, e.g. [\"file\"]",
        ) from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)
        )
        raise ConfigurationError(
            f"invalid settings: {problems}",
            reason="invalid_settings",
            remedy=f"fix the CLAUDE_AUTH_SYNC_* variables or the settings file ({where})",
        ) from None
    return _with_paths(settings, user)


def read_settings_file(path: Path, *, owners: Sequence[int]) -> dict[str, Any] | None:
    """A settings file's parsed TOML, or None when it does not exist.

    Trusted only if it is a regular file (no symlink, FIFO or device: never blocks), owned by one
    of ``owners`` (root for the system file; root or the user for the user's file) and not
    writable by group or others: whoever can write it decides where the Vault token is sent.

    :raises ConfigurationError: unsafe, unreadable, not UTF-8, not TOML (reason ``invalid_settings``
        or ``settings_unsafe``), with the file named and the fix.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except CasError as err:
        raise ConfigurationError(err.message, reason="settings_unsafe", remedy=err.remedy) from None
    except OSError as err:
        raise ConfigurationError(
            f"cannot read the settings file {path}: {os.strerror(err.errno or 0)}", reason="invalid_settings",
            remedy=f"make {path} readable (chmod 0644 for the system file) or remove it",
        ) from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if st.st_uid not in owners or stat.S_IMODE(st.st_mode) & 0o022:
            who = "root" if tuple(owners) == (0,) else "root or you"
            raise ConfigurationError(
                f"refusing the settings file {path}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; "
                f"it must be owned by {who} and writable by no one else",
                reason="settings_unsafe", remedy=f"chown root:root {path} && chmod 0644 {path} (after checking its content)",
            )
        try:
            data = handle.read(MAX_SETTINGS_BYTES + 1)
        except OSError as err:
            raise ConfigurationError(f"cannot read the settings file {path}: {os.strerror(err.errno or 0)}",
                                     reason="invalid_settings", remedy=f"check {path}") from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise ConfigurationError(f"the settings file {path} is larger than {MAX_SETTINGS_BYTES} bytes",
                                 reason="invalid_settings", remedy=f"fix {path}")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"the settings file {path} is not UTF-8 text", reason="invalid_settings",
                                 remedy=f"save {path} as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigurationError(f"the settings file {path} is not valid TOML: {err}", reason="invalid_settings",
                                 remedy=f"fix the syntax of {path}") from None


def _with_paths(settings: Settings, user: UserIdentity) -> Settings:
    updates: dict[str, Path] = {}
    if settings.claude_config_dir is None:
        updates["claude_config_dir"] = user.home / ".claude"
    if settings.state_dir is None:
        updates["state_dir"] = user.home / ".local" / "state" / APP_DIR
    if settings.config_dir is None:
        updates["config_dir"] = user.home / ".config" / APP_DIR
    return settings.model_copy(update=updates)


@dataclass(frozen=True)
class ResolvedPaths:
    """The files the cycle touches, derived from settings."""

    credentials_file: Path
    claude_config_dir: Path
    state_dir: Path
    log_file: Path
    config_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> ResolvedPaths:
        assert settings.claude_config_dir and settings.state_dir and settings.config_dir
        return cls(
            credentials_file=settings.claude_config_dir / ".credentials.json",
            claude_config_dir=settings.claude_config_dir,
            state_dir=settings.state_dir,
            log_file=settings.state_dir / "sync.log",
            config_dir=settings.config_dir,
        )


def settings_provenance(settings: Settings) -> dict[str, str]:
    """Where each setting in effect came from: ``{"vault.addr": "environment", ...}``.

    Keys are dotted (``section.field``); values are a source label (``default``, a file path,
    ``environment``, ``standard variable``, ``command line``).
    """
    cls = type(settings)
    init = InitSettingsSource(cls, init_kwargs=dict(cls._overrides))
    env = EnvSettingsSource(cls)
    found: dict[str, str] = {}
    # Lowest precedence first, so higher ones overwrite.
    for label, source in reversed(_sources(cls, init, env)):
        for key in _flatten(source()):
            found[key] = label
    result: dict[str, str] = {}
    for key in _flatten(settings.model_dump()):
        result[key] = found.get(key, "default")
    return result


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            keys.extend(_flatten(value, f"{dotted}."))
        else:
            keys.append(dotted)
    return keys
