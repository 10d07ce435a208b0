"""Efficiency factors: everything the roofline cannot derive from datasheets, in one place.

They are data, not constants buried in formulas: the defaults are fitted once by
``tools/calibrate.py`` on the development measurements and shipped as ``data/efficiency.json``;
the planner later updates them online from live metrics (bounded, smoothed), and a user can
override any of them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from goodput.model.errors import CapacityModelError


@dataclass(frozen=True)
class Efficiency:
    # Fraction of rated HBM bandwidth that weight and KV reads achieve (NVIDIA's sizing prior: 0.8).
    bandwidth_fraction: float = 0.8
    # Fraction of rated dense tensor-core throughput that large 16-bit GEMMs achieve.
    compute_fraction: float = 0.6
    # Extra derating of FP8/INT8/FP4 GEMMs, which reach a smaller fraction of their (2x/4x) peak.
    low_precision_compute_derate: float = 0.8
    # How sharply a step switches between memory- and compute-bound:
    # t = (t_mem^n + t_compute^n)^(1/n); n -> infinity is the pure max() roofline.
    roofline_sharpness: float = 3.0
    # Fixed cost of every engine step: scheduling, sampling, kernel launches (CUDA graphs help).
    step_overhead_s: float = 0.002
    # Per-layer cost not hidden by the roofline (norms, rotary, small kernels).
    layer_overhead_s: float = 2e-5
    # Per-sequence cost of a step (batch bookkeeping, sampling, detokenization).
    sequence_overhead_s: float = 2e-6
    # Tensor parallelism: two all-reduces per layer, each 2(p-1) hops of this latency plus
    # bytes over the link at link_fraction of its rated one-way bandwidth.
    allreduce_hop_latency_s: float = 5e-6
    link_fraction: float = 0.7

    # Memory accounting (vLLM semantics).
    gpu_memory_utilization: float = 0.90
    # CUDA context, NCCL buffers, CUDA graphs: outside the model's tensors.
    runtime_reserve_gib: float = 1.5

    # Disaggregated serving: KV transfer from prefill to decode (NIXL over RDMA), per GPU.
    kv_transfer_bytes_s_per_gpu: float = 25e9
    kv_transfer_latency_s: float = 0.002

    def replace(self, **changes: Any) -> Efficiency:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value < 0:
                raise CapacityModelError(f"efficiency factor {f.name} must be a non-negative number, got {value}")
        for name in ("bandwidth_fraction", "compute_fraction", "link_fraction", "gpu_memory_utilization"):
            if not 0 < getattr(self, name) <= 1:
                raise CapacityModelError(f"efficiency factor {name} must be in (0, 1]")
        if self.roofline_sharpness < 1:
            raise CapacityModelError("roofline_sharpness must be >= 1")

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Efficiency:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CapacityModelError(f"unknown efficiency factors: {', '.join(sorted(unknown))}")
        eff = cls(**{k: float(v) for k, v in data.items()})
        eff.validate()
        return eff


@functools.cache
def calibrated_efficiency() -> Efficiency:
    """The shipped defaults: fitted on the development measurements (see data/efficiency.json)."""
    path = resources.files("goodput").joinpath("data", "efficiency.json")
    if not path.is_file():
        return Efficiency()
    document = json.loads(path.read_text(encoding="utf-8"))
    return Efficiency.from_dict(document["factors"])


def calibration_provenance() -> dict[str, Any]:
    path = resources.files("goodput").joinpath("data", "efficiency.json")
    if not path.is_file():
        return {}
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in document.items() if k != "factors"}
