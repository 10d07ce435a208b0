"""Accuracy of the capacity model on published measurements, against the issue-15 targets.

1. The shipped factors (data/efficiency.json) on the development set: in-sample, per metric,
   per engine class, per source. In-sample figures are what the fit saw; they are not a result.
2. Leave one source out, per engine class: refit without a source, predict it. This is the
   honest estimate for sources the model has not seen.
3. AMD MI300X: AMD's ROCm vLLM latency table, on which only the MI300X bandwidth and compute
   scales were fitted (2 numbers for 32 rows), and at the microbenchmark prior and at 1.0.
4. The check set (tests/data/published-check.csv), never fitted on: per source.
5. Tensor parallelism: the decode step at batch 1 across TP, and whether `plan` picks TP8 where
   it is cheapest.

    python benchmarks/model_accuracy.py [--measurements FILE.csv]

Writes benchmarks/results/model_accuracy.json and model_accuracy.md, and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from calibrate import apes, class_of, leave_one_source_out, read_rows, stats  # noqa: E402
from goodput.model.architecture import get_model  # noqa: E402
from goodput.model.efficiency import accelerator_scale, calibrated_efficiency  # noqa: E402
from goodput.model.hardware import get_accelerator  # noqa: E402
from goodput.model.measurements import evaluate  # noqa: E402
from goodput.model.replica import ReplicaModel  # noqa: E402
from goodput.model.sizing import plan  # noqa: E402
from goodput.model.workload import SLO, LengthDistribution, Workload  # noqa: E402

DATA = ROOT / "tests" / "data"
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"dev_median": 0.10, "dev_p90": 0.25, "loso_median": 0.15, "loso_p90": 0.35, "loso_cuda_graph_median": 0.12}


def grouped(rows: Sequence[Mapping[str, str]], key: str) -> dict[str, dict[str, float | int]]:
    results = evaluate(rows)
    out: dict[str, list[float]] = {}
    for r in results:
        if r.ape is not None:
            group = class_of(r.row) if key == "class" else r.metric if key == "metric" else r.row[key]
            out.setdefault(group, []).append(r.ape)
    return {k: stats(v) for k, v in sorted(out.items())}


def development(rows: list[dict[str, str]]) -> dict[str, Any]:
    return {"overall": stats(apes(rows, {})), "per_metric": grouped(rows, "metric"),
            "per_class": grouped(rows, "class"), "per_source": grouped(rows, "source")}


def loso(rows: list[dict[str, str]]) -> dict[str, Any]:
    held = leave_one_source_out(rows)
    per_class = {k: stats([a for v in per.values() for a in v]) for k, per in held.items()}
    per_source = {s: stats(v) for per in held.values() for s, v in per.items()}
    overall = stats([a for per in held.values() for v in per.values() for a in v])
    return {"overall": overall, "per_class": per_class, "per_source": per_source}


def mi300x() -> dict[str, Any]:
    rows = read_rows(DATA / "published-mi300x-rocm.csv")
    fitted = accelerator_scale("mi300x-192gb")
    prior = dataclasses.replace(fitted, bandwidth=0.77, compute=0.68)
    unit = dataclasses.replace(fitted, bandwidth=1.0, compute=1.0)
    return {"rows": len(rows), "scales": [fitted.bandwidth, fitted.compute],
            "at_fitted_scales": stats(apes(rows, {}, fitted)),
            "at_microbenchmark_prior": stats(apes(rows, {}, prior)),
            "at_reference_scale_1": stats(apes(rows, {}, unit))}


def check_set() -> dict[str, Any]:
    rows = read_rows(DATA / "published-check.csv")
    return {"overall": stats(apes(rows, {})), "per_source": grouped(rows, "source")}


def tp_scaling() -> dict[str, Any]:
    h100 = get_accelerator("h100-sxm-80gb")
    out: dict[str, Any] = {}
    for model, precision in (("llama-3.1-70b", "fp8"), ("llama-3.1-8b", "bf16"), ("llama-3.1-405b", "fp8")):
        arch = get_model(model)
        steps = {}
        for tp in (1, 2, 4, 8):
            r = ReplicaModel(arch, h100, precision, tp, "fp8" if precision == "fp8" else "auto")
            if r.fits(1200):
                steps[f"tp{tp}"] = round(float(r.decode_step_s(1.0, 1100.0)) * 1e3, 2)
        out[f"{model} {precision}"] = steps
    s70 = out["llama-3.1-70b fp8"]
    values = [s70[f"tp{t}"] for t in (1, 2, 4, 8)]
    out["monotone_70b"] = all(b < a for a, b in itertools.pairwise(values))
    out["tp8_over_tp1_70b"] = round(values[3] / values[0], 3)
    return out


def plan_picks_tp8() -> dict[str, Any]:
    """70B fp8 on H100, 10 req/s of 1000/200-token requests, TTFT 2 s, ITL 12 ms: TP4 decodes in 12.8 ms."""
    w = Workload(10.0, LengthDistribution.fixed(1000), LengthDistribution.fixed(200))
    p = plan(get_model("llama-3.1-70b"), [get_accelerator("h100-sxm-80gb")], "fp8", w, SLO(2000, 12), "fp8")
    assert p.chosen is not None
    return {"chosen": f"{p.chosen.mode} TP {p.chosen.tp_label}, {p.chosen.gpus} GPUs",
            "picks_tp8": any(pool.tp == 8 for pool in p.chosen.pools),
            "alternatives": [f"{c.mode} TP {c.tp_label}: {c.gpus} GPUs ({c.reason})" for c in p.alternatives]}


def fmt(s: Mapping[str, Any]) -> str:
    if not s.get("rows"):
        return "n/a"
    return f"{s['median_ape']:.1%} / {s['p90_ape']:.1%} (n={s['rows']})"


def markdown(res: dict[str, Any]) -> str:
    dev, lo, t = res["development"], res["leave_one_source_out"], res["targets"]
    lines = ["# Capacity model accuracy (benchmarks/model_accuracy.py)", "",
             "median / p90 APE (rows)", "", "| set | figures | target | met |", "|---|---|---|---|"]
    lines.append(f"| development, in-sample | {fmt(dev['overall'])} | ≤ 10% / ≤ 25% | "
                 f"median {'yes' if t['dev_median'] else 'no'}, p90 {'yes' if t['dev_p90'] else 'no'} |")
    lines.append(f"| leave one source out, all rows | {fmt(lo['overall'])} | ≤ 15% / ≤ 35% | "
                 f"median {'yes' if t['loso_median'] else 'no'}, p90 {'yes' if t['loso_p90'] else 'no'} |")
    lines.append(f"| leave one source out, CUDA-graph class | {fmt(lo['per_class'].get('cuda-graph', {}))} | "
                 f"median ≤ 12% | {'yes' if t['loso_cuda_graph_median'] else 'no'} |")
    lines += ["", "## Development set, in-sample, per engine class / metric / source", "",
              "| group | in-sample | held out (its source left out) |", "|---|---|---|"]
    for k, v in dev["per_class"].items():
        lines.append(f"| class {k} | {fmt(v)} | {fmt(lo['per_class'].get(k, {}))} |")
    for k, v in dev["per_metric"].items():
        lines.append(f"| metric {k} | {fmt(v)} | |")
    for k, v in dev["per_source"].items():
        lines.append(f"| {k} | {fmt(v)} | {fmt(lo['per_source'].get(k, {}))} |")
    m = res["mi300x"]
    lines += ["", "## AMD MI300X (ROCm vLLM latency table; 2 accelerator scales fitted on it)", "",
              f"- scales (bandwidth, compute) = {m['scales']}: {fmt(m['at_fitted_scales'])}",
              f"- at the microbenchmark prior (0.77, 0.68): {fmt(m['at_microbenchmark_prior'])}",
              f"- at 1.0 (as an H100): {fmt(m['at_reference_scale_1'])}", "",
              "## Check set, never fitted on (tests/data/published-check.csv)", "",
              f"- all rows: {fmt(res['check']['overall'])}"]
    for k, v in res["check"]["per_source"].items():
        lines.append(f"- {k}: {fmt(v)}")
    tp = res["tp_scaling"]
    lines += ["", "## Tensor parallelism, H100, decode step at batch 1 (ms, 1100-token context)", "",
              "| model | TP1 | TP2 | TP4 | TP8 |", "|---|---:|---:|---:|---:|"]
    for k, v in tp.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | " + " | ".join(str(v.get(f"tp{n}", "—")) for n in (1, 2, 4, 8)) + " |")
    lines += ["", f"70B falls with every TP step: {tp['monotone_70b']}; TP8/TP1 = {tp['tp8_over_tp1_70b']}.",
              f"`plan` (70B fp8, H100, 10 req/s, ITL 12 ms) chose {res['plan']['chosen']}; "
              f"picks TP8: {res['plan']['picks_tp8']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measurements", type=Path, default=DATA / "published-dev.csv")
    args = parser.parse_args()
    rows = read_rows(args.measurements)
    res: dict[str, Any] = {"measurements": args.measurements.name, "development": development(rows),
                           "leave_one_source_out": loso(rows), "mi300x": mi300x(), "check": check_set(),
                           "tp_scaling": tp_scaling(), "plan": plan_picks_tp8()}
    dev, lo = res["development"]["overall"], res["leave_one_source_out"]
    res["targets"] = {
        "dev_median": dev["median_ape"] <= TARGETS["dev_median"], "dev_p90": dev["p90_ape"] <= TARGETS["dev_p90"],
        "loso_median": lo["overall"]["median_ape"] <= TARGETS["loso_median"],
        "loso_p90": lo["overall"]["p90_ape"] <= TARGETS["loso_p90"],
        "loso_cuda_graph_median": lo["per_class"]["cuda-graph"]["median_ape"] <= TARGETS["loso_cuda_graph_median"],
        "tp_monotone_70b": res["tp_scaling"]["monotone_70b"],
        "tp8_under_half_tp1_70b": res["tp_scaling"]["tp8_over_tp1_70b"] < 0.5,
        "plan_picks_tp8": res["plan"]["picks_tp8"],
    }
    res["efficiency"] = {k: dataclasses.asdict(calibrated_efficiency(e)) for k, e in
                         (("cuda-graph", "vllm"), ("eager", "vllm-eager"))}
    text = markdown(res)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_accuracy.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "model_accuracy.md").write_text(text, encoding="utf-8")
    print(f"wrote {(RESULTS / 'model_accuracy.json').relative_to(ROOT)} and model_accuracy.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
