"""Faults injected into the real stack; each test says what it broke, how long recovery took and
what was lost (nothing, or it fails).

Real parts: the session's control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
GPU nodes), a real Prometheus (`LocalPrometheus`, 1 s scrapes), the vLLM emulator process and the
operator as its own process (``goodput operator --timer-seconds 3``, windows 8 s / 16 s,
Prometheus timeout 2 s). Between the operator and Prometheus sits `FaultProxy`, a small HTTP proxy
that passes queries through, delays them past the timeout, or answers every value as NaN (a
Prometheus-compatible server whose data is NaN).

1. Metrics: Prometheus stopped, slower than the timeout, answering NaN, and stale series (the
   emulator stopped): replicas held, MetricsAvailable=False with what is wrong, True again after.
   The spec's workload hint is lowered first, so falling back to it, or reading no data as no
   load, would scale down within the 9 s stabilization window: each fault lasts longer.
2. kube-apiserver restarted right after spec edits, and a second writer annotating the object
   ten times a second (409s on the status patch); a second field manager on the Deployment.
3. The operator SIGKILLed right after spec edits (scale-ups) and started again.
4. A Deployment scaled by hand and deleted: put back with an Event; left alone when paused.
5. GPUs exhausted on dedicated tainted kwok nodes: no pile-on, ScalingLimited=InsufficientCapacity.
6. A Hugging Face token in a Secret never shows in logs (DEBUG), status, Events or the Deployment.

Also, without a cluster: the handler's 409 retry against a fake API, and Event names.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polling
import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.demo.stack import (
    EmulatorHandle,
    Processes,
    create_namespace,
    emulator_argv,
    get_or_none,
    install_crd,
    log_tail,
    loop_env,
    stop_process,
    wait_deployment,
)
from goodput.devcluster.cluster import FakeNodeSpec, LocalCluster
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, free_port
from goodput.planner.autoscale import scaled_efficiency
from goodput.planner.recommend import hinted_workload, recommend, resolve

pytestmark = pytest.mark.integration

POOL = "aggregated"
TIMER_S = 3.0
WINDOW_S, LONG_WINDOW_S = 8.0, 16.0
PROMETHEUS_TIMEOUT_S = 2.0
PROXY_DELAY_S = 2 * PROMETHEUS_TIMEOUT_S
STABILIZATION_S = 9  # scale-down stabilization: a fault held longer than this would show a wrong scale-down
HOLD_S = STABILIZATION_S + TIMER_S
PROMPT_TOKENS, OUTPUT_TOKENS = 2000, 1000
LOAD_RPS = 6.0  # two replicas at ~4.3 req/s of goodput each
CONVERGE_S = 60.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def spec_of(rate: float, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"id": "llama-3.1-8b"},
        "precision": {"weights": "bf16"},
        "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": 1000, "itlMs": 40},
        "mode": "aggregated",
        "workload": {"requestRate": rate, "inputTokens": {"mean": PROMPT_TOKENS},
                     "outputTokens": {"mean": OUTPUT_TOKENS}},
        # The emulator runs the capacity model itself and the faults are held against its own count
        # (`rate_for`), so the pessimistic prior before calibration is off here.
        "scaling": {"aggregated": {"minReplicas": 1, "maxReplicas": 8}, "tensorParallel": 1,
                    "coldStartSeconds": 10, "scaleDownStabilizationSeconds": STABILIZATION_S,
                    "uncalibratedMargin": 0},
    }
    for key, value in extra.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key in spec else value
    return spec


def rate_for(replicas: int) -> float:
    """A hinted request rate the planner meets with exactly `replicas` replicas (half a replica's
    goodput of margin either side)."""
    spec = InferenceDeploymentSpec.model_validate(spec_of(1.0))
    per_replica = recommend(spec, resolve(spec, "x"), hinted_workload(spec), scaled_efficiency(1.0)).pools[0]
    return round(per_replica.goodput_rps * (replicas - 0.5), 3)


# ------------------------------------------------------------------------------------------
# the stack
# ------------------------------------------------------------------------------------------
@dataclass
class Stack:
    cluster: LocalCluster
    ns: str
    work: Path
    procs: Processes
    operator: subprocess.Popen[bytes] | None = None
    starts: int = 0

    # -- the operator ----------------------------------------------------------------------------
    def start_operator(self) -> None:
        self.starts += 1
        argv = [sys.executable, "-m", "goodput.cli", "operator", "--timer-seconds", f"{TIMER_S:g}",
                "--namespace", self.ns]
        self.operator = self.procs.spawn(argv, f"operator-{self.starts}.log")

    def kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.kill()  # SIGKILL: no shutdown, no cleanup
        self.operator.wait()

    def operator_log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.work.glob("operator-*.log")))

    def check_operator(self) -> None:
        assert self.operator is not None and self.operator.poll() is None, (
            f"the operator exited:\n{log_tail(self.work / f'operator-{self.starts}.log')}")

    # -- reads -----------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments/{name}"

    def infd(self, name: str) -> dict[str, Any]:
        return get_or_none(self.cluster, self.path(name)) or {}

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.infd(name).get("status") or {}
        return status

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c.get("type") == ctype), {})

    def deployment(self, name: str) -> dict[str, Any] | None:
        dep: dict[str, Any] | None = get_or_none(
            self.cluster, f"/apis/apps/v1/namespaces/{self.ns}/deployments/{name}-{POOL}")
        return dep

    def replicas(self, name: str) -> int | None:
        dep = self.deployment(name)
        return int(dep["spec"]["replicas"]) if dep else None

    def events(self, name: str) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"involvedObject.kind=InferenceDeployment,involvedObject.name={name}")
        data = get_or_none(self.cluster, f"/api/v1/namespaces/{self.ns}/events?fieldSelector={selector}") or {}
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    def pods(self, name: str) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"goodput.dev/inference-deployment={name}")
        data = get_or_none(self.cluster, f"/api/v1/namespaces/{self.ns}/pods?labelSelector={selector}") or {}
        return [p for p in data.get("items", []) if not p["metadata"].get("deletionTimestamp")]

    def converged(self, name: str, replicas: int) -> bool:
        """Status and the Deployment both at `replicas`, for the object's current generation."""
        obj = self.infd(name)
        status = obj.get("status") or {}
        return (status.get("observedGeneration") == obj.get("metadata", {}).get("generation")
                and (status.get("plan") or {}).get("decodeReplicas") == replicas and self.replicas(name) == replicas)

    # -- writes ----------------------------------------------------------------------------------
    def create(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.api("POST", f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments",
                         {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
                          "metadata": {"name": name, "namespace": self.ns}, "spec": spec})

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.api("PATCH", self.path(name), patch, content_type="application/merge-patch+json")

    def set_rate(self, name: str, rate: float) -> None:
        self.patch(name, {"spec": {"workload": {"requestRate": rate}}})

    def delete(self, name: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.cluster.api("DELETE", self.path(name))


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("faults")
    ns = f"faults-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)
    env = dict(loop_env(cluster.env, window_s=WINDOW_S, long_window_s=LONG_WINDOW_S),
               GOODPUT_PROMETHEUS_TIMEOUT_SECONDS=f"{PROMETHEUS_TIMEOUT_S:g}")
    state = Stack(cluster, ns, work, Processes(work, env))
    state.start_operator()
    try:
        yield state
    finally:
        codes = state.procs.stop_all()
        for _, path in state.procs.started:
            if path.name.startswith("operator-") and path.name != f"operator-{state.starts}.log":
                continue  # the killed ones: their tails are in the kill test's own output
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path, 25)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = CONVERGE_S, interval: float = 0.25) -> Any:
    return polling.wait_for(what, probe, timeout=timeout, interval=interval)


def check_events_match_decisions(stack: Stack, name: str) -> tuple[int, int]:
    """At most one Event per decision, and no decision recorded twice. Returns (decisions, events)."""
    decisions = stack.status(name).get("decisions", [])
    events = stack.events(name)
    seen = collections.Counter((e["reason"], e["message"]) for e in events)
    for d in decisions:
        n = seen.get((d["reason"], d["message"][:1024]), 0)
        assert n <= 1, f"{n} Events for one decision {d}"
    keys = [(d["time"], d["reason"], d.get("pool"), d.get("fromReplicas"), d.get("toReplicas")) for d in decisions]
    assert len(keys) == len(set(keys)), f"a decision recorded twice: {decisions}"
    return len(decisions), len(events)


# ------------------------------------------------------------------------------------------
# watching a Deployment's replicas (every change, not samples)
# ------------------------------------------------------------------------------------------
class ReplicaWatch:
    """A watch on the namespace's Deployments: (monotonic time, spec.replicas) per change."""

    def __init__(self, cluster: LocalCluster, ns: str) -> None:
        from kubernetes import client

        self.apps = client.AppsV1Api(cluster.api_client())
        self.ns = ns
        self.history: dict[str, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ReplicaWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def values(self, deployment: str, since: float = 0.0) -> list[int]:
        return [n for t, n in self.history.get(deployment, []) if t >= since]

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                stream: Any = watch.Watch().stream  # type: ignore[no-untyped-call]
                for ev in stream(self.apps.list_namespaced_deployment, self.ns, timeout_seconds=3):
                    dep = ev["object"]
                    if ev["type"] in ("ADDED", "MODIFIED") and dep.spec is not None:
                        seen = self.history.setdefault(dep.metadata.name, [])
                        if not seen or seen[-1][1] != dep.spec.replicas:
                            seen.append((time.monotonic(), int(dep.spec.replicas or 0)))
                    if self._stop.is_set():
                        return
            except Exception:  # the apiserver restarting: watch again
                time.sleep(0.5)


# ------------------------------------------------------------------------------------------
# a Prometheus-compatible proxy that can be slow or answer NaN
# ------------------------------------------------------------------------------------------
class FaultProxy:
    """HTTP in front of Prometheus. mode: "pass"; "delay" (each answer PROXY_DELAY_S late);
    "nan" (every sample value of an answer becomes NaN). With Prometheus down it drops the
    connection, as a dead backend behind a Service address does."""

    def __init__(self, upstream: str, delay_s: float = PROXY_DELAY_S) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay_s = delay_s
        self.mode = "pass"
        self.served: collections.Counter[str] = collections.Counter()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                mode = proxy.mode
                proxy.served[mode] += 1
                if mode == "delay":
                    time.sleep(proxy.delay_s)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command)
                if self.headers.get("Content-Type"):
                    req.add_header("Content-Type", self.headers["Content-Type"])
                try:
                    with _OPENER.open(req, timeout=10) as resp:
                        code, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    code, data = exc.code, exc.read()
                except OSError:
                    self.close_connection = True  # upstream down: no answer at all
                    return
                if mode == "nan" and code == 200:
                    data = nan_values(data)
                with contextlib.suppress(OSError):  # the client may have given up (timeout)
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def nan_values(data: bytes) -> bytes:
    body = json.loads(data)
    result = (body.get("data") or {}).get("result")
    if isinstance(result, list):
        for series in result:
            if "value" in series:
                series["value"][1] = "NaN"
            for point in series.get("values", []):
                point[1] = "NaN"
    return json.dumps(body).encode()


# ------------------------------------------------------------------------------------------
# 1. metrics faults
# ------------------------------------------------------------------------------------------
@dataclass
class MetricsRun:
    stack: Stack
    name: str
    watch: ReplicaWatch
    start_emulator: Callable[[], EmulatorHandle]
    emulator: EmulatorHandle
    figures: list[str] = field(default_factory=list)

    def fault(self, label: str, inject: Callable[[], object], restore: Callable[[], object],
              words: tuple[str, ...]) -> None:
        s = self.stack
        held = s.replicas(self.name)
        decisions_before = len(s.status(self.name).get("decisions", []))
        t0 = time.monotonic()
        inject()
        cond = wait_for(f"MetricsAvailable=False after: {label}", lambda: (
            c if (c := s.condition(self.name, "MetricsAvailable")).get("status") == "False" else None),
            timeout=WINDOW_S + 4 * TIMER_S + 2 * PROXY_DELAY_S)
        detected = time.monotonic() - t0
        message = cond.get("message", "")
        assert "holding replicas" in message and any(w.lower() in message.lower() for w in words), (
            f"{label}: MetricsAvailable=False does not say that replicas are held and why ({words}): {message!r}")
        time.sleep(HOLD_S)  # past the scale-down stabilization window: a wrong scale-down would show by now
        held_s = time.monotonic() - t0
        t1 = time.monotonic()
        restore()
        wait_for(f"MetricsAvailable=True after restoring: {label}",
                 lambda: s.condition(self.name, "MetricsAvailable").get("status") == "True", timeout=45)
        recovered = time.monotonic() - t1
        s.check_operator()
        during = self.watch.values(f"{self.name}-{POOL}", since=t0)
        new = s.status(self.name).get("decisions", [])[decisions_before:]
        lowered = [d for d in new if (d.get("toReplicas") or 0) < (d.get("fromReplicas") or 0)]
        assert all(n >= (held or 0) for n in during) and not lowered, (
            f"{label}: replicas went below {held} without metrics: Deployment {during}, decisions {lowered}")
        self.figures.append(f"{label}: MetricsAvailable=False {detected:.1f} s after the fault ({message[:150]!r}); "
                            f"replicas held at {held} for {held_s:.0f} s; True {recovered:.1f} s after the restore; "
                            f"decisions meanwhile: {[d['reason'] for d in new] or 'none'}")
        say(self.figures[-1])


def test_metrics_faults_hold_replicas_and_recover(stack: Stack) -> None:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"needs Prometheus at {DEFAULT_BINARY} (apt-get install prometheus); it never skips",
                    pytrace=False)
    name = "metrics"
    with contextlib.ExitStack() as undo:
        prom = LocalPrometheus(stack.work / "prometheus", scrape_interval_s=1).start()
        undo.callback(prom.stop)
        proxy = FaultProxy(prom.url).start()
        undo.callback(proxy.stop)
        watch = ReplicaWatch(stack.cluster, stack.ns).start()
        undo.callback(watch.stop)
        # A short cold start: the forecast projects the (noisy) trend over it.
        stack.create(name, spec_of(LOAD_RPS, prometheus={"url": proxy.url}, scaling={"coldStartSeconds": 2}))
        undo.callback(stack.delete, name)
        assert stack.operator is not None
        wait_deployment(stack.cluster, stack.ns, f"{name}-{POOL}", timeout=60, alive=[stack.operator])

        def start_emulator() -> EmulatorHandle:
            load = ["--rate-schedule", f"0:{LOAD_RPS:g}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}"]
            argv = emulator_argv(stack.cluster.kubeconfig, stack.ns, name, targets_file=prom.targets_path(),
                                 control_port=free_port(), cold_start_s=2, load=load, drain_s=0, seed=11)
            emu = EmulatorHandle.start(stack.procs, argv, name)
            emu.wait_ready(timeout=30)
            return emu

        run = MetricsRun(stack, name, watch, start_emulator, start_emulator())
        undo.callback(lambda: stop_process(run.emulator.proc))

        # Metrics flow, over a whole long window (before that the demand has no trend baseline).
        def flowing() -> bool:
            status = stack.status(name)
            since = (status.get("autoscaler") or {}).get("metricsSince")
            rate = ((status.get("observed") or {}).get(POOL) or {}).get("requestRate")
            return (stack.condition(name, "MetricsAvailable").get("status") == "True" and since is not None
                    and rate is not None and 0.6 * LOAD_RPS <= rate <= 1.5 * LOAD_RPS
                    and time.time() >= _epoch(since) + LONG_WINDOW_S + TIMER_S)

        t0 = time.monotonic()
        wait_for(f"metrics near {LOAD_RPS:g} req/s over a full {LONG_WINDOW_S:g} s window", flowing, timeout=120)
        say(f"metrics flowing {time.monotonic() - t0:.0f} s after the emulator started; replicas "
            f"{stack.replicas(name)}")
        # Hints of 1 req/s: falling back to them during a fault would scale down to 1.
        stack.set_rate(name, rate_for(1))
        wait_for("the hint edit to be reconciled", lambda: stack.status(name).get("observedGeneration")
                 == stack.infd(name)["metadata"]["generation"], timeout=4 * TIMER_S)
        held = stack.replicas(name)
        assert held is not None and held >= 2, f"live metrics of {LOAD_RPS:g} req/s need 2 replicas, have {held}"

        def stop_emulator() -> None:
            stop_process(run.emulator.proc)

        def restart_emulator() -> None:
            run.emulator = run.start_emulator()

        run.fault("Prometheus stopped", prom.stop, prom.start, ("unreachable",))
        run.fault(f"Prometheus {PROXY_DELAY_S:g} s late (timeout {PROMETHEUS_TIMEOUT_S:g} s)",
                  lambda: setattr(proxy, "mode", "delay"), lambda: setattr(proxy, "mode", "pass"), ("timeout",))
        run.fault("every value NaN", lambda: setattr(proxy, "mode", "nan"), lambda: setattr(proxy, "mode", "pass"),
                  ("NaN",))
        # Which gap shows first depends on timing: every vLLM series gone from the short window, or the
        # request counter gone before the gauges; both messages name what is missing.
        run.fault("stale series (emulator stopped)", stop_emulator, restart_emulator,
                  ("no vLLM series", "no series of vllm:"))
        say("metrics faults: " + " | ".join(run.figures))


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


# ------------------------------------------------------------------------------------------
# 2. the apiserver restarted, concurrent writers
# ------------------------------------------------------------------------------------------
def test_apiserver_restart_and_conflicts_lose_nothing(stack: Stack) -> None:
    """A second writer annotates the object ten times a second throughout: every write triggers a
    reconcile (so the restarts land in the middle of some) and races its status patch (409s)."""
    name, cluster = "restarts", stack.cluster
    stack.create(name, spec_of(rate_for(1)))
    wait_for("1 replica", lambda: stack.converged(name, 1))
    log_before = stack.operator_log()
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            writes[0] += 1
            with contextlib.suppress(Exception):  # fails too while the apiserver is down
                stack.patch(name, {"metadata": {"annotations": {"faults.goodput.dev/writer": str(writes[0])}}})
            time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    figures = []
    try:
        for target, delay_s in ((3, 0.0), (4, 0.3)):
            stack.set_rate(name, rate_for(target))
            time.sleep(delay_s)
            t0 = time.monotonic()
            cluster.restart_apiserver(downtime=3.0)
            up = time.monotonic()
            wait_for(f"{target} replicas after the apiserver restart", partial(stack.converged, name, target))
            figures.append(f"edit to {target} replicas, apiserver restarted {delay_s:g} s later (down "
                           f"{up - t0:.1f} s): converged {time.monotonic() - up:.1f} s after it was ready")
        t0 = time.monotonic()
        stack.set_rate(name, rate_for(5))
        wait_for("5 replicas under the concurrent writer", partial(stack.converged, name, 5))
        figures.append(f"edit to 5 replicas: converged in {time.monotonic() - t0:.1f} s")
        time.sleep(2 * TIMER_S)  # the writer keeps going: nothing more may happen
    finally:
        stop.set()
        thread.join()
    stack.check_operator()
    log = stack.operator_log()[len(log_before):]
    conflicts, failed = log.count("conflict (409)"), log.count("Kubernetes API call failed, retrying")
    assert conflicts >= 1, f"{writes[0]} concurrent writes caused no 409 on the status patch: not exercised"
    assert failed >= 1, "no reconcile met the apiserver down: the restarts were not exercised"
    figures.append(f"{writes[0]} concurrent writes: {conflicts} status conflicts retried from a fresh read, "
                   f"{failed} reconciles failed on the apiserver being down and retried")

    # A second field manager on the Deployment: replicas are the operator's (409 for the other), the
    # other's own fields survive the operator's next apply.
    dep_path = f"/apis/apps/v1/namespaces/{stack.ns}/deployments/{name}-{POOL}"
    theirs: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                              "metadata": {"name": f"{name}-{POOL}", "namespace": stack.ns}}
    with pytest.raises(urllib.error.HTTPError) as conflict:
        cluster.api("PATCH", dep_path + "?fieldManager=faults-gitops",
                    {**theirs, "spec": {"replicas": 9}}, content_type="application/apply-patch+yaml")
    assert conflict.value.code == 409
    cluster.api("PATCH", dep_path + "?fieldManager=faults-gitops",
                {**theirs, "metadata": {**theirs["metadata"], "annotations": {"team": "serving"}}},
                content_type="application/apply-patch+yaml")
    time.sleep(2 * TIMER_S)
    dep = stack.deployment(name)
    assert dep is not None and dep["metadata"]["annotations"].get("team") == "serving" and dep["spec"]["replicas"] == 5

    decisions = [d for d in stack.status(name).get("decisions", []) if d["reason"] == "SpecChanged"]
    assert [(d["fromReplicas"], d["toReplicas"]) for d in decisions] == [(1, 3), (3, 4), (4, 5)], decisions
    n_decisions, n_events = check_events_match_decisions(stack, name)
    figures.append(f"{n_decisions} decisions, {n_events} Events (at most one each, none twice)")
    say("apiserver/conflicts: " + " | ".join(figures))
    stack.delete(name)


# ------------------------------------------------------------------------------------------
# 3. the operator killed in the middle of a scale-up
# ------------------------------------------------------------------------------------------
def test_operator_killed_mid_scale_up_converges_without_flapping(stack: Stack) -> None:
    name = "killed"
    watch = ReplicaWatch(stack.cluster, stack.ns).start()
    try:
        stack.create(name, spec_of(rate_for(1)))
        wait_for("1 replica", lambda: stack.converged(name, 1))
        t_start = time.monotonic()
        figures = []
        for target, delay_s in ((2, 0.05), (3, 0.4), (5, 1.0)):
            stack.set_rate(name, rate_for(target))
            time.sleep(delay_s)
            t0 = time.monotonic()
            stack.kill_operator()
            stack.start_operator()
            wait_for(f"{target} replicas after a SIGKILL", partial(stack.converged, name, target))
            figures.append(f"killed {delay_s:g} s after the edit to {target}: converged {time.monotonic() - t0:.1f} s "
                           "after the kill")
        time.sleep(2 * TIMER_S)  # settled: nothing more happens
        stack.check_operator()
        history = watch.values(f"{name}-{POOL}", since=t_start)
    finally:
        watch.stop()
    assert history == sorted(history), f"replicas went down during the scale-ups: {history}"
    assert stack.replicas(name) == 5
    decisions = [d for d in stack.status(name).get("decisions", []) if d["reason"] == "SpecChanged"]
    assert [(d["fromReplicas"], d["toReplicas"]) for d in decisions] == [(1, 2), (2, 3), (3, 5)], decisions
    n_decisions, n_events = check_events_match_decisions(stack, name)
    say("operator killed: " + " | ".join(figures) + f" | Deployment replicas {history}; {n_decisions} decisions, "
        f"{n_events} Events")
    stack.delete(name)


# ------------------------------------------------------------------------------------------
# 4. drift
# ------------------------------------------------------------------------------------------
def test_drift_is_restored_with_an_event_unless_paused(stack: Stack) -> None:
    name, cluster = "drift", stack.cluster
    dep_name = f"{name}-{POOL}"
    stack.create(name, spec_of(rate_for(2)))
    wait_for("2 replicas", lambda: stack.converged(name, 2))

    def reasons() -> collections.Counter[str]:
        return collections.Counter(e["reason"] for e in stack.events(name))

    figures = []
    assert cluster.kubectl("scale", "deployment", dep_name, "-n", stack.ns, "--replicas=5").returncode == 0
    t0 = time.monotonic()
    wait_for("the replicas put back", lambda: stack.replicas(name) == 2, timeout=4 * TIMER_S)
    wait_for("a ReplicasRestored Event", lambda: reasons()["ReplicasRestored"] == 1, timeout=2 * TIMER_S)
    figures.append(f"scaled to 5 by hand: back to 2 in {time.monotonic() - t0:.1f} s, 1 ReplicasRestored Event")

    uid = (stack.deployment(name) or {})["metadata"]["uid"]
    cluster.api("DELETE", f"/apis/apps/v1/namespaces/{stack.ns}/deployments/{dep_name}")
    t0 = time.monotonic()
    wait_for("the Deployment re-created", lambda: (d := stack.deployment(name)) is not None
             and d["metadata"]["uid"] != uid and d["spec"]["replicas"] == 2, timeout=4 * TIMER_S)
    wait_for("a DeploymentRestored Event", lambda: reasons()["DeploymentRestored"] == 1, timeout=2 * TIMER_S)
    figures.append(f"deleted: re-created with 2 replicas in {time.monotonic() - t0:.1f} s, 1 DeploymentRestored Event")

    stack.patch(name, {"spec": {"paused": True}})
    wait_for("ScalingActive=False/Paused", lambda: stack.condition(name, "ScalingActive").get("reason") == "Paused",
             timeout=4 * TIMER_S)
    assert cluster.kubectl("scale", "deployment", dep_name, "-n", stack.ns, "--replicas=4").returncode == 0
    time.sleep(2 * TIMER_S + 1)
    assert stack.replicas(name) == 4 and reasons()["ReplicasRestored"] == 1, "paused, yet the replicas were put back"
    cluster.api("DELETE", f"/apis/apps/v1/namespaces/{stack.ns}/deployments/{dep_name}")
    time.sleep(2 * TIMER_S + 1)
    assert stack.deployment(name) is None and reasons()["DeploymentRestored"] == 1, "paused, yet re-created"
    figures.append(f"paused: scaled to 4 and deleted, left alone for {2 * TIMER_S + 1:g} s each")

    stack.patch(name, {"spec": {"paused": False}})
    t0 = time.monotonic()
    wait_for("the Deployment back after unpausing", lambda: stack.replicas(name) == 2, timeout=4 * TIMER_S)
    wait_for("a second DeploymentRestored Event", lambda: reasons()["DeploymentRestored"] == 2, timeout=2 * TIMER_S)
    figures.append(f"unpaused: re-created in {time.monotonic() - t0:.1f} s")
    check_events_match_decisions(stack, name)
    say("drift: " + " | ".join(figures) + f" | Events {dict(reasons())}")
    stack.delete(name)


# ------------------------------------------------------------------------------------------
# 5. GPU capacity exhausted
# ------------------------------------------------------------------------------------------
def add_tainted_node(cluster: LocalCluster, name: str, gpus: int, key: str, value: str) -> None:
    """A kwok GPU node only pods with the matching toleration and nodeSelector land on, so the other
    tests sharing the cluster neither use nor lose its GPUs."""
    existing = cluster.api("GET", "/api/v1/nodes")["items"]
    node = cluster.node_manifest(name, FakeNodeSpec(gpus=gpus), index=200 + len(existing))
    node["metadata"]["labels"][key] = value
    node["spec"]["taints"] = [{"key": key, "value": value, "effect": "NoSchedule"}]
    cluster.api("POST", "/api/v1/nodes", node)


def test_gpu_capacity_exhausted_does_not_pile_on(stack: Stack) -> None:
    name, cluster = "capacity", stack.cluster
    key, value = "faults.goodput.dev/capacity", stack.ns
    nodes = [f"{stack.ns}-gpu-a", f"{stack.ns}-gpu-b"]
    try:
        add_tainted_node(cluster, nodes[0], 2, key, value)
        template = {"nodeSelector": {key: value},
                    "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}]}
        stack.create(name, spec_of(rate_for(1), template=template,
                                   scaling={"scaleUpMaxPercentPerMinute": 1000}))
        wait_for("1 replica", lambda: stack.converged(name, 1))

        def pending() -> int:
            return sum(1 for p in stack.pods(name) if p["status"].get("phase") == "Pending")

        stack.set_rate(name, rate_for(4))  # 4 GPUs wanted, 2 on the node
        t0 = time.monotonic()
        wait_for("4 replicas, 2 of them Pending", lambda: stack.converged(name, 4) and pending() == 2)
        cond = wait_for("ScalingLimited=InsufficientCapacity", lambda: (
            c if (c := stack.condition(name, "ScalingLimited")).get("reason") == "InsufficientCapacity" else None),
            timeout=4 * TIMER_S)
        said = time.monotonic() - t0
        message = cond["message"]
        assert cond["status"] == "True" and "aggregated: 2 of 4 pods cannot be scheduled" in message, message
        assert "Insufficient nvidia.com/gpu" in message, f"the scheduler's reason is missing: {message}"
        warnings = [e for e in stack.events(name) if e["reason"] == "InsufficientCapacity"]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings

        # More demand while pods are stuck: no more replicas (they would only pend too).
        decisions_before = len(stack.status(name).get("decisions", []))
        stack.set_rate(name, rate_for(6))
        wait_for("the edit reconciled", lambda: stack.status(name).get("observedGeneration")
                 == stack.infd(name)["metadata"]["generation"], timeout=4 * TIMER_S)
        time.sleep(3 * TIMER_S)
        new = stack.status(name).get("decisions", [])[decisions_before:]
        assert stack.replicas(name) == 4 and pending() == 2 and not new, (
            f"piled on: replicas {stack.replicas(name)}, Pending {pending()}, decisions {new}")
        cond = stack.condition(name, "ScalingLimited")
        assert "kept at 4 replicas (the plan asks 6)" in cond["message"], cond
        assert len([e for e in stack.events(name) if e["reason"] == "InsufficientCapacity"]) == 1

        add_tainted_node(cluster, nodes[1], 4, key, value)  # capacity arrives
        t1 = time.monotonic()
        wait_for("6 replicas, none Pending", lambda: stack.replicas(name) == 6 and pending() == 0)
        wait_for("ScalingLimited cleared", lambda: stack.condition(name, "ScalingLimited").get("reason")
                 != "InsufficientCapacity", timeout=4 * TIMER_S)
        say(f"capacity: 2 of 4 pods Pending, ScalingLimited=InsufficientCapacity {said:.1f} s after the edit "
            f"({message[:160]!r}); an edit asking 6 held at 4 for {3 * TIMER_S:g} s (1 Warning Event); 4 more GPUs: "
            f"6 replicas, none Pending, {time.monotonic() - t1:.1f} s later")
        check_events_match_decisions(stack, name)
    finally:
        stack.delete(name)
        for node in nodes:
            with contextlib.suppress(urllib.error.HTTPError):
                cluster.api("DELETE", f"/api/v1/nodes/{node}")


# ------------------------------------------------------------------------------------------
# 6. no secret anywhere
# ------------------------------------------------------------------------------------------
def test_no_token_in_logs_status_or_events(cluster: LocalCluster, stack: Stack) -> None:
    """Its own namespace and an operator at DEBUG (kopf then logs every body and patch)."""
    ns = f"secret-{uuid.uuid4().hex[:6]}"
    token = "hf_" + secrets.token_urlsafe(24)
    create_namespace(cluster, ns)
    procs = Processes(stack.work, stack.procs.env)
    try:
        cluster.api("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": ns},
            "stringData": {"token": token}})
        procs.spawn([sys.executable, "-m", "goodput.cli", "operator", "--timer-seconds", f"{TIMER_S:g}",
                     "--namespace", ns, "--log-level", "DEBUG"], "operator-secret.log")
        other = Stack(cluster, ns, stack.work, procs)
        other.create("gated", spec_of(rate_for(1), template={"huggingFaceTokenSecret": {"name": "hf-token",
                                                                                        "key": "token"}}))
        wait_for("1 replica", lambda: other.converged("gated", 1))
        other.set_rate("gated", rate_for(2))  # a decision, an Event, a second apply
        wait_for("2 replicas", lambda: other.converged("gated", 2))
        time.sleep(2 * TIMER_S)
        dep = other.deployment("gated")
        assert dep is not None
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
        places = {"operator log (DEBUG)": (stack.work / "operator-secret.log").read_text(errors="replace"),
                  "status": json.dumps(other.infd("gated")), "Events": json.dumps(other.events("gated")),
                  "Deployment": json.dumps(dep)}
        assert len(places["operator log (DEBUG)"]) > 1000, "the DEBUG log is suspiciously empty"
        for what, text in places.items():
            for form in (token, base64.b64encode(token.encode()).decode()):
                assert form not in text, f"the token appears in the {what}"
        say(f"secret: token absent from {', '.join(f'{k} ({len(v)} chars)' for k, v in places.items())}; "
            "the Deployment references hf-token/token by secretKeyRef")
    finally:
        procs.stop_all()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


# ------------------------------------------------------------------------------------------
# without a cluster: the handler against a fake API
# ------------------------------------------------------------------------------------------
class FakeKube:
    """What the handler calls, in memory. `conflicts`: how many status patches answer 409, each
    after someone else's write bumped the resourceVersion."""

    def __init__(self, obj: dict[str, Any], conflicts: int) -> None:
        self.obj = obj
        self.conflicts = conflicts
        self.applied: list[int] = []
        self.pools: dict[str, int] = {}  # role -> replicas of the Deployments applied
        self.status_writes: list[str] = []

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(self.obj))
        return copy

    def observe_pools(self, namespace: str, name: str) -> dict[str, Any]:
        from goodput.planner.observation import PoolObservation

        return {role: PoolObservation(replicas=n, ready_replicas=n) for role, n in self.pools.items()}

    def apply(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Deployment":
            self.applied.append(obj["spec"]["replicas"])
            self.pools[obj["metadata"]["labels"]["goodput.dev/role"]] = obj["spec"]["replicas"]

    def delete_pool(self, namespace: str, name: str, role: str) -> None:
        raise AssertionError("nothing to delete")

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any], resource_version: str) -> None:
        from kubernetes.client.exceptions import ApiException

        if self.conflicts:
            self.conflicts -= 1
            self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
            raise ApiException(status=409, reason="Conflict")
        assert resource_version == self.obj["metadata"]["resourceVersion"]
        from goodput.render.patch import apply_merge_patch

        self.obj = apply_merge_patch(self.obj, json.loads(json.dumps(patch)))  # as the apiserver does
        self.obj["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.status_writes.append(resource_version)


def test_handler_retries_a_status_conflict_from_a_fresh_read() -> None:
    import logging

    from kubernetes.client.exceptions import ApiException

    from goodput.handlers.operator import CONFLICT_ATTEMPTS, _decide_and_commit

    obj = {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
           "metadata": {"name": "llm", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "7"},
           "spec": spec_of(rate_for(2))}
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    kube = FakeKube(obj, conflicts=2)
    done = _decide_and_commit(kube, "ns", "llm", now, logging.getLogger("test"))  # type: ignore[arg-type]
    assert done is not None
    _, outcome = done
    assert kube.status_writes == ["9"], "written once, at the resourceVersion read last"
    assert [d["reason"] for d in kube.obj["status"]["decisions"]] == ["Initial"]
    assert [e.reason for e in outcome.events] == ["Initial"] and kube.applied == [2, 2, 2]
    # The next tick decides the same: nothing to write (issue 19), and the object is what a
    # whole-status write would have left.
    later = now + dt.timedelta(seconds=30)
    again = _decide_and_commit(kube, "ns", "llm", later, logging.getLogger("test"))  # type: ignore[arg-type]
    assert again is not None and kube.status_writes == ["9"], "an unchanged status is not written"
    assert kube.obj["status"] == json.loads(json.dumps(again[1].status))
    much_later = _decide_and_commit(kube, "ns", "llm", now + dt.timedelta(minutes=20),
                                    logging.getLogger("test"))  # type: ignore[arg-type]
    assert much_later is not None and kube.status_writes == ["9"], "steady ticks leave the status as it is"
    # Someone writing all the time: the handler gives up after a few rounds (kopf retries later).
    busy = FakeKube(json.loads(json.dumps(obj)), conflicts=CONFLICT_ATTEMPTS)
    with pytest.raises(ApiException):
        _decide_and_commit(busy, "ns", "llm", now, logging.getLogger("test"))  # type: ignore[arg-type]
    assert busy.status_writes == []


def test_events_are_named_by_content_and_posted_once() -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from goodput.kube.actions import Kube, event_name, unschedulable
    from goodput.render.reconcile import Event

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ev = Event("Normal", "ScaleUp", "aggregated 1→2")
    assert event_name("llm", "u", ev, now) == event_name("llm", "u", ev, now)
    assert event_name("llm", "u", ev, now) != event_name("llm", "u", Event("Normal", "ScaleUp", "1→3"), now)
    created: list[str] = []

    class Core:
        def create_namespaced_event(self, namespace: str, body: Any, **_: Any) -> None:
            if body.metadata.name in created:
                raise ApiException(status=409, reason="AlreadyExists")
            created.append(body.metadata.name)

    kube = Kube(client.ApiClient())
    kube.core = Core()  # type: ignore[assignment]
    body = {"metadata": {"name": "llm", "namespace": "ns", "uid": "u"}}
    kube.post_event(body, ev, now)
    kube.post_event(body, ev, now)  # a retry after a lost answer: no second Event, no error
    assert created == [event_name("llm", "u", ev, now)]

    def pod(phase: str, *conds: tuple[str, str, str]) -> client.V1Pod:
        return client.V1Pod(status=client.V1PodStatus(phase=phase, conditions=[
            client.V1PodCondition(type=t, status=s, reason=r, message=f"{r} says why") for t, s, r in conds]))

    assert unschedulable(pod("Pending", ("PodScheduled", "False", "Unschedulable"))) == "Unschedulable says why"
    assert unschedulable(pod("Pending")) is None  # not looked at by the scheduler yet
    assert unschedulable(pod("Running", ("PodScheduled", "True", ""))) is None
