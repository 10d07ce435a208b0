"""The whole loop, for real: load -> emulated vLLM replicas -> Prometheus -> operator -> Deployments -> pods.

Real parts: the control plane with kwok GPU nodes (the session ``cluster`` fixture), a real
Prometheus scraping every 1 s (`LocalPrometheus`, file_sd targets), the operator as its own process
(``goodput operator --prometheus URL --timer-seconds 5`` with 20 s / 60 s windows). What runs in
the pods is emulated by ``python -m goodput.emulator.process``: one `EngineReplica` per Running
pod, each serving vLLM's exact ``/metrics`` on its own port, under a Poisson load whose rate the
test changes at run time through the emulator's control endpoint.

The deployment: llama-3.1-8b bf16 on h100-sxm-80gb, SLO TTFT 1000 ms / ITL 40 ms, every request
2000 prompt + 1000 output tokens (lengths on 1-2-5 bucket bounds, so the observed histograms say
exactly that), hinted 2 req/s. The capacity model gives one replica 4.3 req/s of goodput: 2 req/s
fits in one replica, the 3x step to 6 req/s needs two.

The scenario is one timeline (a load step needs the load before it); its checks are collected
and reported together at the end, each with what was seen, so one run shows every property:

1. metrics flow: MetricsAvailable=True, the observed request rate near the emulated 2 req/s;
2. base load keeps one replica, and the calibration stays near 1 (the emulator *is* the model);
3. a 3x step scales the pool up within about one timer period after the higher rate shows in
   the 20 s window, with a ScaleUp (or Emergency) Event naming req/s;
4. Prometheus stopped: replicas held, MetricsAvailable=False with a message; started again on
   the same TSDB: MetricsAvailable=True;
5. load back to 2 req/s: no scale-down before the 60 s stabilization window has passed since the
   last recommendation at the current size, then a ScaleDown (or RateLimited) decision;
6. metric-driven decisions change replicas only: the vLLM pod template (engine arguments) stays,
   since every template change restarts every vLLM pod (a cold start each);
7. the scale-down cuts no request: the pods that leave finish what they hold within their
   termination grace period (the emulator's ``--drain-s``), counted from the emulator's
   ``resubmitted`` (a request cut when its pod goes, retried by its client).

kwok marks a pod Ready the moment it runs, where a vLLM pod becomes Ready only after loading its
weights; the fixture sets ``minReadySeconds`` (cold start + 2 s) on the Deployment, so a rollout
keeps old pods serving while new ones load, as readiness probes would on a real cluster.
A shorter test, run first on the same fixture, checks that with a ``--legacy-names`` emulator
(vLLM 0.8-0.10 names) the collector and the operator still read ITL and KV-cache usage.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL
from goodput.demo.stack import (
    EmulatorHandle,
    Processes,
    apply_manifest,
    create_namespace,
    emulator_argv,
    install_crd,
    log_tail,
    loop_env,
    no_proxy_for_loopback,
    operator_argv,
    set_min_ready,
    wait_deployment,
)
from goodput.devcluster.cluster import LocalCluster
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, free_port
from goodput.metrics.prometheus import NAMESPACE_LABEL, PrometheusCollector
from goodput.planner.autoscale import scaled_efficiency
from goodput.planner.recommend import hinted_workload, recommend, resolve

pytestmark = pytest.mark.integration

NAME = "llama-loop"
LEGACY = "llama-legacy"
POOL = "aggregated"
BASE_RPS = 2.0
STEP = 3.0
PROMPT_TOKENS, OUTPUT_TOKENS = 2000, 1000
TIMER_S = 5.0
WINDOW_S = 20.0
LONG_WINDOW_S = 60.0
COLD_START_S = 10
STABILIZATION_S = 60
# A decision lands within one timer period of its cause; this covers kopf's timer jitter, one
# observation's queries and the 1 s resolution of the times in status.
SLACK_S = 6.0
CALIBRATION_OK = (0.8, 1.25)  # the emulator runs the capacity model itself: the truth is 1.0


def spec_of(rate: float) -> dict[str, Any]:
    return {
        "model": {"id": "llama-3.1-8b"},
        "precision": {"weights": "bf16"},
        "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": 1000, "itlMs": 40},
        "mode": "aggregated",
        "workload": {"requestRate": rate, "inputTokens": {"mean": PROMPT_TOKENS},
                     "outputTokens": {"mean": OUTPUT_TOKENS}},
        "scaling": {"aggregated": {"minReplicas": 1, "maxReplicas": 20}, "coldStartSeconds": COLD_START_S,
                    "scaleDownStabilizationSeconds": STABILIZATION_S},
    }


def goodput_per_replica(step_time_scale: float) -> float:
    """What the planner gives one replica for this workload at a calibration (pure, in-process)."""
    spec = InferenceDeploymentSpec.model_validate(spec_of(BASE_RPS))
    rec = recommend(spec, resolve(spec, NAME), hinted_workload(spec), scaled_efficiency(step_time_scale))
    return rec.pools[0].goodput_rps


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


# ------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------
@dataclass
class Loop:
    cluster: LocalCluster
    ns: str
    prom: LocalPrometheus
    operator: subprocess.Popen[bytes]
    main: EmulatorHandle
    legacy: EmulatorHandle
    log_dir: Path
    t0: float = field(default_factory=time.time)

    def api(self, path: str) -> Any:
        try:
            return self.cluster.api("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def infd(self, name: str = NAME) -> dict[str, Any]:
        obj = self.api(f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments/{name}")
        return obj or {}

    def deployment(self, name: str = NAME) -> dict[str, Any] | None:
        dep: dict[str, Any] | None = self.api(f"/apis/apps/v1/namespaces/{self.ns}/deployments/{name}-{POOL}")
        return dep

    def replica_sets(self, name: str = NAME) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"goodput.dev/inference-deployment={name},goodput.dev/role={POOL}")
        data = self.api(f"/apis/apps/v1/namespaces/{self.ns}/replicasets?labelSelector={selector}") or {}
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    def events(self, name: str = NAME) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"involvedObject.name={name}")
        data = self.api(f"/api/v1/namespaces/{self.ns}/events?fieldSelector={selector}") or {}
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    def prom_value(self, promql: str) -> float | None:
        try:
            result = self.prom.query(promql, timeout=3)
        except Exception:
            return None
        return float(result[0]["value"][1]) if result else None

    def completion_rate_20s(self) -> float | None:
        """Completed requests per second over the 20 s window, straight from Prometheus: a lower
        bound of the arrival rate the operator plans for (it adds the queue growth, and forecasts
        along the trend only upwards)."""
        sel = f'{NAMESPACE_LABEL}="{self.ns}",{PROM_DEPLOYMENT_LABEL}="{NAME}"'
        return self.prom_value(f"sum(rate(vllm:request_success_total{{{sel}}}[{WINDOW_S:g}s]))")


@pytest.fixture(scope="module")
def loop(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"the closed-loop test needs Prometheus at {DEFAULT_BINARY} (apt-get install prometheus); "
                    "it never skips", pytrace=False)
    work = tmp_path_factory.mktemp("closed-loop")
    restore_proxy = no_proxy_for_loopback()
    ns = f"loop-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)

    prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1, jobs=("vllm", "vllm-legacy")).start()
    procs = Processes(work, loop_env(cluster.env, window_s=WINDOW_S, long_window_s=LONG_WINDOW_S))

    def emulator(name: str, job: str, rate: float, *extra: str) -> EmulatorHandle:
        load = ["--rate-schedule", f"0:{rate:g}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}"]
        argv = emulator_argv(cluster.kubeconfig, ns, name, targets_file=prom.targets_path(job),
                             control_port=free_port(), cold_start_s=COLD_START_S, load=load, drain_s=60, seed=7,
                             extra=extra)
        return EmulatorHandle.start(procs, argv, name)

    try:
        for name, rate in ((NAME, BASE_RPS), (LEGACY, 1.0)):
            apply_manifest(cluster, {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
                                     "metadata": {"name": name, "namespace": ns}, "spec": spec_of(rate)})
        operator = procs.spawn(operator_argv(ns, prom.url, timer_s=TIMER_S), "operator.log")
        main = emulator(NAME, "vllm", BASE_RPS)
        legacy = emulator(LEGACY, "vllm-legacy", 1.0, "--legacy-names")
        state = Loop(cluster, ns, prom, operator, main, legacy, work)
        # Readiness as a real vLLM pod has it (see the module docstring).
        for name in (NAME, LEGACY):
            wait_deployment(cluster, ns, f"{name}-{POOL}", timeout=60, alive=[operator])
            set_min_ready(cluster, ns, f"{name}-{POOL}", COLD_START_S + 2)
        for emu in (main, legacy):
            emu.wait_ready(timeout=30)
        state.t0 = time.time()
        yield state
    finally:
        codes = procs.stop_all()
        prom.stop()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        restore_proxy()


# ------------------------------------------------------------------------------------------
# what the test watches
# ------------------------------------------------------------------------------------------
@dataclass
class Watch:
    """Everything seen so far: decisions, recommendations, calibration, pod templates."""

    loop: Loop
    decisions: list[dict[str, Any]] = field(default_factory=list)
    recommendations: dict[str, int] = field(default_factory=dict)  # time -> recommended replicas
    scales: list[tuple[float, float]] = field(default_factory=list)  # (wall time, stepTimeScale)
    templates: dict[str, list[str]] = field(default_factory=dict)  # ReplicaSet -> vLLM args
    template_times: dict[str, float] = field(default_factory=dict)  # ReplicaSet -> creationTimestamp
    status: dict[str, Any] = field(default_factory=dict)
    replicas: int = 0
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        line = f"[closed-loop +{time.time() - self.loop.t0:6.1f} s] {msg}"
        self.lines.append(line)
        print(line, file=sys.stderr, flush=True)

    def fail(self, check: str, msg: str) -> None:
        self.failures.append(f"{check}: {msg}")
        self.say(f"CHECK FAILED {check}: {msg}")

    def ok(self, check: str, msg: str) -> None:
        self.say(f"check ok {check}: {msg}")

    def condition(self, ctype: str) -> dict[str, Any]:
        return next((c for c in self.status.get("conditions", []) if c.get("type") == ctype), {})

    @property
    def observed(self) -> dict[str, Any]:
        obs: dict[str, Any] = (self.status.get("observed") or {}).get(POOL) or {}
        return obs

    @property
    def scale(self) -> float:
        return float((self.status.get("autoscaler") or {}).get("stepTimeScale", 1.0))

    def poll(self) -> None:
        for proc, what in ((self.loop.main.proc, "emulator"), (self.loop.operator, "operator")):
            assert proc.poll() is None, f"the {what} exited with {proc.returncode}"
        self.status = self.loop.infd().get("status") or {}
        dep = self.loop.deployment()
        self.replicas = int(dep["spec"]["replicas"]) if dep else 0
        known = {(d["time"], d["reason"], d["message"]) for d in self.decisions}
        for d in self.status.get("decisions", []):
            if (d["time"], d["reason"], d["message"]) not in known:
                self.decisions.append(d)
                self.say(f"decision {d['reason']}: {d['message'][:220]}")
        for rec in (self.status.get("autoscaler") or {}).get("recommendations", []):
            if POOL in rec.get("replicas", {}):
                self.recommendations[rec["time"]] = int(rec["replicas"][POOL])
        if not self.scales or self.scales[-1][1] != self.scale:
            self.scales.append((time.time(), self.scale))
        for rs in self.loop.replica_sets():
            rs_name = rs["metadata"]["name"]
            if rs_name not in self.templates:
                args = rs["spec"]["template"]["spec"]["containers"][0]["args"]
                self.templates[rs_name] = args
                self.template_times[rs_name] = _epoch(rs["metadata"]["creationTimestamp"])
                if len(self.templates) > 1:
                    self.say(f"new pod template {rs_name}: {engine_args(args)}")

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                return None
            time.sleep(every)

    def decisions_since(self, t: float, reasons: tuple[str, ...], direction: int) -> list[dict[str, Any]]:
        out = []
        for d in self.decisions:
            if d.get("pool") != POOL or _epoch(d["time"]) < math.floor(t) or d["reason"] not in reasons:
                continue
            frm, to = d.get("fromReplicas"), d.get("toReplicas")
            if frm is not None and to is not None and (to - frm) * direction > 0:
                out.append(d)
        return out


def engine_args(args: list[str]) -> str:
    keys = ("--tensor-parallel-size", "--max-num-seqs", "--max-num-batched-tokens")
    return " ".join(f"{k} {args[args.index(k) + 1]}" for k in keys if k in args)


# ------------------------------------------------------------------------------------------
# the scenario
# ------------------------------------------------------------------------------------------
def test_legacy_metric_names_still_give_itl_and_kv_usage(loop: Loop) -> None:
    """vLLM 0.8-0.10 names (time_per_output_token_seconds, gpu_cache_usage_perc): the collector
    falls back to them pod by pod."""
    sel = f'{NAMESPACE_LABEL}="{loop.ns}",{PROM_DEPLOYMENT_LABEL}="{LEGACY}"'
    collector = PrometheusCollector(loop.prom.url, timeout_s=5)
    deadline = time.monotonic() + 120
    while True:
        obs = collector.observe(loop.ns, LEGACY, dt.datetime.now(dt.UTC), window_s=WINDOW_S,
                                long_window_s=LONG_WINDOW_S)
        pool = obs.pools.get(POOL)
        if pool is not None and pool.itl_ms is not None and pool.kv_cache_usage is not None:
            break
        assert time.monotonic() < deadline, f"no ITL / KV usage from the legacy-names pods: {obs}"
        time.sleep(2)
    assert loop.prom_value(f"count(vllm:gpu_cache_usage_perc{{{sel}}})")
    assert loop.prom_value(f"count(vllm:time_per_output_token_seconds_count{{{sel}}})")
    assert loop.prom_value(f"count(vllm:kv_cache_usage_perc{{{sel}}})") is None
    assert loop.prom_value(f"count(vllm:inter_token_latency_seconds_count{{{sel}}})") is None
    assert 1.0 < pool.itl_ms < 1000.0 and 0.0 <= pool.kv_cache_usage <= 1.0
    assert not [m for m in obs.missing if "itl_ms" in m or "kv_cache_usage" in m], obs.missing
    # The operator reads the same through its own collector.
    observed: dict[str, Any] = {}
    deadline = time.monotonic() + 3 * TIMER_S + SLACK_S
    while time.monotonic() < deadline:
        observed = ((loop.infd(LEGACY).get("status") or {}).get("observed") or {}).get(POOL) or {}
        if "itlMs" in observed and "kvCacheUsage" in observed:
            break
        time.sleep(1)
    assert "itlMs" in observed and "kvCacheUsage" in observed, observed
    print(f"[closed-loop] legacy names: ITL p99 {pool.itl_ms:.1f} ms, KV {pool.kv_cache_usage:.1%}; operator "
          f"{observed}", file=sys.stderr)



def _requests_cut_by_scale_down(w: Any, emulator: EmulatorHandle, cut_before: int) -> None:
    """Once every replica of the scaled-down pods has drained (the emulator finishes what a deleted
    pod holds for its termination grace period, as a kubelet does, and re-submits what is left: a
    cut request), the requests cut must be 0: the operator marked the least-loaded pods to leave
    (pod-deletion-cost) and the grace period covers the longest request."""
    deadline = time.time() + 90
    leaving: dict[str, int] = {}
    while time.time() < deadline:
        state = emulator.state()
        draining = [r for r in state["replicas"] if r["draining"]]
        for r in draining:
            leaving.setdefault(r["pod"], int(r["outstanding"]))
        if leaving and not draining:
            break
        time.sleep(1)
    cut = int(emulator.state().get("resubmitted", 0)) - cut_before
    held = ", ".join(f"{pod} with {n} in flight" for pod, n in sorted(leaving.items())) or "none seen draining"
    if not leaving:
        w.fail("7 cut requests", "no replica was seen draining within 90 s of the scale-down")
    elif cut:
        w.fail("7 cut requests", f"the scale-down cut {cut} request(s) (re-submitted by their clients); "
                                 f"leaving: {held}")
    else:
        w.ok("7 cut requests", f"0 requests cut by the scale-down; leaving: {held}, each drained before it went")

def test_closed_loop_scales_with_load_and_holds_on_outage(loop: Loop) -> None:
    w = Watch(loop)
    w.say(f"namespace {loop.ns}; Prometheus {loop.prom.url}; emulator control port {loop.main.port}")

    # 1. metrics flow ---------------------------------------------------------------------------
    def metrics_near_base() -> bool:
        rate = w.observed.get("requestRate")
        return (w.condition("MetricsAvailable").get("status") == "True" and rate is not None
                and 0.6 * BASE_RPS <= rate <= 1.5 * BASE_RPS)

    if w.wait("metrics near the base rate", metrics_near_base, timeout=120):
        state = loop.main.state()
        w.ok("1 metrics", f"MetricsAvailable=True ({w.condition('MetricsAvailable').get('message', '')[:120]}); "
                          f"observed {w.observed.get('requestRate'):.2f} req/s for an emulated {BASE_RPS:g} "
                          f"(emulator: {state['arrivals']} arrivals, {state['completed']} completed)")
        for key in ("itlMs", "ttftMs", "kvCacheUsage", "running"):
            if key not in w.observed:
                w.fail("1 metrics", f"status.observed.{POOL} lacks {key}: {w.observed}")
    else:
        w.fail("1 metrics", f"no MetricsAvailable=True with a request rate near {BASE_RPS:g} req/s within 120 s: "
                            f"condition {w.condition('MetricsAvailable')}, observed {w.observed}")

    # 2. base load: one replica, calibration near the truth -------------------------------------
    # Long enough for the 60 s window to hold base load only: a step is then seen as a step, not
    # as the tail of the warm-up's rising trend.
    w.wait("the long window to fill with base load", lambda: False,
           timeout=max(2 * TIMER_S, loop.t0 + LONG_WINDOW_S + 15 - time.time()))
    early_ups = w.decisions_since(loop.t0, ("ScaleUp", "Emergency", "RateLimited"), +1)
    if w.replicas != 1 or early_ups:
        why = f"; first: {early_ups[0]['reason']} {early_ups[0]['message'][:200]!r}" if early_ups else ""
        w.fail("2 base load", f"{BASE_RPS:g} req/s should fit one replica ({goodput_per_replica(1.0):.2f} req/s of "
                              f"goodput at calibration 1.0), but the pool has {w.replicas} (calibration now "
                              f"{w.scale:.2f}: {goodput_per_replica(w.scale):.2f} req/s per replica){why}")
    else:
        w.ok("2 base load", f"one replica at {BASE_RPS:g} req/s; calibration {w.scale:.2f}")

    # 3. a 3x step ------------------------------------------------------------------------------
    before = w.replicas
    t_step = time.time()
    loop.main.set_rate(STEP)
    w.say(f"load x{STEP:g}: {BASE_RPS * STEP:g} req/s (replicas {before})")
    shown: dict[str, float] = {}
    above: list[float] = []

    def scaled_up() -> list[dict[str, Any]]:
        # "Shows": the completion rate over the 20 s window is above what the current replicas
        # serve (at the operator's own calibration) with the 10% tolerance, on two polls in a row.
        done = loop.completion_rate_20s()
        capacity = goodput_per_replica(w.scale) * max(before, 1)
        if done is not None and done > capacity * 1.1:
            above.append(time.time())
        else:
            above.clear()
        if "t" not in shown and len(above) >= 2:
            shown.update(t=above[0], rate=done or 0.0, capacity=capacity)
            w.say(f"the 20 s window shows {done:.2f} req/s completed > {capacity:.2f} req/s of {before} "
                  f"replica(s) (calibration {w.scale:.2f})")
        return w.decisions_since(t_step, ("ScaleUp", "Emergency", "RateLimited"), +1)

    serves = goodput_per_replica(w.scale) * before
    ups: list[dict[str, Any]] = []
    if serves >= BASE_RPS * STEP:
        w.fail("3 scale-up", f"not testable: the {before} replicas the pool already has serve {serves:.2f} req/s "
                             f"(calibration {w.scale:.2f}), more than the {BASE_RPS * STEP:g} req/s of the step")
        w.wait("the step to register", lambda: False, timeout=20)
    else:
        ups = w.wait("a scale-up", scaled_up, timeout=75, every=0.5)
        if not ups:
            w.fail("3 scale-up", f"no scale-up within 75 s of a {STEP:g}x step (replicas {w.replicas}, observed "
                                 f"{w.observed.get('requestRate')} req/s, {w.status.get('observed')})")
    if ups:
        up = ups[0]
        t_up = _epoch(up["time"])
        if "t" in shown and t_up > shown["t"] + TIMER_S + SLACK_S:
            w.fail("3 scale-up", f"decided {t_up - shown['t']:.0f} s after the 20 s window showed "
                                 f"{shown['rate']:.2f} req/s over the {shown['capacity']:.2f} req/s of {before} "
                                 f"replica(s); expected within one timer period ({TIMER_S:g} s + {SLACK_S:g} s)")
        else:
            since = f"{t_up - shown['t']:+.0f} s after the window showed it" if "t" in shown else "before it showed"
            w.ok("3 scale-up", f"{up['reason']} {up['fromReplicas']}→{up['toReplicas']} {t_up - t_step:.0f} s "
                               f"after the step, {since}")
        events = [e for e in loop.events() if e.get("reason") == up["reason"]
                  and e.get("message", "")[:200] == up["message"][:200]]
        if not events:
            w.fail("3 scale-up", f"no {up['reason']} Event for the decision {up['message']!r}")
        elif "req/s" not in events[0]["message"]:
            w.fail("3 scale-up", f"the {up['reason']} Event does not name the demand in req/s: "
                                 f"{events[0]['message']!r}")
        else:
            w.ok("3 scale-up", f"Event {events[0]['reason']}: {events[0]['message'][:160]}")
        w.wait("the Deployment to follow", lambda: w.replicas >= int(up["toReplicas"]), timeout=15)

    # 4. Prometheus outage ----------------------------------------------------------------------
    w.wait("the new replicas to serve", lambda: False, timeout=COLD_START_S + 5)
    held = w.replicas
    loop.prom.stop()
    t_out = time.time()
    w.say(f"Prometheus stopped (replicas {held})")
    unavailable = w.wait("MetricsAvailable=False", lambda: w.condition("MetricsAvailable").get("status") == "False",
                         timeout=2 * TIMER_S + SLACK_S + 10)
    if not unavailable:
        w.fail("4 outage", f"MetricsAvailable is not False {time.time() - t_out:.0f} s into the outage: "
                           f"{w.condition('MetricsAvailable')}")
    else:
        message = w.condition("MetricsAvailable").get("message", "")
        if not message or ("unavailable" not in message and loop.prom.url not in message):
            w.fail("4 outage", f"MetricsAvailable=False without a useful message: {message!r}")
        else:
            w.ok("4 outage", f"MetricsAvailable=False after {time.time() - t_out:.0f} s: {message[:160]}")
    w.wait("two more timer periods without metrics", lambda: False, timeout=2 * TIMER_S + 1)
    during = [d for d in w.decisions if _epoch(d["time"]) >= math.floor(t_out)]
    changed = [d for d in during if d.get("toReplicas") is not None and d.get("toReplicas") != d.get("fromReplicas")]
    restructured = [d for d in during if d["reason"] in ("Reconfigure", "ModeChange")]
    rolled = [rs for rs, t in w.template_times.items() if t >= math.ceil(t_out)]  # 1 s resolution
    if w.replicas != held or changed:
        w.fail("4 outage", f"replicas changed during the outage: {held} → {w.replicas}; decisions {changed}")
    else:
        w.ok("4 outage", f"replicas held at {held} for {time.time() - t_out:.0f} s without metrics")
    if restructured or rolled:
        w.fail("4 outage", f"while holding replicas for want of metrics, the operator re-planned the engine from "
                           f"the spec's hints and rolled the pods: new pod templates "
                           f"{[engine_args(w.templates[rs]) for rs in rolled]}; structural decisions "
                           f"{[(d['reason'], d['message'][:160]) for d in restructured]}")
    loop.prom.start()
    t_back = time.time()
    back = w.wait("MetricsAvailable=True again",
                  lambda: w.condition("MetricsAvailable").get("status") == "True", timeout=45)
    if back:
        w.ok("4 outage", f"MetricsAvailable=True {time.time() - t_back:.0f} s after Prometheus came back")
    else:
        w.fail("4 outage", f"MetricsAvailable not True 45 s after Prometheus came back: "
                           f"{w.condition('MetricsAvailable')}")

    # 5. load falls -----------------------------------------------------------------------------
    high = w.replicas
    cut_before = int(loop.main.state().get("resubmitted", 0))
    t_drop = time.time()
    loop.main.set_rate(1.0)
    w.say(f"load back to {BASE_RPS:g} req/s (replicas {high})")
    downs = None
    if high > 1:
        downs = w.wait("a scale-down", lambda: w.decisions_since(t_drop, ("ScaleDown", "RateLimited"), -1),
                       timeout=STABILIZATION_S + LONG_WINDOW_S + 20)
    if high <= 1:
        w.fail("5 scale-down", f"nothing to scale down: the pool has {high} replica(s) after the step")
    elif not downs:
        low_since = [t for t, n in sorted(w.recommendations.items()) if _epoch(t) >= t_drop and n < high]
        w.fail("5 scale-down", f"no scale-down within {STABILIZATION_S + LONG_WINDOW_S + 20} s of the load falling "
                               f"back to {BASE_RPS:g} req/s: replicas {w.replicas}, recommendations below {high} "
                               f"since {low_since[0] if low_since else 'never'} (recent: "
                               f"{sorted(w.recommendations.items())[-4:]}); the operator says: "
                               f"{(w.status.get('plan') or {}).get('reason', '')[:300]!r}")
    else:
        down = downs[0]
        t_down = _epoch(down["time"])
        frm = int(down["fromReplicas"])
        last_high = max((_epoch(t) for t, n in w.recommendations.items() if n >= frm and _epoch(t) < t_down),
                        default=None)
        early = [d for d in downs if _epoch(d["time"]) < t_drop + STABILIZATION_S - 1]
        if early:
            w.fail("5 scale-down", f"scaled down {t_down - t_drop:.0f} s after the load fell, inside the "
                                   f"{STABILIZATION_S} s stabilization window: {early[0]}")
        elif last_high is not None and t_down - last_high < STABILIZATION_S - 1:
            w.fail("5 scale-down", f"scaled down {t_down - last_high:.0f} s after the last recommendation of "
                                   f"{frm} replicas (< {STABILIZATION_S} s)")
        else:
            gap = f"{t_down - last_high:.0f} s after the last recommendation of {frm}" if last_high else ""
            w.ok("5 scale-down", f"{down['reason']} {frm}→{down['toReplicas']} {t_down - t_drop:.0f} s after the "
                                 f"load fell, {gap}: {down['message'][:140]}")

    # 7. requests cut by the scale-down (issue 14): the pods that left finish what they hold ------
    if downs:
        _requests_cut_by_scale_down(w, loop.main, cut_before)

    # 6. the pod template --------------------------------------------------------------------------
    w.poll()
    ordered = sorted(w.templates, key=lambda rs: w.template_times[rs])
    silent: list[str] = []
    tp_changes: list[tuple[float, str]] = []
    for old, new in itertools.pairwise(ordered):
        a, b = w.templates[old], w.templates[new]
        tp = "--tensor-parallel-size"
        if a[a.index(tp) + 1] != b[b.index(tp) + 1]:
            tp_changes.append((w.template_times[new], f"TP{a[a.index(tp) + 1]}→TP{b[b.index(tp) + 1]}"))
        else:
            silent.append(f"{engine_args(a)} → {engine_args(b)}")
    if silent:
        w.fail("6 pod template", f"no spec changed, yet metric-driven reconciles rewrote the vLLM engine arguments "
                                 f"{len(silent)} time(s), each a rolling restart (a cold start) of every pod, with no "
                                 f"Decision or Event: " + "; ".join(silent))
    flips = [(t2 - t1, f"{c1} then {c2}") for (t1, c1), (t2, c2) in itertools.pairwise(tp_changes)
             if t2 - t1 < STABILIZATION_S]
    if flips:
        w.fail("6 pod template", f"the tensor-parallel degree flipped back within the {STABILIZATION_S} s window "
                                 f"(Reconfigure bypasses stabilization): "
                                 + "; ".join(f"{what} {gap:.0f} s apart" for gap, what in flips))
    if not silent and not flips:
        w.ok("6 pod template", f"metric-driven decisions changed replicas only ({len(tp_changes)} TP change(s))")

    # calibration over the whole run ---------------------------------------------------------------
    lo, hi = CALIBRATION_OK
    scales = [s for _, s in w.scales]
    if scales and not all(lo <= s <= hi for s in scales):
        w.fail("2 calibration", f"stepTimeScale went {min(scales):.2f}..{max(scales):.2f} (history "
                                f"{[round(s, 2) for s in scales]}); the emulator steps exactly as the capacity "
                                f"model does, so it should stay within {lo}..{hi}; per-replica goodput moved "
                                f"{goodput_per_replica(max(scales)):.2f}..{goodput_per_replica(min(scales)):.2f} "
                                f"req/s with it")
    state = loop.main.state()
    w.say(f"emulator: {json.dumps({k: v for k, v in state.items() if k != 'replicas'})}")
    assert loop.main.proc.poll() is None, f"the emulator died:\n{log_tail(loop.main.log_path)}"
    assert loop.operator.poll() is None, "the operator died"
    assert not w.failures, "closed-loop checks failed:\n- " + "\n- ".join(w.failures)
