"""Efficiency factors: everything the roofline cannot derive from datasheets, in one place.

They are data, not constants buried in formulas. Engines differ more than GPUs do: an engine
that captures its decode step in a CUDA graph and fuses its small kernels (vLLM V1,
TensorRT-LLM, SGLang, NIM) pays a fraction of the per-step and per-layer overhead of one that
launches every kernel from Python. So the factors come as one set per **engine class**, fitted
by ``tools/calibrate.py`` on the development measurements of that class and shipped in
``data/efficiency.json``; ``spec.engine`` chooses the class. Accelerators differ in how much of
their rated bandwidth and FLOPs any kernel reaches: ``data/accelerator_efficiency.csv`` scales
the engine's fractions per GPU, from microbenchmarks or published engine figures.

The planner later scales the factors online from live metrics (``Efficiency.slower``), and a user
can override any of them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from goodput.model.errors import CapacityModelError

# spec.engine -> engine class. CUDA graphs and fused kernels: the decode step is one graph launch.
ENGINE_CLASSES: dict[str, str] = {
    "vllm": "cuda-graph",
    "sglang": "cuda-graph",
    "tensorrt-llm": "cuda-graph",
    "nim": "cuda-graph",
    "vllm-eager": "eager",  # vLLM with --enforce-eager, or any engine without CUDA graphs
}
DEFAULT_ENGINE = "vllm"
ENGINE_CLASS_NAMES = ("cuda-graph", "eager")

# Fractions of a physical maximum: in (0, 1].
_FRACTIONS = ("bandwidth_fraction", "compute_fraction", "attention_fraction", "low_precision_compute_derate",
              "gpu_memory_utilization")


@dataclass(frozen=True)
class Efficiency:
    # Fraction of the accelerator's achievable HBM read bandwidth (datasheet x accelerator scale)
    # that weight and KV reads reach in the engine's decode kernels.
    bandwidth_fraction: float = 0.9
    # Fraction of the achievable dense tensor-core throughput that the engine's GEMMs reach.
    compute_fraction: float = 0.7
    # Extra derating of FP8/INT8/FP4 GEMMs, which reach a smaller fraction of their (2x/4x) peak:
    # 0.8 is cuBLASLt FP8 on H100 (0.652 of peak) over FP16 on A100 (0.813), Azure microbenchmarks.
    low_precision_compute_derate: float = 0.8
    # Attention kernels relative to the 16-bit GEMMs: FlashAttention-2 on A100 reaches 179.5 of
    # cuBLAS's 253.7 TFLOPS (0.71), FlashAttention-3 on H100 about 0.65 of peak.
    attention_fraction: float = 0.8
    # How sharply a step switches between memory- and compute-bound:
    # t = (t_mem^n + t_compute^n)^(1/n); n -> infinity is the pure max() roofline.
    roofline_sharpness: float = 2.0
    # Fixed cost of every engine step: scheduling, sampling, kernel launches (CUDA graphs help).
    step_overhead_s: float = 0.001
    # Per-layer cost not hidden by the roofline (norms, rotary, small kernels and their launches).
    layer_overhead_s: float = 1e-5
    # Per-sequence cost of a step (batch bookkeeping, sampling, detokenization).
    sequence_overhead_s: float = 1e-6
    # Multiplies the documented all-reduce latencies of data/interconnects.csv (1 = as measured
    # in CUDA graphs; engines that launch collectives from Python pay more).
    allreduce_latency_scale: float = 1.0
    # Multiplies the achieved all-reduce bandwidths of data/interconnects.csv.
    allreduce_bandwidth_scale: float = 1.0
    # Messages below this go through the engine's custom one-shot/two-shot all-reduce (vLLM's
    # buffer is 8 MiB); 0: the engine all-reduces through NCCL only (torch.distributed).
    custom_allreduce_max_bytes: float = 8.0 * 1024 * 1024

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
        """Raise CapacityModelError naming the first factor outside its bounds."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not value >= 0 or value != value:
                raise CapacityModelError(f"efficiency factor {f.name} must be a non-negative number, got {value}")
        for name in _FRACTIONS:
            if not 0 < getattr(self, name) <= 1:
                raise CapacityModelError(f"efficiency factor {name} must be in (0, 1], got {getattr(self, name)}")
        if self.roofline_sharpness < 1:
            raise CapacityModelError(
                f"efficiency factor roofline_sharpness must be >= 1, got {self.roofline_sharpness}")
        for name in ("allreduce_latency_scale", "allreduce_bandwidth_scale", "kv_transfer_bytes_s_per_gpu"):
            if not getattr(self, name) > 0:
                raise CapacityModelError(f"efficiency factor {name} must be positive, got {getattr(self, name)}")

    def slower(self, scale: float) -> Efficiency:
        """Every step `scale` times slower (or faster, below 1): the planner's live calibration."""
        return self.replace(
            bandwidth_fraction=min(self.bandwidth_fraction / scale, 1.0),
            compute_fraction=min(self.compute_fraction / scale, 1.0),
            step_overhead_s=self.step_overhead_s * scale,
            layer_overhead_s=self.layer_overhead_s * scale,
            allreduce_latency_scale=self.allreduce_latency_scale * scale,
        )

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


def engine_class(engine: str) -> str:
    key = engine.strip().lower()
    if key not in ENGINE_CLASSES:
        raise CapacityModelError(f"unknown engine {engine!r}; known: {', '.join(ENGINE_CLASSES)}")
    return ENGINE_CLASSES[key]


def _document() -> dict[str, Any]:
    path = resources.files("goodput").joinpath("data", "efficiency.json")
    if not path.is_file():
        return {}
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


@functools.cache
def class_efficiency(klass: str) -> Efficiency:
    """The shipped factors of one engine class (defaults when the file lacks it)."""
    if klass not in ENGINE_CLASS_NAMES:
        raise CapacityModelError(f"unknown engine class {klass!r}; known: {', '.join(ENGINE_CLASS_NAMES)}")
    classes = _document().get("classes", {})
    if klass in classes:
        return Efficiency.from_dict(classes[klass]["factors"])
    return Efficiency()


def calibrated_efficiency(engine: str = DEFAULT_ENGINE) -> Efficiency:
    """The shipped factors for an engine (``spec.engine``): its class's fit in data/efficiency.json."""
    return class_efficiency(engine_class(engine))


def calibration_provenance() -> dict[str, Any]:
    return {k: v for k, v in _document().items() if k not in ("classes", "factors")}


@dataclass(frozen=True)
class AcceleratorScale:
    """How much of its datasheet bandwidth and FLOPs a GPU reaches, relative to the reference
    accelerator the engine factors were fitted on (1.0 where nothing better is known)."""

    bandwidth: float = 1.0
    compute: float = 1.0
    basis: str = "assumed"
    source: str = "no measurement: assumed as the reference accelerator (H100 SXM)"


@functools.cache
def _accelerator_scales() -> dict[str, AcceleratorScale]:
    path = resources.files("goodput").joinpath("data", "accelerator_efficiency.csv")
    if not path.is_file():
        return {}
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return {r["gpu_id"]: AcceleratorScale(float(r["bandwidth_scale"]), float(r["compute_scale"]), r["basis"],
                                          r["source"]) for r in rows}


def accelerator_scale(gpu_id: str) -> AcceleratorScale:
    return _accelerator_scales().get(gpu_id, AcceleratorScale())
