"""`goodput simulate`: replay a trace against the operator's planner and the baselines.

    goodput simulate --trace FILE|azure-conv|azure-code [--format auto|azure|mooncake]
        [--rate-scale X [--rate-scale-mode compress|replicate]] --model M --gpu G --precision P
        [--kv-dtype auto|fp8] --ttft-p99-ms T --itl-p99-ms I [--mode auto|aggregated|disaggregated]
        [--policy goodput|hpa|keda-queue|keda-queue-running|dynamo|static-peak|oracle|all[,...]]
        [--cold-start-s S] [--client-timeout-s 600]
        [--interval-s 30] [--hpa-metric running|kv] [--hpa-target X] [--hpa-target-scale X]
        [--price GPU=USD] [--seed N]
        [--world-efficiency FILE.json|preset:NAME] [--world-scale NAME=FACTOR[,...]]
        [--jobs N] [-o table|json|yaml] [--plot FILE.png] [--quiet]

The only module of `goodput.sim` with I/O: it reads the trace file, prints the table (or the
``--json`` object), draws the ``--plot`` (matplotlib, imported only then) and writes a progress
line on stderr once a run takes more than a couple of seconds. The oracle is always run: it is
the reference of ``gpu_hours_vs_oracle``; ``gpu_hours_vs_reference`` is against the cheapest run
that meets the SLO percentile (the oracle, or a policy that beats it). ``--jobs N`` runs policies
in N processes.
Exit status 0; 2 for bad input (one line on stderr, as every `goodput` command).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from goodput.cli.args import (
    add_output_args,
    add_slo_and_mode_args,
    check_plot_target,
    emit,
    number_arg,
    parse_prices,
    read_text_file,
    structured,
)
from goodput.engine.world import SPEED_ALIASES
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import get_accelerator
from goodput.sim.simulate import (
    PolicyRun,
    Setup,
    SimConfig,
    Simulation,
    build_spec,
    details,
    longest_first,
    measure_shared,
    policy_order,
    prepare,
    run_named,
)
from goodput.sim.trace import BUNDLED_TRACES, FORMATS, replicate_rate, scale_rate
from goodput.sim.traces import load_trace, load_world

PROGRESS_AFTER_S = 2.0
# A compressed trace at this scale already serves a day's Azure trace in under a second.
MAX_RATE_SCALE = 100_000.0


def add_simulate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to the subparsers of `goodput` (``sub`` from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate", help="replay a trace: the operator's planner against HPA, KEDA, Dynamo, static and oracle",
        description="Replay a request trace against a simulated vLLM fleet scaled by the operator's planner and "
                    "by the baselines, and compare SLO attainment, latency and GPU-hours. See docs/simulator.md.")
    p.add_argument("--trace", required=True, metavar="FILE",
                   help="an Azure CSV or Mooncake JSONL trace, or a bundled one: " + ", ".join(BUNDLED_TRACES))
    p.add_argument("--format", choices=FORMATS, default="auto", help="trace format (default: from its first line)")
    p.add_argument("--rate-scale", type=number_arg(float, 0.0, False, maximum=MAX_RATE_SCALE), default=1.0,
                   metavar="X", help=f"X times the request rate (default 1, at most {MAX_RATE_SCALE:g})")
    p.add_argument("--rate-scale-mode", choices=("compress", "replicate"), default="replicate",
                   help="replicate (default): X independently shifted copies of the trace on its own time axis, "
                        "as X times as many users; compress: the same requests in 1/X of the time (cheaper, but "
                        "the load changes X times faster against the same cold start)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="catalog model id (see `goodput catalog models`)")
    src.add_argument("--model-config", type=Path, metavar="FILE",
                     help="a Hugging Face config.json on disk (read locally, never downloaded), as `goodput plan`")
    p.add_argument("--gpu", required=True, help="GPU id (see `goodput catalog gpus`)")
    p.add_argument("--precision", required=True, help="weight precision, e.g. bf16, fp8")
    p.add_argument("--kv-dtype", default="auto", help="KV-cache dtype: auto (model dtype) or fp8")
    add_slo_and_mode_args(p)
    p.add_argument("--policy", default="all", metavar="NAME[,NAME]",
                   help="goodput, hpa, keda-queue, keda-queue-running, dynamo, static-peak, oracle, or all (default); "
                        "comma-separated")
    p.add_argument("--cold-start-s", type=number_arg(float, 0.0, True), default=180.0, metavar="S",
                   help="seconds from a new replica's creation until it serves (default 180, the CRD's)")
    p.add_argument("--uncalibrated-margin", type=number_arg(float, 0.0, True, 2.0), default=None, metavar="F",
                   help="goodput: until calibrated, size for engines this fraction slower than the model "
                        "(default 0.3, the CRD's spec.scaling.uncalibratedMargin; 0: trust the model)")
    p.add_argument("--standby-replicas", type=number_arg(int, 0, True, 1000), default=0, metavar="N",
                   help="goodput: warm replicas held above the demand in every pool (spec.scaling.<pool>."
                        "standbyReplicas; default 0)")
    p.add_argument("--client-timeout-s", type=number_arg(float, 0.0, True), default=600.0, metavar="S",
                   help="clients give up on a request not finished S seconds after its arrival: it leaves the "
                        "router queue or is aborted in its engine, and is a miss (default 600, the OpenAI "
                        "client's timeout; 0: clients never give up)")
    p.add_argument("--interval-s", type=number_arg(float, 0.0, False), default=30.0, metavar="S",
                   help="decision interval of goodput and oracle (default 30; HPA/KEDA sync every 15 s; dynamo "
                        "decides at its own --dynamo-interval-s)")
    p.add_argument("--dynamo-interval-s", type=number_arg(float, 0.0, False), default=180.0, metavar="S",
                   help="the dynamo policy's adjustment interval (default 180, Dynamo's own)")
    p.add_argument("--metrics-age-s", type=number_arg(float, 0.0, True), default=15.0, metavar="S",
                   help="age of the scraped metrics every reactive policy reads (default 15: the last scrape "
                        "at least one scrape interval old)")
    p.add_argument("--hpa-metric", choices=("running", "kv"), default="running",
                   help="the hpa policy's per-pod metric: vllm:num_requests_running or vllm:kv_cache_usage_perc")
    p.add_argument("--hpa-target", type=number_arg(float, 0.0, False), metavar="X",
                   help="the hpa policy's target per pod for the aggregated/decode pool (default: the metric's level "
                        "at the highest steady load one replica of the simulated engine serves within the SLOs)")
    p.add_argument("--hpa-target-scale", type=number_arg(float, 0.0, False), default=1.0, metavar="X",
                   help="multiply the load-tested HPA targets of every pool by X (a user tuning them; default 1)")
    p.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                   help="override the price per GPU-hour of the GPU, as in `goodput plan` (default: catalog)")
    p.add_argument("--seed", type=number_arg(int, 0, True), default=0, help="seed of the random draws")
    p.add_argument("--world-efficiency", metavar="FILE.json|preset:NAME",
                   help="the simulated engines' efficiency factors: a JSON file {\"factors\": {NAME: value}} "
                        "(names left out keep the shipped value) or a shipped engine preset; the planner keeps "
                        "the shipped factors (default: the engines are the planner's model)")
    p.add_argument("--world-scale", metavar="NAME=FACTOR[,...]",
                   help="multiply the simulated engines' efficiency factors (names of data/efficiency.json) or "
                        "their speed (" + ", ".join(SPEED_ALIASES) + ": 1.25 = 25%% faster); the planner's belief "
                        "is unchanged")
    p.add_argument("--jobs", type=number_arg(int, 1, True), default=1, help="run policies in N processes (default 1)")
    add_output_args(p)
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw load, replicas and latency over time")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=cmd_simulate)
    return p


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def inline_architecture(path: Path) -> dict[str, Any]:
    """A config.json as the CRD's spec.model.architecture (with the huggingFaceName vLLM would load)."""
    from goodput.model.architecture import arch_from_hf_config_file

    arch = arch_from_hf_config_file(path)
    context = json.loads(read_text_file(path, "--model-config")).get("max_position_embeddings")
    out: dict[str, Any] = {
        "huggingFaceName": arch.hf_name or arch.model_id,
        "paramsTotalB": arch.params_total / 1e9, "paramsActiveB": arch.params_active / 1e9,
        "layers": arch.layers, "hiddenSize": arch.hidden_size, "attentionHeads": arch.attention_heads,
        "kvHeads": arch.kv_heads, "headDim": arch.head_dim, "ffnSize": arch.ffn_size, "vocabSize": arch.vocab_size,
        "attention": arch.attention, "tiedEmbeddings": arch.tied_embeddings,
    }
    if arch.experts:
        out.update(experts=arch.experts, expertsPerToken=arch.experts_per_token)
    if isinstance(context, int) and context >= 128:
        out["maxPositionEmbeddings"] = context
    return out



# ------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------
class Progress:
    """One line on stderr, rewritten in place on a terminal, shown once a run is long."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.last_step: dict[str, int] = {}
        self.shown = False

    def __call__(self, name: str, fraction: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.started
        if elapsed < PROGRESS_AFTER_S:
            return
        text = f"simulate: {name} {fraction:4.0%} ({elapsed:.0f} s)"
        if self.tty:
            if now - self.last >= 0.2 or fraction >= 1.0:
                sys.stderr.write("\r" + text.ljust(60))
                sys.stderr.flush()
                self.last = now
                self.shown = True
        else:
            step = int(fraction * 4)
            if self.last_step.get(name, -1) < step:
                self.last_step[name] = step
                print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty and self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------
def _run_one(setup: Setup, name: str) -> PolicyRun:
    return run_named(setup, name, None, time.perf_counter)


def run_all(setup: Setup, names: list[str], jobs: int, progress: Progress) -> Simulation:
    order = policy_order(names)
    measure_shared(setup, order)  # once, here, not in every process
    runs: dict[str, PolicyRun] = {}
    if jobs <= 1 or len(order) == 1:
        for name in order:
            runs[name] = run_named(setup, name, progress, time.perf_counter)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(order))) as pool:
            # The longest first (the oracle replays the trace several times): the others fill
            # the other workers meanwhile instead of leaving it to run alone at the end.
            futures = {name: pool.submit(_run_one, setup, name) for name in longest_first(order)}
            for name, future in futures.items():
                runs[name] = future.result()
                progress(name, 1.0)
    progress.done()
    return Simulation(setup, {name: runs[name] for name in order})


def _price(args: argparse.Namespace) -> float | None:
    """The --price GPU=USD given for the simulated GPU; a price for another GPU is a mistake, said so."""
    prices = parse_prices(args.price)
    gpu_id = get_accelerator(args.gpu).gpu_id
    others = sorted(set(prices) - {gpu_id})
    if others:
        raise CapacityModelError(f"--price names {', '.join(others)}, but the simulated GPU is {gpu_id}")
    return prices.get(gpu_id)


def cmd_simulate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    names = [n.strip() for n in str(args.policy).split(",") if n.strip()]
    if not names:
        raise CapacityModelError("--policy needs at least one policy name")
    order = policy_order(names)  # validates the names before any work
    check_plot_target(args.plot)
    trace = load_trace(args.trace, args.format)
    if args.rate_scale != 1.0:
        trace = scale_rate(trace, args.rate_scale) if args.rate_scale_mode == "compress" \
            else replicate_rate(trace, args.rate_scale, args.seed)
    spec = build_spec(args.model, args.gpu, args.precision, args.ttft_p99_ms, args.itl_p99_ms,
                      kv_dtype=args.kv_dtype, mode=args.mode, cold_start_s=args.cold_start_s,
                      percentile=args.slo_percentile, price_per_gpu_hour=_price(args),
                      architecture=inline_architecture(args.model_config) if args.model_config else None,
                      uncalibrated_margin=args.uncalibrated_margin, standby_replicas=args.standby_replicas)
    config = SimConfig(interval_s=args.interval_s, seed=args.seed, hpa_metric=args.hpa_metric,
                       hpa_target=args.hpa_target, hpa_target_scale=args.hpa_target_scale,
                       dynamo_interval_s=args.dynamo_interval_s,
                       metrics_age_s=args.metrics_age_s, client_timeout_s=args.client_timeout_s)
    setup = prepare(spec, trace, config, world=load_world(args.world_efficiency, args.world_scale))
    progress = Progress(not args.quiet)
    sim = run_all(setup, order, args.jobs, progress)
    report = sim.report()
    report["trace"]["rate_scale_mode"] = args.rate_scale_mode
    report["config"]["wall_s"] = round(time.perf_counter() - started, 2)
    if args.plot is not None:
        plot_simulation(sim, args.plot, report)
    if structured(args):
        emit(report, args.output)
        return 0
    print(report_text(report))
    if args.plot is not None:
        print(f"\nplot written to {args.plot}")
    return 0


# ------------------------------------------------------------------------------------------
# printing
# ------------------------------------------------------------------------------------------
def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report_text(report: dict[str, Any]) -> str:
    t, c = report["trace"], report["config"]
    slo = c["slo"]
    pools = ", ".join(f"{role} TP{p['tp']} ({p['goodput_rps_per_replica']:.2f} req/s each, {p['replicas_at_peak']} "
                      f"at peak)" for role, p in c["pools"].items())
    lines = [
        f"trace {t['name']} ({t['format']}): {t['requests']} requests over {t['duration_s']:.0f} s, "
        f"{t['mean_rate_rps']:.2f} req/s mean, {t['peak_rate_rps']:.2f} peak (rate x{t['rate_scale']:g}); "
        f"prompt {t['input_len_mean']:.0f} (p99 {t['input_len_p99']:.0f}), output {t['output_len_mean']:.0f} "
        f"(p99 {t['output_len_p99']:.0f})",
        f"fleet {c['model']} {c['precision']} on {c['gpu']}, {c['mode']}: {pools}; cold start {c['cold_start_s']:g} s; "
        f"${c['usd_per_gpu_hour']:.2f}/GPU-h",
        f"SLO: TTFT p{slo['percentile']:g} <= {slo['ttft_ms']:g} ms, ITL <= {slo['itl_ms']:g} ms "
        "(attainment: requests within both, ITL = each request's mean)",
        f"world: {c['world']['label']}",
        "",
        f"reference (the cheapest run at >= p{slo['percentile']:g}): "
        + (f"{c['reference']['policy']}, {c['reference']['gpu_hours']:.2f} GPU-h" if c.get("reference")
           else "none meets the SLO percentile"),
        "",
        f"{'policy':<19}{'attain':>8}{'TTFT p50':>10}{'p99':>9}{'ITL p50':>9}{'p99':>7}{'GPU-h':>9}{'cost $':>9}"
        f"{'actions':>8}{'x oracle':>9}{'x ref':>7}  peak replicas",
    ]
    for name, r in report["policies"].items():
        d = c["details"][name]
        peak = "+".join(f"{n}{role[0].upper()}" for role, n in d["peak_replicas"].items())
        extra = []
        if d["rejected"]:
            extra.append(f"{d['rejected']} rejected")
        if d["unfinished"]:
            extra.append(f"{d['unfinished']} unfinished")
        if d.get("abandoned"):
            extra.append(f"{d['abandoned']} abandoned")
        attain = "-" if r["attainment"] is None else f"{r['attainment'] * 100:.2f}%"
        lines.append(
            f"{name:<19}{attain:>8}{_f(r['ttft_p50_ms'], '.0f'):>10}{_f(r['ttft_p99_ms'], '.0f'):>9}"
            f"{_f(r['itl_p50_ms'], '.1f'):>9}{_f(r['itl_p99_ms'], '.1f'):>7}{r['gpu_hours']:>9.2f}"
            f"{r['cost_usd']:>9.2f}{r['scaling_actions']:>8}{_f(r['gpu_hours_vs_oracle'], '.2f'):>9}"
            f"{_f(r['gpu_hours_vs_reference'], '.2f'):>7}  {peak}"
            + (f"  ({', '.join(extra)})" if extra else ""))
    lines.append("")
    lines.append(f"(times in ms; simulated in {c.get('wall_s', 0):.1f} s)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# plotting
# ------------------------------------------------------------------------------------------
def _percentile_per_bin(values_s: Any, which: Any, bins: int, pct: float) -> list[float]:
    """The ``pct`` percentile (ms) of the finite values in each bin of arrivals; NaN for an empty bin."""
    import numpy as np

    out: list[float] = []
    for k in range(bins):
        sel = (which == k) & np.isfinite(values_s)
        out.append(float(np.percentile(values_s[sel], pct)) * 1000.0 if sel.any() else float("nan"))
    return out


def plot_simulation(sim: Simulation, path: Path, report: dict[str, Any] | None = None) -> None:
    """Load, GPUs per policy, and the SLO percentile of TTFT and of ITL per bin of arrivals, over time
    in minutes. Each policy's legend entry carries its attainment and GPU-hours; the legends sit
    outside the axes, so none covers the SLO lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    setup = sim.setup
    trace = setup.trace
    slo = setup.spec.slo
    span = max(trace.span_s, 1.0)
    step = max(setup.config.interval_s, span / 200.0)
    edges = np.arange(0.0, span + step, step)
    counts, _ = np.histogram(trace.times, bins=edges)
    mids_min = (edges[:-1] + edges[1:]) / 2.0 / 60.0
    which = np.digitize(trace.times, edges) - 1
    summary = (report or sim.report())["policies"]
    most_gpus = 1
    fig, axes = plt.subplots(4, 1, figsize=(12, 12), sharex=True)
    axes[0].plot(mids_min, counts / step, color="black")
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].set_title(f"{trace.name} x{trace.rate_scale:g}: {setup.resolved.arch.model_id} "
                      f"{setup.resolved.precision} on {setup.resolved.gpu.gpu_id} ({setup.plan.mode})\n"
                      f"world: {setup.world.label()}", fontsize=10)
    pct = slo.percentile
    for name, run in sim.runs.items():
        figures = summary.get(name, {})
        attained = figures.get("attainment")
        label = (f"{name}: {attained * 100:.1f}% in SLO, {figures.get('gpu_hours', 0):.2f} GPU-h"
                 if attained is not None else name)
        ts_min = [row["t"] / 60.0 for row in run.timeline]
        most_gpus = max([most_gpus, *(row["gpus"] for row in run.timeline)])
        (line,) = axes[1].step(ts_min, [row["gpus"] for row in run.timeline], where="post", label=label)
        axes[2].plot(mids_min, _percentile_per_bin(run.ttft_s, which, len(mids_min), pct), color=line.get_color())
        axes[3].plot(mids_min, _percentile_per_bin(run.itl_s, which, len(mids_min), pct), color=line.get_color())
    axes[1].set_ylabel("GPUs allocated")
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_ylim(0, most_gpus * 1.1 + 0.5)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    # Minor ticks labelled at 2 and 5 of each decade only, so that labels do not collide.
    sparse = FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    for ax, target, what in ((axes[2], slo.ttft_ms, "TTFT"), (axes[3], slo.itl_ms, "ITL")):
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"{what} target {target:g} ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)  # 40, not 4x10^1
        ax.yaxis.set_minor_formatter(sparse)
        ax.set_ylabel(f"p{pct:g} {what} (ms, per {step:.0f} s of arrivals)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    axes[3].set_xlabel("simulated minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


__all__ = ["add_simulate_parser", "cmd_simulate", "details", "plot_simulation", "report_text"]
