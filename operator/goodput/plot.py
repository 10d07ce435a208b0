"""Roofline picture of a plan: where this workload's prefill and decode steps sit on the chosen GPU.

Per GPU of the chosen replica, x is the arithmetic intensity of one engine step (FLOPs over the
HBM bytes it moves) and y the FLOP/s the step attains (its FLOPs over its modelled time, overheads
included). Decode at small batch sits low on the bandwidth slope; batching slides it right; a
prompt's prefill sits near the compute roof. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goodput.model.architecture import ModelArch
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import Accelerator
from goodput.model.replica import DEFAULT_MAX_NUM_SEQS, ReplicaModel
from goodput.model.sizing import DECODE_MAX_NUM_SEQS, Plan, plan
from goodput.model.workload import SLO, Workload


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


def merge_coincident(points: list[StepPoint], factor: float = 1.25) -> list[StepPoint]:
    """Points that sit on top of each other (within ``factor`` on both log axes) as one, their labels
    joined: two labels at one spot collide whatever their offsets."""
    out: list[StepPoint] = []
    for p in points:
        near = next((i for i, q in enumerate(out) if max(p.intensity, q.intensity) / min(p.intensity, q.intensity)
                     < factor and max(p.flops_s, q.flops_s) / min(p.flops_s, q.flops_s) < factor), None)
        if near is None:
            out.append(p)
        else:
            out[near] = dataclasses.replace(out[near], label=f"{out[near].label} = {p.label}")
    return out


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
    points = merge_coincident(points)

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
    for p, color, (dx, dy) in zip(points, colors, offsets, strict=False):
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


# --------------------------------------------------------------------------------------------
# the fleet against request rate
# --------------------------------------------------------------------------------------------
FLEET_RATE_SPAN = 10.0  # the chart spans the planned rate / 10 to x 10
FLEET_RATE_POINTS = 13


@dataclass(frozen=True)
class FleetCurve:
    """The cheapest fleet of one GPU type in one mode at each request rate (NaN: none meets the SLOs)."""

    gpu: Accelerator
    mode: str
    rates_rps: np.ndarray
    gpus: np.ndarray
    usd_per_hour: np.ndarray


def fleet_curves(arch: ModelArch, gpus: list[Accelerator], precision: str, workload: Workload, slo: SLO,
                 kv_dtype: str, modes: tuple[str, ...], min_replicas: int = 1) -> list[FleetCurve]:
    """Plan each GPU type and mode alone over a span of rates around ``workload``'s."""
    base = max(workload.rate_rps, 1e-3)
    rates = np.geomspace(base / FLEET_RATE_SPAN, base * FLEET_RATE_SPAN, FLEET_RATE_POINTS)
    curves = []
    for gpu in gpus:
        for mode in modes:
            n, usd = [], []
            for rate in rates:
                try:
                    chosen = plan(arch, [gpu], precision, dataclasses.replace(workload, rate_rps=float(rate)), slo,
                                  kv_dtype, mode, min_replicas=min_replicas).chosen
                except CapacityModelError:
                    chosen = None
                n.append(chosen.gpus if chosen is not None else math.nan)
                usd.append(chosen.usd_per_hour if chosen is not None else math.nan)
            if not all(math.isnan(x) for x in n):
                curves.append(FleetCurve(gpu, mode, rates, np.array(n, dtype=float), np.array(usd, dtype=float)))
    return curves


def plot_fleet(curves: list[FleetCurve], rate_rps: float, title: str, path: Path) -> None:
    """GPUs and $/hour against request rate, one line per GPU type and mode (a point per planned rate)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not curves:
        raise CapacityModelError("no GPU type and mode meets the SLOs anywhere in the rate span: nothing to draw")
    fig = Figure(figsize=(13.0, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_n, ax_usd = fig.subplots(1, 2)
    for c in curves:
        style = "-" if c.mode == "aggregated" else "--"
        label = f"{c.gpu.name} · {c.mode}"
        ax_n.plot(c.rates_rps, c.gpus, ls=style, marker="o", ms=3, label=label)
        ax_usd.plot(c.rates_rps, c.usd_per_hour, ls=style, marker="o", ms=3, label=label)
    for ax, ylabel in ((ax_n, "GPUs of the cheapest fleet"), (ax_usd, "$ per hour")):
        ax.set_xscale("log")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.axvline(rate_rps, color="0.3", ls=":", lw=1)
        ax.grid(True, which="both", alpha=0.25)
    ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_n.annotate(f"planned {rate_rps:g} req/s", (rate_rps, 0), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax_usd.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    fig.clear()


def fleet_path(path: Path) -> Path:
    """Where `plan --plot FILE.png` writes its second chart: FILE-fleet.png beside it."""
    return path.with_name(f"{path.stem}-fleet{path.suffix or '.png'}")
