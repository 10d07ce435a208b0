"""Fit the capacity model's efficiency factors once, on the development measurements.

One global set of factors for every row: no per-source, per-engine or per-row tuning. The loss
is the mean absolute log error (a ratio of 2 costs the same above and below), which behaves
like a median and is not dominated by a few broken rows. Bounds keep every factor physical.

    python tools/calibrate.py [--measurements FILE.csv] [--write]

With --write the result goes to operator/goodput/data/efficiency.json, with its provenance.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from goodput.model.efficiency import Efficiency
from goodput.model.measurements import evaluate, summarize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "tests" / "data" / "published-dev.csv"
OUT = ROOT / "operator" / "goodput" / "data" / "efficiency.json"

# 1: every source weighs the same in total; 0: every row weighs the same.
WEIGHT_POWER = float(__import__("os").environ.get("GOODPUT_WEIGHT_POWER", "1.0"))

# (name, lower, upper): the fitted factors and their physical ranges.
FITTED = [
    ("bandwidth_fraction", 0.5, 0.95),
    ("compute_fraction", 0.3, 0.9),
    ("low_precision_compute_derate", 0.4, 1.0),
    ("roofline_sharpness", 1.0, 8.0),
    ("step_overhead_s", 1e-4, 1e-2),
    ("layer_overhead_s", 1e-7, 3e-4),
    ("sequence_overhead_s", 1e-8, 5e-5),
    ("allreduce_hop_latency_s", 1e-7, 5e-5),
    ("link_fraction", 0.3, 0.95),
]


def to_factors(x: np.ndarray) -> dict[str, float]:
    """Parameters live in [0, 1] per factor (logit-free clipping), mapped log-uniformly for the
    small time constants and linearly for fractions."""
    out = {}
    for (name, lo, hi), v in zip(FITTED, np.clip(x, 0.0, 1.0), strict=True):
        if name.endswith("_s"):
            out[name] = float(math.exp(math.log(lo) + v * (math.log(hi) - math.log(lo))))
        else:
            out[name] = float(lo + v * (hi - lo))
    return out


def source_weights(rows: list[dict[str, str]]) -> list[float]:
    """Each published source weighs the same in total, so the largest report (Splitwise's
    profiling dump, 60% of the rows, from an engine without CUDA graphs) does not decide alone
    what every engine's overhead is."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    raw = [1.0 / counts[row["source"]] ** WEIGHT_POWER for row in rows]
    scale = len(rows) / sum(raw)
    return [w * scale for w in raw]


def loss(x: np.ndarray, rows: list[dict[str, str]], weights: list[float]) -> float:
    eff = Efficiency().replace(**to_factors(x))
    total = 0.0
    for r, weight in zip(evaluate(rows, eff), weights, strict=True):
        if r.predicted is None or r.measured is None:
            return 1e9
        total += weight * abs(math.log(r.predicted / r.measured))
    return total / len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measurements", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--starts", type=int, default=4)
    args = parser.parse_args()
    rows = list(csv.DictReader(args.measurements.open(encoding="utf-8")))
    weights = source_weights(rows)
    rng = np.random.default_rng(7)
    best = None
    for i in range(args.starts):
        x0 = np.full(len(FITTED), 0.5) if i == 0 else rng.uniform(0.1, 0.9, len(FITTED))
        res = minimize(loss, x0, args=(rows, weights), method="Nelder-Mead",
                       options={"maxiter": 1500, "xatol": 1e-3, "fatol": 1e-5})
        print(f"start {i}: loss {res.fun:.4f}", file=sys.stderr)
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    factors = to_factors(best.x)
    eff = Efficiency().replace(**factors)
    summary = summarize(evaluate(rows, eff))
    document = {
        "fitted_on": str(args.measurements.name),
        "fitted_on_sha256": hashlib.sha256(args.measurements.read_bytes()).hexdigest(),
        "fitted_at": dt.date.today().isoformat(),
        "method": ("Nelder-Mead on the mean |log(predicted/measured)|, each source weighted equally; "
                   "one global set of factors"),
        "mean_abs_log_error": round(float(best.fun), 5),
        "median_ape": round(summary["overall"]["median_ape"], 4),  # type: ignore[index]
        "p90_ape": round(summary["overall"]["p90_ape"], 4),  # type: ignore[index]
        "factors": {k: float(f"{v:.6g}") for k, v in eff.to_dict().items()},
    }
    print(json.dumps(document, indent=2))
    if args.write:
        OUT.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
