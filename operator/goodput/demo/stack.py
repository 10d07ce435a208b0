"""The processes of the closed loop around a local control plane, shared by `goodput demo` and the
closed-loop integration test.

    procs = Processes(work_dir, loop_env(cluster.env, window_s=20, long_window_s=60))
    install_crd(cluster)
    apply_manifest(cluster, manifest)
    procs.spawn(operator_argv("ns", prom.url, timer_s=5), "operator.log")
    emu = EmulatorHandle.start(procs, emulator_argv(cluster.kubeconfig, "ns", "name", ...), "name")
    set_min_ready(cluster, "ns", wait_deployment(cluster, "ns", "name-aggregated"), cold_start_s + 2)
    ...
    procs.stop_all()   # newest first: SIGTERM, SIGKILL after the timeout

The operator is ``goodput operator`` (kopf) with its windows from ``GOODPUT_WINDOW_SECONDS`` /
``GOODPUT_LONG_WINDOW_SECONDS``; the emulator is ``python -m goodput.emulator.process``, driven at
run time through its control endpoint (`EmulatorHandle`). Every child gets ``PR_SET_PDEATHSIG``
(`kill_with_parent`), so even a SIGKILLed parent leaves none behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodput.api.crd import crd_yaml
from goodput.devcluster.cluster import LocalCluster
from goodput.devcluster.processes import kill_with_parent

CRD_NAME = "inferencedeployments.goodput.dev"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


class StackError(RuntimeError):
    """A part of the loop did not start or misbehaved; the message says which, with its log tail."""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError:
        return "(no log)\n"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Processes:
    """Child processes with one log file each (stdout and stderr) in ``work_dir``, stopped newest first."""

    def __init__(self, work_dir: Path, env: Mapping[str, str]) -> None:
        self.work_dir = work_dir
        self.env = dict(env)
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, argv: Sequence[str], log_name: str, *, own_session: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` logging to ``work_dir/log_name``. ``own_session``: a session of its own, so
        a terminal's Ctrl-C reaches only the parent, which stops the children in order."""
        path = self.work_dir / log_name
        with path.open("ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, preexec_fn=kill_with_parent(), start_new_session=own_session)
        self.started.append((proc, path))
        return proc

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.started]

    def stop_all(self, timeout: float = 20.0) -> dict[str, int | None]:
        """Stop every child, newest first; their exit statuses by log file name."""
        return {path.name: stop_process(proc, timeout) for proc, path in reversed(self.started)}


def loop_env(cluster_env: Mapping[str, str], *, window_s: float, long_window_s: float) -> dict[str, str]:
    """The environment of the operator and the emulator: the cluster's (KUBECONFIG, no proxy for
    loopback) with the operator's two windows."""
    return dict(cluster_env, GOODPUT_WINDOW_SECONDS=str(int(window_s)),
                GOODPUT_LONG_WINDOW_SECONDS=str(int(long_window_s)), PYTHONUNBUFFERED="1")


def no_proxy_for_loopback() -> Callable[[], None]:
    """Add 127.0.0.1 and localhost to NO_PROXY/no_proxy of this process (the collector's requests
    and a test's own Prometheus queries must not go through a proxy); the function that puts them
    back as they were."""
    saved = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    for key in saved:
        os.environ[key] = ",".join([h for h in (saved[key] or "").split(",") if h] + ["127.0.0.1", "localhost"])

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


ROUTER_BINARY = Path(sys.executable).with_name("vllm-router")  # PyPI vllm-router's launcher, beside this Python


def router_argv(router_deployment: Mapping[str, Any], binary: Path, port: int, metrics_port: int) -> list[str]:
    """The rendered vllm-router container's command line as a process of this machine: ``binary``
    listening on loopback ``port`` (its metrics on ``metrics_port``)."""
    container = router_deployment["spec"]["template"]["spec"]["containers"][0]
    if container["command"] != ["vllm-router"]:
        raise StackError(f"the router container runs {container['command']}, not vllm-router")
    args = list(container["args"])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port)), ("--prometheus-host", "127.0.0.1"),
                        ("--prometheus-port", str(metrics_port))):
        args[args.index(flag) + 1] = value
    return [str(binary), *args]


def wait_until_router_serves(url: str, model: str, timeout_s: float) -> None:
    """Send a small completion to a vllm-router until it answers 200: it has found a prefill and a
    decode pod. StackError after ``timeout_s`` with the last answer."""
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"model": model, "prompt": "a b c", "max_tokens": 2}).encode()
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/v1/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise StackError(f"vllm-router at {url} served nothing within {timeout_s:g} s (last answer: {last})")


def operator_argv(namespace: str, prometheus_url: str, *, timer_s: float) -> list[str]:
    return [sys.executable, "-m", "goodput.cli", "operator", "--timer-seconds", f"{timer_s:g}",
            "--namespace", namespace, "--prometheus", prometheus_url]


def emulator_argv(kubeconfig: Path, namespace: str, name: str, *, targets_file: Path, control_port: int,
                  cold_start_s: float, load: Sequence[str], drain_s: float = 60.0, seed: int = 7,
                  extra: Sequence[str] = ()) -> list[str]:
    """``load``: the emulator's load arguments, e.g. ``["--rate-schedule", "0:2", "--lengths", "hints"]``
    or ``["--trace", "azure-conv", "--rate-scale", "2"]``."""
    return [sys.executable, "-m", "goodput.emulator.process", "--kubeconfig", str(kubeconfig),
            "--namespace", namespace, "--name", name, *load, "--targets-file", str(targets_file),
            "--cold-start-s", f"{cold_start_s:g}", "--control-port", str(control_port), "--drain-s", f"{drain_s:g}",
            "--seed", str(seed), *extra]


@dataclass
class EmulatorHandle:
    """A running emulator process and its control endpoint (``GET /state``, ``POST /rate?scale=X``)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, procs: Processes, argv: Sequence[str], name: str, *, own_session: bool = False) -> EmulatorHandle:
        port = int(argv[list(argv).index("--control-port") + 1])
        log_name = f"emulator-{name}.log"
        proc = procs.spawn(argv, log_name, own_session=own_session)
        return cls(name, port, proc, procs.work_dir / log_name)

    def call(self, path: str, post: bool = False, timeout: float = 5.0) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST" if post else "GET",
                                     data=b"" if post else None)
        with _OPENER.open(req, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def state(self) -> dict[str, Any]:
        return self.call("/state")

    def set_rate(self, scale: float) -> None:
        self.call(f"/rate?scale={scale:g}", post=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the control endpoint answers (the emulator has found its InferenceDeployment)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.state()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise StackError(f"emulator {self.name} exited with {self.proc.returncode}:\n"
                                     f"{log_tail(self.log_path)}") from None
                if time.monotonic() > deadline:
                    raise StackError(f"emulator {self.name} has no control endpoint after {timeout:g} s:\n"
                                     f"{log_tail(self.log_path)}") from None
                time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# the cluster side


def _check(out: subprocess.CompletedProcess[str], what: str) -> None:
    if out.returncode != 0:
        raise StackError(f"{what} failed: {out.stderr.strip() or out.stdout.strip()}")


def install_crd(cluster: LocalCluster, timeout_s: float = 30.0) -> None:
    """Apply the InferenceDeployment CRD (generated from the API models) and wait until it is Established."""
    _check(cluster.kubectl("apply", "--server-side", "-f", "-", input=crd_yaml()), "applying the CRD")
    deadline = time.monotonic() + timeout_s
    while True:  # right after creation the CRD may have no conditions yet, and `kubectl wait` errors at once
        out = cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", f"--timeout={timeout_s:g}s")
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _check(out, "waiting for the CRD")


def create_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def apply_manifest(cluster: LocalCluster, manifest: Mapping[str, Any]) -> None:
    _check(cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest)),
           f"applying {manifest.get('kind')} {manifest.get('metadata', {}).get('name')}")


def get_or_none(cluster: LocalCluster, path: str) -> Any:
    """A GET of the API; None for 404."""
    try:
        return cluster.api("GET", path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def wait_deployment(cluster: LocalCluster, namespace: str, name: str, timeout: float = 60.0,
                    alive: Sequence[subprocess.Popen[bytes]] = ()) -> dict[str, Any]:
    """The Deployment ``name`` once it exists (the operator made it); StackError after ``timeout``,
    or at once if one of the ``alive`` processes exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        dep: dict[str, Any] | None = get_or_none(cluster, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        if dep is not None:
            return dep
        dead = [p for p in alive if p.poll() is not None]
        if dead:
            raise StackError(f"process {dead[0].pid} exited with {dead[0].returncode} before Deployment {name} "
                             "existed")
        if time.monotonic() > deadline:
            raise StackError(f"no Deployment {namespace}/{name} within {timeout:g} s: the operator made none")
        time.sleep(0.5)


def set_min_ready(cluster: LocalCluster, namespace: str, deployment: str, seconds: float) -> None:
    """kwok marks a pod Ready the moment it runs, where a vLLM pod is Ready only once its weights are
    loaded: ``minReadySeconds`` (cold start + a little) keeps a rollout's old pods serving while the
    new ones load, as readiness probes would on a real cluster. The operator leaves the field alone."""
    _check(cluster.kubectl("patch", "deployment", deployment, "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"minReadySeconds": int(seconds)}})),
           f"setting minReadySeconds on {deployment}")


__all__ = [
    "CRD_NAME",
    "ROUTER_BINARY",
    "EmulatorHandle",
    "Processes",
    "StackError",
    "apply_manifest",
    "create_namespace",
    "emulator_argv",
    "get_or_none",
    "install_crd",
    "log_tail",
    "loop_env",
    "no_proxy_for_loopback",
    "operator_argv",
    "router_argv",
    "set_min_ready",
    "stop_process",
    "wait_deployment",
    "wait_until_router_serves",
]
