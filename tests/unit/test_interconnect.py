"""The tensor-parallel communication term against hand-computed values, NVLink, xGMI and PCIe.

Figures of data/interconnects.csv used below: NVLink4 custom all-reduce 3.33 us + 0.37 us per peer
at 0.155 of the link, NCCL LL 6.6 us + 0.6 us per hop, Simple 8.4 us + 3.4 us per hop, bus 1.06 of
the link; PCIe custom 4.1 us at 0.5 (2 GPUs only), NCCL LL 6.6 + 1.0 us per hop, Simple 8.4 + 5.7, bus
0.7; Infinity Fabric custom 6.1 us + 0.37 per peer at 0.58 of the p-1 links in use (7 links per GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from goodput.model.architecture import get_model
from goodput.model.efficiency import Efficiency
from goodput.model.hardware import get_accelerator
from goodput.model.interconnect import allreduce_s, get_interconnect
from goodput.model.replica import ReplicaModel

H100 = get_accelerator("h100-sxm-80gb")  # NVLink4, 900 GB/s both ways: 450e9 B/s one way
L40S = get_accelerator("l40s-48gb")  # PCIe Gen4, 64 GB/s both ways: 32e9 one way
MI300X = get_accelerator("mi300x-192gb")  # Infinity Fabric, 896 GB/s both ways over 7 links: 64e9 per link


def us(seconds: float) -> float:
    return float(seconds) * 1e6


def test_nvlink_decode_message_takes_the_one_shot_kernel():
    # Llama-3.1-70B at batch 1: 8192 x 2 B = 16 KiB. TP8 on H100:
    # custom: 3.33 + 7 x 0.37 = 5.92 us, plus 2*7/8 * 16384 B = 28,672 B over 450e9 x 0.155 = 69.75 GB/s: 0.411 us.
    # NCCL LL would be 6.6 + 14 x 0.6 = 15 us plus 28,672 B at min(450e9 x 1.06 / 4, 87.7e9): 15.33 us.
    ic = get_interconnect("NVLink4")
    assert us(allreduce_s(ic, 450e9, 8, 16384.0)) == pytest.approx(5.92 + 0.411, abs=0.002)
    # Per step: 2 x 80 layers of them, about 1 ms (the former model: 25 ms).
    r = ReplicaModel(get_model("llama-3.1-70b"), H100, "fp8", 8, "fp8", Efficiency())
    assert r.comm_latency_s == pytest.approx(160 * 6.331e-6, rel=1e-3)


def test_nvlink_prefill_message_goes_through_nccl_simple():
    # 8192 prompt tokens x 16 KiB = 128 MiB, above the custom kernel's 8 MiB: NCCL. Simple protocol:
    # 8.4 + 14 x 3.4 = 56 us, plus 2*7/8 x 134,217,728 B = 234,881,024 B over 450e9 x 1.06 = 477 GB/s: 492.4 us.
    ic = get_interconnect("NVLink4")
    assert us(allreduce_s(ic, 450e9, 8, 134217728.0)) == pytest.approx(56.0 + 492.41, abs=0.1)


def test_pcie_two_gpus_use_the_custom_kernel_four_do_not():
    ic = get_interconnect(L40S.interconnect)
    assert ic.topology == "pcie"
    # Llama-3.1-8B: 4096 x 2 B = 8 KiB. TP2: 4.1 us + 8192 B over 32e9 x 0.5: 0.512 us.
    assert us(allreduce_s(ic, L40S.link_bandwidth_bytes_s, 2, 8192.0)) == pytest.approx(4.612, abs=0.001)
    # TP4: vLLM disables its kernel on more than two PCIe GPUs; NCCL LL: 6.6 + 6 x 1.0 = 12.6 us, plus
    # 2*3/4 x 8192 = 12,288 B over 32e9 x 0.7 / 4 = 5.6 GB/s: 2.194 us.
    assert us(allreduce_s(ic, L40S.link_bandwidth_bytes_s, 4, 8192.0)) == pytest.approx(14.794, abs=0.001)


def test_xgmi_mesh_uses_only_the_links_to_the_group():
    # TP4 on MI300X: 3 of the 7 links, 3 x 64e9 = 192 GB/s. At 2 KiB: 6.1 + 3 x 0.37 = 7.21 us + 3,072 B over
    # 192e9 x 0.58: 7.24 us (vLLM PR #19744 measured 7.18). At 4 MiB: 7.21 + 6,291,456 B / 111.4 GB/s = 63.7 us
    # (measured 63.86).
    ic = get_interconnect(MI300X.interconnect)
    link = MI300X.link_bandwidth_bytes_s
    assert ic.group_bandwidth_bytes_s(link, 4) == pytest.approx(192e9)
    assert ic.group_bandwidth_bytes_s(link, 8) == pytest.approx(link)
    assert us(allreduce_s(ic, link, 4, 2048.0)) == pytest.approx(7.238, abs=0.002)
    assert us(allreduce_s(ic, link, 4, 4 * 2**20)) == pytest.approx(63.71, abs=0.05)


def test_engine_without_custom_kernel_and_latency_scale():
    ic = get_interconnect("NVLink4")
    nccl_only = allreduce_s(ic, 450e9, 8, 16384.0, custom_max_bytes=0.0)
    assert us(nccl_only) == pytest.approx(15.0 + 28672 / 87.7e9 * 1e6, abs=0.002)
    # Latencies scale, bytes do not: 2 x (5.92) + 0.411.
    assert us(allreduce_s(ic, 450e9, 8, 16384.0, latency_scale=2.0)) == pytest.approx(2 * 5.92 + 0.411, abs=0.002)


def test_vectorized_and_single_gpu():
    ic = get_interconnect("NVLink4")
    sizes = np.array([16384.0, 134217728.0])
    vec = allreduce_s(ic, 450e9, 8, sizes)
    assert [float(v) for v in vec] == pytest.approx([allreduce_s(ic, 450e9, 8, float(s)) for s in sizes])
    assert allreduce_s(ic, 450e9, 1, 16384.0) == 0.0


def test_unknown_interconnect_falls_back_to_custom_pcie_class():
    ic = get_interconnect("Warp Drive")
    assert ic.name == "custom" and not ic.has_custom_allreduce(2)


@pytest.mark.parametrize("gpu_id", ["a10g-24gb", "l4-24gb", "l40s-48gb", "a100-sxm-40gb", "a100-sxm-80gb",
                                    "h100-sxm-80gb", "h100-pcie-80gb", "h200-sxm-141gb", "h800-sxm-80gb",
                                    "b200-180gb", "mi300x-192gb"])
def test_every_catalog_interconnect_has_a_row(gpu_id):
    gpu = get_accelerator(gpu_id)
    assert get_interconnect(gpu.interconnect).name == gpu.interconnect
