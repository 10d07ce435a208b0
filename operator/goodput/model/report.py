"""Plain-data views of the model's answers (what `--json` prints and the operator's status uses)."""

from __future__ import annotations

import math
from typing import Any

from goodput.model.replica import ReplicaModel
from goodput.model.sizing import Candidate, Plan


def _r(x: float | None, nd: int = 3) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def predict_report(r: ReplicaModel, batch: int, input_len: int, output_len: int) -> dict[str, Any]:
    """Per-replica figures for one batch size and request shape."""
    mem = r.memory()
    context = input_len + output_len / 2.0  # the average context over a sequence's decode
    max_batch = r.max_batch(input_len + output_len) if mem.kv_capacity_tokens > 0 else 0
    decode_s = float(r.decode_step_s(float(batch), context))
    prefill_s = float(r.prefill_s(float(batch), float(input_len)))
    # Roofline position of decode: bytes and FLOPs of one step.
    decode_bytes = r.weight_bytes_per_gpu + r.kv_bytes_per_token_per_gpu * batch * context
    decode_flops = (r.gemm_flops_per_token * batch + r.attention_flops_per_pair * batch * context) / r.tp
    t_mem = decode_bytes / r.bandwidth_bytes_s
    t_cmp = decode_flops * r.tp / r.gemm_flops_s
    fits = r.fits(input_len + output_len)
    return {
        "model": r.arch.model_id,
        "gpu": r.gpu.gpu_id,
        "precision": r.precision.name,
        "kv_cache_dtype": r.kv_cache_dtype,
        "tp": r.tp,
        "batch": batch,
        "input_len": input_len,
        "output_len": output_len,
        "fits": fits,
        "weights_total_gib": _r(r.weight_bytes / 2**30, 2),
        "weights_per_gpu_gib": _r(mem.weights_gib, 2),
        "activations_per_gpu_gib": _r(mem.activations_gib, 2),
        "kv_cache_per_gpu_gib": _r(mem.kv_cache_gib, 2),
        "kv_bytes_per_token": _r(mem.kv_bytes_per_token, 0),
        "kv_capacity_tokens": mem.kv_capacity_tokens,
        "max_batch": max_batch,
        "batch_fits": batch <= max_batch,
        "decode_step_ms": _r(decode_s * 1e3),
        "decode_bound": "memory" if t_mem >= t_cmp else "compute",
        "prefill_batch_ms": _r(prefill_s * 1e3),
        "ttft_batch1_ms": _r(r.ttft_batch1_s(float(input_len)) * 1e3),
        "output_tokens_per_s": _r(batch / decode_s, 1),
        "e2e_batch_s": _r(prefill_s + decode_s * max(output_len - 1, 0), 3),
    }


def candidate_report(plan: Plan, c: Candidate) -> dict[str, Any]:
    pools = []
    for p in c.pools:
        cap = p.capacity
        pools.append({
            "role": p.role,
            "tp": p.tp,
            "replicas": p.replicas,
            "gpus": p.gpus,
            "goodput_rps_per_replica": _r(cap.goodput_rps),
            "max_num_batched_tokens": cap.max_num_batched_tokens,
            "max_num_seqs": cap.max_num_seqs,
            "batch_at_goodput": _r(cap.at_goodput.batch, 1),
            "limit_at_goodput": cap.binding,
        })
    return {
        "gpu": c.gpu.gpu_id,
        "mode": c.mode,
        "tp": c.tp_label,
        "gpus": c.gpus,
        "usd_per_hour": _r(c.usd_per_hour, 2),
        "usd_per_million_tokens": _r(plan.usd_per_million_tokens(c), 4),
        "usd_per_million_output_tokens": _r(plan.usd_per_million_output_tokens(c), 4),
        "served_rps": _r(c.served_rps),
        "predicted_ttft_ms": _r(c.ttft_ms, 1),
        "predicted_itl_ms": _r(c.itl_ms, 2),
        "pools": pools,
        "reason": c.reason,
    }


def plan_report(plan: Plan) -> dict[str, Any]:
    w, slo = plan.workload, plan.slo
    return {
        "demand": {
            "rate_rps": w.rate_rps,
            "input_len_mean": _r(w.input_len.mean, 1),
            "input_len_p99": _r(w.input_len.quantile(0.99), 1),
            "output_len_mean": _r(w.output_len.mean, 1),
            "output_len_p99": _r(w.output_len.quantile(0.99), 1),
            "prefix_cache_hit_rate": w.prefix_cache_hit_rate,
        },
        "slo": {"ttft_ms": slo.ttft_ms, "itl_ms": slo.itl_ms, "percentile": slo.percentile},
        "chosen": candidate_report(plan, plan.chosen) if plan.chosen else None,
        "limited_by_budget": plan.limited,
        "message": plan.message,
        "alternatives": [candidate_report(plan, c) for c in plan.alternatives],
        "rejected": [{"configuration": k, "reason": v} for k, v in plan.rejected],
    }
