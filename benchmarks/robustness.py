"""Issue 12's table, measured: the operator's planner when the world's engines are not its model.

    python benchmarks/robustness.py [--rows NAME,...] [--nocal]

azure-conv replicated x6, Llama-3.1-8B bf16 on A100 80GB SXM, TTFT p99 <= 1000 ms, ITL p99 <= 40 ms,
cold start 180 s, mode auto (disaggregated here), as in the issue's own measurement. Each row
changes the *simulated engines'* efficiency factors only; the planner keeps the shipped model and
must find the difference from the metrics (calibration and SLO feedback).

The world apart is made here by `world_apart`, a local means: it replaces each pool's
`ReplicaModel` (the engines the fleet builds) by one with scaled factors, as the issue's script
did. Issue 11 brings the simulator's own `--world-scale NAME=FACTOR`; this helper is to be swapped
for it then, and the full matrix of the issue (both traces, both configurations, presets) run
through it.

Writes benchmarks/results/robustness.json and .md. Each row is one goodput run (about a minute of
one CPU core); with ``--nocal`` also the same planner with its calibration inputs withheld.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from goodput.model.replica import ReplicaModel
from goodput.sim.cli import load_trace
from goodput.sim.fleet import PoolConfig
from goodput.sim.policies import GoodputPolicy
from goodput.sim.simulate import Setup, build_spec, make_policy, prepare, run_policy, summarize
from goodput.sim.trace import replicate_rate

RESULTS = Path(__file__).resolve().parent / "results"
RATE_SCALE = 6
COLD_START_S = 180.0
# name -> (label, factor per Efficiency field). Speeds: bandwidth x0.7 is decode ~30% slower.
WORLDS: dict[str, tuple[str, dict[str, float]]] = {
    "same": ("the same as the model", {}),
    "decode-0.7": ("decode 30% slower (bandwidth_fraction x0.7)", {"bandwidth_fraction": 0.7}),
    "prefill-0.7": ("prefill 30% slower (compute_fraction x0.7)", {"compute_fraction": 0.7}),
    "both-0.85": ("both 15% slower", {"bandwidth_fraction": 0.85, "compute_fraction": 0.85}),
    "both-0.7-overhead-2": ("both 30% slower, step overhead x2",
                            {"bandwidth_fraction": 0.7, "compute_fraction": 0.7, "step_overhead_s": 2.0}),
    "faster": ("faster (bandwidth x1.15, compute x1.3)", {"bandwidth_fraction": 1.15, "compute_fraction": 1.3}),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def world_apart(setup: Setup, factors: dict[str, float]) -> Setup:
    """The same setup with the fleet's engines built from scaled efficiency factors (fractions
    clipped at 1: no engine beats its datasheet). The planner's spec and model are untouched."""
    if not factors:
        return setup
    pools: dict[str, PoolConfig] = {}
    for role, p in setup.pools.items():
        m = p.model
        changes = {k: getattr(m.eff, k) * f for k, f in factors.items()}
        changes = {k: min(v, 1.0) if k.endswith("_fraction") else v for k, v in changes.items()}
        world = ReplicaModel(m.arch, m.gpu, m.precision, m.tp, m.kv_cache_dtype, m.eff.replace(**changes),
                             max_num_seqs=m.max_num_seqs, max_num_batched_tokens=m.max_num_batched_tokens)
        pools[role] = dataclasses.replace(p, model=world)
    return dataclasses.replace(setup, pools=pools)


def calibration_figures(policy: GoodputPolicy) -> dict[str, Any]:
    if not policy.results:
        return {}
    last = policy.results[-1].state.calibration
    reasons: Counter[str] = Counter(d.reason for r in policy.results for d in r.pools)
    return {"scales_last": {t: round(last.scale(t), 3) for t in sorted(last.terms)}, "reasons": dict(reasons)}


def run_row(name: str, base: Setup, policy_name: str) -> dict[str, Any]:
    label, factors = WORLDS[name]
    setup = world_apart(base, factors)
    policy = make_policy(policy_name, setup)
    assert isinstance(policy, GoodputPolicy)
    run = run_policy(setup, policy, None, time.perf_counter)
    figures = summarize(run, setup, None)
    keep = ("attainment", "ttft_p99_ms", "itl_p99_ms", "gpu_hours", "scaling_actions")
    row = {"world": name, "label": label, "factors": factors, "policy": policy_name,
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
    args = ap.parse_args()
    names = [n for n in args.rows.split(",") if n]
    if unknown := [n for n in names if n not in WORLDS]:
        raise SystemExit(f"unknown world {unknown[0]!r}; known: {', '.join(WORLDS)}")
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000.0, 40.0, cold_start_s=COLD_START_S)
    base = prepare(spec, replicate_rate(load_trace("azure-conv"), RATE_SCALE))
    log(f"plan: {base.plan.mode}, peak {base.peak_rate:.1f} req/s, {base.peak_replicas}")
    started = time.perf_counter()
    policies = ["goodput", "goodput-nocal"] if args.nocal else ["goodput"]
    rows = [run_row(n, base, p) for n in names for p in policies]
    RESULTS.mkdir(exist_ok=True)
    doc = {"machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
           "trace": f"azure-conv x{RATE_SCALE} (replicate)", "config": "llama-3.1-8b bf16 / a100-sxm-80gb, "
           "TTFT p99 <= 1000 ms, ITL p99 <= 40 ms, cold start 180 s", "mode": base.plan.mode,
           "wall_s": round(time.perf_counter() - started, 1), "rows": rows}
    (RESULTS / "robustness.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md = (f"# Robustness: issue 12's table\n\nGenerated by `python benchmarks/robustness.py {' '.join(sys.argv[1:])}`"
          f" on {doc['machine']}. {doc['trace']}, {doc['config']}, mode {doc['mode']}. The world apart is "
          "made by the benchmark's local `world_apart` (the fleet's `ReplicaModel` factors scaled); the planner "
          "keeps the shipped model.\n\n" + table(rows) + "\n")
    (RESULTS / "robustness.md").write_text(md, encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
