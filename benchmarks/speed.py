"""Speed of the capacity model: one decode-step prediction, one goodput search, one plan.

    python benchmarks/speed.py

Prints the figures and writes benchmarks/results/speed.json. Timings are the median of
repeated runs on this machine; they are measured here, not asserted in tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from goodput.model.architecture import get_model
from goodput.model.goodput import aggregated_capacity
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.model.sizing import plan
from goodput.model.workload import SLO, LengthDistribution, Workload

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn: Callable[[], object], repeat: int, number: int = 1) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def main() -> int:
    arch = get_model("llama-3.1-70b")
    h100 = get_accelerator("h100-sxm-80gb")
    r = ReplicaModel(arch, h100, "fp8", 2, "fp8")
    w = Workload(25, LengthDistribution.lognormal(1200, 4100), LengthDistribution.lognormal(210, 600))
    slo = SLO(2000, 60)
    batch = np.arange(1, 257, dtype=np.float64)
    gpus4 = [get_accelerator(g) for g in ("h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb", "mi300x-192gb")]
    figures = {
        "decode_step_scalar_us": median_time(lambda: r.decode_step_s(64.0, 2000.0), 7, 20000) * 1e6,
        "decode_step_256_batches_vectorized_us": median_time(lambda: r.decode_step_s(batch, 2000.0), 7, 2000) * 1e6,
        "aggregated_goodput_search_ms": median_time(lambda: aggregated_capacity(r, w, slo), 7) * 1e3,
        "plan_1_gpu_type_ms": median_time(lambda: plan(arch, [h100], "fp8", w, slo, "fp8"), 5) * 1e3,
        "plan_4_gpu_types_ms": median_time(lambda: plan(arch, gpus4, "fp8", w, slo, "fp8"), 3) * 1e3,
    }
    for k, v in figures.items():
        print(f"{k:<42}{v:10.1f}")
    out = {"machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
           "figures": {k: round(v, 2) for k, v in figures.items()}}
    path = ROOT / "benchmarks" / "results" / "speed.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
