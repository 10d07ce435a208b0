"""vLLM engine arguments for the load a fleet serves over its range, and when a rollout pays for itself.

Pure.

**--max-num-seqs.** The plan's goodput point is one load per replica. A fleet that scales meets
other loads: while new replicas start, each running one takes more than its share; when a burst
arrives faster than a cold start, all of them do. Clipped to the batch of the planned point
(the capacity model's goodput batch x 1.25), a replica queues the excess and TTFT explodes while
its ITL still has room. So the cap is the largest batch a replica still serves within the ITL
SLO: its decode step at that batch meets the ITL target, its KV cache holds the batch with the
model's 10% headroom, and in an aggregated pool the decodes leave half of the token budget the
planned point leaves for prompts (or prefill would starve exactly when the queue builds). Never
below the plan's own value; at most vLLM's default 256 for an aggregated or prefill pool, 1024 for
a decode pool. A prefill pool's cap is the prompts its token budget holds in one step.

**--max-num-batched-tokens** stays the plan's (the budget that maximizes goodput for the observed
length mix), raised to --max-num-seqs where that is larger (vLLM refuses a smaller budget).

**On a running fleet** the arguments are kept (changing them restarts every pod) unless a
rollout pays for itself:

* the running --max-num-seqs is the limit the pool runs into: the observed batch per replica is at
  it and requests wait (the engine queues what the SLOs would let it serve); or
* the running arguments lose at least `ROLLOUT_MIN_GAIN` of goodput per replica against the ones
  for this load, and the GPU-time the fewer replicas save over `ROLLOUT_PAYBACK_S` exceeds what
  the rollout costs (every replica replaced once: its TP x the cold start of the new pod).

Only once the case has held for a whole scale-down window (at least `ROLLOUT_EVIDENCE_S`), not
more often than once per `ROLLOUT_COOLDOWN_S`, and never during a metrics outage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from goodput.model.efficiency import Efficiency
from goodput.model.goodput import KV_HEADROOM, aggregated_capacity, decode_capacity
from goodput.model.replica import DEFAULT_MAX_NUM_SEQS, ReplicaModel
from goodput.model.sizing import DECODE_MAX_NUM_SEQS
from goodput.model.workload import Workload
from goodput.planner.observation import PoolMetrics

if TYPE_CHECKING:  # recommend applies `for_load` to every plan it makes
    from goodput.planner.recommend import PoolTarget, Recommendation, ResolvedSpec

ROLLOUT_MIN_GAIN = 0.15
ROLLOUT_PAYBACK_S = 3600.0
ROLLOUT_COOLDOWN_S = 1800.0
ROLLOUT_EVIDENCE_S = 300.0  # the case for a rollout holds this long (or the scale-down window) first
SEQS_ROUNDING = 8
BATCH_AT_CAP = 0.95  # the observed batch per replica counts as "at the cap" from this share of it


def _model(resolved: ResolvedSpec, pool: PoolTarget, eff: Efficiency, max_num_seqs: int) -> ReplicaModel:
    return ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, pool.tp, resolved.kv_cache_dtype, eff,
                        max_num_seqs=max_num_seqs, max_num_batched_tokens=max(pool.max_num_batched_tokens, 1))


def seqs_cap(role: str) -> int:
    return DECODE_MAX_NUM_SEQS if role == "decode" else DEFAULT_MAX_NUM_SEQS


def max_batch_within_itl(r: ReplicaModel, workload: Workload, itl_ms: float, upper: int) -> int:
    """The largest batch whose decode step meets the ITL target and whose KV fits with headroom."""
    context = workload.input_len.mean + workload.output_len.mean_square / (2.0 * max(workload.output_len.mean, 1.0))
    kv = int(KV_HEADROOM * r.kv_capacity_tokens // max(context, 1.0))
    lo, hi = 1, max(min(upper, kv), 1)
    if float(r.decode_step_s(float(hi), context)) * 1e3 <= itl_ms:
        return hi
    if float(r.decode_step_s(1.0, context)) * 1e3 > itl_ms:
        return 1
    while hi - lo > 1:  # the step grows with the batch: bisection
        mid = (lo + hi) // 2
        if float(r.decode_step_s(float(mid), context)) * 1e3 <= itl_ms:
            lo = mid
        else:
            hi = mid
    return lo


def seqs_for_load(resolved: ResolvedSpec, pool: PoolTarget, workload: Workload, eff: Efficiency) -> int:
    """--max-num-seqs for the range the pool scales over (see the module docstring)."""
    cap = seqs_cap(pool.role)
    budget = pool.max_num_batched_tokens
    if pool.role == "prefill":
        computed = max(workload.input_len.mean * (1.0 - workload.prefix_cache_hit_rate), 1.0)
        want = math.ceil(budget / computed)
    else:
        r = _model(resolved, pool, eff, cap)
        want = max_batch_within_itl(r, workload, resolved.slo.itl_ms, cap)
        if pool.role == "aggregated":
            planned_batch = pool.max_num_seqs / 1.25  # the plan's goodput batch (capacity.max_num_seqs)
            want = min(want, int(budget - max(budget - planned_batch, 0.0) / 2.0))
    rounded = max(SEQS_ROUNDING, want // SEQS_ROUNDING * SEQS_ROUNDING)
    return int(min(max(rounded, pool.max_num_seqs), max(cap, pool.max_num_seqs)))


def for_load(rec: Recommendation, resolved: ResolvedSpec, workload: Workload, eff: Efficiency) -> Recommendation:
    """The recommendation with every pool's --max-num-seqs chosen for its range."""
    pools = []
    for p in rec.pools:
        seqs = seqs_for_load(resolved, p, workload, eff)
        pools.append(dataclasses.replace(p, max_num_seqs=seqs,
                                         max_num_batched_tokens=max(p.max_num_batched_tokens, seqs)))
    return dataclasses.replace(rec, pools=tuple(pools))


# --- a running fleet -----------------------------------------------------------------------------
def goodput_with_args(resolved: ResolvedSpec, pool: PoolTarget, workload: Workload, eff: Efficiency,
                      budget: int, seqs: int) -> float | None:
    """Goodput per replica of an aggregated or decode pool with given engine arguments (None for a
    prefill pool: one prompt at a time in the model, whatever the arguments)."""
    if pool.role == "prefill":
        return None
    r = ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, pool.tp, resolved.kv_cache_dtype, eff,
                     max_num_seqs=seqs, max_num_batched_tokens=max(budget, seqs))
    cap = aggregated_capacity(r, workload, resolved.slo) if pool.role == "aggregated" else \
        decode_capacity(r, workload, resolved.slo)
    return cap.goodput_rps


@dataclass(frozen=True)
class Rollout:
    role: str
    args: tuple[int, int]  # (max_num_batched_tokens, max_num_seqs) to roll out
    message: str


def changed_args(running: tuple[int, int], wanted: tuple[int, int]) -> str:
    parts = [f"{flag} {a}→{b}" for flag, a, b in (("--max-num-batched-tokens", running[0], wanted[0]),
                                                  ("--max-num-seqs", running[1], wanted[1])) if a != b]
    return ", ".join(parts)


def batch_at_cap(pm: PoolMetrics | None, seqs: int) -> str:
    """Non-empty when the observed pool runs into its --max-num-seqs with requests waiting."""
    if pm is None or not pm.pods_reporting or pm.running is None:
        return ""
    running = pm.running / pm.pods_reporting
    waiting = (pm.waiting or 0.0) / pm.pods_reporting
    if running >= BATCH_AT_CAP * seqs and waiting >= 1.0:
        return f"--max-num-seqs {seqs} caps the batch ({running:.1f} running and {waiting:.1f} waiting per replica)"
    return ""


def rollout_gain(resolved: ResolvedSpec, pool: PoolTarget, workload: Workload, eff: Efficiency,
                 running: tuple[int, int], replicas: int, cold_start_s: float, demand_rps: float) -> str:
    """Non-empty when the arguments for the load save more GPU-time than their rollout costs."""
    old = goodput_with_args(resolved, pool, workload, eff, *running)
    new = goodput_with_args(resolved, pool, workload, eff, pool.max_num_batched_tokens, pool.max_num_seqs)
    if old is None or new is None or not new > 0 or old >= new * (1.0 - ROLLOUT_MIN_GAIN):
        return ""
    before = math.ceil(demand_rps / old - 1e-9) if old > 0 else replicas
    after = math.ceil(demand_rps / new - 1e-9)
    saved_gpu_s = (before - after) * pool.tp * ROLLOUT_PAYBACK_S
    cost_gpu_s = max(replicas, 1) * pool.tp * cold_start_s
    if saved_gpu_s <= cost_gpu_s:
        return ""
    return (f"the running arguments serve {old:.2f} req/s per replica, these {new:.2f}: {before}→{after} replicas "
            f"saves {saved_gpu_s / 3600:.1f} GPU-hours over {ROLLOUT_PAYBACK_S / 3600:g} h, more than the rollout's "
            f"{cost_gpu_s / 3600:.2f}")
