"""Roofline picture of a plan: where this workload's prefill and decode steps sit on the chosen GPU.

Per GPU of the chosen replica, x is the arithmetic intensity of one engine step (FLOPs over the
HBM bytes it moves) and y the FLOP/s the step attains (its FLOPs over its modelled time, overheads
included). Decode at small batch sits low on the bandwidth slope; batching slides it right; a
prompt's prefill sits near the compute roof. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goodput.model.architecture import ModelArch
from goodput.model.errors import CapacityModelError
from goodput.model.replica import DEFAULT_MAX_NUM_SEQS, ReplicaModel
from goodput.model.sizing import DECODE_MAX_NUM_SEQS, Plan


@dataclass(frozen=True)
class StepPoint:
    """One engine step on the roofline, per GPU."""

    label: str
    intensity: float  # FLOP per byte of HBM traffic
    flops_s: float  # attained FLOP/s
    step_ms: float


def _weight_bytes_read(r: ReplicaModel, tokens: float) -> float:
    """Weight bytes a step reads per GPU; an MoE step reads only the experts its tokens touch."""
    if not r.expert_miss:
        return r.weight_bytes_per_gpu
    return float(r.dense_bytes_per_gpu + r.expert_bytes_per_gpu * (1.0 - r.expert_miss**tokens))


def decode_point(r: ReplicaModel, batch: int, context: float, label: str) -> StepPoint:
    """One decode step of ``batch`` sequences holding ``context`` tokens each."""
    flops = (r.gemm_flops_per_token + r.attention_flops_per_pair * context + r.lm_head_flops) * batch / r.tp
    moved = _weight_bytes_read(r, batch) + r.kv_bytes_per_token_per_gpu * batch * context
    step_s = float(r.decode_step_s(float(batch), context))
    return StepPoint(f"{label}\nbatch {batch}, {step_s * 1e3:.1f} ms", flops / moved, flops / step_s, step_s * 1e3)


def prefill_point(r: ReplicaModel, prompt: float) -> StepPoint:
    """Prefill of one ``prompt``-token prompt in one forward pass (its KV cache is written)."""
    flops = (r.gemm_flops_per_token * prompt + r.attention_flops_per_pair * prompt * (prompt + 1) / 2.0
             + r.lm_head_flops) / r.tp
    moved = _weight_bytes_read(r, prompt) + r.kv_bytes_per_token_per_gpu * prompt
    step_s = float(r.prefill_s(1.0, prompt))
    return StepPoint(f"prefill\n{prompt:.0f} tokens, {step_s * 1e3:.1f} ms", flops / moved, flops / step_s,
                     step_s * 1e3)


def plot_plan(result: Plan, arch: ModelArch, precision: str, kv_dtype: str, path: Path) -> None:
    """Draw the chosen plan's roofline with its prefill and decode steps, and save a PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = result.chosen
    if chosen is None:
        # A CapacityModelError (a ValueError) so the CLI reports it as one line, not a traceback.
        raise CapacityModelError(f"no plan was chosen, so there is no roofline to draw: {result.message}")
    decode_pool = chosen.pool("decode") or chosen.pool("aggregated")
    prefill_pool = chosen.pool("prefill") or decode_pool
    if decode_pool is None or prefill_pool is None:
        raise CapacityModelError(f"the chosen {chosen.mode} plan has no decode or aggregated pool")
    gpu, cap = chosen.gpu, decode_pool.capacity
    seqs = DECODE_MAX_NUM_SEQS if decode_pool.role == "decode" else DEFAULT_MAX_NUM_SEQS
    r = ReplicaModel(arch, gpu, precision, decode_pool.tp, kv_dtype, max_num_seqs=seqs,
                     max_num_batched_tokens=cap.max_num_batched_tokens)
    rp = r if prefill_pool is decode_pool else ReplicaModel(
        arch, gpu, precision, prefill_pool.tp, kv_dtype,
        max_num_batched_tokens=prefill_pool.capacity.max_num_batched_tokens)
    prompt, output = result.workload.input_len.mean, result.workload.output_len.mean
    context = prompt + output / 2.0
    max_batch = max(1, r.max_batch(context))
    limit = "KV cache full" if max_batch < r.max_num_seqs else f"max-num-seqs {r.max_num_seqs}"
    goodput_batch = min(max(1, round(cap.at_goodput.batch)), max_batch)
    points = [decode_point(r, 1, context, "decode"),
              decode_point(r, goodput_batch, context, "decode at goodput"),
              decode_point(r, max_batch, context, f"decode, {limit}"),
              prefill_point(rp, prompt)]

    peak, bw = gpu.flops(r.precision.compute_dtype), gpu.hbm_bandwidth_bytes_s
    peak_eff, bw_eff = r.gemm_flops_s / r.tp, r.bandwidth_bytes_s
    lo = min(p.intensity for p in points) / 4.0
    hi = max(max(p.intensity for p in points), peak / bw) * 6.0
    ai = np.geomspace(lo, hi, 400)

    fig = Figure(figsize=(13.0, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_t = fig.subplots(1, 2, width_ratios=(1.7, 1.0))
    ax.loglog(ai, np.minimum(peak, ai * bw), color="0.45", lw=2,
              label=f"rated: {peak / 1e12:.0f} TFLOP/s, {bw / 1e12:.2f} TB/s")
    ax.loglog(ai, np.minimum(peak_eff, ai * bw_eff), color="tab:blue", lw=2, ls="--",
              label=f"achievable: {peak_eff / 1e12:.0f} TFLOP/s, {bw_eff / 1e12:.2f} TB/s")
    for p_, b_, color in ((peak, bw, "0.45"), (peak_eff, bw_eff, "tab:blue")):
        ax.plot([p_ / b_], [p_], "D", color=color, ms=7)
        ax.annotate(f"ridge {p_ / b_:.0f} FLOP/B", (p_ / b_, p_), xytext=(6, 6 if color == "0.45" else -14),
                    textcoords="offset points", fontsize=8, color=color)
    colors = ("tab:green", "tab:orange", "tab:red", "tab:purple")
    offsets = ((10, -4), (10, -28), (-10, 14), (-12, -34))
    for p, color, (dx, dy) in zip(points, colors, offsets, strict=True):
        ax.plot([p.intensity], [p.flops_s], "o", color=color, ms=9, mec="black", zorder=5)
        ax.annotate(p.label, (p.intensity, p.flops_s), xytext=(dx, dy), textcoords="offset points",
                    fontsize=8, color=color, ha="left" if dx > 0 else "right",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": color, "alpha": 0.85})
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(p.flops_s for p in points) / 5.0, peak * 2.5)
    ax.set_xlabel("arithmetic intensity per GPU (FLOP / byte of HBM traffic)")
    ax.set_ylabel("attained FLOP/s per GPU")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    tp = chosen.tp_label if chosen.mode == "disaggregated" else f"TP{decode_pool.tp}"
    ax.set_title(f"{arch.model_id} · {gpu.name} · {r.precision.name} (KV {r.kv_cache_dtype}) · {tp} · "
                 f"{chosen.mode}\nprompt {prompt:.0f}, output {output:.0f} tokens (mean context {context:.0f})",
                 fontsize=10)

    batches = np.arange(1, max_batch + 1, dtype=float)
    step_ms = np.asarray(r.decode_step_s(batches, np.full_like(batches, context)), dtype=float) * 1e3
    ax_t.plot(batches, step_ms, color="tab:blue", label="decode step (ms)")
    ax_t.axhline(result.slo.itl_ms, color="tab:red", ls=":", label=f"ITL SLO {result.slo.label} "
                 f"{result.slo.itl_ms:g} ms")
    ax_t.axvline(goodput_batch, color="tab:orange", ls="--", lw=1, label=f"batch at goodput ({goodput_batch})")
    ax_t.set_xlabel(f"decode batch (1 to {max_batch}: {limit})")
    ax_t.set_ylabel("decode step time (ms)", color="tab:blue")
    ax_t.set_ylim(0, max(float(step_ms.max()), result.slo.itl_ms) * 1.15)
    ax_tok = ax_t.twinx()
    ax_tok.plot(batches, batches / step_ms * 1e3, color="tab:green", label="output tokens/s")
    ax_tok.set_ylabel("output tokens/s per replica", color="tab:green")
    ax_tok.set_ylim(bottom=0)
    handles = ax_t.get_legend_handles_labels()[0] + ax_tok.get_legend_handles_labels()[0]
    ax_t.legend(handles=handles, loc="upper left", fontsize=8)
    ax_t.grid(True, alpha=0.25)
    ax_t.set_title(f"one {decode_pool.role} replica (TP{decode_pool.tp}): decode step time and throughput",
                   fontsize=10)
    fig.savefig(path, dpi=120)
    fig.clear()
