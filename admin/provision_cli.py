"""``t3-provision-users``' command line: arguments, the admin token, the one-line failure.

Guarantees of :func:`main`:

* ``VAULT_TOKEN`` is taken first of all: removed from ``os.environ`` and scrubbed from the original
  environment block (:mod:`.environ_block`), so no child ever inherits or shows it; a value that is
  not one word of printable ASCII (:func:`token_from_bytes`, the agent's own check) is refused (78);
* not root is exit 77, before anything is read;
* never a traceback: an error of ours is its exit status and one line on stderr (plus the JSON
  object with ``--json``); anything unexpected is 78 with one line naming only the error's type.

The console script's target stays :func:`claude_auth_sync.admin.provision.main`, which calls this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from claude_auth_sync import __version__
from claude_auth_sync.errors import CasError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault.paths import DEFAULT_TEMPLATE
from claude_auth_sync.plugins.backend_vault.token_file import MalformedToken, token_from_bytes
from claude_auth_sync.terminal_text import safe_text

from . import environ_block
from .provision import DEFAULT_CONFIG, RUN_DEADLINE_S, Options, Provisioner
from .provision_report import NOT_ROOT
from .roster import DEFAULT_ROSTER
from .state import DEFAULT_STATE_DIR

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t3-provision-users",
        description="Provision claude-auth-sync for every roster user (run as root). With an admin Vault token "
                    "in VAULT_TOKEN it mints missing, expired or drifted per-user tokens; without one it only "
                    "checks, and exits non-zero when an admin run is needed.",
    )
    parser.add_argument("--roster", type=Path, default=DEFAULT_ROSTER, help=f"roster file (default {DEFAULT_ROSTER})")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of a table")
    parser.add_argument("--apply-policies", action="store_true",
                        help="write every roster user's Vault policy (the Vault stack; admin token needed)")
    parser.add_argument("--prune", action="store_true",
                        help="with an admin token: revoke removed users' tokens; with --apply-policies also "
                             "delete their policies (their secrets are kept). Only what this host's state file "
                             "records minting or creating at this Vault: never another host's users")
    parser.add_argument("--allow-empty", action="store_true",
                        help="accept a roster without users (otherwise refused: it would deprovision everyone)")
    migrate = parser.add_argument_group("moving to per-host paths (see claude_auth_sync.admin.provision_migrate)")
    migrate.add_argument("--migrate-to-host-paths", dest="migrate", action="store_true",
                         help="admin token: copy each local user's latest per-user secret to their empty per-host "
                              "path (vault.path_template with {host}) as its version 1; never overwrites")
    migrate.add_argument("--migrate-from", metavar="TEMPLATE", default=DEFAULT_TEMPLATE,
                         help=f"the per-user template the secrets come from (default {DEFAULT_TEMPLATE})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"system settings file (default {DEFAULT_CONFIG}); VAULT_ADDR overrides its vault.addr")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"root-only bookkeeping of minted token accessors (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--systemd-root", type=Path, default=None,
                        help="operate on the unit files below this root (systemctl --root), e.g. for tests")
    parser.add_argument("--systemctl", default="systemctl", help="systemctl binary (default: from PATH)")
    parser.add_argument("--deadline", type=float, default=RUN_DEADLINE_S, metavar="SECONDS",
                        help=f"time for all work done as the users together (default {RUN_DEADLINE_S:.0f}); "
                             "users left when it has passed are skipped (exit 75) and retried next run")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    offboard = parser.add_argument_group("offboarding one user (see claude_auth_sync.admin.offboard)")
    offboard.add_argument("--offboard", metavar="USER",
                          help="disable USER's units, revoke their tokens (admin token), remove the agent's files "
                               "from their home; refused while USER is still in the roster")
    offboard.add_argument("--destroy-secret", action="store_true",
                          help="with --offboard: also delete USER's Vault secret, every version (admin token)")
    offboard.add_argument("--force", action="store_true",
                          help="with --offboard: even if USER is still in the roster (setup-devvm.sh --uninstall --purge)")
    return parser


def _take_admin_token() -> tuple[str | None, str | None]:
    """``(admin token, problem)`` from ``VAULT_TOKEN``, which is then gone from this process.

    Removed from ``os.environ`` *and* overwritten in the original environment block
    (:mod:`.environ_block`), so neither ``/proc/<pid>/environ`` of this process nor that of any
    child forked later shows it. A token that is not one word of printable ASCII is a problem.
    """
    environ_block.scrub("VAULT_TOKEN")
    raw = os.environ.pop("VAULT_TOKEN", None)
    if not raw:
        return None, None
    try:
        return token_from_bytes(os.fsencode(raw)), None
    except MalformedToken as err:
        return None, f"VAULT_TOKEN {err}"


def _options(args: argparse.Namespace) -> Options:
    return Options(
        roster=args.roster, dry_run=args.dry_run, json=args.json, apply_policies=args.apply_policies,
        prune=args.prune, allow_empty=args.allow_empty, migrate=args.migrate, migrate_from=args.migrate_from,
        systemd_root=args.systemd_root, systemctl=args.systemctl, state_dir=args.state_dir,
        config=args.config, deadline_s=args.deadline,
    )


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """One line on stderr (and the JSON object with ``--json``); returns ``code``."""
    line = " ".join(safe_text(message, 2000).split())
    if args.json:
        print(json.dumps({"exit_code": int(code), "errors": [line]}))
    print(f"t3-provision-users: {line}", file=sys.stderr)
    return int(code)


def _offboard(args: argparse.Namespace, admin_token: str | None) -> int:
    """``--offboard USER`` (:mod:`.offboard`), with the same one-line failures as a provisioning run."""
    from .offboard import OffboardOptions, run_offboard

    options = OffboardOptions(
        user=args.offboard, roster=args.roster, config=args.config, state_dir=args.state_dir,
        systemd_root=args.systemd_root, systemctl=args.systemctl, dry_run=args.dry_run, json=args.json,
        destroy_secret=args.destroy_secret, force=args.force)
    try:
        return run_offboard(options, admin_token)
    except CasError as err:
        return _fail(args, int(err.exit_code), str(err))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the contract: 78 and one line, never a traceback
        return _fail(args, ExitCode.CONFIG, f"internal error ({type(err).__name__}) while offboarding; "
                                            "rerun with --dry-run to see the state, and report this")


def main(argv: Sequence[str] | None = None) -> int:
    """The command. Never a traceback: an unexpected error is exit 78 with one line naming its type."""
    args = build_parser().parse_args(argv)
    admin_token, problem = _take_admin_token()  # first of all: no child may inherit it
    if problem:
        return _fail(args, ExitCode.CONFIG, problem)
    if os.geteuid() != 0:
        return _fail(args, NOT_ROOT, "must run as root (it works as each roster user in turn)")
    if (args.destroy_secret or args.force) and not args.offboard:
        return _fail(args, ExitCode.CONFIG, "--destroy-secret and --force go with --offboard USER")
    if args.offboard is not None:
        return _offboard(args, admin_token)
    provisioner = Provisioner(_options(args), admin_token=admin_token)
    try:
        code = provisioner.run()
        if args.json:
            print(json.dumps(provisioner.as_json(), indent=None, sort_keys=False))
        else:
            provisioner.render(sys.stdout)
        return code
    except CasError as err:
        return _fail(args, int(err.exit_code), str(err))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the contract: 78 and one line, never exit 1 and a traceback
        return _fail(args, ExitCode.CONFIG, f"internal error ({type(err).__name__}); nothing more was done. "
                                            "Rerun with --dry-run to see the state, and report this")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
