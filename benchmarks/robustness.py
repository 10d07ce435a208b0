"""Issue 12's table, measured: the operator's planner when the world's engines are not its model.

    python benchmarks/robustness.py [--rows NAME,...] [--nocal]

azure-conv replicated x6, Llama-3.1-8B bf16 on A100 80GB SXM, TTFT p99 <= 1000 ms, ITL p99 <= 40 ms,
cold start 180 s, mode auto (disaggregated here), as in the issue's own measurement. Each row
changes the *simulated engines'* efficiency factors only; the planner keeps the shipped model and
must find the difference from the metrics (calibration and SLO feedback).

The world apart is the simulator's own (`goodput simulate --world-scale`, `goodput.engine.world`):
the fleet's engines run it while the planner keeps its belief. Speeds are rates, not fractions, so
an engine faster than the model's bound is a speed above 1, not a fraction above 1.

Writes benchmarks/results/robustness.json and .md. Each row is one goodput run (about a minute of
one CPU core); with ``--nocal`` also the same planner with its calibration inputs withheld.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.engine.world import build_world
from goodput.sim.policies import GoodputPolicy
from goodput.sim.simulate import build_spec, make_policy, prepare, run_policy, summarize
from goodput.sim.trace import Trace, replicate_rate
from goodput.sim.traces import load_trace

RESULTS = Path(__file__).resolve().parent / "results"
RATE_SCALE = 6
COLD_START_S = 180.0
# name -> (label, the --world-scale of the simulated engines).
WORLDS: dict[str, tuple[str, str]] = {
    "same": ("the same as the model", ""),
    "decode-0.7": ("decode 30% slower (decode_speed x0.7)", "decode_speed=0.7"),
    "prefill-0.7": ("prefill 30% slower (prefill_speed x0.7)", "prefill_speed=0.7"),
    "both-0.85": ("both 15% slower", "decode_speed=0.85,prefill_speed=0.85"),
    "both-0.7-overhead-2": ("both 30% slower, step overhead x2",
                            "decode_speed=0.7,prefill_speed=0.7,step_overhead_s=2"),
    "faster": ("faster (decode x1.15, prefill x1.3)", "decode_speed=1.15,prefill_speed=1.3"),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def calibration_figures(policy: GoodputPolicy) -> dict[str, Any]:
    if not policy.results:
        return {}
    last = policy.results[-1].state.calibration
    reasons: Counter[str] = Counter(d.reason for r in policy.results for d in r.pools)
    return {"scales_last": {t: round(last.scale(t), 3) for t in sorted(last.terms)}, "reasons": dict(reasons)}


def run_row(name: str, spec: InferenceDeploymentSpec, trace: Trace, policy_name: str) -> dict[str, Any]:
    label, scale = WORLDS[name]
    setup = prepare(spec, trace, world=build_world(scale=scale or None))
    policy = make_policy(policy_name, setup)
    assert isinstance(policy, GoodputPolicy)
    run = run_policy(setup, policy, None, time.perf_counter)
    figures = summarize(run, setup, None)
    keep = ("attainment", "ttft_p99_ms", "itl_p99_ms", "gpu_hours", "scaling_actions")
    row = {"world": name, "label": label, "world_scale": scale, "policy": policy_name,
           **{k: figures.get(k) for k in keep}, "wall_s": round(run.wall_s, 1), **calibration_figures(policy)}
    log(f"  {name} {policy_name}: {row['attainment']:.4f} {row['gpu_hours']:.2f} GPU-h ({row['wall_s']} s)")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| world's engines against the model | policy | attainment | TTFT p99 ms | ITL p99 ms | GPU-h | "
           "actions | calibrated scales (last) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        scales = ", ".join(f"{k} {v}" for k, v in (r.get("scales_last") or {}).items())
        out.append(f"| {r['label']} | {r['policy']} | {100 * r['attainment']:.2f}% | {r['ttft_p99_ms'] or 0:,.0f} | "
                   f"{r['itl_p99_ms'] or 0:.1f} | {r['gpu_hours']:.2f} | {r['scaling_actions']} | {scales} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(WORLDS), help="comma-separated world names")
    ap.add_argument("--nocal", action="store_true", help="also run goodput-nocal per world")
    ap.add_argument("--uncalibrated-margin", type=float, default=None,
                    help="spec.scaling.uncalibratedMargin of the planned spec (default: the CRD's)")
    ap.add_argument("--out", default="robustness", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    names = [n for n in args.rows.split(",") if n]
    if unknown := [n for n in names if n not in WORLDS]:
        raise SystemExit(f"unknown world {unknown[0]!r}; known: {', '.join(WORLDS)}")
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000.0, 40.0, cold_start_s=COLD_START_S,
                      uncalibrated_margin=args.uncalibrated_margin)
    trace = replicate_rate(load_trace("azure-conv"), RATE_SCALE)
    base = prepare(spec, trace)
    log(f"plan: {base.plan.mode}, peak {base.peak_rate:.1f} req/s, {base.peak_replicas}")
    started = time.perf_counter()
    policies = ["goodput", "goodput-nocal"] if args.nocal else ["goodput"]
    rows = [run_row(n, spec, trace, p) for n in names for p in policies]
    RESULTS.mkdir(exist_ok=True)
    doc = {"machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
           "trace": f"azure-conv x{RATE_SCALE} (replicate)", "config": "llama-3.1-8b bf16 / a100-sxm-80gb, "
           "TTFT p99 <= 1000 ms, ITL p99 <= 40 ms, cold start 180 s",
           "uncalibrated_margin": spec.scaling.uncalibrated_margin, "mode": base.plan.mode,
           "wall_s": round(time.perf_counter() - started, 1), "rows": rows}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md = (f"# Robustness: issue 12's table\n\nGenerated by `python benchmarks/robustness.py {' '.join(sys.argv[1:])}`"
          f" on {doc['machine']}. {doc['trace']}, {doc['config']}, mode {doc['mode']}, uncalibratedMargin "
          f"{doc['uncalibrated_margin']:g}. The world apart is "
          "the simulator's `--world-scale` (column 1); the planner keeps the shipped model.\n\n" + table(rows) + "\n")
    (RESULTS / f"{args.out}.md").write_text(md, encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
