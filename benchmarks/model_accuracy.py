"""Accuracy of the capacity model on published measurements.

1. The shipped factors (data/efficiency.json) on the development set.
2. Leave-one-source-out: refit the factors without one source, predict that source. This is the
   honest estimate for measurements from sources the model has not seen.

    python benchmarks/model_accuracy.py [--measurements FILE.csv] [--starts N]

Writes benchmarks/results/model_accuracy.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from scipy.optimize import minimize  # noqa: E402

from calibrate import FITTED, loss, source_weights, to_factors  # noqa: E402
from goodput.model.efficiency import Efficiency  # noqa: E402
from goodput.model.measurements import evaluate, summarize  # noqa: E402


def fit(rows: list[dict[str, str]], starts: int) -> Efficiency:
    weights = source_weights(rows)
    rng = np.random.default_rng(7)
    best = None
    for i in range(starts):
        x0 = np.full(len(FITTED), 0.5) if i == 0 else rng.uniform(0.1, 0.9, len(FITTED))
        res = minimize(loss, x0, args=(rows, weights), method="Nelder-Mead",
                       options={"maxiter": 1500, "xatol": 1e-3, "fatol": 1e-5})
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    return Efficiency().replace(**to_factors(best.x))


def stats(apes: list[float]) -> dict[str, float]:
    arr = np.asarray(apes)
    return {"rows": int(arr.size), "median_ape": round(float(np.median(arr)), 4),
            "p90_ape": round(float(np.percentile(arr, 90)), 4)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measurements", type=Path, default=ROOT / "tests" / "data" / "published-dev.csv")
    parser.add_argument("--starts", type=int, default=2)
    args = parser.parse_args()
    rows = list(csv.DictReader(args.measurements.open(encoding="utf-8")))

    shipped = summarize(evaluate(rows))
    print(f"shipped factors on {args.measurements.name}: median {shipped['overall']['median_ape']:.1%}, "
          f"p90 {shipped['overall']['p90_ape']:.1%} over {shipped['overall']['count']} rows")

    sources = sorted({r["source"] for r in rows})
    held_out_apes: list[float] = []
    per_source = {}
    for source in sources:
        train = [r for r in rows if r["source"] != source]
        test = [r for r in rows if r["source"] == source]
        eff = fit(train, args.starts)
        apes = [r.ape for r in evaluate(test, eff) if r.ape is not None]
        held_out_apes += apes
        per_source[source] = stats(apes)
        print(f"  held out {source[:60]:<60} n={len(test):<4} median {np.median(apes):6.1%}  "
              f"p90 {np.percentile(apes, 90):6.1%}")
    loso = stats(held_out_apes)
    print(f"leave-one-source-out, all held-out rows: median {loso['median_ape']:.1%}, p90 {loso['p90_ape']:.1%}")
    result = {"measurements": args.measurements.name, "shipped": shipped, "leave_one_source_out": loso,
              "per_held_out_source": per_source}
    out = ROOT / "benchmarks" / "results" / "model_accuracy.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
