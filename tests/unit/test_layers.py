"""The three layers are a contract the build runs, not prose: import-linter on the installed layout.

The package is assembled as pip installs it (``core/`` as ``claude_auth_sync``, ``plugins/`` and
``admin/`` inside it) in a temporary directory, and ``lint-imports`` runs the contracts of
``pyproject.toml`` against it. A second copy with one deliberate kernel->plugin import shows
that the contract fails when it should.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"


def assemble(target: Path) -> Path:
    """``target/claude_auth_sync`` laid out like the installed distribution."""
    package = target / "claude_auth_sync"
    shutil.copytree(REPO / "core", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "plugins", package / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "admin", package / "admin", ignore=shutil.ignore_patterns("__pycache__"))
    return package


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    linter = Path(sys.executable).parent / "lint-imports"
    assert linter.exists(), "import-linter is required (pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(linter), str(PYPROJECT), "--no-cache"], capture_output=True, text=True,
                          env=env, cwd=root, timeout=120, check=False)


def test_the_contract_names_every_kernel_module() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    kernel = next(c for c in contracts if c["id"] == "kernel")
    expected = {f"claude_auth_sync.{p.stem}" for p in (REPO / "core").glob("*.py") if p.stem != "__init__"}
    assert set(kernel["source_modules"]) == expected, "a new core module must be listed in the kernel contract"


def test_the_layers_hold(tmp_path: Path) -> None:
    assemble(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "stray"), [
    ("cycle.py", "from claude_auth_sync.plugins.backend_vault import store"),
    ("runner.py", "    from claude_auth_sync.admin import roster"),  # a lazy import counts too
    ("plugins/sink_file/__init__.py", "import claude_auth_sync.admin.fleet"),
    ("admin/fleet.py", "from claude_auth_sync.plugins.restore_credentials_file import credentials_file"),
])
def test_a_stray_import_breaks_the_contract(tmp_path: Path, module: str, stray: str) -> None:
    package = assemble(tmp_path)
    path = package / module
    text = path.read_text()
    if stray.startswith("    "):
        text += f"\n\ndef _stray() -> None:\n{stray}\n"
    else:
        text += f"\n{stray}  # noqa\n"
    path.write_text(text)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "0 broken" not in result.stdout
