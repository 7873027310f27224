"""``t3-provision-users --offboard USER``: take one person off this workstation's agent.

Steps, in this order, each reported as done, would be done (``--dry-run``), pending or nothing to
do:

1. **roster**: a user still in the roster is refused (exit 78, before anything changes): the
   hourly provisioner would re-enable their units at once and the next admin run would mint a new
   token. The administrator removes them from the roster first (the README says how);
   ``--force`` skips this check (``setup-devvm.sh --uninstall --purge`` uses it, as it removes
   the roster too);
2. **units**: ``claude-auth-sync@USER.timer`` and ``.path`` disabled (and stopped, on a booted
   systemd, with a running ``claude-auth-sync@USER.service``), the provisioner's drop-ins removed;
3. **token**: every accessor the provisioner recorded for the user (:class:`.state.StateFile`:
   the current one and superseded ones), plus the token in the user's token file when it is the
   agent's (exactly the user's policy), revoked by accessor with the admin token from
   ``VAULT_TOKEN``; the user's entry then leaves the state file. Only at the Vault the state file
   records for an accessor (issue 14, item 7): one recorded at another Vault is kept and flagged
   (78, with the command for that Vault); an old record without a Vault is revoked once
   ``lookup-accessor`` finds it here, else forgotten (nothing renews it once the units are off, so
   it expires within its period). Without an admin token nothing is revoked: the step is
   *pending* (exit 1) and the token file is kept as the handle;
4. **home**: as the user (a forked child, :mod:`.offboard_home`): the token file (once its token
   is revoked, or dead here and recorded; a token this Vault does not know and nothing records
   is kept: it may live at another Vault; so is a file the agent would refuse, a symlink aside,
   which goes as a link), interrupted writes' temporary files, the state
   directory. Never the credentials file. A user without an account on this host has no home to
   clean, and the home of an account the provisioner refuses (root, a system account, an alias
   of another uid's name: :func:`.accounts.refusals`) is never touched (both said);
5. **secret**: kept, unless ``--destroy-secret``: then the user's KV v2 secret is deleted with all
   its versions and metadata (``DELETE <mount>/metadata/<path>``); that flag needs the admin token
   (refused with 78 before anything changes without one).

Idempotent: a second run finds nothing to do, says so, and exits 0. Exit status: 0 done or nothing
to do; 1 a revocation waits for an admin token; 75 Vault unreachable or a child timed out; 78 a
person must act (still in the roster, an unsafe home, ``systemctl`` failed, Vault refused). No
token is ever printed; values from Vault or the user pass through :func:`safe_text`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.terminal_text import safe_text
from claude_auth_sync.usernames import check_username

from .accounts import refusals
from .as_user import Account, ChildFailed, run_as_user
from .offboard_home import job_offboard_home, offboard_payload
from .provision_report import NEEDS_ADMIN, worst
from .provision_tokens import drift
from .roster import load_roster
from .state import StateFile, provision_lock, vault_identity, vault_label
from .timers import SYSTEMCTL_ENV, SystemdTimers, dropins, path_unit, timer_unit
from .trusted_file import check_trusted
from .user_home import job_inspect
from .vault_admin import AdminVault, VaultFailure

__all__ = ["Offboarding", "OffboardOptions", "run_offboard"]

OFFBOARD_COMMAND = "sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT /usr/local/bin/t3-provision-users --offboard"


@dataclass
class OffboardOptions:
    user: str
    roster: Path
    config: Path
    state_dir: Path
    systemd_root: Path | None = None
    systemctl: str = "systemctl"
    dry_run: bool = False
    json: bool = False
    destroy_secret: bool = False
    force: bool = False


@dataclass
class Step:
    """One step's outcome: ``state`` is done | would | pending | nothing to do | failed."""

    name: str
    state: str = "nothing to do"
    details: list[str] = field(default_factory=list)
    severity: int = int(ExitCode.OK)

    def did(self, detail: str, dry_run: bool) -> None:
        if self.state not in ("failed", "pending"):  # a step that failed in part stays failed
            self.state = "would" if dry_run else "done"
        self.details.append(detail)

    def fail(self, severity: int, detail: str, state: str = "failed") -> None:
        self.state, self.severity = state, int(worst([self.severity, int(severity)]))
        self.details.append(detail)

    def as_json(self) -> dict[str, Any]:
        return {"step": self.name, "state": self.state, "details": self.details}


class Offboarding:
    """One offboarding run of ``options.user``: :meth:`run`, then :meth:`as_json` / :meth:`render`."""

    def __init__(self, options: OffboardOptions, admin_token: str | None) -> None:
        self.o = options
        self.user = options.user
        self.admin_token = admin_token or None
        self.steps = {name: Step(name) for name in ("roster", "units", "token", "home", "secret")}
        self.next_steps: list[str] = []
        self.timers = SystemdTimers(options.systemd_root, options.systemctl)
        self.state = StateFile(options.state_dir)
        self.account: Account | None = None
        self.refused_home: str | None = None  # why the account's home is never touched (root, a system account)
        self.minted_at: tuple[list[dict[str, Any]], bool] = ([], False)  # (other Vaults of their tokens, any here)
        self._vault: AdminVault | None = None
        self._settings: Any = None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """All steps (under the provisioner's lock unless it is a dry run); the exit status."""
        check_username(self.user)
        if self.o.destroy_secret and not self.admin_token:
            raise ConfigurationError("--destroy-secret needs an admin token in VAULT_TOKEN",
                                     remedy=f"export VAULT_TOKEN=<admin token>; {OFFBOARD_COMMAND} {self.user} "
                                            "--destroy-secret")
        self._roster()
        self.account = Account.lookup(self.user)
        if self.account is not None:  # the provisioner's rule: only a person's own login account
            self.refused_home = refusals({self.user: self.account}).get(self.user)
            if self.refused_home:
                self.account = None
        if self.o.dry_run:
            if self.o.state_dir.is_dir():
                self.state.load()
            return self._steps()
        self.state.ensure_dir()
        with provision_lock(self.o.state_dir):
            self.state.load()
            try:
                return self._steps()
            finally:
                self.state.save()

    def _steps(self) -> int:
        self._units()
        token_dead = self._token()
        self._home(token_dead)
        self._secret()
        return self.exit_code()

    def exit_code(self) -> int:
        return worst([s.severity for s in self.steps.values()])

    @property
    def nothing_to_do(self) -> bool:
        return all(s.state == "nothing to do" for s in self.steps.values())

    # -- 1. roster -------------------------------------------------------------------------

    def _roster(self) -> None:
        step = self.steps["roster"]
        if self.o.force:
            step.details.append("not checked (--force)")
            return
        if not self.o.roster.exists():
            step.details.append(f"no roster at {self.o.roster}")
            return
        if self.user in load_roster(self.o.roster).names():
            raise ConfigurationError(
                f"{self.user} is still in the roster {self.o.roster}: the provisioner would enable them again",
                remedy=f"remove them from {self.o.roster} (and scripts/workstation/roster.yaml), then rerun "
                       f"{OFFBOARD_COMMAND} {self.user}")
        step.details.append(f"not in {self.o.roster}")

    # -- 2. units --------------------------------------------------------------------------

    def _units(self) -> None:
        step, user = self.steps["units"], self.user
        enabled = [u for u, on in ((timer_unit(user), self.timers.enabled(user)),
                                   (path_unit(user), self.timers.path_enabled(user))) if on]
        if enabled:
            if not self.o.dry_run:
                _, text = self.timers.systemctl("disable", enabled)
                if self.timers.enabled(user) or self.timers.path_enabled(user):
                    step.fail(ExitCode.CONFIG, f"systemctl disable {' '.join(enabled)} failed: {text}")
                    return
            step.did(f"disabled {', '.join(enabled)}", self.o.dry_run)
        present = [name for name in dropins(user, "/") if (self.timers.unit_dir / name).exists()]
        if present:
            if not self.o.dry_run:
                self.timers.remove_dropins(user)
            step.did("removed the drop-ins " + ", ".join(present), self.o.dry_run)
        self._stop_service(step)

    def _stop_service(self, step: Step) -> None:
        """On a booted systemd: stop the user's service if a run is in progress."""
        if self.o.systemd_root is not None or not Path("/run/systemd/system").is_dir():
            return
        service = f"claude-auth-sync@{self.user}.service"
        argv = [self.o.systemctl, "--no-ask-password", "is-active", "--quiet", service]
        active = subprocess.run(argv, env=SYSTEMCTL_ENV, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=120, check=False).returncode == 0
        if active:
            if not self.o.dry_run:
                subprocess.run([self.o.systemctl, "--no-ask-password", "stop", service], env=SYSTEMCTL_ENV,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)
            step.did(f"stopped {service}", self.o.dry_run)

    # -- 3. token --------------------------------------------------------------------------

    def _token(self) -> bool:
        """Revoke the user's tokens; True when no live agent token is left in the token file."""
        step = self.steps["token"]
        entry = self.state.users.get(self.user) or {}
        accessors = sorted({a for a in [entry.get("accessor"), *entry.get("superseded", [])] if a})
        file_accessor, file_live = self._file_token(step)
        # A live token in the file that is not the agent's (the person's own, or one Vault would
        # not describe) is never revoked here, so its file is kept whatever happens to the others.
        file_done = not (file_live and not file_accessor)
        if file_accessor and file_accessor not in accessors:
            accessors.append(file_accessor)
        if not accessors:
            return file_done
        if not self.admin_token:
            step.fail(NEEDS_ADMIN, f"{len(accessors)} token(s) to revoke: needs an admin token", state="pending")
            self._next(f"export VAULT_TOKEN=<admin token>; {OFFBOARD_COMMAND} {self.user}")
            return False
        here, elsewhere, unknown, unconfirmed = self._sort_accessors([a for a in accessors if a != file_accessor], step)
        if file_accessor:
            here.append(file_accessor)  # proved here: looked up with itself
        self.minted_at = ([v for a in elsewhere if (v := self.state.vault_of(a))], bool(here))
        dry_run = self.o.dry_run
        if dry_run:  # the same report as the real run, the revocations and the state file aside
            if here:
                step.did(f"revoke {len(here)} token(s) by accessor", True)
        else:
            left = [a for a in here if not self._revoke(a, step)]
            if len(here) > len(left):
                step.did(f"revoked {len(here) - len(left)} token(s) by accessor", False)
            if left:  # the state file keeps every accessor; a rerun revokes again (revoking twice is harmless)
                self._next(f"rerun {OFFBOARD_COMMAND} {self.user} once Vault answers")
                return False
        if unknown:
            step.did(f"{'forget' if dry_run else 'forgot'} {len(unknown)} old record(s) this Vault does not know "
                     "(revoked or expired already, or minted at another Vault: nothing renews them now, so they "
                     "expire)", dry_run)
        kept = elsewhere + unconfirmed  # never forgotten: a rerun (or that Vault) deals with them
        if unconfirmed:
            step.fail(ExitCode.TEMPFAIL, f"could not tell whether this Vault knows {len(unconfirmed)} recorded "
                                         "token(s) (lookup-accessor failed): kept in the state file")
            self._next(f"rerun {OFFBOARD_COMMAND} {self.user} once Vault answers, with an admin token that may "
                       "use auth/token/lookup-accessor (deploy/vault/t3-provisioner-admin.hcl)")
        if dry_run:
            return file_done
        if kept:
            entry["accessor"], rest = kept[0], kept[1:]
            entry.pop("superseded", None)
            if rest:
                entry["superseded"] = rest
        else:
            self.state.users.pop(self.user, None)
        return file_done

    def _sort_accessors(self, recorded: list[str], step: Step) -> tuple[list[str], list[str], list[str], list[str]]:
        """(revocable here, recorded at another Vault, old records this Vault says it does not know,
        old records it could not be asked about).

        The provisioner's rule, by the same function (:meth:`.state.StateFile.placement`; issue 14,
        item 7): an accessor is revoked only at the Vault (cluster and namespace) the state file
        records for it; one recorded at another Vault is kept and flagged (78) with the command
        for that Vault; an old record without a Vault counts as here once ``lookup-accessor`` finds
        it (then stamped), is forgotten when Vault answers it does not know it (nothing renews it once
        the units are off), and is kept when Vault could not be asked (not answering, or an admin
        token that may not look accessors up): a record is never dropped on a transient error."""
        if not recorded:
            return [], [], [], []
        settings = self.settings()
        vault_id = vault_identity(settings.addr, getattr(settings, "namespace", None), self.vault().cluster_id())
        here: list[str] = []
        elsewhere: list[str] = []
        unknown: list[str] = []
        unconfirmed: list[str] = []
        for accessor in recorded:
            place = self.state.placement(accessor, vault_id, self._known_here)  # the provisioner's rule
            if place == "here":
                here.append(accessor)
            elif place == "unconfirmed":
                unconfirmed.append(accessor)
            elif place == "unknown":
                unknown.append(accessor)
            else:  # "elsewhere": recorded at another Vault
                vault = self.state.vault_of(accessor)
                assert vault is not None  # placement says "elsewhere" only for a recorded Vault
                elsewhere.append(accessor)
                step.fail(ExitCode.CONFIG, f"a token minted at another Vault ({vault_label(vault)}) is not revoked here")
                self._next(f"VAULT_ADDR={safe_text(vault['addr'], 200)} {OFFBOARD_COMMAND} {self.user}")
        return here, elsewhere, unknown, unconfirmed

    def _known_here(self, accessor: str) -> bool | None:
        """Does this Vault know ``accessor``? (``lookup-accessor`` with the admin token)."""
        return self.vault().knows_accessor(self.admin_token, accessor)

    def _file_token(self, step: Step) -> tuple[str | None, bool]:
        """(accessor of the agent's token in the user's file, whether it is still valid)."""
        if self.account is None:
            return None, False
        try:
            found = run_as_user(self.account, job_inspect(create=False))
        except ChildFailed as err:  # never removed unread: it may hold a valid token nothing records
            step.details.append(f"token file not read: {safe_text(str(err), 200)}: kept")
            return None, True
        if found.get("token_state") == "unsafe" and not str(found.get("why")).endswith("is a symlink"):
            # A file the agent would refuse (mode, links, owner, not a regular file, malformed) may
            # still hold a valid token nothing records: kept, never removed unread. A link holds none.
            step.details.append(f"token file not read: {safe_text(str(found.get('why')), 200)}: not revoked, kept")
            return None, True
        if found.get("token_state") != "present":
            return None, False
        try:
            data = self.vault().call("user", str(found["token"]), "get", "auth/token/lookup-self").get("data") or {}
        except VaultFailure as err:
            if err.kind == "forbidden":
                from claude_auth_sync.fingerprint import fingerprint

                if (self.state.users.get(self.user) or {}).get("fingerprint") == fingerprint(str(found["token"])):
                    return None, False  # dead here; its record (kept unless revoked here) is the handle
                # Expired, or minted at another Vault: nothing records it, so the file stays the handle.
                step.details.append("the token file holds a token this Vault does not know (expired, or minted at "
                                    "another Vault) and the state file does not record it: not revoked, kept")
                return None, True
            step.fail(err.exit_code, f"cannot look up the token file's token: {err}")
            return None, True
        from claude_auth_sync.plugins.backend_vault.policy import locate

        if drift(self.user, data, locate(self.user, self.settings()).policies):
            step.details.append("the token file holds a token not minted for the agent: not revoked, kept")
            return None, True
        return (str(data["accessor"]) if data.get("accessor") else None), True

    def _revoke(self, accessor: str, step: Step) -> bool:
        try:
            self.vault().call("admin", str(self.admin_token), "post", "auth/token/revoke-accessor",
                              {"accessor": accessor})
        except VaultFailure as err:
            step.fail(err.exit_code, f"cannot revoke a token: {err}")
            return False
        return True

    # -- 4. home ---------------------------------------------------------------------------

    def _home(self, token_dead: bool) -> None:
        step = self.steps["home"]
        if self.account is None:
            step.details.append(f"{safe_text(self.refused_home, 300)}: its home is not touched" if self.refused_home
                                else f"{self.user} has no account on this host: no home to clean")
            return
        try:
            result = run_as_user(self.account, job_offboard_home,
                                 offboard_payload(dry_run=self.o.dry_run, remove_token=token_dead))
        except ChildFailed as err:
            step.fail(err.exit_code, f"{safe_text(str(err), 300)}; nothing more was removed there")
            self._next(f"inspect {safe_text(self.account.home, 100)}, then rerun {OFFBOARD_COMMAND} {self.user}")
            return
        for change in result.get("changes") or []:
            step.did(safe_text(str(change), 300), self.o.dry_run)
        for kept in result.get("kept") or []:
            step.details.append(f"kept {safe_text(str(kept), 300)}")
        if result.get("refused"):  # the state directory, after the token file's directory was done
            failed = ChildFailed(str(result["refused"]), str(result.get("refused_kind") or "unsafe"))
            step.fail(failed.exit_code, f"{safe_text(str(failed), 300)}; nothing more was removed there")
            self._next(f"inspect {safe_text(self.account.home, 100)}, then rerun {OFFBOARD_COMMAND} {self.user}")

    # -- 5. secret -------------------------------------------------------------------------

    def _secret(self) -> None:
        step = self.steps["secret"]
        if not self.o.destroy_secret:
            step.details.append("kept (--destroy-secret deletes it)")
            return
        others, any_here = self.minted_at
        if others and not any_here:  # the agent backed up at the Vault that minted its token, not here
            step.fail(ExitCode.CONFIG, f"not destroyed: {self.user}'s tokens are recorded at another Vault "
                                       f"({vault_label(others[0])}), where the agent's copy is")
            self._next(f"VAULT_ADDR={safe_text(others[0]['addr'], 200)} {OFFBOARD_COMMAND} {self.user} --destroy-secret")
            return
        from claude_auth_sync.plugins.backend_vault.policy import locate

        metadata = locate(self.user, self.settings()).metadata
        try:
            self.vault().call("admin", str(self.admin_token), "get", metadata)
        except VaultFailure as err:
            if err.kind == "not_found":
                step.details.append(f"{metadata} does not exist")
            else:
                step.fail(err.exit_code, f"cannot read {metadata}: {err}")
            return
        if not self.o.dry_run:
            try:
                self.vault().call("admin", str(self.admin_token), "delete", metadata)
            except VaultFailure as err:
                step.fail(err.exit_code, f"cannot delete {metadata}: {err}")
                return
        from claude_auth_sync.plugins.backend_vault.paths import template_has_host

        shared = "" if template_has_host(self.settings().path_template) else \
            f"; the per-user path: the copy every workstation of {self.user} uses"
        verb = "destroy" if self.o.dry_run else "destroyed"
        step.did(f"{verb} {metadata} (every version and its metadata{shared})", self.o.dry_run)

    # -- Vault -----------------------------------------------------------------------------

    def settings(self) -> Any:
        """The ``vault`` settings from the root-owned config file and the environment."""
        if self._settings is None:
            from claude_auth_sync.model import UserIdentity
            from claude_auth_sync.plugin_manager import get_plugin_manager
            from claude_auth_sync.settings import load_settings

            from .provision import NO_USER_FILE

            check_trusted(self.o.config)
            loaded = load_settings(get_plugin_manager().settings_sections(), UserIdentity.current(),
                                   system_file=self.o.config, user_file=NO_USER_FILE)
            self._settings = loaded.section("vault")
        return self._settings

    def vault(self) -> AdminVault:
        if self._vault is None:
            from claude_auth_sync.plugins.backend_vault.store import check_address

            settings = self.settings()
            addr = check_address(settings.addr, settings.allow_insecure_http)
            self._vault = AdminVault.from_settings(addr, settings)  # CA, namespace, client certificate
        return self._vault

    # -- output ----------------------------------------------------------------------------

    def _next(self, step: str) -> None:
        if step not in self.next_steps:
            self.next_steps.append(step)

    def as_json(self) -> dict[str, Any]:
        return {"user": self.user, "dry_run": self.o.dry_run, "exit_code": self.exit_code(),
                "nothing_to_do": self.nothing_to_do, "steps": [s.as_json() for s in self.steps.values()],
                "next_steps": self.next_steps}

    def render(self, stream: Any) -> None:
        what = "offboarding (dry run, nothing changed)" if self.o.dry_run else "offboarding"
        if self.nothing_to_do:
            print(f"{what} {self.user}: nothing to do", file=stream)
        else:
            print(f"{what} {self.user}:", file=stream)
        for step in self.steps.values():
            print(f"  {step.name:7} {step.state:14} {'; '.join(step.details) or '-'}", file=stream)
        for line in self.next_steps:
            print(f"next: {line}", file=stream)


def run_offboard(options: OffboardOptions, admin_token: str | None) -> int:
    """Run the offboarding and print its report (``--json``: one object on stdout); the exit status.
    Errors of ours propagate (the caller prints their one line)."""
    offboarding = Offboarding(options, admin_token)
    code = offboarding.run()
    if options.json:
        print(json.dumps(offboarding.as_json()))
    else:
        with contextlib.suppress(BrokenPipeError):
            offboarding.render(sys.stdout)
    return code
