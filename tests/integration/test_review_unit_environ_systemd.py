"""Differential test: admin/unit_environ.parse_environment_file against the real systemd 252.

Each case is an ``/etc/default``-style file; a oneshot template unit with
``EnvironmentFile=-<case file>`` (as ``claude-auth-sync@.service`` has) dumps the environment the
process really gets (``env -0``) inside a booted container (:mod:`tests.support.nspawn`). The
variables the file gave (the dump minus the unit's environment without a file) must be exactly
what our parser returns for the same bytes (decoded as :func:`read_environment_file` decodes).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from claude_auth_sync.admin.unit_environ import parse_environment_file
from tests.support.nspawn import Container

pytestmark = pytest.mark.real

CASES: dict[str, bytes] = {
    "basic": b"HTTPS_PROXY=http://proxy.example:3128\nNO_PROXY=localhost\n",
    "quotes": b"A1='single # not a comment'\nA2=\"dq \\\"x\\\" \\$y \\n \\\\ \\`\"\nA3=unq\\ uoted  \n",
    "comment_backslash": b"# a comment ending in a backslash \\\nHTTPS_PROXY=http://hidden.example\nA=1\n",
    "comment_two_backslashes": b"# c \\\\\nB=2\n",
    "semicolon_comment": b"; x\nC=3\n  # indented comment\n",
    "crlf": b"D=4\r\nE='5'\r\nHTTPS_PROXY=http://crlf.example\r\n",
    "bom": b"\xef\xbb\xbfF=6\nG=7\n",
    "empty": b"H=\nI=''\nJ=\"\"\n",
    "duplicate": b"K=1\nK=2\nhttps_proxy=a\nhttps_proxy=b\n",
    "unterminated_single_eof": b"L='abc",
    "unterminated_single_nl": b"M='abc\nN=1\n",
    "unterminated_double_eof": b'O="abc',
    "invalid_utf8": b"P=\xff\nQ=ok\n",
    "nul": b"R=a\x00b\nS=ok\n",
    "control_in_quotes": b"T=\"a\tb\"\nU='x\x01y'\nV=ok\n",
    "continuation": b"W=abc\\\ndef\n",
    "continuation_double": b"X=\"abc\\\ndef\"\n",
    "key_blanks": b"  Y  =  val  \n",
    "export": b"export Z=1\nZZ=2\n",
    "value_after_quote": b"AA='a' b 'c'\n",
    "no_equals": b"BB\nCC=1\n",
    "leading_digit": b"1D=1\nDD=2\n",
    "trailing_tab": b"EE=x\t\n",
    "escape_at_eof": b"FF=x\\",
    "bare_cr": b"GG=1\rHH=2\r",
    "quote_mid": b"II=a'b'c\n",
    "double_escapes": b'JJ="\\a\\\\b\\`c"\n',
    "hash_in_value": b"KK=a #b\n",
    "newline_in_double": b'LL="a\nb"\nMM=1\n',
    "newline_in_single": b"NN='a\nb'\n",
    "utf8_value": "OO=caf\u00e9 \u2603\n".encode(),
    "utf8_key": "P\u00c9=1\nPP=2\n".encode(),
    "escape_in_single": b"QQ='a\\nb'\n",
    "equals_in_value": b"RR=a=b==\n",
    "blank_value_spaces": b"SS=   \n",
    "quoted_trailing_blank": b"TT='x '  \nUU=\"y \"\n",
    "del_char": b"VV=a\x7fb\nWW=ok\n",
    "escape_in_value_before_blank": b"XX=a \\ \n",
    "trailing_blank_eof": b"YY=x  ",
    "quoted_blank_eof": b"YZ='x'  ",
    "comment_backslash_cr": b"# c \\\r\nZA=1\nZB=2\n",
    "comment_escaped_char": b"# c \\x\nZC=1\n",
    "semicolon_comment_backslash": b"; c \\\nHTTPS_PROXY=http://hidden.example\nZD=1\n",
    "invalid_utf8_in_comment": b"# \xff\nZE=1\n",
    "invalid_utf8_key": b"Z\xffF=1\nZG=2\n",
    "invalid_utf8_no_equals": b"Z\xffH\nZI=2\n",
    "double_escape_eof": b'ZJ="ab\\',
    "pre_value_eof": b"ZK=",
    "key_eof": b"ZL=1\nZM",
    "only_equals": b"=x\n==y\nZN=1\n",
    "escaped_quote_start": b"ZO=\\'a'\n",
    "html_proxy_lowercase": b"http_proxy = 'http://a.example:3128'   # not a comment\n",
}


@pytest.fixture(scope="module")
def systemd_env() -> Iterator[dict[str, dict[str, str] | None]]:
    """What the real systemd hands the process, per case (None: the unit failed)."""
    with Container() as box:
        box.write("/etc/systemd/system/casdiff@.service",
                  "[Service]\nType=oneshot\nEnvironmentFile=-/etc/casdiff/%i\n"
                  "ExecStart=/bin/sh -c 'env -0 > /var/tmp/casdiff-out/%i'\n")
        box.run(["mkdir", "-p", "/var/tmp/casdiff-out", "/etc/casdiff"])
        for name, data in CASES.items():
            box.write(f"/etc/casdiff/{name}", data)
        box.systemctl("daemon-reload")
        names = ["baseline", *CASES]
        box.systemctl("start", *[f"casdiff@{n}.service" for n in names], check=False)
        out: dict[str, dict[str, str] | None] = {}
        for name in names:
            result = box.run(["cat", f"/var/tmp/casdiff-out/{name}"], check=False)
            if result.returncode != 0:
                out[name] = None
                continue
            raw = box.read(f"/var/tmp/casdiff-out/{name}")
            env = {}
            for item in raw.split(b"\0"):
                if item:
                    k, _, v = item.decode("utf-8", "surrogateescape").partition("=")
                    env[k] = v
            out[name] = env
        yield out


def test_parser_agrees_with_systemd(systemd_env: dict[str, dict[str, str] | None]) -> None:
    baseline = systemd_env["baseline"]
    assert baseline is not None and "PATH" in baseline
    differences = []
    for name, data in CASES.items():
        env = systemd_env[name]
        assert env is not None, f"{name}: the unit did not run"
        theirs = {k: v for k, v in env.items()
                  if k not in baseline and k not in ("INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID")}
        ours, _ = parse_environment_file(data.decode("utf-8", errors="surrogateescape"))
        if ours != theirs:
            differences.append(f"{name}: systemd {theirs!r} ours {ours!r}")
    assert not differences, "\n".join(differences)
