"""From an InferenceDeployment spec and a demand to a recommended configuration.

Pure: no I/O, no clock. `resolve` turns the spec into capacity-model objects (raising
CapacityModelError with a message a person can act on); `recommend` sizes the pools for a
demand, applies the per-pool min/max and the budget, and says why.

`recommend` is memoized (RECOMMEND_CACHE, bounded LRU): every timer tick of a resource whose spec
and demand did not change asks the same question again, and the plan search is nearly all of a
reconcile's CPU time. The key covers every input (the spec's JSON, the resolved spec, the demand's
distributions, the efficiency factors), and a Recommendation is immutable, so a hit returns what a
fresh computation would. benchmarks/scale.py measures the difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from goodput.api.v1alpha1 import InferenceDeploymentSpec, PoolScaling
from goodput.model.architecture import MLA_LATENT_ELEMENTS, ModelArch, get_model, kv_bytes_per_token_16bit
from goodput.model.efficiency import Efficiency, calibrated_efficiency
from goodput.model.errors import CapacityModelError, DoesNotFitError
from goodput.model.hardware import Accelerator, custom_accelerator, get_accelerator
from goodput.model.precision import check_supported, weight_precision
from goodput.model.replica import TP_DEGREES, ReplicaModel
from goodput.model.serving import (
    Checkpoint,
    checkpoint_by_name,
    checkpoint_for,
    context_length,
    known_precisions,
    vendor_of,
)
from goodput.model.sizing import Budget, Candidate, Plan, plan
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.planner import engine_args

ROLES = ("aggregated", "prefill", "decode")


@dataclass(frozen=True)
class ResolvedSpec:
    arch: ModelArch
    gpu: Accelerator
    precision: str
    kv_cache_dtype: str
    slo: SLO
    hugging_face_name: str
    served_model_name: str
    tp_degrees: tuple[int, ...]
    # spec.engine's calibrated factors: what every ReplicaModel of this resource is built with
    efficiency: Efficiency = dataclasses.field(default_factory=calibrated_efficiency)
    # (role, TP) pairs pinned for a running fleet (see autoscale.recommend_keeping); a tuple keeps this hashable
    pool_tp: tuple[tuple[str, int], ...] | None = None
    vendor: str = "nvidia"
    # The checkpoint vLLM loads (its precision is `precision`: the weight bytes planned are its bytes).
    checkpoint: Checkpoint | None = None
    max_model_len: int = 0


def _arch(spec: InferenceDeploymentSpec) -> ModelArch:
    m = spec.model
    if m.architecture is None:
        assert m.id is not None  # admission (CEL) guarantees one of the two
        return get_model(m.id)
    a = m.architecture
    kv_heads = a.kv_heads or a.attention_heads
    head_dim = a.head_dim or a.hidden_size // a.attention_heads
    kv_bytes = kv_bytes_per_token_16bit(a.layers, kv_heads, head_dim,
                                        mla_latent=MLA_LATENT_ELEMENTS if a.attention == "MLA" else None)
    return ModelArch(
        model_id=m.id or (m.hugging_face_name or "custom"),
        hf_name=m.hugging_face_name or "",
        params_total=a.params_total_b * 1e9,
        params_active=(a.params_active_b or a.params_total_b) * 1e9,
        layers=a.layers,
        hidden_size=a.hidden_size,
        attention_heads=a.attention_heads,
        kv_heads=0 if a.attention == "MLA" else kv_heads,
        head_dim=head_dim,
        ffn_size=a.ffn_size,
        vocab_size=a.vocab_size,
        attention=a.attention,
        kv_bytes_per_token_16bit=kv_bytes,
        experts=a.experts or 0,
        experts_per_token=a.experts_per_token or 0,
        tied_embeddings=a.tied_embeddings,
        notes="inline architecture",
    )


def _gpu(spec: InferenceDeploymentSpec) -> Accelerator:
    acc = spec.accelerator
    if acc.custom is not None:
        c = acc.custom
        if acc.price_per_gpu_hour is None:
            raise CapacityModelError(f"custom accelerator {acc.gpu!r} needs accelerator.pricePerGpuHour")
        return custom_accelerator(
            acc.gpu, memory_gib=c.memory_gib, hbm_bandwidth_tb_s=c.hbm_bandwidth_tb_s, bf16_tflops=c.bf16_tflops,
            fp8_tflops=c.fp8_tflops or 0.0, fp4_tflops=c.fp4_tflops or 0.0, int8_tops=c.int8_tops or 0.0,
            link_gb_s_bidirectional=c.link_gb_s_bidirectional, usd_per_gpu_hour=acc.price_per_gpu_hour)
    gpu = get_accelerator(acc.gpu)
    if acc.price_per_gpu_hour is not None:
        gpu = gpu.with_price(acc.price_per_gpu_hour, "spec.accelerator.pricePerGpuHour")
    return gpu


def resolve(spec: InferenceDeploymentSpec, name: str) -> ResolvedSpec:
    """Everything admission cannot check: catalog ids, hardware support, that the model fits."""
    arch = _arch(spec)
    gpu = _gpu(spec)
    precision = weight_precision(spec.precision.weights)
    check_supported(precision, gpu)
    vendor = gpu_vendor(spec)
    checkpoint = choose_checkpoint(spec, arch, precision.name)
    degrees = (spec.scaling.tensor_parallel,) if spec.scaling.tensor_parallel else TP_DEGREES
    context = max_model_len(spec)
    efficiency = calibrated_efficiency(spec.engine)
    if not any(arch.valid_tp(tp) and ReplicaModel(arch, gpu, precision, tp, spec.precision.kv_cache,
                                                  efficiency).fits(context)
               for tp in degrees):
        tp_text = f"TP={degrees[0]}" if len(degrees) == 1 else f"any TP up to {max(degrees)}"
        raise DoesNotFitError(
            f"{arch.model_id} in {precision.name} does not fit on {gpu.name} ({gpu.memory_gib:.0f} GiB) with a "
            f"{context}-token context at {tp_text} (vLLM needs the KV cache of one full-length sequence); choose a "
            "larger GPU, a smaller precision or a shorter spec.model.maxModelLen")
    return ResolvedSpec(
        arch=arch, gpu=gpu, precision=precision.name, kv_cache_dtype=spec.precision.kv_cache,
        slo=SLO(spec.slo.ttft_ms, spec.slo.itl_ms, spec.slo.percentile),
        hugging_face_name=checkpoint.hf_name,
        served_model_name=spec.model.served_model_name or name,
        tp_degrees=degrees,
        vendor=vendor,
        checkpoint=checkpoint,
        max_model_len=context,
        efficiency=efficiency,
    )


def gpu_vendor(spec: InferenceDeploymentSpec) -> str:
    """The spec's vendor, else the catalog GPU's, else NVIDIA (a custom accelerator)."""
    facts = vendor_of(spec.accelerator.gpu)
    return spec.accelerator.vendor or (facts.vendor if facts is not None else "nvidia")


def _same_weights(a: str, b: str) -> bool:
    return a == b or {a, b} <= {"bf16", "fp16"}  # vLLM casts between the two 16-bit types with --dtype


def choose_checkpoint(spec: InferenceDeploymentSpec, arch: ModelArch, precision: str) -> Checkpoint:
    """The checkpoint vLLM loads: spec.model.huggingFaceName, else the catalog's for the precision.
    A named checkpoint the catalog knows in another precision, or a precision the catalog has no
    checkpoint for, is an error the user can fix (Degraded=True with this message)."""
    given = spec.model.hugging_face_name
    if given:
        known = checkpoint_by_name(given)
        if known is None:  # trusted to hold `precision` weights (vLLM reads its quantization_config)
            return Checkpoint(arch.model_id, precision, given, "", "spec.model.huggingFaceName")
        if _same_weights(known.precision, precision):
            return known
        online = checkpoint_for(known.model_id, precision)
        if known.precision in ("bf16", "fp16") and online is not None and online.hf_name == known.hf_name:
            return online
        raise CapacityModelError(
            f"spec.model.huggingFaceName {given} holds {known.precision} weights, but spec.precision.weights is "
            f"{precision}: set precision.weights to {known.precision}, or name a {precision} checkpoint")
    found = checkpoint_for(arch.model_id, precision)
    if found is None:
        have = known_precisions(arch.model_id)
        raise CapacityModelError(
            f"no {precision} checkpoint of {arch.model_id} is known"
            + (f" (the catalog has {', '.join(have)})" if have else "")
            + f": set spec.model.huggingFaceName to a pre-quantized {precision} checkpoint of "
            f"{arch.hf_name or arch.model_id}, or choose another spec.precision.weights")
    return found


def _lengths(mean: float, p99: float | None) -> LengthDistribution:
    return LengthDistribution.fixed(mean) if p99 is None else LengthDistribution.lognormal(mean, p99)


def hinted_workload(spec: InferenceDeploymentSpec) -> Workload:
    """The demand from the spec's workload hints, used before live metrics exist."""
    h = spec.workload
    return Workload(h.request_rate, _lengths(h.input_tokens.mean, h.input_tokens.p99),
                    _lengths(h.output_tokens.mean, h.output_tokens.p99), h.prefix_cache_hit_rate)


def model_context_length(spec: InferenceDeploymentSpec) -> int | None:
    """The model's own context length (max_position_embeddings), when known."""
    a = spec.model.architecture
    if a is not None:
        return a.max_position_embeddings
    try:
        return context_length(get_model(spec.model.id or "").model_id)
    except CapacityModelError:  # an unknown id: resolve() says so
        return None


def max_model_len(spec: InferenceDeploymentSpec) -> int:
    """--max-model-len: the spec's cap, else the model's context length (what vLLM serves without
    the flag), else (an inline architecture without maxPositionEmbeddings) the hinted workload's
    longest request rounded up to 1024."""
    if spec.model.max_model_len:
        return spec.model.max_model_len
    context = model_context_length(spec)
    if context:
        return context
    return int(math.ceil(hinted_workload(spec).max_context / 1024.0) * 1024)


@dataclass(frozen=True)
class PoolTarget:
    role: str
    tp: int
    replicas: int
    max_num_batched_tokens: int
    max_num_seqs: int
    goodput_rps: float  # per replica
    limit: str  # what stops one replica from serving more
    clamped: str = ""  # non-empty when min/max replicas overrode the model


@dataclass(frozen=True)
class Recommendation:
    mode: str
    pools: tuple[PoolTarget, ...]
    gpus: int
    usd_per_hour: float
    usd_per_million_tokens: float | None
    predicted_ttft_ms: float
    predicted_itl_ms: float
    demand_rps: float
    served_rps: float
    limited: str  # non-empty when the budget or max replicas keep the plan below the demand
    summary: str

    def pool(self, role: str) -> PoolTarget | None:
        return next((p for p in self.pools if p.role == role), None)


def _clamp(replicas: int, bounds: PoolScaling) -> tuple[int, str]:
    if replicas < bounds.min_replicas:
        return bounds.min_replicas, f"raised to minReplicas {bounds.min_replicas} from {replicas}"
    if replicas > bounds.max_replicas:
        return bounds.max_replicas, f"capped at maxReplicas {bounds.max_replicas} from {replicas}"
    return replicas, ""


DEFAULT_CACHE_SIZE = 4096  # recommendations (~1 KiB each): a few per resource for thousands of resources


class RecommendationCache:
    """A bounded, thread-safe LRU memo for `recommend` (kopf runs sync handlers in threads)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[bytes, Recommendation] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> Recommendation | None:
        with self._lock:
            rec = self._data.get(key)
            if rec is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return rec

    def put(self, key: bytes, rec: Recommendation) -> None:
        with self._lock:
            if self.maxsize <= 0:
                return
            self._data[key] = rec
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def resize(self, maxsize: int) -> None:
        """0 switches the cache off (every call computes)."""
        with self._lock:
            self.maxsize = maxsize
            while len(self._data) > max(maxsize, 0):
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


RECOMMEND_CACHE = RecommendationCache(DEFAULT_CACHE_SIZE)


def _cache_key(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, demand: Workload,
               efficiency: Efficiency | None) -> bytes:
    """A digest of everything `recommend` reads. Frozen dataclasses' reprs list every field (floats
    round-trip exactly); the length distributions go in as their raw arrays. The digest (20 bytes)
    keeps the cache small whatever the specs hold."""
    h = hashlib.blake2b(digest_size=20)
    h.update(spec.model_dump_json().encode())
    # The names vLLM is told are not read: resources differing only by name share an entry.
    h.update(repr(dataclasses.replace(resolved, hugging_face_name="", served_model_name="")).encode())
    h.update(repr(efficiency).encode())
    h.update(repr((demand.rate_rps, demand.prefix_cache_hit_rate, demand.arrival_scv)).encode())
    for dist in (demand.input_len, demand.output_len):
        h.update(dist.values.tobytes())
        h.update(b"|")
        h.update(dist.weights.tobytes())
        h.update(b"|")
    return h.digest()


def recommend(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, demand: Workload,
              efficiency: Efficiency | None = None) -> Recommendation:
    """The cheapest configuration for `demand` within the spec's bounds (memoized; see above)."""
    if RECOMMEND_CACHE.maxsize <= 0:
        return _recommend(spec, resolved, demand, efficiency)
    key = _cache_key(spec, resolved, demand, efficiency)
    cached = RECOMMEND_CACHE.get(key)
    if cached is not None:
        return cached
    rec = _recommend(spec, resolved, demand, efficiency)  # raises for no plan: errors are not cached
    RECOMMEND_CACHE.put(key, rec)
    return rec


def _recommend(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, demand: Workload,
               efficiency: Efficiency | None) -> Recommendation:
    budget = Budget(spec.scaling.max_gpus, spec.scaling.max_cost_per_hour)
    result: Plan = plan(resolved.arch, [resolved.gpu], resolved.precision, demand, resolved.slo,
                        resolved.kv_cache_dtype, spec.mode, budget, efficiency=efficiency or resolved.efficiency,
                        tp_degrees=resolved.tp_degrees,
                        pool_tp=dict(resolved.pool_tp) if resolved.pool_tp is not None else None,
                        context_tokens=max_model_len(spec))
    chosen: Candidate | None = result.chosen
    if chosen is None:
        raise CapacityModelError(result.message)
    pools = []
    clamp_notes = []
    for p in chosen.pools:
        replicas, note = _clamp(p.replicas, getattr(spec.scaling, p.role))
        if note:
            clamp_notes.append(f"{p.role} {note}")
        cap = p.capacity
        pools.append(PoolTarget(p.role, p.tp, replicas, cap.max_num_batched_tokens, cap.max_num_seqs,
                                cap.goodput_rps, cap.binding, note))
    gpus = sum(p.tp * p.replicas for p in pools)
    usd = gpus * resolved.gpu.usd_per_gpu_hour
    served = min((p.replicas * p.goodput_rps for p in pools), default=0.0)
    limited = ""
    if result.limited:
        limited = result.message
    elif served + 1e-9 < demand.rate_rps:
        limited = f"maxReplicas keeps capacity at {served:.2f} of {demand.rate_rps:g} req/s"
    tokens_per_hour = min(demand.rate_rps, served) * 3600 * (demand.input_len.mean + demand.output_len.mean)
    per_million = usd / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None
    parts = [f"{p.replicas}×{p.role} TP{p.tp} (goodput {p.goodput_rps:.2f} req/s each, then {p.limit})"
             for p in pools]
    summary = (f"{chosen.mode} on {resolved.gpu.name}: " + ", ".join(parts)
               + f" for {demand.rate_rps:g} req/s at TTFT {resolved.slo.label} ≤ {resolved.slo.ttft_ms:g} ms, "
               f"ITL ≤ {resolved.slo.itl_ms:g} ms")
    if clamp_notes:
        summary += "; " + "; ".join(clamp_notes)
    rec = Recommendation(chosen.mode, tuple(pools), gpus, usd, per_million, chosen.ttft_ms, chosen.itl_ms,
                         demand.rate_rps, served, limited, summary)
    # --max-num-seqs for the range the fleet scales over, not the batch of this one load.
    return engine_args.for_load(rec, resolved, demand, efficiency or calibrated_efficiency())
