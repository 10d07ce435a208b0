"""Goodput: the largest request rate one replica serves with the SLO percentile of TTFT and
inter-token latency (ITL) inside their targets.

Every evaluation is vectorized over a grid of candidate rates, so finding a goodput costs a
few numpy passes rather than a loop of scalar model calls.

Aggregated replica (vLLM continuous batching with chunked prefill), at per-replica rate lambda:

* ``aggregated_steady_state`` gives everything at a running batch B explicitly: the prompt tokens
  each step must absorb, B * E[prompt, after prefix-cache hits] / E[output], the step times and,
  by Little's law, the rate B / (E[output] * mean step). A rate is inverted to its batch by
  bisection. ``validate`` predicts closed-loop and offline measurements with the same function.
* A fraction f of steps carries a prefill chunk (slower); the rest decode only. Tokens emitted
  in chunk steps see the chunk step's latency, so the ITL percentile is the chunk step once
  f exceeds 1 - percentile.
* Prompts are served first come, first served, through the budget of prompt tokens per step
  left after the decode tokens: an M/G/1 queue (Pollaczek-Khinchine mean, exponential tail),
  and TTFT = wait + own prefill, its percentile taken over the prompt-length distribution.
* Limits: the batch fits in the KV cache and in max_num_seqs; prefill demand fits the budget.

Disaggregated: a prefill replica is an M/G/1 server of whole prompts, whose TTFT adds the KV
transfer and the first decode step; a decode replica runs decode-only steps (no chunk
interference, so its ITL is the decode step at its batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from goodput.model.replica import ReplicaModel
from goodput.model.workload import SLO, LengthDistribution, Workload

FloatArray = npt.NDArray[np.float64]
# Running close to full KV cache triggers preemptions: keep a margin.
KV_HEADROOM = 0.90


@dataclass(frozen=True)
class OperatingPoint:
    """Predicted behaviour of one replica at one per-replica request rate."""

    rate_rps: float
    batch: float
    step_ms: float
    ttft_ms: float  # at the SLO percentile
    itl_ms: float  # at the SLO percentile
    kv_usage: float  # fraction of the KV cache in use
    prefill_utilization: float
    limit: str  # "" when every constraint holds, else what fails

    @property
    def ok(self) -> bool:
        return not self.limit


@dataclass(frozen=True)
class ReplicaCapacity:
    role: str  # "aggregated", "prefill" or "decode"
    tp: int
    max_num_batched_tokens: int
    goodput_rps: float
    at_goodput: OperatingPoint
    at_zero_load: OperatingPoint
    binding: str  # the constraint that stops a higher rate, in words

    @property
    def max_num_seqs(self) -> int:
        return max(8, int(math.ceil(self.at_goodput.batch * 1.25 / 8.0) * 8))


def _waiting_quantile(
    rate: FloatArray, service: FloatArray, extra: FloatArray, weights: FloatArray, q: float,
    arrival_scv: float = 1.0,
) -> tuple[FloatArray, FloatArray]:
    """Quantile q of wait + extra_i in a G/G/1 queue with per-class service times.

    rate: (L,); service, extra: (L, K); weights: (K,). Returns (quantile (L,), utilization (L,)).
    The wait is 0 with probability 1 - rho, else exponential with the Pollaczek-Khinchine mean
    scaled by Kingman's (ca² + cs²) / (1 + cs²): with Poisson arrivals (ca² = 1) exactly M/G/1;
    burstier arrivals wait longer at the same utilization.
    """
    es = service @ weights
    es2 = (service**2) @ weights
    rho = rate * es
    stable = rho < 1.0
    safe_rho = np.where(stable, rho, 0.5)
    # 1 + cs² = E[S²] / E[S]²; the factor is 1 for any service distribution when ca² = 1.
    one_plus_cs2 = es2 / np.maximum(es**2, 1e-30)
    kingman = (arrival_scv + one_plus_cs2 - 1.0) / one_plus_cs2
    mean_wait = np.where(stable, kingman * rate * es2 / (2.0 * (1.0 - safe_rho)), np.inf)
    # Tail rate of the conditional exponential.
    theta = np.where(stable & (mean_wait > 0), safe_rho / np.maximum(mean_wait, 1e-30), 1e30)
    target = 1.0 - q
    # Bracket: the wait's own quantile bounds the answer from above once added to the largest
    # extra; the smallest extra bounds it from below.
    wait_q = np.where(safe_rho > target, np.log(np.maximum(safe_rho, target) / target) / theta, 0.0)
    lo = np.min(extra, axis=1)
    hi = np.max(extra, axis=1) + np.where(stable, wait_q, 0.0)
    for _ in range(22):  # the bracket is at most seconds wide: 2^-22 of it is about a microsecond
        mid = (lo + hi) / 2.0
        slack = mid[:, None] - extra
        tail = np.where(slack < 0, 1.0, rho[:, None] * np.exp(-theta[:, None] * np.maximum(slack, 0.0)))
        exceed = tail @ weights
        too_low = exceed > target
        lo = np.where(too_low, mid, lo)
        hi = np.where(too_low, hi, mid)
    return np.where(stable, hi, np.inf), rho


@dataclass(frozen=True)
class RequestShape:
    """Per-workload constants of the aggregated and decode models."""

    prompt: FloatArray  # prompt tokens computed per request class (after prefix-cache hits)
    inputs: FloatArray  # prompt tokens per request class (what attention spans)
    weights: FloatArray
    mean_prompt: float
    token_weighted_prompt: float
    mean_input: float
    mean_out: float
    context: float  # time-averaged context of a running sequence

    @classmethod
    def of(cls, w: Workload) -> RequestShape:
        prompt = w.input_len.values * (1.0 - w.prefix_cache_hit_rate)
        weights = w.input_len.weights
        mean_prompt = float(prompt @ weights)
        mean_out = w.output_len.mean
        return cls(prompt, w.input_len.values, weights, mean_prompt,
                   float((prompt**2) @ weights) / max(mean_prompt, 1e-9), w.input_len.mean, mean_out,
                   # Longer outputs stay longer in the batch: weight contexts by time spent.
                   w.input_len.mean + w.output_len.mean_square / (2.0 * mean_out))

    @classmethod
    def fixed(cls, input_len: float, output_len: float) -> RequestShape:
        """Every request alike (the published benchmarks)."""
        return cls.of(Workload(1.0, LengthDistribution.fixed(input_len), LengthDistribution.fixed(output_len)))


def sustainable_batch(r: ReplicaModel, shape: RequestShape) -> float:
    """The largest running batch whose prompts the token budget keeps up with: each step must
    absorb batch x E[prompt]/E[output] prompt tokens beside its batch decode tokens."""
    return float(r.max_num_batched_tokens) / (1.0 + shape.mean_prompt / max(shape.mean_out, 1.0))


def aggregated_steady_state(r: ReplicaModel, shape: RequestShape, batch: FloatArray) -> dict[str, FloatArray]:
    """Steady state of continuous batching with chunked prefill at a mean running batch ``batch``.

    The one formula both the planner (goodput of an aggregated replica) and ``validate``
    (closed-loop and offline rows) use. Given the batch, everything is explicit: each output
    token brings E[prompt]/E[output] prompt tokens, so steps must absorb batch x E[prompt]/E[output]
    of them, in chunks of at most the token budget left after the decode tokens; a fraction of
    steps carries a chunk, the rest decode only; the rate follows from Little's law,
    rate = batch / (E[output] x mean step). A chunk of a long prompt re-reads the KV of the prompt's
    earlier chunks (and of its prefix-cache hit) and attends over the whole prompt.
    """
    budget = float(r.max_num_batched_tokens)
    running = np.maximum(batch, 1.0)  # a step that runs at all runs at least one sequence
    demand = batch * shape.mean_prompt / shape.mean_out
    room = np.maximum(budget - running, 1.0)
    chunk = np.clip(np.maximum(shape.token_weighted_prompt, demand), 1.0, room)
    frac = np.minimum(demand / chunk, 1.0)
    cached = shape.mean_input - shape.mean_prompt
    earlier = np.maximum(shape.token_weighted_prompt - chunk, 0.0) / 2.0 + cached
    t_dec = r.step_time_s(running, running * shape.context)
    t_chunk = r.step_time_s(running, running * shape.context, chunk, chunk * shape.mean_input / 2.0,
                            chunk / max(shape.mean_prompt, 1.0), earlier)
    step = frac * t_chunk + (1.0 - frac) * t_dec
    return {"batch": batch, "rate": batch / (shape.mean_out * step), "step": step, "t_dec": t_dec,
            "t_chunk": t_chunk, "frac": frac, "room": room, "demand": demand, "running": running}


def prompt_service_s(r: ReplicaModel, shape: RequestShape, st: dict[str, FloatArray]) -> FloatArray:
    """Prefill of one prompt of each class in the steady state ``st`` (rows) : (L, K).

    It takes ceil(prompt / room) steps, each carrying at most ``room`` of its tokens beside the
    running decodes; each chunk re-reads the KV of the prompt's earlier chunks."""
    room = st["room"][:, None]
    prompt = shape.prompt[None, :]
    own_chunk = np.minimum(prompt, room)
    steps_needed = np.ceil(prompt / room)
    earlier = np.maximum(prompt - own_chunk, 0.0) / 2.0 + (shape.inputs - shape.prompt)[None, :]
    running = st["running"]
    per_step = r.step_time_s(running[:, None], (running * shape.context)[:, None], own_chunk,
                             own_chunk * shape.inputs[None, :] / 2.0, 1.0, earlier)
    return np.asarray(steps_needed * per_step, dtype=np.float64)


def _aggregated_points(r: ReplicaModel, w: Workload, slo: SLO, shape: RequestShape,
                       st: dict[str, FloatArray]) -> list[OperatingPoint]:
    rates, batch, step, room = st["rate"], st["batch"], st["step"], st["room"]
    itl = np.where(st["frac"] > 1.0 - slo.quantile, st["t_chunk"], st["t_dec"])
    service = prompt_service_s(r, shape, st)
    # Arriving mid-step, a request waits for the running step to end before it is scheduled.
    extra = service + step[:, None]
    ttft, rho = _waiting_quantile(rates, service, extra, shape.weights, slo.quantile, w.arrival_scv)
    kv_tokens = float(r.kv_capacity_tokens)
    max_seqs = float(r.max_num_seqs)
    points = []
    for i in range(rates.size):
        b = float(batch[i])
        kv_usage = b * shape.context / kv_tokens if kv_tokens > 0 else math.inf
        limits = []
        if st["demand"][i] > room[i] * 1.0001 or rho[i] >= 1.0:
            limits.append("prefill demand exceeds the token budget per step")
        if kv_usage > KV_HEADROOM:
            limits.append(f"KV cache {kv_usage:.0%} full (> {KV_HEADROOM:.0%})")
        if b > max_seqs:
            limits.append(f"batch {b:.0f} exceeds max_num_seqs {max_seqs:.0f}")
        if itl[i] * 1e3 > slo.itl_ms:
            limits.append(f"ITL {slo.label} {itl[i]*1e3:.1f} ms > {slo.itl_ms:g} ms")
        if ttft[i] * 1e3 > slo.ttft_ms:
            limits.append(f"TTFT {slo.label} {ttft[i]*1e3:.0f} ms > {slo.ttft_ms:g} ms")
        points.append(OperatingPoint(float(rates[i]), b, float(step[i]) * 1e3, float(ttft[i]) * 1e3,
                                     float(itl[i]) * 1e3, kv_usage, float(rho[i]), "; ".join(limits)))
    return points


def _decode_at_batch(r: ReplicaModel, shape: RequestShape, batch: FloatArray) -> dict[str, FloatArray]:
    running = np.maximum(batch, 1.0)
    step = np.asarray(r.step_time_s(running, running * shape.context), dtype=np.float64)
    return {"batch": batch, "rate": batch / (shape.mean_out * step), "step": step}


def _decode_points(r: ReplicaModel, slo: SLO, shape: RequestShape, st: dict[str, FloatArray]) -> list[OperatingPoint]:
    kv_tokens = float(r.kv_capacity_tokens)
    points = []
    for i in range(st["rate"].size):
        b = float(st["batch"][i])
        step_ms = float(st["step"][i]) * 1e3
        kv_usage = b * shape.context / kv_tokens if kv_tokens > 0 else math.inf
        limits = []
        if kv_usage > KV_HEADROOM:
            limits.append(f"KV cache {kv_usage:.0%} full (> {KV_HEADROOM:.0%})")
        if b > r.max_num_seqs:
            limits.append(f"batch {b:.0f} exceeds max_num_seqs {r.max_num_seqs}")
        if step_ms > slo.itl_ms:
            limits.append(f"ITL {slo.label} {step_ms:.1f} ms > {slo.itl_ms:g} ms")
        points.append(OperatingPoint(float(st["rate"][i]), b, step_ms, 0.0, step_ms, kv_usage, 0.0,
                                     "; ".join(limits)))
    return points


def mean_step_at_batch(r: ReplicaModel, w: Workload, role: str, batch: float) -> float:
    """Mean engine step (s) of a replica running `batch` sequences: decode-only steps for a decode
    pool, the chunk/decode mix of continuous batching for an aggregated one."""
    shape = RequestShape.of(w)
    b = np.array([max(batch, 1.0)])
    state = aggregated_steady_state(r, shape, b) if role == "aggregated" else _decode_at_batch(r, shape, b)
    return float(state["step"][0])


def _batch_for_rates(at_batch: Callable[[FloatArray], dict[str, FloatArray]], rates: FloatArray,
                     batch_cap: float) -> FloatArray:
    """Invert rate(batch), which is increasing, by bisection in log space (vectorized)."""
    lo = np.full_like(rates, 1e-6)
    hi = np.full_like(rates, max(batch_cap, 1.0) * 4.0)
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        low = at_batch(mid)["rate"] < rates
        lo = np.where(low, mid, lo)
        hi = np.where(low, hi, mid)
    return np.asarray(np.sqrt(lo * hi), dtype=np.float64)


def _batch_cap(r: ReplicaModel, shape: RequestShape) -> float:
    """No feasible batch exceeds what the KV cache, max_num_seqs and the token budget allow."""
    kv = r.kv_capacity_tokens / max(shape.context, 1.0)
    return float(max(min(r.max_num_seqs, kv, r.max_num_batched_tokens), 1.0))


def evaluate_aggregated(r: ReplicaModel, w: Workload, slo: SLO, rates: FloatArray) -> list[OperatingPoint]:
    """Operating points of an aggregated replica at the given per-replica request rates."""
    shape = RequestShape.of(w)
    rates = np.maximum(np.asarray(rates, dtype=np.float64), 1e-12)
    batch = _batch_for_rates(lambda b: aggregated_steady_state(r, shape, b), rates, _batch_cap(r, shape))
    st = aggregated_steady_state(r, shape, batch)
    st["rate"] = rates
    return _aggregated_points(r, w, slo, shape, st)


def aggregated_means(r: ReplicaModel, w: Workload, rate_rps: float) -> dict[str, float]:
    """Means (not percentiles) of an aggregated replica at a per-replica request rate, for comparing
    the model with an engine's histogram sums: the running batch, the mean step (= the mean ITL),
    and the mean TTFT: the Pollaczek-Khinchine mean wait of the M/G/1 prefill queue, plus the
    prompt's own service, plus half a step (an arrival waits, on average, for half of the step that
    is running). ``ttft_ms`` is inf past saturation."""
    shape = RequestShape.of(w)
    rates = np.array([max(rate_rps, 1e-12)])
    batch = _batch_for_rates(lambda b: aggregated_steady_state(r, shape, b), rates, _batch_cap(r, shape))
    st = aggregated_steady_state(r, shape, batch)
    service = prompt_service_s(r, shape, st)[0]
    es, es2 = float(service @ shape.weights), float((service**2) @ shape.weights)
    rho = float(rates[0]) * es
    wait = float(rates[0]) * es2 / (2.0 * (1.0 - rho)) if rho < 1.0 else math.inf
    step = float(st["step"][0])
    return {"batch": float(batch[0]), "step_ms": step * 1e3, "prefill_ms": es * 1e3,
            "ttft_ms": (wait + es + step / 2.0) * 1e3, "prefill_utilization": rho}


def evaluate_decode(r: ReplicaModel, w: Workload, slo: SLO, rates: FloatArray) -> list[OperatingPoint]:
    """Operating points of a decode-only replica of a disaggregated deployment."""
    shape = RequestShape.of(w)
    rates = np.maximum(np.asarray(rates, dtype=np.float64), 1e-12)
    batch = _batch_for_rates(lambda b: _decode_at_batch(r, shape, b), rates, _batch_cap(r, shape))
    st = _decode_at_batch(r, shape, batch)
    st["rate"] = rates
    return _decode_points(r, slo, shape, st)


def evaluate_prefill(
    r: ReplicaModel, w: Workload, slo: SLO, rates: FloatArray, first_decode_step_s: float
) -> list[OperatingPoint]:
    """A prefill-only replica: whole prompts, FCFS; TTFT adds KV transfer and one decode step."""
    rates = np.asarray(rates, dtype=np.float64)
    prompt = w.input_len.values * (1.0 - w.prefix_cache_hit_rate)
    service_k = np.asarray(r.prefill_s(np.ones_like(prompt), prompt), dtype=np.float64)
    transfer_k = np.asarray(r.kv_transfer_s(w.input_len.values), dtype=np.float64)
    service = np.broadcast_to(service_k, (rates.size, prompt.size))
    extra = service + transfer_k[None, :] + first_decode_step_s
    ttft, rho = _waiting_quantile(rates, service, extra, w.input_len.weights, slo.quantile, w.arrival_scv)
    points = []
    for i, rate in enumerate(rates):
        limits = []
        if rho[i] >= 1.0:
            limits.append("prompt tokens arrive faster than the replica computes them")
        if ttft[i] * 1e3 > slo.ttft_ms:
            limits.append(f"TTFT {slo.label} {ttft[i]*1e3:.0f} ms > {slo.ttft_ms:g} ms")
        points.append(OperatingPoint(float(rate), 0.0, float(service_k @ w.input_len.weights) * 1e3,
                                     float(ttft[i]) * 1e3, 0.0, 0.0, float(rho[i]), "; ".join(limits)))
    return points


def _largest_feasible(points_at: Callable[[FloatArray], list[OperatingPoint]], lo: float,
                      hi: float) -> tuple[float, OperatingPoint, OperatingPoint]:
    """Largest load x in [lo, hi] whose operating point meets every limit. Feasibility is
    monotone in the load (more load never lowers a latency), so a geometric scan and two linear
    refinements find it to within 0.2%. Returns (x, its point, the point at load lo)."""
    zero = points_at(np.array([lo]))[0]
    if not zero.ok:
        return lo, zero, zero
    grid = np.geomspace(lo, hi, 40)
    points = points_at(grid)
    ok = [p.ok for p in points]
    if all(ok):
        return hi, points[-1], zero
    first_bad = ok.index(False)
    best = points[first_bad - 1] if first_bad > 0 else zero
    lo_x = float(grid[first_bad - 1]) if first_bad > 0 else lo
    hi_x = float(grid[first_bad])
    for _ in range(2):
        fine = np.linspace(lo_x, hi_x, 18)[1:-1]
        for x, p in zip(fine, points_at(fine), strict=True):
            if p.ok:
                lo_x, best = float(x), p
            else:
                hi_x = float(x)
                break
    return lo_x, best, zero


def _capacity(role: str, r: ReplicaModel, points_at: Callable[[FloatArray], list[OperatingPoint]],
              lo: float, hi: float, at_cap: str) -> ReplicaCapacity:
    """Goodput of one replica and, in words, the limit that stops a higher load."""
    x, best, zero = _largest_feasible(points_at, lo, hi)
    if not zero.ok:
        return ReplicaCapacity(role, r.tp, r.max_num_batched_tokens, 0.0, zero, zero, zero.limit)
    binding = at_cap if x >= hi else (points_at(np.array([min(x * 1.01, hi)]))[0].limit or at_cap)
    return ReplicaCapacity(role, r.tp, r.max_num_batched_tokens, best.rate_rps, best, zero, binding)


def aggregated_capacity(r: ReplicaModel, w: Workload, slo: SLO) -> ReplicaCapacity:
    shape = RequestShape.of(w)

    def at(batch: FloatArray) -> list[OperatingPoint]:
        return _aggregated_points(r, w, slo, shape, aggregated_steady_state(r, shape, batch))

    return _capacity("aggregated", r, at, 1e-3, _batch_cap(r, shape),
                     "largest batch the KV cache, max_num_seqs and token budget allow")


def decode_capacity(r: ReplicaModel, w: Workload, slo: SLO) -> ReplicaCapacity:
    shape = RequestShape.of(w)

    def at(batch: FloatArray) -> list[OperatingPoint]:
        return _decode_points(r, slo, shape, _decode_at_batch(r, shape, batch))

    return _capacity("decode", r, at, 1e-3, _batch_cap(r, shape),
                     "largest batch the KV cache and max_num_seqs allow")


def prefill_capacity(r: ReplicaModel, w: Workload, slo: SLO, first_decode_step_s: float) -> ReplicaCapacity:
    prompt = max(w.input_len.mean * (1.0 - w.prefix_cache_hit_rate), 1.0)
    hi = 1.0 / float(r.prefill_s(1.0, prompt))  # utilization 1: no queue is stable beyond

    def at(rates: FloatArray) -> list[OperatingPoint]:
        return evaluate_prefill(r, w, slo, rates, first_decode_step_s)

    return _capacity("prefill", r, at, hi * 1e-6, hi, "prompt tokens arrive as fast as the replica computes them")
