"""Tensor-parallel communication: the time of one all-reduce, as serving engines do it.

A transformer layer under tensor parallelism ends its attention and its MLP with an all-reduce
of the layer's activations (tokens x hidden x 2 bytes: they stay 16-bit whatever the weights).
Engines do not all-reduce the way a textbook ring does:

* **Small messages** (decode: a few KiB to a few MiB) go through a *custom all-reduce*: every
  GPU reads its peers' buffers directly over NVLink or xGMI (one-shot) or reduce-scatters then
  all-gathers (two-shot). vLLM uses it below 8 MiB on fully connected GPUs, and on PCIe only for
  two GPUs (vllm/distributed/device_communicators/custom_all_reduce.py); TensorRT-LLM and
  SGLang have the same one-shot/two-shot kernels. Its cost is a flag exchange of a few
  microseconds plus the bytes at a modest fraction of the link (the kernel uses 36 blocks).
* **Large messages** (prefill chunks) go through NCCL (RCCL on AMD), which picks between its
  low-latency (LL) and bandwidth (Simple) protocols by its own alpha-beta model
  (NVIDIA/nccl src/graph/tuning.cc): latency base + 2(p-1) hops, and 2(p-1)/p of the message
  over the bus bandwidth (a quarter of it for LL, whose flags halve each 8-byte word twice).

The engine takes the faster path; so does the model. Every figure per interconnect (latencies,
achieved fractions of the link) is data in ``data/interconnects.csv`` with its source; the link
bandwidth itself is the accelerator's datasheet figure (``gpus.csv``). A full mesh (AMD xGMI)
gives a TP group of p GPUs only p-1 of its links; a switch (NVSwitch) gives every GPU its whole
link bandwidth whatever p is.

Every time function takes floats or numpy arrays.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from goodput.model.errors import CatalogError

Num = float | npt.NDArray[np.float64]

# vLLM's custom all-reduce: world sizes it supports, and its buffer (max_size = 8192 * 1024).
CUSTOM_ALLREDUCE_WORLD_SIZES = (2, 4, 6, 8)
CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 1024 * 1024
# NCCL's base latencies (us) of the ring all-reduce per protocol (src/graph/tuning.cc baseLat).
NCCL_LL_BASE_LATENCY_US = 6.6
NCCL_SIMPLE_BASE_LATENCY_US = 8.4
# NCCL's LL protocol carries half the payload per word and its model takes a quarter of the bus
# bandwidth for a ring all-reduce, capped per node at llMaxBws (87.7 GB/s on Ampere/Hopper).
NCCL_LL_BANDWIDTH_SHARE = 0.25
NCCL_LL_MAX_BYTES_S = 87.7e9
# Activations are all-reduced in 16 bit.
ACTIVATION_BYTES = 2.0


@dataclass(frozen=True)
class Interconnect:
    name: str
    topology: str  # "switch" (NVSwitch), "mesh" (xGMI: one link per peer) or "pcie"
    peer_links: int  # links per GPU in a mesh (0 otherwise)
    custom_allreduce_max_tp: int  # largest TP the engines' custom all-reduce runs at (0: none)
    custom_ar_latency_s: float
    custom_ar_latency_per_peer_s: float
    custom_ar_bus_fraction: float
    nccl_ll_hop_latency_s: float
    nccl_simple_hop_latency_s: float
    nccl_bus_fraction: float
    source: str = ""

    def group_bandwidth_bytes_s(self, link_bytes_s: float, tp: int) -> float:
        """One-way bandwidth one GPU has towards the rest of a TP group of ``tp`` GPUs."""
        if self.topology == "mesh" and self.peer_links > 0:
            return link_bytes_s / self.peer_links * min(tp - 1, self.peer_links)
        return link_bytes_s

    def has_custom_allreduce(self, tp: int) -> bool:
        return tp in CUSTOM_ALLREDUCE_WORLD_SIZES and tp <= self.custom_allreduce_max_tp


def _float(row: dict[str, str], key: str) -> float:
    text = (row.get(key) or "").strip()
    return float(text) if text else 0.0


@functools.cache
def interconnect_catalog() -> dict[str, Interconnect]:
    text = resources.files("goodput").joinpath("data", "interconnects.csv").read_text(encoding="utf-8")
    out: dict[str, Interconnect] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out[row["interconnect"]] = Interconnect(
            name=row["interconnect"],
            topology=row["topology"],
            peer_links=int(_float(row, "peer_links")),
            custom_allreduce_max_tp=int(_float(row, "custom_allreduce_max_tp")),
            custom_ar_latency_s=_float(row, "custom_ar_latency_us") * 1e-6,
            custom_ar_latency_per_peer_s=_float(row, "custom_ar_latency_per_peer_us") * 1e-6,
            custom_ar_bus_fraction=_float(row, "custom_ar_bus_fraction"),
            nccl_ll_hop_latency_s=_float(row, "nccl_ll_hop_latency_us") * 1e-6,
            nccl_simple_hop_latency_s=_float(row, "nccl_simple_hop_latency_us") * 1e-6,
            nccl_bus_fraction=_float(row, "nccl_bus_fraction"),
            source=row.get("source", ""),
        )
    return out


def get_interconnect(name: str) -> Interconnect:
    """The interconnect of ``gpus.csv``'s name; an unknown one is treated as a custom (PCIe-class) link."""
    catalog = interconnect_catalog()
    if name in catalog:
        return catalog[name]
    if "custom" not in catalog:
        raise CatalogError(f"interconnects.csv has no row for {name!r} and no 'custom' fallback")
    return catalog["custom"]


def allreduce_s(ic: Interconnect, link_bytes_s: float, tp: int, message_bytes: Num, latency_scale: float = 1.0,
                bandwidth_scale: float = 1.0, custom_max_bytes: float = CUSTOM_ALLREDUCE_MAX_BYTES) -> Num:
    """Time of one all-reduce of ``message_bytes`` across ``tp`` GPUs: the faster of the custom
    all-reduce (where the engine runs it: ``tp`` supported by the interconnect and the message
    below ``custom_max_bytes``) and NCCL's best protocol. ``latency_scale`` and
    ``bandwidth_scale`` are the engine's: one that launches collectives from the host pays more."""
    if tp <= 1:
        return 0.0 * np.asarray(message_bytes, dtype=np.float64) if isinstance(message_bytes, np.ndarray) else 0.0
    hops = 2.0 * (tp - 1)
    ring_bytes = hops / tp * message_bytes  # what each GPU sends (and receives) in reduce-scatter + all-gather
    group_bw = ic.group_bandwidth_bytes_s(link_bytes_s, tp) * bandwidth_scale
    bus = group_bw * ic.nccl_bus_fraction
    ll = ((NCCL_LL_BASE_LATENCY_US * 1e-6 + hops * ic.nccl_ll_hop_latency_s) * latency_scale
          + ring_bytes / min(bus * NCCL_LL_BANDWIDTH_SHARE, NCCL_LL_MAX_BYTES_S))
    simple = (NCCL_SIMPLE_BASE_LATENCY_US * 1e-6 + hops * ic.nccl_simple_hop_latency_s) * latency_scale \
        + ring_bytes / bus
    best: Num = np.minimum(ll, simple)
    if ic.has_custom_allreduce(tp) and custom_max_bytes > 0:
        custom = (ic.custom_ar_latency_s + (tp - 1) * ic.custom_ar_latency_per_peer_s) * latency_scale \
            + ring_bytes / (group_bw * ic.custom_ar_bus_fraction)
        best = np.where(np.asarray(message_bytes) < custom_max_bytes, np.minimum(custom, best), best)
    if isinstance(message_bytes, np.ndarray):
        return np.asarray(best, dtype=np.float64)
    return float(best)
