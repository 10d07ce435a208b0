"""The loop with real engines: the tiny Llama on real vLLM CPU servers, sized by the operator.

Shared by ``tests/integration/test_real_engine_loop.py`` and ``goodput demo --engine vllm-cpu``:
the InferenceDeployment, the load, and the figures that compare the capacity model with the
engine it has never seen.

* **The accelerator** is one core of this CPU, measured (`goodput.devcluster.cpu_core`): its read
  bandwidth and the peak of vLLM's own bf16 GEMMs on the tiny Llama's shapes.
* **The workload**: every request 32 prompt tokens and 128 output tokens (token-id prompts, so the
  lengths are exact). One server computes about 300 output tokens/s on one core: one replica
  serves about 2 req/s at the SLOs below, so the base of 1 req/s needs one and the surge to
  2.6 req/s needs two. At the base, one replica still decodes more than one sequence on average
  and completes 20 requests per 20 s window: the evidence the calibration waits for.
* **The SLOs** (p90: the p99 of a 20 s window holds 20-odd TTFT samples, and on a shared 2-core
  machine its tail is whatever else ran then): TTFT 1000 ms, ITL 40 ms. A 32-token prefill takes
  about 60 ms and a decode step 7-35 ms over the batches one replica runs, so both are met at
  the base and, once the second replica serves, at the surge.
* **Scaling**: 1-2 replicas (two servers are what a 2-core machine holds); a 40 s cold start
  (a server starts in 30-90 s here, depending on what else runs); short windows (20 s / 60 s),
  a 10 s scale-up stabilization (a Poisson rate read over 20 s, projected over the cold start,
  spikes now and then; the real rise lasts), a 20 s scale-down stabilization.
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
from goodput.planner.calibration import Calibration, PoolConfig, decode_batch, predicted_prefill_ms, replica
from goodput.planner.observation import PoolMetrics
from goodput.planner.recommend import resolve

NAME = "tiny-real"
POOL = "aggregated"
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 128
BASE_RPS = 1.0
SURGE = 2.6
SLO = {"ttftMs": 1000, "itlMs": 40, "percentile": 90}
COLD_START_S = 40
WINDOW_S, LONG_WINDOW_S = 20.0, 60.0
TIMER_S = 5.0
MAX_REPLICAS = 2
SCALING = {"aggregated": {"minReplicas": 1, "maxReplicas": MAX_REPLICAS}, "coldStartSeconds": COLD_START_S,
           "scaleUpStabilizationSeconds": 10, "scaleDownStabilizationSeconds": 20,
           "scaleUpMaxPercentPerMinute": 200, "scaleDownMaxPercentPerMinute": 100}


def manifest(namespace: str, core: CoreMeasurement, model_dir: Path, name: str = NAME) -> dict[str, Any]:
    workload = {"requestRate": BASE_RPS, "inputTokens": {"mean": PROMPT_TOKENS},
                "outputTokens": {"mean": OUTPUT_TOKENS}}
    spec = tiny_llama_spec(core, model_dir, slo=SLO, workload=workload, scaling=SCALING)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def emulator_load() -> list[str]:
    """The emulator's load arguments: Poisson at the base rate, fixed lengths, off until the first
    replica serves (the driver raises the multiplier to 1 then)."""
    return ["--rate-schedule", f"0:{BASE_RPS:g}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}",
            "--rate-multiplier", "0", "--engine", "vllm-cpu", "--max-real-replicas", str(MAX_REPLICAS)]


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
