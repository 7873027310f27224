"""A real node_exporter (textfile collector only) and a real Prometheus on loopback, for tests.

Debian's ``prometheus-node-exporter`` and ``prometheus`` packages (``scripts/dev/test.sh``
installs both); both run as the packages' ``prometheus`` user, like on a workstation and a
monitoring host. A missing binary or user is an ``AssertionError`` (a failure, never a skip).

:class:`NodeExporter` serves one textfile directory with every other collector disabled (fast,
and no host data in the test). :class:`Prometheus` scrapes a set of node_exporters every second,
each with the ``instance`` label the test chooses (a host name, as a fleet's relabelling would
give), and answers PromQL through its HTTP API (:meth:`Prometheus.query`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.processes import stop_process

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PROMETHEUS = "/usr/bin/prometheus"
SERVICE_USER = "prometheus"


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require(binary: str, package: str) -> None:
    assert os.access(binary, os.X_OK), f"{binary} missing: apt-get install {package} (scripts/dev/test.sh does)"
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise AssertionError(f"user {SERVICE_USER!r} missing: it comes with the {package} package") from None


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _get(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"{what} exited with {proc.returncode}: {err[-2000:]}") from None
            assert time.monotonic() < deadline, f"{what} did not answer {url} within {seconds} s"
            time.sleep(0.05)


def public_tempdir(prefix: str, mode: int = 0o755) -> Path:
    """A directory under /tmp (not pytest's 0700 tree, which the ``prometheus`` user cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    return path


class NodeExporter:
    """``prometheus-node-exporter --collector.disable-defaults --collector.textfile`` on a free port."""

    def __init__(self, textfile_dir: Path) -> None:
        self.textfile_dir = textfile_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        _require(NODE_EXPORTER, "prometheus-node-exporter")
        self._proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address={self.address}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={self.textfile_dir}"],
            user=SERVICE_USER, group=SERVICE_USER, extra_groups=[], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            _wait_until_up(self._proc, f"http://{self.address}/metrics", "node_exporter", 10)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=5)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error (bad PromQL, unknown function...)."""


class Prometheus:
    """A Prometheus server scraping ``targets`` (``{instance label: host:port}``) every second.

    Its data directory and configuration live in a private temporary directory owned by the
    ``prometheus`` user, removed on exit."""

    def __init__(self, targets: dict[str, str], scrape_interval: str = "1s") -> None:
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The scrape configuration (JSON is YAML): job ``node``, one static target per host."""
        static = [{"targets": [address], "labels": {"instance": name}} for name, address in self.targets.items()]
        return json.dumps({
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": "node", "static_configs": static}],
        }, indent=2)

    def __enter__(self) -> Self:
        _require(PROMETHEUS, "prometheus")
        self._dir = public_tempdir("cas-prometheus-", 0o700)
        account = pwd.getpwnam(SERVICE_USER)
        (self._dir / "data").mkdir()
        (self._dir / "prometheus.yml").write_text(self.config())
        for path in (self._dir, self._dir / "data", self._dir / "prometheus.yml"):
            os.chown(path, account.pw_uid, account.pw_gid)
        self._proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self._dir / 'prometheus.yml'}", f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            user=SERVICE_USER, group=SERVICE_USER, extra_groups=[], cwd=self._dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            _wait_until_up(self._proc, f"{self.url}/-/ready", "prometheus", 30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def api(self, path: str, **params: str | list[str]) -> Any:
        """``GET /api/v1/<path>``'s ``data``; :class:`PrometheusError` with Prometheus' message on error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            body = _get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        except urllib.error.HTTPError as err:  # 400/422: the error is in the JSON body
            body = err.read()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result list (vector/matrix), or ``[scalar]`` for a scalar result."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        """A range query over the last ``seconds`` (what Grafana sends for a time-series target)."""
        end = time.time()
        data = self.api("query_range", query=expr, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step=step)
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        """``label_values(match, label)`` as Grafana's Prometheus data source asks it."""
        return list(self.api(f"label/{label}/values", **{"match[]": [match]}))

    def wait_for(self, expr: str, predicate: Any, seconds: float = 20) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` is true; AssertionError with the last result."""
        deadline = time.monotonic() + seconds
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            assert time.monotonic() < deadline, f"{expr!r} never satisfied the condition: {result}"
            time.sleep(0.25)
