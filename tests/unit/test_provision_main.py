"""t3-provision-users' ``main``: any unexpected error is exit 78 and one line (issue 11, item 11)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claude_auth_sync.admin import provision


def test_an_unexpected_error_is_exit_78_with_one_line_and_no_secret(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the suite runs as root"

    def explode(self: provision.Provisioner) -> int:
        raise UnicodeEncodeError("latin-1", "hvs.SECRET\ufffd", 10, 11, "ordinal not in range(256)")

    monkeypatch.setattr(provision.Provisioner, "run", explode)
    for extra in ([], ["--json"]):
        monkeypatch.setenv("VAULT_TOKEN", "hvs.SECRETADMIN")
        code = provision.main(["--roster", str(tmp_path / "r.yaml"), "--state-dir", str(tmp_path), *extra])
        out, err = capsys.readouterr()
        assert code == 78
        assert len(err.strip().splitlines()) == 1 and "internal error (UnicodeEncodeError)" in err
        assert "Traceback" not in err and "SECRET" not in out + err
        assert "VAULT_TOKEN" not in os.environ  # taken out of the environment at once


def test_a_vault_token_no_http_header_can_carry_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.\u00ff\u2603")
    assert provision.main(["--roster", str(tmp_path / "r.yaml")]) == 78
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "VAULT_TOKEN holds characters no Vault token has" in err
