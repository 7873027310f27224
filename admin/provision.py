"""``t3-provision-users``: the root provisioner (runbook steps 1-2 and the hourly run).

For every roster user with an OS account on this host (one without is reported and skipped):

* ``~/.config/claude-auth-sync`` and ``~/.local/state/claude-auth-sync`` exist, 0700, owned by
  the user;
* the user's Vault token (``~/.config/claude-auth-sync/vault-token``) is checked *with that
  token* (``lookup-self``): valid, policies exactly the user's policy (``claude-auth-sync-<user>``,
  or ``claude-auth-sync-<user>@<host>`` when ``vault.path_template`` carries ``{host}``: see
  :func:`claude_auth_sync.plugins.backend_vault.policy.locate`), period 768h, orphan, TTL not about
  to run out;
* ``claude-auth-sync@<user>.timer`` and ``.path`` are enabled (the ``*.target.wants`` symlinks)
  and, on a booted systemd, running: every run (the hourly one too, no token needed) reads their
  state in one ``systemctl show`` and starts those that are stopped or failed (``reset-failed``
  first); one that stays down is flagged with its reason. A unit an admin disabled is enabled
  again only for a user the roster lists.

With an admin token (``VAULT_TOKEN``; the address from ``VAULT_ADDR`` or the settings) it also
confirms each user's policy exists and is exactly what :func:`render_policy` renders (refusing
otherwise: "apply the Vault stack first"), mints a periodic orphan token for users whose token is
missing, unreadable, expired, expiring or drifted, writes it to the user's token file and revokes
the token it replaces. ``--apply-policies`` writes the policies of every roster user (read,
compare, write only what differs); with ``--prune`` it also deletes the policies of users no
longer in the roster and revokes their tokens: only those this host's state file records creating
or minting, at the Vault this run talks to (:mod:`.provision_policies`, :mod:`.provision_tokens`).
A roster without users is refused unless ``--allow-empty``. ``--migrate-to-host-paths`` copies each
user's per-user secret to their empty per-host path first (:mod:`.provision_migrate`).

Without an admin token (the hourly timer) it never mints: users needing an admin run are reported
and the exit status is non-zero. A run with nothing to do changes nothing.

Security design
---------------

* Root never touches a path inside a user's home. Every read and write there happens in a forked
  child that first drops to the user (``setgroups``/``setresgid``/``setresuid``, verified, then
  ``PR_SET_DUMPABLE=0`` on top of the kernel's own non-dumpable marking), and inside that child
  every component below the home is opened with ``openat(O_NOFOLLOW)``: a symlink or a directory
  owned by someone else is refused, never followed. A planted ``vault-token -> /etc/shadow`` (or a
  hard link to a root file) is replaced by an atomic rename in the user's own directory, so its
  target is never opened, let alone written.
* Tokens travel only through pipes: the minted token goes from root to the child on a pipe; the
  existing token comes back from the child on a pipe. Never argv, never the environment (the admin
  token is removed from ``os.environ`` at start so no child process inherits it), never output:
  at most a fingerprint (first 8 hex digits of SHA-256).
* Deprovisioning bookkeeping: the accessor of every token this provisioner minted is kept in the
  root-only state file ``/var/lib/claude-auth-sync/tokens.json`` (0600 in a 0700 directory; no
  token, only accessors, fingerprints and the Vault each accessor belongs to). A re-mint revokes the previous token by accessor even
  when the user destroyed or replaced their token file; an accessor whose revocation failed, or
  that a valid hand-made token superseded, stays listed as ``superseded`` until an admin run
  revokes it. A user removed from the roster gets their timer disabled (every run) and, with an
  admin token and ``--prune``, their token revoked by accessor; their KV secret is kept. (Scanning
  ``auth/token/accessors`` instead would need a sudo LIST plus one lookup per token in the whole
  Vault, every run.)
* The admin token is only ever sent with admin requests, user tokens only with ``lookup-self``;
  ``deploy/vault/t3-provisioner-admin.hcl`` is the least a non-root admin token needs.

Exit status: 0 nothing left to do; 1 some user needs an admin run (or a removed user's token still
needs ``--prune``); 75 Vault unreachable or a child timed out; 77 not root; 78 something a person
must fix (invalid roster or settings, invalid admin token, missing/drifted policy without
``--apply-policies``, an unsafe home, ``systemctl`` failing, a unit that does not start).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.fingerprint import fingerprint
from claude_auth_sync.model import PROVISION_COMMAND, ExitCode
from claude_auth_sync.plugins.backend_vault.paths import DEFAULT_TEMPLATE
from claude_auth_sync.terminal_text import safe_text

from .accounts import refusals
from .as_user import CHILD_TIMEOUT_S, Account, ChildFailed, Job, run_as_user
from .provision_migrate import MigrationPhase
from .provision_policies import PolicyPhases
from .provision_report import UserReport, Work, duration, worst
from .provision_tokens import TokenPhases
from .roster import DEFAULT_ROSTER, Roster, load_roster
from .state import DEFAULT_STATE_DIR, StateFile, VaultId, provision_lock, vault_identity
from .timers import INOTIFY_FIX, SystemdTimers, inotify_exhausted, path_unit, safe_home, timer_unit
from .trusted_file import check_trusted
from .user_home import job_inspect
from .vault_admin import AdminVault

if TYPE_CHECKING:
    from claude_auth_sync.plugins.backend_vault.policy import SecretLocation

__all__ = ["main", "Provisioner", "Options", "Account", "run_as_user"]

RUN_DEADLINE_S = 240.0  # all children of one run together (the hourly unit must not pile up)
DEFAULT_CONFIG = Path("/etc/claude-auth-sync/config.toml")
NO_USER_FILE = Path("/nonexistent/claude-auth-sync/config.toml")  # only a file root controls counts


@dataclass
class Options:
    roster: Path = DEFAULT_ROSTER
    dry_run: bool = False
    json: bool = False
    apply_policies: bool = False
    prune: bool = False
    allow_empty: bool = False
    migrate: bool = False
    migrate_from: str = DEFAULT_TEMPLATE
    systemd_root: Path | None = None
    systemctl: str = "systemctl"
    state_dir: Path = DEFAULT_STATE_DIR
    config: Path = DEFAULT_CONFIG
    deadline_s: float = RUN_DEADLINE_S


class Provisioner(PolicyPhases, TokenPhases, MigrationPhase):
    """One run: :meth:`run` goes through the phases, then :meth:`as_json` / :meth:`render` report it.

    The Vault-side phases are :class:`.provision_policies.PolicyPhases`, the token phases
    :class:`.provision_tokens.TokenPhases`; this class holds the run's state, the accounts, the
    work done in the homes (as each user) and the timers.
    """

    def __init__(self, options: Options, *, admin_token: str | None, environ: dict[str, str] | None = None) -> None:
        self.o = options
        self.admin_token = admin_token or None
        self.environ = dict(os.environ if environ is None else environ)
        self.host = socket.gethostname()
        self.errors: list[tuple[int, str]] = []
        self.policies_applied: list[str] = []
        self.policies_pruned: list[str] = []
        self.migration: dict[str, list[str]] = {k: [] for k in ("copied", "would_copy", "kept", "nothing", "failed")}
        self.work: dict[str, Work] = {}
        self.removed: dict[str, UserReport] = {}
        self.state = StateFile(options.state_dir)
        self.timers = SystemdTimers(options.systemd_root, options.systemctl)
        self.vault: AdminVault | None = None
        self.settings: Any = None
        self.short_host: str | None = None  # the {host} of the paths (None: the template has none)
        self.vault_id: VaultId = {"addr": "", "namespace": ""}  # set by run(): the Vault this run talks to
        self.roster: Roster | None = None
        self.started = time.monotonic()
        self.deadline = self.started + options.deadline_s

    # -- helpers ---------------------------------------------------------------------------

    def _as_user(self, account: Account, job: Job, payload: bytes = b"") -> dict[str, Any]:
        """:func:`run_as_user` within the run's deadline: every child together gets ``deadline_s``.

        A child gets at most :data:`CHILD_TIMEOUT_S` and never more than what is left of the run;
        once the deadline has passed no child is started (ChildFailed, kind ``timeout``).
        """
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ChildFailed(f"skipped {account.name}: the run's deadline ({self.o.deadline_s:.0f}s) has passed "
                              "(another user's children stalled); the next run retries", "timeout")
        return run_as_user(account, job, payload, timeout=min(CHILD_TIMEOUT_S, left))

    def _each(self, works: Iterable[Work], step: Callable[[Work], None]) -> None:
        """Run ``step`` for every user; an unexpected error is that user's problem, never the run's."""
        for work in works:
            try:
                step(work)
            except Exception as err:  # noqa: BLE001 - isolate users; the type only (no secret in it)
                work.report.flag(ExitCode.CONFIG, f"internal error while working on {work.report.user} "
                                                  f"({type(err).__name__}); the other users were not affected")

    def timer_enabled(self, user: str) -> bool:
        """True when ``user``'s timer is enabled (see :meth:`.timers.SystemdTimers.enabled`)."""
        return self.timers.enabled(user)

    def _location(self, user: str) -> SecretLocation:
        """Where ``user``'s secret is and the name of its policy (:func:`locate`, this host's name)."""
        from claude_auth_sync.plugins.backend_vault.policy import locate

        return locate(user, self.settings, self.short_host)

    def _load_settings(self) -> Any:
        from claude_auth_sync.model import UserIdentity
        from claude_auth_sync.plugin_manager import get_plugin_manager
        from claude_auth_sync.settings import load_settings

        plugins = get_plugin_manager()
        settings = load_settings(plugins.settings_sections(), UserIdentity.current(), system_file=self.o.config,
                                 user_file=NO_USER_FILE, environ=self.environ)
        return settings.section("vault")

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> int:
        """The whole run (under the provisioner lock unless it is a dry run); the exit status."""
        self.roster = load_roster(self.o.roster)
        if not self.roster.names() and not self.o.allow_empty:
            raise ConfigurationError(
                f"the roster {self.o.roster} lists no users: this run would disable every user's timer"
                + (" and revoke the tokens and delete the policies this host made" if self.o.prune else ""),
                remedy="fix the roster; if no user should be left, rerun with --allow-empty")
        # The settings decide where every user's token is sent: only a file root controls counts.
        check_trusted(self.o.config)
        self.settings = self._load_settings()
        from claude_auth_sync.plugins.backend_vault.paths import short_host_name, template_has_host
        from claude_auth_sync.plugins.backend_vault.store import check_address

        # A {host} template needs a host name fit for a path: checked once, before anything is done.
        self.short_host = short_host_name() if template_has_host(self.settings.path_template) else None

        addr = check_address(self.settings.addr, self.settings.allow_insecure_http)
        self.vault = AdminVault.from_settings(addr, self.settings)  # CA, namespace, client certificate
        # Any node of one cluster is one Vault: the cluster_id goes next to the address.
        self.vault_id = vault_identity(addr, getattr(self.settings, "namespace", None), self.vault.cluster_id())
        if self.o.migrate and not self.admin_token:
            raise ConfigurationError("--migrate-to-host-paths needs an admin token in VAULT_TOKEN",
                                     remedy=f"export VAULT_TOKEN=<admin token>; {PROVISION_COMMAND} "
                                            "--migrate-to-host-paths --apply-policies")
        if self.o.apply_policies and not self.admin_token:
            raise ConfigurationError("--apply-policies needs an admin token in VAULT_TOKEN",
                                     remedy=f"export VAULT_TOKEN=<admin token>; {PROVISION_COMMAND} --apply-policies")
        if self.o.dry_run:
            if self.o.state_dir.is_dir():
                self.state.load()
            return self._run_locked()
        self.state.ensure_dir()
        with provision_lock(self.o.state_dir):
            self.state.load()
            try:
                return self._run_locked()
            finally:
                self.state.save()

    def _run_locked(self) -> int:
        assert self.roster is not None
        if self.admin_token and not self._check_admin():
            return self.exit_code()
        local = self._accounts()
        if self.o.migrate:
            self._migrate(local)
        if self.o.apply_policies:
            self._apply_policies()
        elif self.admin_token:
            self._check_policies(local)
        self._each(local, self._inspect)
        self._lookup_tokens(local)
        self._timers(local)
        if self.admin_token:
            self._each([w for w in local if w.needs_mint], self._mint)
        else:
            self._needs_admin(local)
        self._superseded(local)
        with self.timers.deferred_reload():  # one reload for all drop-ins removed
            self._deprovision()
        return self.exit_code()

    def _accounts(self) -> list[Work]:
        """One Work per roster user; those with a usable OS account (see :mod:`.accounts`) returned."""
        assert self.roster is not None
        found: dict[str, Account] = {}
        for entry in self.roster:
            work = self.work[entry.os_user] = Work(report=UserReport(user=entry.os_user, email=entry.email))
            account = Account.lookup(entry.os_user)
            if account is None:
                work.report.account = "missing"
                work.report.notes.append("no OS account on this host: skipped")
            else:
                found[entry.os_user] = account
        refused = refusals(found)
        local: list[Work] = []
        for name, account in found.items():
            work = self.work[name]
            if name in refused:
                work.report.account = "refused"
                work.report.flag(ExitCode.CONFIG, refused[name], f"fix the roster or the account of {name}")
                continue
            work.account = account
            local.append(work)
        return local

    def _inspect(self, work: Work) -> None:
        """As the user: ensure the directories (or say what would change) and read the token file."""
        report, account = work.report, work.account
        assert account is not None
        try:
            result = self._as_user(account, job_inspect(create=not self.o.dry_run))
        except ChildFailed as err:
            report.token = "unknown"
            report.flag(err.exit_code, str(err))
            report.actions.append("fix the home directory")
            return
        changes = [str(c) for c in result.get("changes") or []]
        if self.o.dry_run:
            report.actions.extend(f"would {c}" for c in changes)
        else:
            report.changes.extend(changes)
        state = result.get("token_state")
        if state == "present":
            work.token = str(result["token"])
            report.fingerprint = fingerprint(work.token)
        elif state == "unsafe":
            report.token = "unsafe"
            report.notes.append(str(result.get("why")))
            work.needs_mint = f"unsafe ({result.get('why')})"
        else:
            report.token = "missing"
            work.needs_mint = "missing"

    def _timers(self, local: list[Work]) -> None:
        """Give every local user their timer, their path unit and the drop-ins naming their home
        (only say so in a dry run), and start those of their enabled units that are down
        (:meth:`_start_down`). A home a unit file cannot carry is refused for that user."""
        linked = {id(w): self._units_current(w) for w in local}
        missing = [w for w in local if not linked[id(w)]]
        current = [w for w in local if linked[id(w)]]
        for work in current:
            work.report.timer = "enabled"
        if missing:
            self._enable(missing)
        self._start_down(current)

    def _enable(self, missing: list[Work]) -> None:
        """Link and start the units of the users who lack them (only say so in a dry run).

        In this order, for all users together: every drop-in written, every unit linked (one
        ``systemctl enable --no-reload``), one ``daemon-reload`` (booted systemd only), every unit
        started (one ``systemctl start``). An enable or start call that fails is repeated per user,
        so each report carries the failure of its own units."""
        if self.o.dry_run:
            for work in missing:
                work.report.timer = "disabled"
                work.report.actions.append("would enable timer and path unit")
            return
        # One daemon-reload for the whole run (at the block's end): after every drop-in and link is
        # written, before any unit is started.
        with self.timers.deferred_reload() as reloaded:
            ready = [w for w in missing if self._write_home_dropins(w)]
            if not ready:
                return
            enabling = self._systemctl_each(ready, self.timers.enable)
            self.timers.reload()  # the new links too (enable --no-reload did not)
        if reloaded and not reloaded[0][0]:
            self.errors.append((ExitCode.CONFIG, f"systemctl daemon-reload failed: {reloaded[0][1]}"))
        done = [w for w in ready if self._units_current(w)]
        starting = self._systemctl_each(done, self.timers.start) if done else {}
        why = self.timers.not_active([u for w in done if not starting[w.report.user][0]
                                      for u in (timer_unit(w.report.user), path_unit(w.report.user))])
        for work in ready:
            user = work.report.user
            if work in done:
                work.report.timer = "enabled"
                work.report.actions.append("enabled timer and path unit")
                work.report.changes.append(f"enabled {timer_unit(user)} and {path_unit(user)}")
                ok, text = starting[user]
                if not ok:
                    self._start_failed(work, [timer_unit(user), path_unit(user)], text, why)
            else:
                ok, text = enabling[user]
                work.report.timer = "disabled"
                work.report.flag(ExitCode.CONFIG, f"systemctl enable {timer_unit(user)} {path_unit(user)} failed "
                                                  f"(exit {'0' if ok else 'non-zero'}): {text or 'no symlink created'}")

    def _start_down(self, current: list[Work]) -> None:
        """Start the enabled units that are down (stopped, or failed: ``reset-failed`` first, so a
        start limit does not refuse them), on a booted systemd only (only say so in a dry run).

        One ``systemctl show`` over every user's timer and path unit, then (if any is down) one
        ``reset-failed`` for the failed ones and one ``start`` for all that are down, per user if that
        fails. A unit still down is flagged (78) with the reason ``systemctl show`` gives and, for
        the inotify instance limit, the fix. Units an admin disabled are not among ``current``."""
        down = self.timers.down([u for w in current for u in (timer_unit(w.report.user), path_unit(w.report.user))])
        units = {w.report.user: [u for u in (timer_unit(w.report.user), path_unit(w.report.user)) if u in down]
                 for w in current}
        works = [w for w in current if units[w.report.user]]
        if not works:
            return
        was = {u: f"was {s}" + (f", Result: {r}" if s == "failed" else "") for u, (s, r) in down.items()}
        if self.o.dry_run:
            for work in works:
                work.report.actions.extend(f"would start {u} ({was[u]})" for u in units[work.report.user])
            return
        self.timers.reset_failed([u for u, (state, _) in down.items() if state == "failed"])
        starting = self._systemctl_each(works, self.timers.start, units)
        why = self.timers.not_active([u for w in works if not starting[w.report.user][0] for u in units[w.report.user]])
        for work in works:
            ok, text = starting[work.report.user]
            if ok:
                work.report.actions.extend(f"started {u} ({was[u]})" for u in units[work.report.user])
                work.report.changes.extend(f"started {u}" for u in units[work.report.user])
            else:
                self._start_failed(work, units[work.report.user], text, why)

    def _start_failed(self, work: Work, units: list[str], text: str, why: dict[str, str]) -> None:
        """Flag (78) a ``systemctl start`` of ``units`` that failed: its output and why each unit is
        down; the sysctl fix as the next step when the inotify instances ran out."""
        reasons = [f"{u} {why[u]}" for u in units if u in why]
        detail = "; ".join([text, *reasons] if text else reasons) or "no output"
        fix = INOTIFY_FIX if any(inotify_exhausted(why[u]) for u in units if u in why) else None
        work.report.flag(ExitCode.CONFIG, f"systemctl start {' '.join(units)} failed: {detail}", fix)

    def _systemctl_each(self, works: list[Work], call: Callable[[list[str]], tuple[bool, str]],
                        units: dict[str, list[str]] | None = None) -> dict[str, tuple[bool, str]]:
        """``call`` (enable or start) on every user's units (``units``; by default their timer and path
        unit) in one call; if that fails, one call per user (enabling and starting are idempotent), so
        each user gets the outcome of the call that named only their own units. (succeeded, output)
        per user."""
        mine = units or {w.report.user: [timer_unit(w.report.user), path_unit(w.report.user)] for w in works}
        ok, text = call([u for w in works for u in mine[w.report.user]])
        if ok or len(works) == 1:
            return {w.report.user: (ok, text) for w in works}
        return {w.report.user: call(mine[w.report.user]) for w in works}

    def _units_current(self, work: Work) -> bool:
        user, home = work.report.user, work.account.home if work.account else ""
        return (self.timers.enabled(user) and self.timers.path_enabled(user)
                and self.timers.dropins_current(user, home))

    def _write_home_dropins(self, work: Work) -> bool:
        home = work.account.home if work.account else ""
        if not safe_home(home):
            work.report.timer = "disabled"
            work.report.flag(ExitCode.CONFIG, f"home {safe_text(home, 100)!r} cannot be named in a unit file "
                                              "(spaces, %, quotes or ..): give the account a plain home path")
            return False
        if not self.timers.dropins_current(work.report.user, home):
            self.timers.write_dropins(work.report.user, home)
            work.report.changes.append(f"units of {work.report.user} point at {home}")
        return True

    # -- results ---------------------------------------------------------------------------

    def exit_code(self) -> int:
        """The worst severity of the run's errors and of every user's report."""
        severities = [code for code, _ in self.errors]
        severities += [w.report.severity for w in self.work.values()]
        severities += [r.severity for r in self.removed.values()]
        return worst(severities)

    def reports(self) -> list[UserReport]:
        return [w.report for w in self.work.values()] + list(self.removed.values())

    def next_steps(self) -> list[str]:
        steps: list[str] = []
        for report in self.reports():
            steps.extend(s for s in report.next_steps if s not in steps)
        return steps

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` object: no token, fingerprints only."""
        return {
            "host": self.host,
            "roster": str(self.o.roster),
            "admin": bool(self.admin_token),
            "dry_run": self.o.dry_run,
            "exit_code": self.exit_code(),
            "errors": [msg for _, msg in self.errors],
            "users": [w.report.as_json() for w in self.work.values()],
            "removed": [r.as_json() for r in self.removed.values()],
            "policies": {"applied": self.policies_applied, "pruned": self.policies_pruned},
            **({"migration": self.migration} if self.o.migrate else {}),
            "next_steps": self.next_steps(),
            "vault_requests": dict(self.vault.requests) if self.vault else {"user": 0, "admin": 0},
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def render(self, stream: Any) -> None:
        """The human-readable report (user and Vault text made inert: :mod:`.provision_render`)."""
        from .provision_render import render_report

        render_report(self, stream, duration)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``t3-provision-users`` console script (:func:`.provision_cli.main`)."""
    from .provision_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
