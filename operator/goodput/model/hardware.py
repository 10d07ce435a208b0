"""Accelerators: the datasheet figures the roofline needs, and their prices.

The catalog is read from CSV files shipped inside the package (see ``data/SOURCES.md``);
a user can add a custom accelerator with :func:`custom_accelerator`.

Units: memory in GiB (datasheet "80 GB" HBM is 80 GiB in practice: ``nvidia-smi`` reports
81,559 MiB on an H100 80GB), bandwidth in bytes/s, throughput in FLOP/s.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from importlib import resources

from goodput.model.errors import CatalogError

GIB = 1024**3


@dataclass(frozen=True)
class Accelerator:
    gpu_id: str
    name: str
    memory_gib: float
    hbm_bandwidth_bytes_s: float
    # Dense tensor-core throughput per compute dtype, FLOP/s (or OP/s for int8).
    # A dtype missing from the mapping has no tensor-core support on this part.
    dense_flops: dict[str, float]
    interconnect: str
    # One direction of the GPU-to-GPU link; ring all-reduce moves data one way per hop.
    link_bandwidth_bytes_s: float
    usd_per_gpu_hour: float
    price_source: str = ""
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    def supports(self, compute_dtype: str) -> bool:
        return self.dense_flops.get(compute_dtype, 0.0) > 0.0

    def flops(self, compute_dtype: str) -> float:
        value = self.dense_flops.get(compute_dtype, 0.0)
        if value <= 0.0:
            raise CatalogError(f"{self.name} has no dense {compute_dtype} tensor-core throughput")
        return value

    def with_price(self, usd_per_gpu_hour: float, source: str = "user override") -> Accelerator:
        if usd_per_gpu_hour <= 0:
            raise CatalogError(f"price per GPU-hour must be positive, got {usd_per_gpu_hour}")
        return Accelerator(
            gpu_id=self.gpu_id,
            name=self.name,
            memory_gib=self.memory_gib,
            hbm_bandwidth_bytes_s=self.hbm_bandwidth_bytes_s,
            dense_flops=dict(self.dense_flops),
            interconnect=self.interconnect,
            link_bandwidth_bytes_s=self.link_bandwidth_bytes_s,
            usd_per_gpu_hour=usd_per_gpu_hour,
            price_source=source,
            source=self.source,
        )


def _float_or_zero(text: str) -> float:
    text = (text or "").strip()
    return float(text) if text else 0.0


def _read_data(name: str) -> str:
    return resources.files("goodput").joinpath("data", name).read_text(encoding="utf-8")


@functools.cache
def accelerator_catalog() -> dict[str, Accelerator]:
    prices = {row["gpu_id"]: row for row in csv.DictReader(io.StringIO(_read_data("prices.csv")))}
    catalog: dict[str, Accelerator] = {}
    for row in csv.DictReader(io.StringIO(_read_data("gpus.csv"))):
        gpu_id = row["gpu_id"]
        price = prices.get(gpu_id)
        if price is None:
            raise CatalogError(f"prices.csv has no price for {gpu_id}")
        bf16 = _float_or_zero(row["bf16_dense_tflops"]) * 1e12
        flops = {
            "bf16": bf16,
            "fp16": bf16,
            "fp8": _float_or_zero(row["fp8_dense_tflops"]) * 1e12,
            "fp4": _float_or_zero(row["fp4_dense_tflops"]) * 1e12,
            "int8": _float_or_zero(row["int8_dense_tops"]) * 1e12,
        }
        catalog[gpu_id] = Accelerator(
            gpu_id=gpu_id,
            name=row["name"],
            memory_gib=float(row["memory_gb"]),
            hbm_bandwidth_bytes_s=float(row["hbm_bandwidth_tb_s"]) * 1e12,
            dense_flops={k: v for k, v in flops.items() if v > 0},
            interconnect=row["interconnect"],
            link_bandwidth_bytes_s=float(row["interconnect_gb_s_bidirectional"]) * 1e9 / 2,
            usd_per_gpu_hour=float(price["usd_per_gpu_hour"]),
            price_source=price["source"],
            source=row["source"],
        )
    return catalog


def get_accelerator(gpu_id: str) -> Accelerator:
    catalog = accelerator_catalog()
    key = gpu_id.strip().lower()
    if key in catalog:
        return catalog[key]
    # Accept unambiguous prefixes ("h100-sxm", "l40s") as a convenience.
    matches = [a for k, a in catalog.items() if k.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(catalog))
    raise CatalogError(f"unknown GPU id {gpu_id!r}; known GPUs: {known} (or define a custom accelerator)")


def custom_accelerator(
    gpu_id: str,
    *,
    memory_gib: float,
    hbm_bandwidth_tb_s: float,
    bf16_tflops: float,
    usd_per_gpu_hour: float,
    fp8_tflops: float = 0.0,
    fp4_tflops: float = 0.0,
    int8_tops: float = 0.0,
    link_gb_s_bidirectional: float = 64.0,
    name: str | None = None,
    interconnect: str = "custom",
) -> Accelerator:
    """An accelerator the catalog does not know, from its datasheet figures."""
    checks = {
        "memory_gib": memory_gib,
        "hbm_bandwidth_tb_s": hbm_bandwidth_tb_s,
        "bf16_tflops": bf16_tflops,
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "link_gb_s_bidirectional": link_gb_s_bidirectional,
    }
    for key, value in checks.items():
        if not value > 0:
            raise CatalogError(f"custom accelerator {gpu_id!r}: {key} must be positive, got {value}")
    flops = {
        "bf16": bf16_tflops * 1e12,
        "fp16": bf16_tflops * 1e12,
        "fp8": fp8_tflops * 1e12,
        "fp4": fp4_tflops * 1e12,
        "int8": int8_tops * 1e12,
    }
    return Accelerator(
        gpu_id=gpu_id,
        name=name or gpu_id,
        memory_gib=memory_gib,
        hbm_bandwidth_bytes_s=hbm_bandwidth_tb_s * 1e12,
        dense_flops={k: v for k, v in flops.items() if v > 0},
        interconnect=interconnect,
        link_bandwidth_bytes_s=link_gb_s_bidirectional * 1e9 / 2,
        usd_per_gpu_hour=usd_per_gpu_hour,
        price_source="user",
        source="user-defined",
    )
