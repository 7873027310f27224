"""The provisioner's root-only bookkeeping and its run lock.

Guarantees:

* :class:`StateFile` keeps, per user, the accessor and fingerprint of the token this provisioner
  minted (and accessors still to revoke): never a token. It lives in a 0700 directory owned by
  root; a file not owned by root or that does not parse is refused (exit 78), never repaired.
* It also keeps the Vault each accessor was minted at (:func:`vault_identity`: the canonical
  address, the namespace and, when Vault told it, the cluster's ``cluster_id``; ``accessor_vaults``)
  and the policies this host created (``policies``: name, user, host, Vault). A run acts on (revokes, deletes) only what is recorded
  at the Vault it is talking to (:meth:`StateFile.minted_here`, :func:`same_vault`: two nodes of one
  cluster are one Vault when both records carry its ``cluster_id``; a record without one is matched
  by address, the conservative side). An accessor recorded by a version
  that kept no addresses (state file version 1) belongs to no Vault until a run proves it exists
  at its Vault (the provisioner asks that Vault: ``lookup-self`` of the user's token, or
  ``lookup-accessor`` with the admin token); until then it is never revoked.
* :meth:`StateFile.save` writes only when something changed, atomically
  (:func:`claude_auth_sync.fileio.write_atomically`: 0600 temporary file, fsync, rename, fsync of
  the directory), so a crash leaves the old or the new bookkeeping, whole.
* :func:`provision_lock` lets one provisioner run at a time (the hourly timer and an admin run):
  an ``flock`` on ``provision.lock``, waited for at most ``wait`` seconds, then :class:`Busy` (75).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from claude_auth_sync.errors import CasError, ConfigurationError
from claude_auth_sync.fileio import flock_until, write_atomically
from claude_auth_sync.model import ExitCode
from claude_auth_sync.terminal_text import safe_text

__all__ = ["Busy", "DEFAULT_STATE_DIR", "StateFile", "VaultId", "provision_lock", "same_vault", "vault_identity",
           "vault_label"]

DEFAULT_STATE_DIR = Path("/var/lib/claude-auth-sync")
STATE_FILE = "tokens.json"
LOCK_NAME = "provision.lock"
LOCK_WAIT_S = 120.0
VERSION = 2

VaultId = dict[str, str]  # {"addr": canonical address, "namespace": "" or "a/b"[, "cluster_id": id]}


def vault_identity(addr: str, namespace: str | None = None, cluster_id: str | None = None) -> VaultId:
    """The Vault an accessor belongs to: ``scheme://host:port[/path]`` (lower-case, default port
    made explicit, no trailing slash) and the namespace without slashes around it ("" for none).
    Two spellings of one address compare equal; two different names of one cluster do not (a run
    then acts on neither's records: the conservative side)."""
    parts = urlsplit(addr.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = f"[{host}]" if ":" in host else host
    vault = {"addr": f"{scheme}://{host}:{port}{parts.path.rstrip('/')}", "namespace": (namespace or "").strip("/")}
    if cluster_id:
        vault["cluster_id"] = cluster_id
    return vault


def same_vault(recorded: VaultId | None, current: VaultId) -> bool:
    """True when ``recorded`` names the Vault (and namespace) ``current`` is: by ``cluster_id`` when
    both carry one (any node of one cluster), else by canonical address (old records, or a Vault
    that did not tell its cluster: two names of one cluster then stay two Vaults)."""
    if recorded is None or recorded.get("namespace", "") != current.get("namespace", ""):
        return False
    if recorded.get("cluster_id") and current.get("cluster_id"):
        return recorded["cluster_id"] == current["cluster_id"]
    return recorded.get("addr") == current.get("addr")


def vault_label(vault: VaultId) -> str:
    """``addr[ namespace ns]``: how a report names a Vault (never a token)."""
    return safe_text(vault.get("addr", "") + (f" namespace {vault['namespace']}" if vault.get("namespace") else ""), 200)


class StateFile:
    """``<directory>/tokens.json``: ``{"version": 2, "users": {user: entry}, "accessor_vaults":
    {accessor: VaultId}, "policies": {name: {"user", "host", "vault", "created_at"}}}``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.users: dict[str, dict[str, Any]] = {}
        self.accessor_vaults: dict[str, VaultId] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self._loaded: str = ""

    def load(self) -> None:
        """Read the file (nothing to do when absent); ConfigurationError when foreign or damaged."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_uid != 0 and os.geteuid() == 0:
                raise ConfigurationError(f"{self.path} is not owned by root", remedy=f"inspect and remove {self.path}")
            raw = handle.read()
        try:
            data = json.loads(raw)
            users = data["users"]
            _require(isinstance(users, dict))
            _require(isinstance(data.get("accessor_vaults", {}), dict) and isinstance(data.get("policies", {}), dict))
            # Every entry of the right shape: one dropped (or a string read as one accessor per
            # character) would be forgotten by the next save.
            for entry in users.values():
                _require(isinstance(entry, dict) and isinstance(entry.get("accessor"), (str, type(None))))
                superseded = entry.get("superseded", [])
                _require(isinstance(superseded, list) and all(isinstance(a, str) for a in superseded))
            _require(all(isinstance(v, dict) for v in data.get("accessor_vaults", {}).values()))
            _require(all(isinstance(v, dict) for v in data.get("policies", {}).values()))
        except (ValueError, KeyError, AssertionError, TypeError, AttributeError):
            raise ConfigurationError(f"{self.path} is damaged", remedy="inspect it; remove it to start over "
                                     "(tokens minted before can then only be revoked by hand)") from None
        self.users = {str(k): dict(v) for k, v in users.items() if isinstance(v, dict)}
        self.accessor_vaults = {str(k): _vault_record(v) for k, v in data.get("accessor_vaults", {}).items()
                                if isinstance(v, dict)}
        self.policies = {str(k): dict(v) for k, v in data.get("policies", {}).items() if isinstance(v, dict)}
        self._loaded = self._dump()

    def _dump(self) -> str:
        return json.dumps({"version": VERSION, "users": self.users, "accessor_vaults": self.accessor_vaults,
                           "policies": self.policies}, indent=2, sort_keys=True) + "\n"

    # -- which Vault ------------------------------------------------------------------------

    def stamp(self, accessor: str, vault: VaultId) -> None:
        """Record that ``accessor`` was minted at (or proved to exist at) ``vault``."""
        self.accessor_vaults[accessor] = dict(vault)

    def vault_of(self, accessor: str) -> VaultId | None:
        """The Vault ``accessor`` belongs to; None when it was recorded before addresses were kept."""
        return self.accessor_vaults.get(accessor)

    def minted_here(self, accessor: str, vault: VaultId) -> bool:
        """True only when ``accessor`` is recorded as belonging to ``vault``: the one test before any
        revocation (never true for another Vault, nor for an accessor of unknown Vault)."""
        return same_vault(self.accessor_vaults.get(accessor), vault)

    def placement(self, accessor: str, vault: VaultId, known_here: Callable[[str], bool | None]) -> str:
        """Where ``accessor`` belongs: the one rule of the provisioner and ``--offboard`` alike.
        ``"here"`` when recorded at ``vault`` (:meth:`minted_here`), or recorded at no Vault (an old
        record) and ``known_here(accessor)`` confirms this Vault knows it (then stamped);
        ``"elsewhere"`` when recorded at another Vault; ``"unknown"`` for an old record this Vault
        says it does not know (``known_here`` False); ``"unconfirmed"`` for an old record this Vault
        could not be asked about (``known_here`` None: keep it, ask again). A record matched by
        address only (it, or this run's ``sys/health``, names no ``cluster_id``) is ``"here"`` only
        when ``known_here`` confirms it; else ``"unconfirmed"``, or ``"unknown"`` for a record naming
        no cluster that this Vault says it does not know. Only ``"here"`` may be revoked; only
        ``"unknown"`` may be forgotten."""
        recorded = self.accessor_vaults.get(accessor)
        if recorded is None:
            known = known_here(accessor)
            if known is None:
                return "unconfirmed"
            if not known:
                return "unknown"
            self.stamp(accessor, vault)
            return "here"
        if not same_vault(recorded, vault):
            return "elsewhere"
        if recorded.get("cluster_id") and vault.get("cluster_id"):
            return "here"  # the same cluster, whichever node or name answered
        # Matched by address alone (the record, or this run's sys/health, names no cluster): another
        # cluster may answer at that address now, and its revoke-accessor says 200 for an accessor
        # it does not know. Here only once this Vault knows it. A record naming its cluster is kept
        # otherwise (its token may live on at that cluster); one naming none follows the old-record
        # rule (forgotten only when this Vault says it does not know it).
        known = known_here(accessor)
        if known:
            if vault.get("cluster_id") and not recorded.get("cluster_id"):
                self.stamp(accessor, vault)  # proved: from now on matched by cluster
            return "here"
        if known is None or recorded.get("cluster_id"):
            return "unconfirmed"
        return "unknown"

    def record_policy(self, name: str, user: str, host: str | None, vault: VaultId, created_at: str) -> None:
        """Record that this host created policy ``name`` at ``vault`` (only such policies are pruned)."""
        self.policies[name] = {"user": user, "host": host, "vault": dict(vault), "created_at": created_at}

    def created_here(self, name: str, vault: VaultId) -> bool:
        """True when this host's records say it created policy ``name`` at ``vault``."""
        recorded = (self.policies.get(name) or {}).get("vault")
        return isinstance(recorded, dict) and same_vault(_vault_record(recorded), vault)

    def tidy(self) -> None:
        """Forget the Vault of accessors no user entry refers to any more."""
        used = {a for e in self.users.values() for a in [e.get("accessor"), *e.get("superseded", [])] if a}
        self.accessor_vaults = {a: v for a, v in self.accessor_vaults.items() if a in used}

    @property
    def changed(self) -> bool:
        """True when :attr:`users` differs from what was loaded (or last saved)."""
        return self._dump() != self._loaded

    def ensure_dir(self) -> None:
        """Create the directory 0700; refuse one that is not a directory owned by this (root) user."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigurationError(f"{self.directory} is not a directory owned by root")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def save(self) -> None:
        """Replace the file atomically with :attr:`users`, if they changed."""
        self.tidy()
        if not self.changed:
            return
        self.ensure_dir()
        text = self._dump()
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_atomically(dir_fd, STATE_FILE, text.encode("utf-8"), mode=0o600,
                             temp_name=f".{STATE_FILE}.{secrets.token_hex(6)}")
        finally:
            os.close(dir_fd)
        self._loaded = text


def _require(ok: bool) -> None:
    """A check of the file's shape that ``python -O`` keeps (an ``assert`` would vanish)."""
    if not ok:
        raise ValueError("damaged")


def _vault_record(value: dict[str, Any]) -> VaultId:
    """A recorded Vault as :func:`vault_identity` makes it (strings only; no empty ``cluster_id``)."""
    vault = {"addr": str(value.get("addr", "")), "namespace": str(value.get("namespace", ""))}
    if value.get("cluster_id"):
        vault["cluster_id"] = str(value["cluster_id"])
    return vault


class Busy(CasError):
    """Another provisioner run holds the lock (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "busy"


@contextlib.contextmanager
def provision_lock(directory: Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """One provisioner at a time (the hourly timer and an admin run must not race)."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not flock_until(fd, time.monotonic() + wait, poll_s=0.2):
            raise Busy(f"another t3-provision-users holds {path}", remedy="wait for it to finish")
        yield
    finally:
        os.close(fd)
