"""Hand-computed checks of the capacity model's formulas (arithmetic in the comments).

Figures that depend on the calibrated efficiency factors are checked against bounds that hold
for any sane calibration (bandwidth fraction in (0.5, 1], overheads of a few ms), so a
recalibration does not break them; figures that are pure arithmetic are checked exactly.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from goodput.model.architecture import arch_from_hf_config, get_model, kv_bytes_per_token_16bit
from goodput.model.efficiency import Efficiency
from goodput.model.errors import CapacityModelError, DoesNotFitError, UnsupportedPrecisionError
from goodput.model.hardware import GIB, accelerator_catalog, custom_accelerator, get_accelerator
from goodput.model.precision import check_supported, kv_dtype, weight_precision
from goodput.model.replica import TP_DEGREES, ReplicaModel, smallest_tp
from goodput.model.workload import LengthDistribution

H100 = "h100-sxm-80gb"

LLAMA_8B_CONFIG = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}

MIXTRAL_CONFIG = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}


def replica(model: str, gpu: str, precision: str, tp: int, **kw) -> ReplicaModel:
    return ReplicaModel(get_model(model), get_accelerator(gpu), precision, tp, **kw)


# ---------------------------------------------------------------------------------------------
# Weights and memory
# ---------------------------------------------------------------------------------------------
def test_llama70b_bf16_weight_bytes():
    # 70.55e9 parameters x 2 bytes (bf16; the embeddings are 16 bit anyway) = 1.411e11 bytes.
    r = replica("llama-3.1-70b", H100, "bf16", 2)
    assert r.weight_bytes == pytest.approx(1.411e11, rel=0.01)
    # Split across TP=2: 7.055e10 bytes = 65.70 GiB per GPU.
    assert r.weight_bytes_per_gpu == pytest.approx(1.411e11 / 2, rel=0.01)
    assert r.memory().weights_gib == pytest.approx(1.411e11 / 2 / GIB, rel=0.01)


def test_llama70b_bf16_needs_tp2_on_80gb():
    # 141 GB = 131.4 GiB of weights does not fit in one 80 GiB GPU (72 GiB usable at 0.9);
    # at TP=2 each GPU holds 65.7 GiB and the rest is KV cache for tens of thousands of tokens.
    arch, gpu = get_model("llama-3.1-70b"), get_accelerator(H100)
    assert not ReplicaModel(arch, gpu, "bf16", 1).fits(4096)
    assert ReplicaModel(arch, gpu, "bf16", 1).memory().kv_capacity_tokens == 0
    assert ReplicaModel(arch, gpu, "bf16", 2).fits(4096)
    assert smallest_tp(arch, gpu, "bf16", 4096) == 2
    # In fp8 the weights are 70.55 GB = 65.7 GiB: one GPU suffices.
    assert smallest_tp(arch, gpu, "fp8", 4096) == 1


def test_llama70b_bf16_tp2_kv_capacity_by_hand():
    # With the default (uncalibrated) memory factors: usable = 80 GiB x 0.90 = 72 GiB.
    # weights/GPU = 1.411e11 / 2 = 7.055e10 B = 65.7048 GiB.
    # activations = 8192 tokens x 3 x 28672/2 x 2 B = 704,643,072 B
    #             + 256 seqs x 128256 vocab x 4 B  = 131,334,144 B  -> 835,977,216 B = 0.7786 GiB.
    # reserve = 1.5 GiB.  KV = 72 - 65.7048 - 0.7786 - 1.5 = 4.0166 GiB.
    # KV per token per GPU at TP2 = 327,680 / 2 = 163,840 B.
    usable = 80 * GIB * 0.90
    weights = 70.55e9 * 2 / 2
    activations = 8192 * 3 * 28672 / 2 * 2 + 256 * 128256 * 4
    assert activations == 835_977_216
    kv = usable - weights - activations - 1.5 * GIB
    expected_tokens = int(kv // 163_840)
    assert expected_tokens == 26323
    mem = replica("llama-3.1-70b", H100, "bf16", 2, efficiency=Efficiency()).memory()
    assert mem.usable_gib == pytest.approx(72.0)
    assert mem.activations_gib == pytest.approx(activations / GIB)
    assert mem.kv_capacity_tokens == expected_tokens
    # max_batch: 26323 // 4096 = 6 sequences of 4096 tokens.
    r = replica("llama-3.1-70b", H100, "bf16", 2, efficiency=Efficiency())
    assert r.max_batch(4096) == 6
    assert r.max_batch(1) == 256  # capped by max_num_seqs


def test_does_not_fit_error_names_the_fix():
    # 405B in bf16 is 811.7 GB; 8 x L4 hold 192 GiB.
    with pytest.raises(DoesNotFitError, match="does not fit") as info:
        smallest_tp(get_model("llama-3.1-405b"), get_accelerator("l4-24gb"), "bf16", 4096)
    assert "larger GPU" in str(info.value)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
def test_llama70b_kv_bytes_per_token():
    # K and V x 80 layers x 8 KV heads x 128 head_dim x 2 bytes = 327,680 B = 320 KiB.
    assert kv_bytes_per_token_16bit(80, 8, 128) == 327_680 == 320 * 1024
    assert replica("llama-3.1-70b", H100, "bf16", 2).kv_bytes_per_token == 327_680
    # FP8 KV: one byte per element, half of it.
    assert replica("llama-3.1-70b", H100, "bf16", 2, kv_cache_dtype="fp8").kv_bytes_per_token == 163_840
    assert replica("llama-3.1-70b", H100, "fp8", 2, kv_cache_dtype="fp8").kv_bytes_per_token == 163_840


@pytest.mark.parametrize(
    ("tp", "kv_elem", "expected"),
    [
        # 8 KV heads: TP splits them, 327,680 / tp bytes per GPU ...
        (1, 2.0, 327_680),
        (2, 2.0, 163_840),
        (4, 2.0, 81_920),
        (8, 2.0, 40_960),
        # ... until each rank holds one head; beyond that the head is replicated: no further gain.
        (16, 2.0, 40_960),
        (32, 2.0, 40_960),
        # fp8 KV halves every figure.
        (1, 1.0, 163_840),
        (8, 1.0, 20_480),
        (16, 1.0, 20_480),
    ],
)
def test_kv_bytes_per_gpu_head_split_and_replication(tp, kv_elem, expected):
    arch = get_model("llama-3.1-70b")
    assert arch.kv_bytes_per_token_per_gpu(tp, kv_elem) == pytest.approx(expected)


def test_kv_bytes_per_gpu_halves_from_tp1_to_tp2_in_replica():
    tp1 = replica("llama-3.1-70b", H100, "fp8", 1)
    tp2 = replica("llama-3.1-70b", H100, "fp8", 2)
    assert tp2.kv_bytes_per_token_per_gpu == pytest.approx(tp1.kv_bytes_per_token_per_gpu / 2)
    # The per-replica (all GPUs) figure does not depend on TP.
    assert tp1.kv_bytes_per_token == tp2.kv_bytes_per_token


def test_tp16_not_a_planner_degree():
    assert 16 not in TP_DEGREES
    assert max(TP_DEGREES) == 8


def test_mla_kv_is_not_split_by_tp():
    # DeepSeek-V3: 61 layers x 576 latent elements x 2 bytes = 70,272 B on every rank.
    arch = get_model("deepseek-v3")
    assert 61 * 576 * 2 == 70_272
    for tp in (1, 2, 8):
        assert arch.kv_bytes_per_token_per_gpu(tp, 2.0) == pytest.approx(70_272)
        assert arch.kv_bytes_per_token_per_gpu(tp, 1.0) == pytest.approx(35_136)


@pytest.mark.parametrize(
    ("tp", "valid"),
    [(1, True), (2, True), (4, True), (8, True), (3, False), (6, False), (0, False), (16, True), (128, False)],
)
def test_valid_tp_llama70b(tp, valid):
    # 64 query heads, 8 KV heads: tp must divide 64, and 8 % tp == 0 or tp % 8 == 0.
    assert get_model("llama-3.1-70b").valid_tp(tp) is valid


def test_invalid_tp_rejected_by_replica():
    # Qwen2.5-7B has 28 attention heads: TP 8 does not divide them.
    with pytest.raises(CapacityModelError, match="tensor-parallel degree 8"):
        replica("qwen2.5-7b", H100, "bf16", 8)


# ---------------------------------------------------------------------------------------------
# Parameter counts from config.json
# ---------------------------------------------------------------------------------------------
def test_llama8b_params_from_hf_config():
    # Per layer: attention q,o = 2 x 4096 x 32 x 128 = 33,554,432; k,v = 2 x 4096 x 8 x 128 = 8,388,608
    #            MLP gate,up,down = 3 x 4096 x 14336 = 176,160,768           -> 218,103,808
    # x 32 layers = 6,979,321,856; embeddings untied 2 x 128256 x 4096 = 1,050,673,152
    # total 8,029,995,008 = 8.03e9.
    arch = arch_from_hf_config(LLAMA_8B_CONFIG, model_id="llama-8b-test")
    assert arch.params_total == pytest.approx(8.03e9, rel=0.005)
    assert arch.params_total == 8_029_995_008
    assert arch.params_active == arch.params_total
    assert not arch.is_moe
    assert arch.attention == "GQA"
    assert arch.head_dim == 128
    # KV: 2 x 32 layers x 8 heads x 128 x 2 B = 131,072 B per token (matches the catalog).
    assert arch.kv_bytes_per_token_16bit == 131_072 == get_model("llama-3.1-8b").kv_bytes_per_token_16bit
    assert arch.model_id == "llama-8b-test"


def test_tied_embeddings_count_once():
    tied = arch_from_hf_config({**LLAMA_8B_CONFIG, "tie_word_embeddings": True})
    untied = arch_from_hf_config(LLAMA_8B_CONFIG)
    # One fewer vocab x hidden matrix: 128256 x 4096 = 525,336,576.
    assert untied.params_total - tied.params_total == 128256 * 4096


def test_mha_config_without_kv_heads():
    cfg = {k: v for k, v in LLAMA_8B_CONFIG.items() if k != "num_key_value_heads"}
    arch = arch_from_hf_config(cfg)
    assert arch.attention == "MHA"
    assert arch.kv_heads == 32
    assert arch.kv_bytes_per_token_16bit == 2 * 32 * 32 * 128 * 2  # 524,288 B


def test_mixtral_moe_config_active_below_total():
    # Expert = 3 x 4096 x 14336 = 176,160,768; router 4096 x 8 = 32,768; attention 41,943,040/layer.
    # total  = 32 x (41,943,040 + 8 x 176,160,768 + 32,768) + 2 x 32000 x 4096 = 46,702,526,464
    # active = 32 x (41,943,040 + 2 x 176,160,768 + 32,768) + 262,144,000     = 12,879,659,008
    arch = arch_from_hf_config(MIXTRAL_CONFIG)
    assert arch.is_moe
    assert arch.params_active < arch.params_total
    assert arch.params_total == 46_702_526_464
    assert arch.params_active == 12_879_659_008
    assert (arch.experts, arch.experts_per_token) == (8, 2)


def test_catalog_mixtral_active_params():
    arch = get_model("mixtral-8x7b")
    assert arch.is_moe
    assert arch.params_active == pytest.approx(12.9e9, rel=0.01)
    assert arch.params_total == pytest.approx(46.7e9, rel=0.01)
    # Routed experts hold (total - active) / (1 - k/E) = 33.82e9 / 0.75 = 45.1e9 parameters.
    assert arch.routed_expert_params == pytest.approx((46.70e9 - 12.88e9) / 0.75, rel=1e-6)


@pytest.mark.parametrize("bad", [{}, {"hidden_size": 4096}, {**LLAMA_8B_CONFIG, "vocab_size": None}])
def test_incomplete_hf_config_is_a_catalog_error(bad):
    with pytest.raises(CapacityModelError, match=r"config\.json lacks"):
        arch_from_hf_config(bad)


def test_get_model_accepts_hf_name_and_rejects_unknown():
    assert get_model("meta-llama/Llama-3.1-70B-Instruct").model_id == "llama-3.1-70b"
    with pytest.raises(CapacityModelError, match="unknown model 'no-such-model'"):
        get_model("no-such-model")


# ---------------------------------------------------------------------------------------------
# Precisions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "bytes_per_weight"),
    [
        ("bf16", 2.0),
        ("fp16", 2.0),
        ("fp8", 1.0),
        ("int8", 1.0),
        # 4 bits + (16-bit scale + 4-bit zero) / 128 = 4.15625 bits = 0.51953125 bytes.
        ("int4-awq", (4 + 20 / 128) / 8),
        ("int4-gptq", (4 + 20 / 128) / 8),
        ("awq", (4 + 20 / 128) / 8),
        # NVFP4: 4 bits + an 8-bit scale per 16 = 4.5 bits.
        ("fp4", 4.5 / 8),
        # MXFP4: 4 bits + an 8-bit scale per 32 = 4.25 bits.
        ("mxfp4", 4.25 / 8),
    ],
)
def test_bytes_per_weight(name, bytes_per_weight):
    assert weight_precision(name).bytes_per_weight == pytest.approx(bytes_per_weight, rel=1e-12)


def test_int4_awq_bytes_per_weight_value():
    assert weight_precision("int4-awq").bytes_per_weight == pytest.approx(0.5195, abs=1e-4)


def test_int4_weights_keep_embeddings_16bit():
    # Llama-3.1-8B int4-awq: (8.03e9 - 1.0507e9 embeddings) x 0.51953 + 1.0507e9 x 2 bytes.
    arch = get_model("llama-3.1-8b")
    r = ReplicaModel(arch, get_accelerator(H100), "int4-awq", 1)
    embed = 2 * 128256 * 4096
    expected = (8.03e9 - embed) * (4 + 20 / 128) / 8 + embed * 2
    assert r.weight_bytes == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("gpu", ["a100-sxm-80gb", "a100-sxm-40gb", "a10g-24gb"])
def test_fp8_needs_fp8_tensor_cores(gpu):
    with pytest.raises(UnsupportedPrecisionError, match="FP8 tensor cores"):
        replica("llama-3.1-8b", gpu, "fp8", 1)


@pytest.mark.parametrize("gpu_id", sorted(accelerator_catalog()))
def test_fp4_only_on_blackwell(gpu_id):
    gpu = get_accelerator(gpu_id)
    if gpu_id == "b200-180gb":
        check_supported(weight_precision("fp4"), gpu)  # does not raise
        ReplicaModel(get_model("llama-3.1-70b"), gpu, "fp4", 1)
    else:
        with pytest.raises(UnsupportedPrecisionError, match="FP4"):
            check_supported(weight_precision("fp4"), gpu)


def test_weight_only_int4_runs_on_ampere():
    # AWQ dequantizes to bf16: it runs where fp8 does not.
    r = replica("llama-3.1-70b", "a100-sxm-80gb", "int4-awq", 1)
    assert r.precision.compute_dtype == "bf16"


@pytest.mark.parametrize("bad", ["int3", "fp6", ""])
def test_unknown_weight_precision(bad):
    with pytest.raises(UnsupportedPrecisionError, match="unknown weight precision"):
        weight_precision(bad)


def test_kv_dtype_aliases_and_unknown():
    assert kv_dtype("fp8_e5m2") == "fp8"
    assert kv_dtype("AUTO") == "auto"
    with pytest.raises(UnsupportedPrecisionError, match="unknown KV-cache dtype"):
        kv_dtype("int4")


# ---------------------------------------------------------------------------------------------
# Time: decode is bandwidth-bound at batch 1, prefill is compute-bound
# ---------------------------------------------------------------------------------------------
DECODE_CASES = [
    ("llama-3.1-70b", H100, "fp8", 2),
    ("llama-3.1-70b", H100, "bf16", 4),
    ("llama-3.1-70b", H100, "bf16", 8),
    ("llama-3.1-8b", H100, "bf16", 1),
    ("llama-3.1-70b", "a100-sxm-80gb", "bf16", 4),
    ("llama-3.1-8b", "l40s-48gb", "fp8", 1),
    ("llama-3.1-8b", "l4-24gb", "bf16", 1),
    ("qwen2.5-72b", "h200-sxm-141gb", "fp8", 1),
    ("llama-3.1-405b", "b200-180gb", "fp4", 4),
    ("mistral-7b", "a10g-24gb", "int4-awq", 1),
]


@pytest.mark.parametrize(("model", "gpu", "precision", "tp"), DECODE_CASES)
def test_decode_batch1_is_memory_bound(model, gpu, precision, tp):
    # E.g. Llama-3.1-70B fp8 at TP2 on H100: 72.65 GB (16-bit embeddings) / 2 = 36.3 GB per GPU
    # over 3.35 TB/s = 10.8 ms of pure weight reading; the model adds the achievable-bandwidth derate, the step
    # and all-reduce overheads: about 18 ms, between 10.5 ms and 2 x (10.5 + overhead).
    r = replica(model, gpu, precision, tp)
    t = float(r.decode_step_s(1.0, 512.0))
    roofline = r.weight_bytes_per_gpu / r.gpu.hbm_bandwidth_bytes_s
    overhead = r.fixed_overhead_s + r.comm_latency_s
    assert t >= roofline
    assert t <= 2.0 * (roofline + overhead)


def test_decode_step_llama70b_fp8_tp2_value():
    # Embeddings 2 x 128256 x 8192 = 2.101e9 params stay 16 bit, the other 68.45e9 are fp8:
    # 68.45e9 x 1 B + 2.101e9 x 2 B = 72.65e9 B; / 2 GPUs = 36.33e9 B; / 3.35e12 B/s = 10.84 ms.
    r = replica("llama-3.1-70b", H100, "fp8", 2)
    embed = 2 * 128256 * 8192
    assert r.weight_bytes == pytest.approx((70.55e9 - embed) * 1 + embed * 2, rel=1e-9)
    assert r.weight_bytes_per_gpu / r.gpu.hbm_bandwidth_bytes_s == pytest.approx(10.84e-3, rel=0.01)
    assert 10.84e-3 < float(r.decode_step_s(1.0, 1024.0)) < 30e-3


@pytest.mark.parametrize(("model", "gpu", "precision", "tp"), DECODE_CASES)
@pytest.mark.parametrize("prompt", [4096, 8192])
def test_prefill_is_at_least_the_compute_roofline(model, gpu, precision, tp, prompt):
    # Llama-3.1-70B, 8192 tokens, TP2 fp8 on H100: 2 x 70.55e9 x 8192 / (2 x 1979e12) = 0.292 s
    # at rated peak; the model predicts more (achievable fraction, attention, overheads).
    # (The bound counts the embedding and LM head for every token, which the model does not:
    # up to 13% more FLOPs than the model's for Llama-8B, well inside its achievable-FLOPS derate.)
    r = replica(model, gpu, precision, tp)
    peak = r.gpu.flops(r.precision.compute_dtype)
    bound = 2.0 * r.arch.params_active * prompt / (tp * peak)
    assert float(r.prefill_s(1.0, float(prompt))) >= bound
    assert r.ttft_batch1_s(float(prompt)) == pytest.approx(float(r.prefill_s(1.0, float(prompt))))


def test_prefill_llama70b_fp8_tp2_value():
    r = replica("llama-3.1-70b", H100, "fp8", 2)
    bound = 2 * 70.55e9 * 8192 / (2 * 1979e12)
    assert bound == pytest.approx(0.292, rel=0.01)
    # Compute-bound and not absurdly slow: under 4x the peak-FLOPS bound.
    assert bound <= float(r.prefill_s(1.0, 8192.0)) < 4 * bound


def test_prefill_is_compute_bound_decode_is_memory_bound():
    # A token of prefill costs far less than a decode step: batching tokens amortizes the weights.
    r = replica("llama-3.1-8b", H100, "bf16", 1)
    per_token_prefill = float(r.prefill_s(1.0, 4096.0)) / 4096
    assert per_token_prefill < float(r.decode_step_s(1.0, 4096.0)) / 20


def test_moe_decode_batch1_reads_only_active_experts():
    # Mixtral bf16 at batch 1 reads the dense part + 2/8 of the experts: 12.9e9 x 2 B = 25.8 GB,
    # not 46.7e9 x 2 B = 93.4 GB.
    r = replica("mixtral-8x7b", H100, "bf16", 2)
    full = r.weight_bytes_per_gpu / r.bandwidth_bytes_s
    active = (r.dense_bytes_per_gpu + r.expert_bytes_per_gpu * 2 / 8) / r.bandwidth_bytes_s
    t1 = float(r.decode_step_s(1.0, 512.0))
    assert active < t1 < full
    # A large batch touches every expert: the weight read approaches the full one.
    t_big = float(r.decode_step_s(64.0, 512.0))
    assert t_big > full


def test_tp_costs_communication():
    r1 = replica("llama-3.1-8b", H100, "bf16", 1)
    r2 = replica("llama-3.1-8b", H100, "bf16", 2)
    assert r1.comm_latency_s == 0.0 and float(r1.comm_s(4096.0)) == 0.0
    # 2 all-reduces x 32 layers, each of one token's 4096 x 2 B activations at TP2 (tests/unit/test_interconnect.py
    # checks one all-reduce by hand).
    assert r2.allreduces_per_step == 64
    assert r2.comm_latency_s > 0 and float(r2.comm_s(4096.0)) > r2.comm_latency_s


def test_kv_transfer_time():
    # Llama-3.1-8B, TP1, bf16 KV: 4096 tokens x 131,072 B = 536.9 MB over 25 GB/s = 21.5 ms + 2 ms.
    r = replica("llama-3.1-8b", H100, "bf16", 1, efficiency=Efficiency())
    assert float(r.kv_transfer_s(4096.0)) == pytest.approx(0.002 + 4096 * 131072 / 25e9)


def test_numpy_arrays_match_scalars():
    import numpy as np

    r = replica("llama-3.1-70b", H100, "fp8", 2)
    batches = np.array([1.0, 8.0, 64.0])
    vec = r.decode_step_s(batches, np.full(3, 2048.0))
    for b, v in zip(batches, vec, strict=True):
        assert float(r.decode_step_s(float(b), 2048.0)) == pytest.approx(float(v))


def test_max_batch_rejects_non_positive_context():
    r = replica("llama-3.1-8b", H100, "bf16", 1)
    with pytest.raises(CapacityModelError, match="context length must be positive"):
        r.max_batch(0)


# ---------------------------------------------------------------------------------------------
# Catalog and custom accelerators
# ---------------------------------------------------------------------------------------------
def test_h100_catalog_figures():
    g = get_accelerator(H100)
    assert g.memory_gib == 80
    assert g.hbm_bandwidth_bytes_s == pytest.approx(3.35e12)
    assert g.flops("bf16") == pytest.approx(989e12)
    assert g.flops("fp8") == pytest.approx(1979e12)
    # 900 GB/s bidirectional NVLink = 450 GB/s one way.
    assert g.link_bandwidth_bytes_s == pytest.approx(450e9)
    assert g.memory_bytes == 80 * 2**30
    assert not g.supports("fp4")


def test_gpu_prefix_lookup_and_unknown():
    assert get_accelerator("l40s").gpu_id == "l40s-48gb"
    assert get_accelerator(" H100-SXM ").gpu_id == H100
    with pytest.raises(CapacityModelError, match="unknown GPU id"):
        get_accelerator("h100")  # ambiguous: sxm, pcie
    with pytest.raises(CapacityModelError, match="unknown GPU id 'tpu-v5'"):
        get_accelerator("tpu-v5")


def test_custom_accelerator():
    g = custom_accelerator("x1", memory_gib=96, hbm_bandwidth_tb_s=4.0, bf16_tflops=1000, usd_per_gpu_hour=3.0)
    assert g.hbm_bandwidth_bytes_s == 4e12
    assert g.supports("bf16") and not g.supports("fp8")
    assert g.link_bandwidth_bytes_s == 32e9
    with pytest.raises(CapacityModelError, match="memory_gib must be positive"):
        custom_accelerator("x2", memory_gib=0, hbm_bandwidth_tb_s=4.0, bf16_tflops=1000, usd_per_gpu_hour=3.0)
    with pytest.raises(CapacityModelError, match="price per GPU-hour must be positive"):
        g.with_price(0)
    assert g.with_price(5.0).usd_per_gpu_hour == 5.0


def test_efficiency_validation():
    Efficiency().validate()
    with pytest.raises(CapacityModelError, match="bandwidth_fraction"):
        Efficiency.from_dict({"bandwidth_fraction": 1.5})
    with pytest.raises(CapacityModelError, match="unknown efficiency factors: nonsense"):
        Efficiency.from_dict({"nonsense": 1.0})
    assert math.isclose(Efficiency.from_dict({"compute_fraction": 0.5}).compute_fraction, 0.5)


@pytest.mark.parametrize(("model_id", "gpu_id", "precision", "tp"), [
    ("llama-3.1-70b", "h100-sxm-80gb", "fp8", 2),  # custom all-reduce
    ("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1),  # no all-reduce
    ("llama-3.1-70b", "h100-sxm-80gb", "bf16", 8),
    ("mixtral-8x7b", "h100-sxm-80gb", "bf16", 2),  # MoE: the experts a step touches depend on its tokens
])
def test_step_time_fn_is_bit_identical_to_step_time_s(model_id, gpu_id, precision, tp):
    """The engine's memoized step time must not change a single simulated timeline."""
    from goodput.engine.world import build_world

    base = ReplicaModel(get_model(model_id), get_accelerator(gpu_id), precision, tp)
    rng = np.random.default_rng(7)
    for world in (None, "speed=0.8", "decode_speed=1.3,prefill_speed=0.7"):
        r = base if world is None else build_world(None, world).engine_model(base)
        fast = r.step_time_fn()
        for _ in range(2000):
            dec = float(rng.integers(0, 300))
            ctx = float(rng.integers(0, 10**6))
            chunk = float(rng.integers(1, 600)) if rng.random() < 0.5 else 0.0
            c0 = float(rng.integers(0, 5000))
            args = (dec, ctx, chunk, chunk * c0 + chunk * (chunk + 1) / 2.0, float(rng.integers(0, 2)))
            assert fast(*args) == r.step_time_s(*args)  # twice: the memoized path too
            assert fast(*args) == r.step_time_s(*args)
        ctx_array = np.arange(1024, dtype=np.float64) * 37.0 + 12345.0  # a planned decode run
        assert np.array_equal(fast(37.0, ctx_array), r.step_time_s(37.0, ctx_array))
        copy = pickle.loads(pickle.dumps(r))  # --jobs N sends the models to other processes
        assert copy.step_time_fn()(37.0, 12345.0) == r.step_time_s(37.0, 12345.0)


def test_binned_ratio_shortcut_is_bit_identical() -> None:
    """The lognormal fit's inner function skips a sort and constant work: it must return exactly
    what the distribution it describes does (else every planned count could move)."""
    from goodput.model import workload

    for sigma in np.concatenate([np.random.default_rng(3).uniform(1e-6, 2.33, 3000), [1e-6, 0.05, 2.3263478740408408]]):
        d = LengthDistribution._binned_lognormal(1.0, float(sigma))
        assert workload._binned_ratio(float(sigma)) == d.quantile(0.99) / d.mean
