"""A real Prometheus server for tests: ``/usr/bin/prometheus`` on 127.0.0.1, scraping what a test says.

    with LocalPrometheus(tmp_path, scrape_interval_s=1) as prom:
        prom.set_targets([("127.0.0.1:8001", kubernetes_pod_target("prod", "llama-decode-0",
                                                                   {"goodput.dev/role": "decode"}))])
        PrometheusCollector(prom.url).observe(...)

The configuration has one ``file_sd_configs`` job per name in ``jobs`` (default one, ``vllm``),
each reading its own targets file in the work dir, so a test adds and removes targets (with
labels per target) while Prometheus runs. Prometheus applies a changed targets file within
about 5 s (its discovery manager batches updates). Each job relabels the way a Kubernetes pod
scrape config does (``labelmap`` of ``__meta_kubernetes_pod_label_(.+)``, the namespace into
``namespace``, the pod name into ``pod``); `kubernetes_pod_target` builds the meta labels that
Kubernetes service discovery would attach. Plain labels pass through unchanged.

`stop` and `start` restart the server on the same port with the same TSDB directory;
`pause`/`resume` (SIGSTOP/SIGCONT) make it hang, for timeout tests. The process is always
stopped: on `stop`, on leaving the ``with`` block, at interpreter exit, and (Linux) when the
Python process that started it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from goodput.api.vocabulary import prometheus_label_name
from goodput.devcluster.processes import kill_with_parent

DEFAULT_BINARY = "/usr/bin/prometheus"
_LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
_LIVE: weakref.WeakSet[LocalPrometheus] = weakref.WeakSet()

# The relabeling of a Kubernetes pod scrape job (what the collector's label names assume).
KUBERNETES_POD_RELABEL: list[dict[str, Any]] = [
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "regex": "(.+)", "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "regex": "(.+)", "target_label": "pod"},
]


class LocalPrometheusError(RuntimeError):
    """Prometheus did not start or stop; the message carries its log tail."""


def kubernetes_pod_target(namespace: str, pod: str, pod_labels: Mapping[str, str]) -> dict[str, str]:
    """The ``__meta_kubernetes_*`` labels Kubernetes SD attaches to a pod's target."""
    out = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod}
    for key, value in pod_labels.items():
        out[f"__meta_kubernetes_pod_label_{prometheus_label_name(key)}"] = value
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


class LocalPrometheus:
    def __init__(self, work_dir: str | os.PathLike[str], scrape_interval_s: float = 1.0, *,
                 jobs: Sequence[str] = ("vllm",), binary: str | None = None, port: int | None = None,
                 start_timeout_s: float = 30.0) -> None:
        if not jobs:
            raise ValueError("LocalPrometheus needs at least one job")
        self.work_dir = Path(work_dir)
        self.scrape_interval_s = float(scrape_interval_s)
        self.jobs = tuple(jobs)
        self.binary = binary or (DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else shutil.which("prometheus"))
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.config_path = self.work_dir / "prometheus.yml"
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- paths and addresses --------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalPrometheusError("LocalPrometheus has not been started (no port yet)")
        return f"http://{_LOOPBACK}:{self.port}"

    def targets_path(self, job: str | None = None) -> Path:
        job = job or self.jobs[0]
        if job not in self.jobs:
            raise ValueError(f"unknown job {job!r}: the jobs are {', '.join(self.jobs)}")
        return self.work_dir / f"targets-{job}.json"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- configuration --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        interval = _dur(self.scrape_interval_s)
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [{"files": [str(self.targets_path(job))], "refresh_interval": "1s"}],
                    "relabel_configs": KUBERNETES_POD_RELABEL,
                }
                for job in self.jobs
            ],
        }

    def set_targets(self, targets: Iterable[tuple[str, Mapping[str, str]]], job: str | None = None) -> None:
        """Replace the targets of ``job`` (default: the first): ``[(host:port, labels), ...]``."""
        groups = [{"targets": [host_port], "labels": dict(labels)} for host_port, labels in targets]
        path = self.targets_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=1), encoding="utf-8")
        os.replace(tmp, path)  # atomic: Prometheus never reads half a file

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalPrometheus:
        """Start (or restart, same port and TSDB) and wait until /-/ready answers 200."""
        if self.running():
            return self
        if not self.binary or not Path(self.binary).exists():
            raise LocalPrometheusError(
                f"no prometheus binary at {self.binary or DEFAULT_BINARY}: install Debian's package "
                "(apt-get install prometheus; ./dev setup does it in CI)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            if not self.targets_path(job).exists():
                self.set_targets([], job)
        self.config_path.write_text(json.dumps(self.config(), indent=1), encoding="utf-8")  # JSON is YAML
        if self.port is None:
            self.port = free_port()
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address={_LOOPBACK}:{self.port}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=1h",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.work_dir, preexec_fn=kill_with_parent())
        finally:
            log.close()
        self._paused = False
        _LIVE.add(self)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                self._proc = None
                raise LocalPrometheusError(f"prometheus exited during start-up:\n{self.log_tail()}")
            if self._get_status("/-/ready", timeout=1.0) == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise LocalPrometheusError(f"prometheus not ready after {self.start_timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down (POST /-/quit, then SIGTERM, then SIGKILL). The TSDB directory stays."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                if self._paused:
                    self.resume()
                with contextlib.suppress(Exception):
                    self._request("/-/quit", method="POST", timeout=2.0)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=5)
        finally:
            self._proc = None
            self._paused = False
            _LIVE.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        if self._proc is None or not self.running():
            raise LocalPrometheusError("prometheus is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> LocalPrometheus:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- small HTTP API helpers for tests -----------------------------------------------------------
    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The ``result`` of an instant query now (raises on failure: for test set-up, not for code under test)."""
        body = self._request("/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=timeout)
        data = json.loads(body)
        if data.get("status") != "success":
            raise LocalPrometheusError(f"query {promql!r} failed: {data}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        data = json.loads(self._request("/api/v1/targets?state=active", timeout=5.0))
        targets: list[dict[str, Any]] = data["data"]["activeTargets"]
        return targets

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.25,
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
                last = None
            except Exception as exc:  # not ready yet
                last = exc
            time.sleep(interval_s)
        extra = f" (last error: {last})" if last else ""
        raise TimeoutError(f"{what} not reached within {timeout_s:g} s{extra}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _request(self, path: str, method: str = "GET", timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with _OPENER.open(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body

    def _get_status(self, path: str, timeout: float) -> int:
        try:
            req = urllib.request.Request(self.url + path)
            with _OPENER.open(req, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0


def _dur(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@atexit.register
def _stop_all_at_exit() -> None:
    for prom in list(_LIVE):
        with contextlib.suppress(Exception):
            prom.stop(timeout_s=3.0)
