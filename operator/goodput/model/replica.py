"""One serving replica: a tensor-parallel group of ``tp`` GPUs running one model.

Memory (what fits) and time (how long an engine step takes), from first principles:

* Every step reads the weights once per GPU (for MoE, only the experts the step's tokens
  touch) and the KV cache of every decoding sequence: memory time = bytes / achievable bandwidth.
* Every token costs 2 FLOPs per active parameter in the GEMMs, plus attention FLOPs that grow
  with its context: compute time = FLOPs / achievable tensor-core throughput.
* The two overlap; the step takes the soft maximum of them, plus a fixed engine overhead and,
  with tensor parallelism, two all-reduces per layer, timed as the engines do them (custom
  one-shot/two-shot kernels for small messages, NCCL for large ones: ``interconnect.py``).
* A prompt chunk also reads the KV of the prompt's earlier chunks, and attends over them:
  attention FLOPs grow with the square of the prompt (10k-100k-token prompts are mostly attention).

Decode (one token per sequence) is bound by bandwidth at small batch and batching amortizes
the weight read; prefill (thousands of tokens at once) is bound by compute. One formula covers
both and the chunked-prefill steps that mix them.

Scalar calls cost a few microseconds; every argument may also be a numpy array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from goodput.model.architecture import ModelArch
from goodput.model.efficiency import AcceleratorScale, Efficiency, accelerator_scale, calibrated_efficiency
from goodput.model.errors import CapacityModelError, DoesNotFitError
from goodput.model.hardware import GIB, Accelerator
from goodput.model.interconnect import ACTIVATION_BYTES, allreduce_s, get_interconnect
from goodput.model.precision import (
    KV_BYTES_PER_ELEMENT,
    WeightPrecision,
    check_supported,
    kv_dtype,
    weight_precision,
)

# Every time function takes floats or numpy arrays (broadcast together) and returns the same.
Num = float | npt.NDArray[np.float64]
StepTimeFn = Callable[..., Num]  # step_time_s's signature

TP_DEGREES = (1, 2, 4, 8)
# vLLM defaults (V1 engine): continuous batching with chunked prefill.
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class MemoryBreakdown:
    usable_gib: float
    weights_gib: float
    activations_gib: float
    reserve_gib: float
    kv_cache_gib: float
    kv_capacity_tokens: int
    kv_bytes_per_token: float


class ReplicaModel:
    """Capacity model of one replica. Construct once per configuration, call many times."""

    def __init__(
        self,
        arch: ModelArch,
        gpu: Accelerator,
        precision: WeightPrecision | str,
        tp: int,
        kv_cache_dtype: str = "auto",
        efficiency: Efficiency | None = None,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        scale: AcceleratorScale | None = None,
    ) -> None:
        self.arch = arch
        self.gpu = gpu
        self.precision = weight_precision(precision) if isinstance(precision, str) else precision
        self.kv_cache_dtype = kv_dtype(kv_cache_dtype)
        self.tp = int(tp)
        self.eff = efficiency or calibrated_efficiency()
        self.max_num_seqs = int(max_num_seqs)
        self.max_num_batched_tokens = int(max_num_batched_tokens)
        if not arch.valid_tp(self.tp):
            raise CapacityModelError(
                f"tensor-parallel degree {tp} does not divide {arch.model_id}'s "
                f"{arch.attention_heads} attention heads / {arch.kv_heads} KV heads"
            )
        check_supported(self.precision, gpu)
        eff = self.eff

        # --- bytes ---------------------------------------------------------------------------
        quantized = arch.params_total - arch.embedding_params
        self.weight_bytes = quantized * self.precision.bytes_per_weight + arch.embedding_params * 2.0
        self.weight_bytes_per_gpu = self.weight_bytes / self.tp
        expert_params = arch.routed_expert_params
        self.expert_bytes_per_gpu = expert_params * self.precision.bytes_per_weight / self.tp
        self.dense_bytes_per_gpu = self.weight_bytes_per_gpu - self.expert_bytes_per_gpu
        self.expert_miss = 1.0 - arch.experts_per_token / arch.experts if arch.is_moe else 0.0
        kv_elem = KV_BYTES_PER_ELEMENT[self.kv_cache_dtype]
        self.kv_bytes_per_token_per_gpu = arch.kv_bytes_per_token_per_gpu(self.tp, kv_elem)
        self.kv_bytes_per_token = arch.kv_bytes_per_token_16bit * kv_elem / 2.0

        # --- FLOPs ---------------------------------------------------------------------------
        # The input embedding is a lookup; the LM head runs only where a token is sampled.
        self.gemm_flops_per_token = 2.0 * (arch.params_active - arch.embedding_params)
        self.lm_head_flops = 2.0 * arch.lm_head_params
        self.attention_flops_per_pair = arch.attention_flops_per_pair

        # --- rates ---------------------------------------------------------------------------
        # The engine's fractions apply to what this accelerator reaches of its datasheet figures.
        self.scale = scale or accelerator_scale(gpu.gpu_id)
        compute = eff.compute_fraction * self.scale.compute
        derate = 1.0 if self.precision.compute_dtype in ("bf16", "fp16") else eff.low_precision_compute_derate
        self.gemm_flops_s = self.tp * gpu.flops(self.precision.compute_dtype) * compute * derate
        self.attention_flops_s = self.tp * gpu.flops("bf16") * compute * eff.attention_fraction
        self.lm_head_flops_s = self.tp * gpu.flops("bf16") * compute
        self.bandwidth_bytes_s = gpu.hbm_bandwidth_bytes_s * eff.bandwidth_fraction * self.scale.bandwidth
        self.sharpness = eff.roofline_sharpness

        # --- fixed and communication costs ---------------------------------------------------
        self.fixed_overhead_s = eff.step_overhead_s + eff.layer_overhead_s * arch.layers
        self.per_sequence_overhead_s = eff.sequence_overhead_s
        self.interconnect = get_interconnect(gpu.interconnect)
        # Two all-reduces per layer (attention output, MLP output) of tokens x hidden 16-bit values.
        self.allreduces_per_step = 2 * arch.layers if self.tp > 1 else 0
        self.allreduce_bytes_per_token = arch.hidden_size * ACTIVATION_BYTES
        # The latency part of a step's communication (one token's all-reduces): the floor TP adds.
        self.comm_latency_s = float(self.comm_s(1.0))

    def comm_s(self, tokens: Num) -> Num:
        """Communication of one step computing ``tokens`` tokens: its 2 x layers all-reduces."""
        if self.tp <= 1:
            return 0.0 * tokens
        per_call = allreduce_s(self.interconnect, self.gpu.link_bandwidth_bytes_s, self.tp,
                               tokens * self.allreduce_bytes_per_token, self.eff.allreduce_latency_scale,
                               self.eff.allreduce_bandwidth_scale, self.eff.custom_allreduce_max_bytes)
        return self.allreduces_per_step * per_call

    # ------------------------------------------------------------------------------------------
    # Memory
    # ------------------------------------------------------------------------------------------
    def memory(self) -> MemoryBreakdown:
        eff = self.eff
        usable = self.gpu.memory_bytes * eff.gpu_memory_utilization
        # vLLM profiles a forward pass of max_num_batched_tokens: the MLP intermediate
        # (gate, up, activation: 3 x ffn/tp, 2 bytes) dominates; the sampler holds fp32 logits.
        ffn = self.arch.ffn_size or 4 * self.arch.hidden_size
        activations = self.max_num_batched_tokens * 3.0 * ffn / self.tp * 2.0
        activations += self.max_num_seqs * self.arch.vocab_size * 4.0
        reserve = eff.runtime_reserve_gib * GIB
        kv = usable - self.weight_bytes_per_gpu - activations - reserve
        tokens = int(max(kv, 0.0) // self.kv_bytes_per_token_per_gpu)
        return MemoryBreakdown(
            usable_gib=usable / GIB,
            weights_gib=self.weight_bytes_per_gpu / GIB,
            activations_gib=activations / GIB,
            reserve_gib=reserve / GIB,
            kv_cache_gib=max(kv, 0.0) / GIB,
            kv_capacity_tokens=tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
        )

    @property
    def kv_capacity_tokens(self) -> int:
        return self.memory().kv_capacity_tokens

    def fits(self, context_len: int) -> bool:
        """vLLM refuses to start unless one sequence of ``max_model_len`` tokens fits in the KV cache."""
        return self.kv_capacity_tokens >= context_len

    def max_batch(self, context_len: float) -> int:
        """Largest number of sequences of ``context_len`` tokens the KV cache holds at once."""
        if context_len <= 0:
            raise CapacityModelError("context length must be positive")
        return int(min(self.max_num_seqs, self.kv_capacity_tokens // math.ceil(context_len)))

    # ------------------------------------------------------------------------------------------
    # Time
    # ------------------------------------------------------------------------------------------
    def step_time_s(
        self,
        decode_seqs: Num,
        decode_context_tokens: Num,
        prefill_tokens: Num | float = 0.0,
        prefill_pairs: Num | float = 0.0,
        prefill_seqs: Num | float = 0.0,
        prefill_context_tokens: Num | float = 0.0,
    ) -> Num:
        """Time of one engine step.

        decode_seqs: sequences producing one token each; decode_context_tokens: the sum of their
        context lengths (the KV they read). prefill_tokens: prompt tokens computed in the step;
        prefill_pairs: (query, key) pairs of their causal attention; prefill_seqs: prompts that
        complete in the step (each samples its first token); prefill_context_tokens: KV tokens of
        earlier chunks of these prompts, which the step reads again (chunked prefill).
        """
        tokens = decode_seqs + prefill_tokens
        weights: Num = self.dense_bytes_per_gpu
        if self.expert_miss:
            # Each token routes to k of E experts: the step reads the experts any token touched.
            weights = weights + self.expert_bytes_per_gpu * (1.0 - self.expert_miss**tokens)
        kv_tokens = decode_context_tokens + prefill_tokens + prefill_context_tokens
        t_mem = (weights + self.kv_bytes_per_token_per_gpu * kv_tokens) / self.bandwidth_bytes_s
        t_compute = (
            self.gemm_flops_per_token * tokens / self.gemm_flops_s
            + self.attention_flops_per_pair * (decode_context_tokens + prefill_pairs) / self.attention_flops_s
            + self.lm_head_flops * (decode_seqs + prefill_seqs) / self.lm_head_flops_s
        )
        n = self.sharpness
        t_core: Num = (t_mem**n + t_compute**n) ** (1.0 / n)
        overhead = self.fixed_overhead_s + self.per_sequence_overhead_s * (decode_seqs + prefill_seqs)
        return t_core + self.comm_s(tokens) + overhead

    def __getstate__(self) -> dict[str, object]:
        """Pickled without the fast step-time closure (rebuilt on demand), e.g. for --jobs N."""
        state = dict(vars(self))
        state.pop("_step_time_fn", None)
        return state

    def step_time_fn(self) -> StepTimeFn:
        """`step_time_s` for a caller that asks millions of times (the engine emulator): the same
        float operations in the same order, so bit-identical results, at a fraction of the cost.

        The token count (``decode_seqs + prefill_tokens``) must be a scalar; the context and
        prefill arguments may be arrays. Everything that depends on the token count alone (the
        weights read, the GEMM time, the 2 x layers all-reduces: most of a scalar call's cost) is
        memoized per count: an engine asks for at most ``max_num_batched_tokens`` distinct ones."""
        if type(self).step_time_s is not ReplicaModel.step_time_s or "step_time_s" in vars(self):
            return self.step_time_s  # a subclass (or an instance) with its own formula: keep it
        fn: StepTimeFn | None = vars(self).get("_step_time_fn")
        if fn is None:  # built once per model (its memo is shared by every engine of the pool)
            fn = self._step_time_fn = self._fast_step_time()
        return fn

    def _fast_step_time(self) -> StepTimeFn:
        kvb, bw = self.kv_bytes_per_token_per_gpu, self.bandwidth_bytes_s
        attn, attn_s = self.attention_flops_per_pair, self.attention_flops_s
        lm, lm_s = self.lm_head_flops, self.lm_head_flops_s
        sharp = self.sharpness
        inv_sharp = 1.0 / sharp
        fixed, per_seq = self.fixed_overhead_s, self.per_sequence_overhead_s
        by_tokens: dict[float, tuple[float, float, float]] = {}
        # The all-reduce time of every token count a step can have, in one vectorized call: the
        # same elementwise operations as the scalar call (no transcendental function in it).
        comm_table: list[float] = np.asarray(
            self.comm_s(np.arange(self.max_num_batched_tokens + 1, dtype=np.float64)), dtype=np.float64).tolist()

        def per_tokens(tokens: float) -> tuple[float, float, float]:
            """(weight bytes read, GEMM time, communication time) of a step of ``tokens`` tokens."""
            weights: float = self.dense_bytes_per_gpu
            if self.expert_miss:
                weights = weights + self.expert_bytes_per_gpu * (1.0 - self.expert_miss**tokens)
            index = int(tokens)
            comm = comm_table[index] if index == tokens and 0 <= index < len(comm_table) else float(self.comm_s(tokens))
            entry = (weights, self.gemm_flops_per_token * tokens / self.gemm_flops_s, comm)
            by_tokens[tokens] = entry
            return entry

        def step_time(decode_seqs: float, decode_context_tokens: Num, prefill_tokens: float = 0.0,
                      prefill_pairs: Num = 0.0, prefill_seqs: float = 0.0,
                      prefill_context_tokens: Num = 0.0) -> Num:
            tokens = decode_seqs + prefill_tokens
            weights, t_gemm, t_comm = by_tokens.get(tokens) or per_tokens(tokens)
            kv_tokens = decode_context_tokens + prefill_tokens + prefill_context_tokens
            t_mem = (weights + kvb * kv_tokens) / bw
            t_compute = (t_gemm + attn * (decode_context_tokens + prefill_pairs) / attn_s
                         + lm * (decode_seqs + prefill_seqs) / lm_s)
            t_core: Num = (t_mem**sharp + t_compute**sharp) ** inv_sharp
            return t_core + t_comm + (fixed + per_seq * (decode_seqs + prefill_seqs))

        return step_time

    def decode_step_s(self, batch: Num, context_len: Num) -> Num:
        """One decode iteration of ``batch`` sequences, each holding ``context_len`` tokens."""
        return self.step_time_s(batch, batch * context_len)

    def prefill_s(self, batch: Num, prompt_len: Num) -> Num:
        """Prefill of ``batch`` prompts of ``prompt_len`` tokens in one forward pass."""
        return self.step_time_s(
            0.0 * batch,
            0.0 * batch,
            batch * prompt_len,
            batch * prompt_len * (prompt_len + 1) / 2.0,
            batch,
        )

    def ttft_batch1_s(self, prompt_len: float) -> float:
        return float(self.prefill_s(1.0, prompt_len))

    def kv_transfer_s(self, prompt_len: Num) -> Num:
        """Moving a prompt's KV cache from a prefill replica to a decode replica (disaggregated)."""
        per_gpu = prompt_len * self.kv_bytes_per_token_per_gpu
        return self.eff.kv_transfer_latency_s + per_gpu / self.eff.kv_transfer_bytes_s_per_gpu


def smallest_tp(
    arch: ModelArch,
    gpu: Accelerator,
    precision: WeightPrecision | str,
    context_len: int,
    kv_cache_dtype: str = "auto",
    efficiency: Efficiency | None = None,
    degrees: tuple[int, ...] = TP_DEGREES,
) -> int:
    """The smallest tensor-parallel degree whose weights plus one ``context_len`` sequence fit."""
    tried = []
    for tp in degrees:
        if not arch.valid_tp(tp):
            continue
        replica = ReplicaModel(arch, gpu, precision, tp, kv_cache_dtype, efficiency)
        if replica.fits(context_len):
            return tp
        tried.append(f"TP={tp}: {replica.memory().weights_gib:.1f} GiB weights per GPU")
    raise DoesNotFitError(
        f"{arch.model_id} in {replica.precision.name} does not fit on {gpu.name} "
        f"({gpu.memory_gib:.0f} GiB) with a {context_len}-token context at any TP up to {max(degrees)} "
        f"({'; '.join(tried)}); choose a larger GPU or a smaller precision"
    )
