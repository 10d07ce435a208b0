"""Weight and KV-cache precisions: bytes per parameter, the tensor-core dtype they compute in,
and which accelerators can run them."""

from __future__ import annotations

from dataclasses import dataclass

from goodput.model.errors import UnsupportedPrecisionError
from goodput.model.hardware import Accelerator


@dataclass(frozen=True)
class WeightPrecision:
    name: str
    # Storage of one quantized weight, scales included. Group-quantized formats carry a
    # 16-bit scale (and for AWQ/GPTQ a 4-bit zero point) per group of 128 weights.
    bits_per_weight: float
    # Dtype of the GEMMs: weight-only formats (AWQ, GPTQ, MXFP4 via Marlin) dequantize to 16 bit.
    compute_dtype: str
    vllm_quantization: str | None
    description: str

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8.0


_GROUP_SCALE_ZERO_BITS = (16 + 4) / 128

WEIGHT_PRECISIONS: dict[str, WeightPrecision] = {
    p.name: p
    for p in (
        WeightPrecision("bf16", 16, "bf16", None, "bfloat16 weights and activations"),
        WeightPrecision("fp16", 16, "fp16", None, "float16 weights and activations"),
        WeightPrecision("fp8", 8, "fp8", "fp8", "FP8 (E4M3) weights and activations, per-tensor/channel scales"),
        WeightPrecision("int8", 8, "int8", None, "INT8 W8A8 (SmoothQuant-style), pre-quantized checkpoint"),
        WeightPrecision(
            "int4-awq", 4 + _GROUP_SCALE_ZERO_BITS, "bf16", "awq_marlin", "AWQ 4-bit weight-only, group 128"
        ),
        WeightPrecision(
            "int4-gptq", 4 + _GROUP_SCALE_ZERO_BITS, "bf16", "gptq_marlin", "GPTQ 4-bit weight-only, group 128"
        ),
        WeightPrecision("fp4", 4 + 8 / 16, "fp4", None, "NVFP4 W4A4: FP4 values, FP8 scale per 16 (Blackwell)"),
        WeightPrecision("mxfp4", 4 + 8 / 32, "bf16", "mxfp4", "MXFP4 weight-only (e.g. gpt-oss experts)"),
    )
}
_ALIASES = {"int4": "int4-awq", "awq": "int4-awq", "gptq": "int4-gptq", "nvfp4": "fp4", "float16": "fp16",
            "bfloat16": "bf16", "fp8_e4m3": "fp8"}

KV_BYTES_PER_ELEMENT: dict[str, float] = {"auto": 2.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
_KV_ALIASES = {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bfloat16": "bf16", "float16": "fp16"}


def weight_precision(name: str) -> WeightPrecision:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in WEIGHT_PRECISIONS:
        known = ", ".join(WEIGHT_PRECISIONS)
        raise UnsupportedPrecisionError(f"unknown weight precision {name!r}; known: {known}")
    return WEIGHT_PRECISIONS[key]


def kv_dtype(name: str) -> str:
    key = _KV_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in KV_BYTES_PER_ELEMENT:
        raise UnsupportedPrecisionError(f"unknown KV-cache dtype {name!r}; known: auto, fp8")
    return key


def check_supported(precision: WeightPrecision, gpu: Accelerator) -> None:
    """Refuse a precision whose GEMMs need tensor cores the accelerator does not have."""
    if gpu.supports(precision.compute_dtype):
        return
    hints = {
        "fp8": "FP8 needs FP8 tensor cores (Ada, Hopper, Blackwell, MI300); use bf16, int8 or int4-awq",
        "fp4": "FP4 (NVFP4) needs Blackwell FP4 tensor cores; use fp8 or int4-awq",
        "int8": "INT8 W8A8 needs INT8 tensor-core figures for this GPU; use bf16 or int4-awq",
    }
    raise UnsupportedPrecisionError(
        f"{gpu.name} cannot run {precision.name} weights: "
        f"{hints.get(precision.compute_dtype, 'no tensor-core support')}"
    )
