"""The closed loop when the capacity model is wrong: emulated engines 1.5x slower than the operator believes.

Real parts as in ``test_closed_loop``: the control plane with kwok GPU nodes, a real Prometheus
scraping every 1 s, the operator as its own process. The emulator runs a world apart from the
operator's model (``--world-scale speed=0.6667``: every engine step takes 1.5x the model's time),
and the operator keeps its shipped belief.

The deployment: llama-3.1-8b bf16 on h100-sxm-80gb, SLO TTFT p99 1000 ms / ITL p99 50 ms (both on
vLLM's bucket bounds, so Prometheus's buckets prove attainment exactly), every request 2000 prompt +
1000 output tokens at a steady 4 req/s. The model gives one replica ~5.2 req/s of goodput, so its
own answer is one replica; the world's replica serves ~3.0 req/s, so the SLOs need two.

What is checked, each with what was seen:

1. within a bounded time of load the pool runs two or more replicas, because of what the operator
   observed (its decisions say why), not because the model asked for it;
2. the calibration in status finds the world: the decode step-time term within 20% of 1.5;
3. once the new replicas serve, TTFT and ITL attainment over a minute, read from vLLM's histograms in
   Prometheus (TTFT <= 1 s per request, ITL <= 50 ms per token), is at least 99%;
4. the pool is never scaled back down to the model's one replica during the run: the uncalibrated
   model alone would say one replica suffices.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    get_or_none,
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
from goodput.metrics.prometheus import NAMESPACE_LABEL
from goodput.planner.autoscale import scaled_efficiency
from goodput.planner.recommend import hinted_workload, recommend, resolve

pytestmark = pytest.mark.integration

NAME = "llama-slow-world"
POOL = "aggregated"
RATE_RPS = 4.0
PROMPT_TOKENS, OUTPUT_TOKENS = 2000, 1000
TTFT_SLO_S, ITL_SLO_S = 1.0, 0.05  # bucket bounds of vllm:time_to_first_token_seconds / inter_token_latency_seconds
BUCKET_LE = {TTFT_SLO_S: "1.0", ITL_SLO_S: "0.05"}  # the `le` label as vLLM's exposition writes those bounds
WORLD_SPEED = 0.6667  # every engine step takes 1.5x the model's time
TRUTH = 1.0 / WORLD_SPEED
TIMER_S, WINDOW_S, LONG_WINDOW_S = 5.0, 20.0, 60.0
COLD_START_S = 10
STABILIZATION_S = 60
SCALE_UP_WITHIN_S = 180.0  # from the first load: warm-up (settling), one window of evidence, a cold start
ATTAINMENT_WINDOW_S = 60
ATTAINMENT_WITHIN_S = 180.0  # from the scale-up: a cold start, the backlog drained, one clean minute


def spec() -> dict[str, Any]:
    return {
        "model": {"id": "llama-3.1-8b"},
        "precision": {"weights": "bf16"},
        "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": TTFT_SLO_S * 1000, "itlMs": ITL_SLO_S * 1000},
        "mode": "aggregated",
        "workload": {"requestRate": RATE_RPS, "inputTokens": {"mean": PROMPT_TOKENS},
                     "outputTokens": {"mean": OUTPUT_TOKENS}},
        "scaling": {"aggregated": {"minReplicas": 1, "maxReplicas": 8}, "coldStartSeconds": COLD_START_S,
                    "scaleDownStabilizationSeconds": STABILIZATION_S},
    }


def replicas_needed(step_time_scale: float) -> tuple[int, float]:
    """The planner's replica count and per-replica goodput for this load at a step-time scale (pure)."""
    parsed = InferenceDeploymentSpec.model_validate(spec())
    rec = recommend(parsed, resolve(parsed, NAME), hinted_workload(parsed), scaled_efficiency(step_time_scale))
    return rec.pools[0].replicas, rec.pools[0].goodput_rps


@dataclass
class World:
    cluster: LocalCluster
    ns: str
    prom: LocalPrometheus
    operator: subprocess.Popen[bytes]
    emulator: EmulatorHandle
    t0: float

    def status(self) -> dict[str, Any]:
        obj = get_or_none(self.cluster, f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments/{NAME}")
        return (obj or {}).get("status") or {}

    def replicas(self) -> int:
        dep = get_or_none(self.cluster, f"/apis/apps/v1/namespaces/{self.ns}/deployments/{NAME}-{POOL}")
        return int(dep["spec"]["replicas"]) if dep else 0

    def attainment(self, family: str, bound_s: float) -> float | None:
        """The fraction of observations of a vLLM histogram within ``bound_s`` over the last minute."""
        sel = f'{NAMESPACE_LABEL}="{self.ns}",{PROM_DEPLOYMENT_LABEL}="{NAME}"'
        window = f"[{ATTAINMENT_WINDOW_S}s]"
        within = self.prom.query(f'sum(increase({family}_bucket{{{sel},le="{BUCKET_LE[bound_s]}"}}{window}))',
                                 timeout=3)
        total = self.prom.query(f"sum(increase({family}_count{{{sel}}}{window}))", timeout=3)
        if not within or not total or float(total[0]["value"][1]) <= 0:
            return None
        return float(within[0]["value"][1]) / float(total[0]["value"][1])


@pytest.fixture(scope="module")
def world(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"this test needs Prometheus at {DEFAULT_BINARY} (apt-get install prometheus); it never skips",
                    pytrace=False)
    work = tmp_path_factory.mktemp("slow-world")
    restore_proxy = no_proxy_for_loopback()
    ns = f"slow-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)
    prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1).start()
    procs = Processes(work, loop_env(cluster.env, window_s=WINDOW_S, long_window_s=LONG_WINDOW_S))
    try:
        apply_manifest(cluster, {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
                                 "metadata": {"name": NAME, "namespace": ns}, "spec": spec()})
        operator = procs.spawn(operator_argv(ns, prom.url, timer_s=TIMER_S), "operator.log")
        load = ["--rate-schedule", f"0:{RATE_RPS:g}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}"]
        argv = emulator_argv(cluster.kubeconfig, ns, NAME, targets_file=prom.targets_path("vllm"),
                             control_port=free_port(), cold_start_s=COLD_START_S, load=load, drain_s=60, seed=11,
                             extra=["--world-scale", f"speed={WORLD_SPEED:g}"])
        emulator = EmulatorHandle.start(procs, argv, NAME)
        wait_deployment(cluster, ns, f"{NAME}-{POOL}", timeout=60, alive=[operator])
        set_min_ready(cluster, ns, f"{NAME}-{POOL}", COLD_START_S + 2)
        emulator.wait_ready(timeout=30)
        yield World(cluster, ns, prom, operator, emulator, time.time())
    finally:
        codes = procs.stop_all()
        prom.stop()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        restore_proxy()


def _say(w: World, msg: str) -> None:
    print(f"[slow-world +{time.time() - w.t0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def _decode_term(status: dict[str, Any]) -> dict[str, Any]:
    term: dict[str, Any] = ((status.get("autoscaler") or {}).get("calibration") or {}).get("decode") or {}
    return term


def test_the_model_alone_would_run_one_replica() -> None:
    """The premise: the belief says one replica, the world needs two (else the loop below proves nothing)."""
    believed, believed_rps = replicas_needed(1.0)
    needed, world_rps = replicas_needed(TRUTH)
    assert believed == 1 and believed_rps > RATE_RPS, (believed, believed_rps)
    assert needed >= 2 and world_rps < RATE_RPS, (needed, world_rps)


def test_operator_finds_the_slower_world_and_meets_the_slos(world: World) -> None:
    w = world
    failures: list[str] = []
    counts: list[tuple[float, int]] = []

    def poll() -> tuple[int, dict[str, Any]]:
        assert w.operator.poll() is None, "the operator died"
        assert w.emulator.proc.poll() is None, f"the emulator died:\n{log_tail(w.emulator.log_path)}"
        n = w.replicas()
        if not counts or counts[-1][1] != n:
            counts.append((time.time() - w.t0, n))
            _say(w, f"replicas {n}")
        return n, w.status()

    # 1. two or more replicas within a bounded time, with the operator's reason
    t_up = None
    while time.time() - w.t0 < SCALE_UP_WITHIN_S:
        n, status = poll()
        if n >= 2:
            t_up = time.time()
            break
        time.sleep(2)
    status = w.status()
    ups = [d for d in status.get("decisions", []) if d.get("pool") == POOL and (d.get("toReplicas") or 0) >= 2]
    if t_up is None:
        failures.append(f"1 scale-up: still {w.replicas()} replica(s) {SCALE_UP_WITHIN_S:.0f} s into a load the "
                        f"world's replica cannot serve; calibration {_decode_term(status)}; observed "
                        f"{(status.get('observed') or {}).get(POOL)}")
    else:
        _say(w, f"scaled to {w.replicas()} at +{t_up - w.t0:.0f} s: "
                + "; ".join(f"{d['reason']}: {d['message'][:200]}" for d in ups))
        if not ups or not all(d.get("message") for d in ups):
            failures.append(f"1 scale-up: no decision with a reason for the scale-up: {status.get('decisions')}")

    # 2-3. calibration and attainment once the new replicas serve
    attained: tuple[float, float] | None = None
    seen: list[tuple[float | None, float | None]] = []
    deadline = (t_up or time.time()) + ATTAINMENT_WITHIN_S
    while t_up is not None and time.time() < deadline:
        poll()
        ttft = w.attainment("vllm:time_to_first_token_seconds", TTFT_SLO_S)
        itl = w.attainment("vllm:inter_token_latency_seconds", ITL_SLO_S)
        seen.append((ttft, itl))
        if ttft is not None and itl is not None and time.time() - t_up > ATTAINMENT_WINDOW_S \
                and min(ttft, itl) >= 0.99:
            attained = (ttft, itl)
            _say(w, f"attainment over the last {ATTAINMENT_WINDOW_S} s: TTFT {ttft:.2%}, ITL {itl:.2%}")
            break
        time.sleep(5)
    if t_up is not None and attained is None:
        failures.append(f"3 attainment: TTFT/ITL attainment over {ATTAINMENT_WINDOW_S} s never reached 99% within "
                        f"{ATTAINMENT_WITHIN_S:.0f} s of the scale-up; last readings {seen[-4:]}; replicas {counts}")

    # Hold a little longer than the scale-down window: the model alone would go back to one replica.
    hold_until = time.time() + STABILIZATION_S + 2 * TIMER_S
    while time.time() < hold_until:
        poll()
        time.sleep(3)
    status = w.status()
    term = _decode_term(status)
    scale = float(term.get("scale", 1.0))
    if not (0.8 * TRUTH <= scale <= 1.2 * TRUTH) or not term.get("windows"):
        failures.append(f"2 calibration: the decode term is {term} against a world {TRUTH:.2f}x slower")
    else:
        _say(w, f"calibration: {json.dumps((status.get('autoscaler') or {}).get('calibration'))}")

    for d in status.get("decisions", []):  # every decision with its reason, for whoever reads the log
        _say(w, f"decision {d.get('time')}: {d.get('reason')}: {d.get('message')}")

    # 4. never back to the model's one replica once the world showed it needs more
    after_up = [n for t, n in counts if t_up is not None and t >= t_up - w.t0]
    if after_up and min(after_up) < 2:
        downs = [d for d in status.get("decisions", []) if d.get("pool") == POOL
                 and (d.get("toReplicas") or 0) < (d.get("fromReplicas") or 0)]
        failures.append(f"4 no scale-down to the belief: replicas went {counts}; scale-downs {downs}")

    assert not failures, "slower-world checks failed:\n- " + "\n- ".join(failures)
