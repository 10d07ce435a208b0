"""Sizing: the cheapest configuration that serves a demand within the SLOs and the budget.

Candidates are every GPU type offered x serving mode x tensor-parallel degree (for
disaggregated serving, a degree per pool), each with its best token budget per step. A
candidate's replicas per pool are ceil(demand / goodput per replica). The cheapest one that
meets the SLOs and the budget wins; every other candidate is kept with the reason it lost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from goodput.model.architecture import ModelArch
from goodput.model.efficiency import Efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.goodput import (
    ReplicaCapacity,
    aggregated_capacity,
    decode_capacity,
    prefill_capacity,
)
from goodput.model.hardware import Accelerator
from goodput.model.precision import check_supported, weight_precision
from goodput.model.replica import TP_DEGREES, ReplicaModel
from goodput.model.workload import SLO, Workload

MODES = ("auto", "aggregated", "disaggregated")
# Token budgets per step (vLLM --max-num-batched-tokens) tried for aggregated serving: smaller
# budgets shorten the steps that carry prompt chunks (ITL), larger ones finish prompts sooner (TTFT).
AGGREGATED_TOKEN_BUDGETS = (256, 512, 1024, 2048, 4096, 8192, 16384)
PREFILL_TOKEN_BUDGETS = (16384, 8192, 4096, 2048)
DECODE_MAX_NUM_SEQS = 1024


@dataclass(frozen=True)
class PoolPlan:
    role: str  # "aggregated", "prefill", "decode"
    tp: int
    replicas: int
    capacity: ReplicaCapacity

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas


@dataclass(frozen=True)
class Candidate:
    gpu: Accelerator
    mode: str  # "aggregated" or "disaggregated"
    pools: tuple[PoolPlan, ...]
    demand_rps: float
    ttft_ms: float  # predicted at the SLO percentile, at the planned load per replica
    itl_ms: float
    feasible: bool  # meets the SLOs at some load (and fits)
    reason: str = ""  # why it is infeasible or lost

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.gpu.usd_per_gpu_hour

    @property
    def tp_label(self) -> str:
        return "/".join(f"{p.role[0].upper()}{p.tp}" for p in self.pools) if self.mode == "disaggregated" \
            else str(self.pools[0].tp)

    @property
    def replicas_label(self) -> str:
        return "+".join(f"{p.replicas}{p.role[0].upper()}" for p in self.pools) if self.mode == "disaggregated" \
            else str(self.pools[0].replicas)

    @property
    def served_rps(self) -> float:
        """Demand this configuration can serve within the SLOs (the smallest pool's limit)."""
        return min(p.replicas * p.capacity.goodput_rps for p in self.pools)

    def pool(self, role: str) -> PoolPlan | None:
        return next((p for p in self.pools if p.role == role), None)


@dataclass(frozen=True)
class Budget:
    max_gpus: int | None = None
    max_usd_per_hour: float | None = None

    def allows(self, c: Candidate) -> bool:
        if self.max_gpus is not None and c.gpus > self.max_gpus:
            return False
        return not (self.max_usd_per_hour is not None and c.usd_per_hour > self.max_usd_per_hour + 1e-9)


@dataclass
class Plan:
    chosen: Candidate | None
    alternatives: list[Candidate]
    workload: Workload
    slo: SLO
    limited: bool = False  # chosen does not serve the whole demand: the budget binds
    message: str = ""
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (configuration, reason)

    def usd_per_million_tokens(self, candidate: Candidate | None = None) -> float | None:
        c = candidate or self.chosen
        if c is None:
            return None
        rate = min(self.workload.rate_rps, c.served_rps)
        tokens_per_hour = rate * 3600.0 * (self.workload.input_len.mean + self.workload.output_len.mean)
        return c.usd_per_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None

    def usd_per_million_output_tokens(self, candidate: Candidate | None = None) -> float | None:
        c = candidate or self.chosen
        if c is None:
            return None
        rate = min(self.workload.rate_rps, c.served_rps)
        tokens_per_hour = rate * 3600.0 * self.workload.output_len.mean
        return c.usd_per_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None


def _replicas(demand: float, capacity: ReplicaCapacity, minimum: int = 1) -> int:
    if capacity.goodput_rps <= 0:
        return 0
    # A hair of slack so a demand equal to a multiple of goodput does not round up a replica.
    return max(minimum, math.ceil(demand / capacity.goodput_rps - 1e-9))


def _best_aggregated(arch: ModelArch, gpu: Accelerator, precision: str, kv: str, tp: int,
                     w: Workload, slo: SLO, eff: Efficiency | None) -> ReplicaCapacity:
    # Goodput is unimodal in the budget (too small starves prefill and TTFT, too large stalls
    # decode steps and ITL): scan upwards and stop after two budgets in a row do worse.
    best: ReplicaCapacity | None = None
    worse = 0
    for budget in AGGREGATED_TOKEN_BUDGETS:
        r = ReplicaModel(arch, gpu, precision, tp, kv, eff, max_num_batched_tokens=budget)
        cap = aggregated_capacity(r, w, slo)
        if best is None or cap.goodput_rps > best.goodput_rps * 1.0001:
            best, worse = cap, 0
        elif best.goodput_rps > 0:
            worse += 1
            if worse == 2:
                break
    assert best is not None
    return best


def _prefill_replica(arch: ModelArch, gpu: Accelerator, precision: str, kv: str, tp: int, w: Workload,
                     eff: Efficiency | None) -> ReplicaModel | None:
    """A prefill replica with the largest token budget per step its KV cache can hold: every
    prompt token computed in a step needs its KV slot until it is sent to the decode pool."""
    longest_prompt = w.input_len.max
    for budget in PREFILL_TOKEN_BUDGETS:
        r = ReplicaModel(arch, gpu, precision, tp, kv, eff, max_num_batched_tokens=budget)
        if r.kv_capacity_tokens >= max(budget, longest_prompt):
            return r
    return None


def _point_latencies(pool: PoolPlan, demand: float, w: Workload, slo: SLO,
                     replica: ReplicaModel, first_step_s: float = 0.0) -> tuple[float, float]:
    """Predicted TTFT and ITL percentiles at the planned load per replica."""
    import numpy as np

    from goodput.model.goodput import evaluate_aggregated, evaluate_decode, evaluate_prefill

    per_replica = np.array([max(demand / pool.replicas, 1e-9)])
    if pool.role == "aggregated":
        p = evaluate_aggregated(replica, w, slo, per_replica)[0]
    elif pool.role == "decode":
        p = evaluate_decode(replica, w, slo, per_replica)[0]
    else:
        p = evaluate_prefill(replica, w, slo, per_replica, first_step_s)[0]
    return p.ttft_ms, p.itl_ms


def candidates_for_gpu(arch: ModelArch, gpu: Accelerator, precision: str, kv: str, w: Workload,
                       slo: SLO, mode: str, eff: Efficiency | None,
                       rejected: list[tuple[str, str]], tp_degrees: tuple[int, ...] = TP_DEGREES,
                       pool_tp: Mapping[str, int] | None = None,
                       context_tokens: int | None = None, min_replicas: int = 1) -> list[Candidate]:
    """Every feasible configuration on one GPU type. ``pool_tp`` pins a pool's TP degree (role ->
    TP): a running fleet is re-planned for the replicas it runs, not for a TP it does not.
    ``context_tokens``: the context a replica must hold (vLLM's --max-model-len); default: the
    workload's longest request. An observed workload's fitted tail may run past the deployment's
    max-model-len, which vLLM would reject, so that tail must not decide whether a replica fits.
    ``min_replicas``: every pool runs at least this many replicas (redundancy: one replica is a single
    point of failure), so the cost comparison is between configurations that all have it."""
    demand = w.rate_rps

    def allowed(role: str, tp: int) -> bool:
        return pool_tp is None or pool_tp.get(role, tp) == tp

    context = context_tokens or w.max_context
    fitting: list[int] = []
    for tp in tp_degrees:
        if not arch.valid_tp(tp):
            continue
        r = ReplicaModel(arch, gpu, precision, tp, kv, eff)
        if r.fits(context):
            fitting.append(tp)
        else:
            mem = r.memory()
            rejected.append((f"{gpu.gpu_id} TP={tp}",
                             f"does not fit: {mem.weights_gib:.1f} GiB weights per GPU leave room for "
                             f"{mem.kv_capacity_tokens} KV tokens < {context}-token context"))
    out: list[Candidate] = []
    if mode in ("auto", "aggregated"):
        for tp in (t for t in fitting if allowed("aggregated", t)):
            cap = _best_aggregated(arch, gpu, precision, kv, tp, w, slo, eff)
            if cap.goodput_rps <= 0:
                rejected.append((f"{gpu.gpu_id} aggregated TP={tp}", f"cannot meet the SLOs: {cap.binding}"))
                continue
            pool = PoolPlan("aggregated", tp, _replicas(demand, cap, min_replicas), cap)
            r = ReplicaModel(arch, gpu, precision, tp, kv, eff, max_num_batched_tokens=cap.max_num_batched_tokens)
            ttft, itl = _point_latencies(pool, demand, w, slo, r)
            out.append(Candidate(gpu, "aggregated", (pool,), demand, ttft, itl, True))
    if mode in ("auto", "disaggregated"):
        decodes: list[tuple[ReplicaCapacity, ReplicaModel]] = []
        for tp in (t for t in fitting if allowed("decode", t)):
            r = ReplicaModel(arch, gpu, precision, tp, kv, eff, max_num_seqs=DECODE_MAX_NUM_SEQS)
            cap = decode_capacity(r, w, slo)
            if cap.goodput_rps <= 0:
                rejected.append((f"{gpu.gpu_id} decode TP={tp}", f"cannot meet the ITL SLO: {cap.binding}"))
                continue
            decodes.append((cap, r))
        prefill_models: list[tuple[int, ReplicaModel]] = []
        for tp in (t for t in fitting if allowed("prefill", t)):
            pr_model = _prefill_replica(arch, gpu, precision, kv, tp, w, eff)
            if pr_model is None:
                rejected.append((f"{gpu.gpu_id} prefill TP={tp}",
                                 f"the KV cache cannot hold one prefill step ({min(PREFILL_TOKEN_BUDGETS)} tokens) "
                                 f"and the longest prompt ({w.input_len.max:.0f} tokens)"))
                continue
            prefill_models.append((tp, pr_model))
        best = _best_disaggregated(decodes, prefill_models, w, slo, demand, min_replicas)
        if best is not None:
            ppool, dpool, ttft, itl = best
            out.append(Candidate(gpu, "disaggregated", (ppool, dpool), demand, ttft, itl, True))
        elif decodes and prefill_models:
            rejected.append((f"{gpu.gpu_id} disaggregated",
                             "no prefill pool meets the TTFT SLO after the KV transfer and first decode step"))
    return out


# Decode replicas tried above the fewest that meet the ITL SLO: a less loaded decode pool has a
# shorter first step, which leaves more of the TTFT budget to prefill and can save prefill GPUs.
DECODE_EXTRA_REPLICAS = 2


def _best_disaggregated(decodes: list[tuple[ReplicaCapacity, ReplicaModel]],
                        prefill_models: list[tuple[int, ReplicaModel]], w: Workload, slo: SLO,
                        demand: float, min_replicas: int = 1) -> tuple[PoolPlan, PoolPlan, float, float] | None:
    """The fewest-GPU (prefill pool, decode pool) pair. A request's TTFT in disaggregated serving
    ends with its first decode step, taken at the decode pool's planned load: the prefill pool is
    sized for exactly the decode pool it is paired with, so the prediction and the sizing agree.

    Branch and bound: prefill capacity at the shortest first step of any decode option bounds
    every pairing's prefill GPUs from below, so exact capacities are computed only for pairings
    whose bound can still beat the best found."""
    options: list[tuple[PoolPlan, ReplicaModel, float]] = []
    for dcap, dr in decodes:
        fewest = _replicas(demand, dcap, min_replicas)
        for n_decode in range(fewest, fewest + DECODE_EXTRA_REPLICAS + 1):
            dpool = PoolPlan("decode", dcap.tp, n_decode, dcap)
            options.append((dpool, dr, _point_latencies(dpool, demand, w, slo, dr)[1]))
    if not options or not prefill_models:
        return None
    shortest_step_s = min(itl for _, _, itl in options) / 1e3
    lower: dict[int, int] = {}
    for tp, pr in prefill_models:
        cap = prefill_capacity(pr, w, slo, shortest_step_s)
        if cap.goodput_rps > 0:
            lower[tp] = _replicas(demand, cap, min_replicas) * tp
    pairs = sorted(((dpool.gpus + lower[tp], dpool, dr, itl, tp, pr)
                    for dpool, dr, itl in options for tp, pr in prefill_models if tp in lower),
                   key=lambda x: (x[0], x[1].tp + x[4], x[1].replicas))
    best: tuple[tuple[int, int, int], PoolPlan, PoolPlan, float, float] | None = None
    for bound, dpool, _dr, itl, tp, pr in pairs:
        if best is not None and bound > best[0][0]:
            break
        first_step_s = itl / 1e3
        pcap = prefill_capacity(pr, w, slo, first_step_s)
        if pcap.goodput_rps <= 0:
            continue
        ppool = PoolPlan("prefill", tp, _replicas(demand, pcap, min_replicas), pcap)
        rank = (ppool.gpus + dpool.gpus, ppool.tp + dpool.tp, dpool.replicas)
        if best is None or rank < best[0]:
            ttft, _ = _point_latencies(ppool, demand, w, slo, pr, first_step_s)
            best = (rank, ppool, dpool, ttft, itl)
    return None if best is None else best[1:]


def plan(arch: ModelArch, gpus: list[Accelerator], precision: str, workload: Workload, slo: SLO,
         kv_cache_dtype: str = "auto", mode: str = "auto", budget: Budget | None = None,
         efficiency: Efficiency | None = None, tp_degrees: tuple[int, ...] = TP_DEGREES,
         pool_tp: Mapping[str, int] | None = None, context_tokens: int | None = None,
         min_replicas: int = 1) -> Plan:
    """The cheapest configuration meeting the SLOs within the budget, and why the others lost.
    ``pool_tp``, ``context_tokens``, ``min_replicas``: see `candidates_for_gpu`."""
    if min_replicas < 1:
        raise CapacityModelError(f"min_replicas must be at least 1, got {min_replicas}")
    if mode not in MODES:
        raise CapacityModelError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if not gpus:
        raise CapacityModelError("no GPU type to plan for")
    budget = budget or Budget()
    prec = weight_precision(precision)
    rejected: list[tuple[str, str]] = []
    candidates: list[Candidate] = []
    for gpu in gpus:
        try:
            check_supported(prec, gpu)
        except CapacityModelError as exc:
            rejected.append((gpu.gpu_id, str(exc)))
            continue
        candidates += candidates_for_gpu(arch, gpu, prec.name, kv_cache_dtype, workload, slo, mode,
                                         efficiency, rejected, tp_degrees, pool_tp,
                                         context_tokens, min_replicas)
    if not candidates:
        reasons = "; ".join(f"{k}: {v}" for k, v in rejected) or "no configuration"
        return Plan(None, [], workload, slo, message=f"no configuration can serve this workload: {reasons}",
                    rejected=rejected)

    def cost_key(c: Candidate) -> tuple[float, int, int, int]:
        # Cheapest first; then fewer GPUs; then aggregated (simpler to run); then smaller TP.
        return (round(c.usd_per_hour, 6), c.gpus, 0 if c.mode == "aggregated" else 1, c.pools[0].tp)

    ranked = sorted(candidates, key=cost_key)
    within = [c for c in ranked if budget.allows(c)]
    chosen: Candidate | None
    if within:
        chosen = within[0]
        limited = False
        message = (f"{chosen.mode} on {chosen.gpu.name}: {chosen.gpus} GPUs, "
                   f"${chosen.usd_per_hour:.2f}/h serves {workload.rate_rps:g} req/s within the SLOs")
    else:
        # Over budget: the configuration serving the most demand within it, scaled down.
        chosen, limited = _largest_within_budget(ranked, budget), True
        message = (f"the cheapest plan meeting the demand costs ${ranked[0].usd_per_hour:.2f}/h on "
                   f"{ranked[0].gpus} GPUs, over the budget; within it "
                   + (f"{chosen.gpus} GPUs serve {chosen.served_rps:.2f} of {workload.rate_rps:g} req/s"
                      if chosen else "no configuration fits"))
    alternatives = []
    for c in ranked:
        if c is chosen:
            continue
        if not budget.allows(c):
            why = f"over budget ({c.gpus} GPUs, ${c.usd_per_hour:.2f}/h)"
        elif chosen is not None:
            extra = (c.usd_per_hour / chosen.usd_per_hour - 1.0) * 100 if chosen.usd_per_hour else 0.0
            why = f"costs {extra:.0f}% more" if extra > 0.05 else "same cost, more GPUs or more complex"
        else:
            why = ""
        alternatives.append(Candidate(c.gpu, c.mode, c.pools, c.demand_rps, c.ttft_ms, c.itl_ms, c.feasible, why))
    return Plan(chosen, alternatives, workload, slo, limited, message, rejected)


def _largest_within_budget(ranked: list[Candidate], budget: Budget) -> Candidate | None:
    best: Candidate | None = None
    for c in ranked:
        scaled = _scale_to_budget(c, budget)
        if scaled is not None and (best is None or scaled.served_rps > best.served_rps + 1e-9
                                   or (abs(scaled.served_rps - best.served_rps) <= 1e-9
                                       and scaled.usd_per_hour < best.usd_per_hour)):
            best = scaled
    return best


def _scale_to_budget(c: Candidate, budget: Budget) -> Candidate | None:
    """Shrink every pool in proportion until the configuration fits the budget."""
    pools = list(c.pools)
    while not budget.allows(Candidate(c.gpu, c.mode, tuple(pools), c.demand_rps, c.ttft_ms, c.itl_ms, True)):
        # Remove a replica from the pool with the most spare capacity relative to its share.
        shrinkable = [p for p in pools if p.replicas > 1]
        if not shrinkable:
            return None
        victim = max(shrinkable, key=lambda p: (p.replicas - 1) * p.capacity.goodput_rps)
        pools = [PoolPlan(p.role, p.tp, p.replicas - 1, p.capacity) if p is victim else p for p in pools]
    return Candidate(c.gpu, c.mode, tuple(pools), c.demand_rps, c.ttft_ms, c.itl_ms, True,
                     "limited by budget")
