"""Calibration: every term of the capacity model that sets capacity, corrected from vLLM's own metrics.

Pure. The capacity model (goodput.model) is first principles plus one global set of efficiency
factors; on an engine it has not seen it is 10-35% off, more at some TP degrees. Each term below
compares what the pools that run now report against what the model predicts for those same pools,
at their observed load, and keeps a bounded, smoothed correction that the planner then plans with.
The model's formulas are not touched: the corrections act through its efficiency factors and the
TTFT target, so every plan stays a first-principles plan with measured constants.

* **decode**: the observed mean inter-token latency (exact: the ITL histogram's sum / count)
  against the model's mean engine step at the observed batch (Little's law: tokens/s per replica x
  mean ITL). Acts on the HBM bandwidth fraction and the fixed step overheads.
* **prefill**: the observed mean ``request_prefill_time`` (scheduled -> first token) against the
  model's time for the step(s) that compute the prompts in prefill at once (Little's law:
  completions per replica x the mean prefill time, at least one) of the observed mean length,
  beside the observed decodes in an aggregated pool. Acts on the tensor-core compute fraction.
* **ttft**: the TTFT percentile read from the buckets (`goodput.planner.slo`) against the model's
  percentile at the observed arrival rate per replica: the M/G/1 queueing term. The plan then sizes
  for the TTFT target divided by it.
* **itl**: the ITL percentile read from the buckets against the calibrated model's percentile at
  the observed load (the step at the mean batch, plus the batch-fluctuation margin of a decode
  pool): the tail the model does not see (bursty arrivals, stalls, step noise). Read only where
  the prediction is at least `ITL_MATERIAL` of the target (a tail far below it decides nothing);
  and not past 1.1x of it (overloaded, the model's own figure is the batch cap's step); where the
  histogram proves only a bracket, the term is kept as long as the bracket allows it.
  The plan then sizes the mean step for the ITL target divided by it.
* **kv**: ``vllm:cache_config_info``'s num_gpu_blocks x block_size against the KV tokens the model
  gives the pool's configuration. Acts on the runtime memory reserve per GPU.

Rules every term follows:

* **Bounded** (`BOUNDS`): a reading outside is clipped; a model off by more than that is not
  something calibration should paper over.
* **Smoothed**: an exponential average in time, with a time constant of `SMOOTHING_WINDOWS` short
  windows, so it does not depend on the reconcile period. Decode and prefill update by a Newton
  step in log space (the sensitivity of the prediction to its own scale is measured, not assumed
  to be 1: fixed overheads do not scale with bandwidth), so a steady world is matched within a
  few windows.
* **Trusted only with evidence**: not while metrics settle (less than one window since they came
  back), not while a pool's replica count changed within the window (warm-up: a new replica's first
  window mixes loading and serving), and not at low load (fewer than one decoding sequence per
  replica, too few tokens, requests or tail observations, or a prefill utilization outside the
  range where the queueing term means anything). The reason a term was not updated is kept.
* **Physical**: decode and prefill are never calibrated faster than the datasheet allows (the
  bandwidth or compute fraction at 1): past that only the fixed overheads would move, and a
  Newton step on them runs to the bound while the model stays too fast at other batches.
* **Survives a restart**: the terms live in ``status.autoscaler.calibration``.
* KV capacity is a configuration the engine reports, exact at any load: it is taken as read,
  bounded, and not smoothed.

**Before the evidence: a pessimistic prior.** The model is 10-35% off on engines it has not seen,
and a fleet sized at the model's count in a slower world misses its SLOs for a window of evidence
plus a cold start before any correction serves. So the plan sizes with `Calibration.planning`:
the decode and prefill terms as if their exponential average had started from a prior
``1 + margin`` slower than the model (``spec.scaling.uncalibratedMargin``) instead of from 1. The
evidence replaces the prior at the average's own rate: after ``w`` windows of trusted readings the
prior keeps the weight ``exp(-w / SMOOTHING_WINDOWS)``, so the planning scale is the calibrated
one times ``(1 + margin) ** exp(-w / SMOOTHING_WINDOWS)``. The terms themselves (status, readings)
stay the plain estimates; only what the plan sizes for carries the prior.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from goodput.api.times import parse_status_time, status_time
from goodput.model.efficiency import Efficiency
from goodput.model.goodput import evaluate_aggregated, evaluate_decode, evaluate_prefill, mean_step_at_batch
from goodput.model.hardware import GIB
from goodput.model.replica import ReplicaModel
from goodput.model.workload import Workload
from goodput.planner.observation import Observation, PoolMetrics
from goodput.planner.recommend import ResolvedSpec
from goodput.planner.slo import PercentileReading, read_percentile

TERMS = ("decode", "prefill", "ttft", "itl", "kv")
PRIOR_TERMS = ("decode", "prefill")  # the engine-speed terms the pessimistic prior applies to
BOUNDS: dict[str, tuple[float, float]] = {"decode": (0.4, 3.0), "prefill": (0.4, 3.0), "ttft": (1.0, 3.0),
                                          "itl": (1.0, 2.0), "kv": (0.25, 2.0)}
SMOOTHING_WINDOWS = 2.0  # time constant of the exponential average, in short windows
MIN_TOKENS_PER_WINDOW = 200.0  # generated tokens in the window for the decode term
MIN_REQUESTS_PER_WINDOW = 20.0  # completed requests in the window for the prefill term
TTFT_UTILIZATION = (0.3, 0.9)  # the queueing term is read only where it is material and not saturated
ITL_MATERIAL = 0.75  # the ITL tail is read only where the predicted percentile is this share of the target
ITL_SATURATED = 1.1  # ... and not past it (the model then predicts the batch cap's step, not a tail)
NEWTON_PROBE = 1.1
SENSITIVITY_FLOOR = 0.2  # a prediction that barely moves with its scale is not pushed to the bound


@dataclass(frozen=True)
class Term:
    scale: float = 1.0
    windows: float = 0.0  # trusted readings folded in, in short windows of evidence
    observed: float | None = None  # the last trusted reading (observed / predicted at that moment)
    effect: float | None = None  # the calibrated prediction / the shipped model's, at the last reading
    updated: str | None = None
    note: str = ""  # why the last observation was not used ("" when it was)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": round(self.scale, 4), "windows": round(self.windows, 2)}
        for key, value in (("observed", self.observed), ("effect", self.effect)):
            if value is not None:
                out[key] = round(value, 4)
        if self.updated:
            out["updated"] = self.updated
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_status(cls, data: Any, name: str) -> Term:
        if not isinstance(data, Mapping):
            return cls()
        lo, hi = BOUNDS[name]
        scale = _finite(data.get("scale"))
        return cls(scale=min(max(scale, lo), hi) if scale is not None else 1.0,
                   windows=_finite(data.get("windows")) or 0.0, observed=_finite(data.get("observed")),
                   effect=_finite(data.get("effect")),
                   updated=data.get("updated") if isinstance(data.get("updated"), str) else None,
                   note=str(data.get("note") or ""))


@dataclass(frozen=True)
class Calibration:
    terms: dict[str, Term] = field(default_factory=lambda: {t: Term() for t in TERMS})
    kv_reserve_delta_gib: float = 0.0  # added to the runtime reserve: what the engines really hold back
    # role -> (pods reporting, since when, whether that count was a rise): when a pool's readings
    # cover only its present replicas (calibration waits for that; so does SLO feedback after a rise).
    pods: dict[str, tuple[int, str, bool]] = field(default_factory=dict)

    def scale(self, term: str) -> float:
        return self.terms[term].scale

    def efficiency(self, base: Efficiency) -> Efficiency:
        """The shipped factors with the decode, prefill and KV corrections applied."""
        d, p = self.scale("decode"), self.scale("prefill")
        return base.replace(
            bandwidth_fraction=min(base.bandwidth_fraction / d, 1.0),
            step_overhead_s=base.step_overhead_s * d,
            layer_overhead_s=base.layer_overhead_s * d,
            sequence_overhead_s=base.sequence_overhead_s * d,
            allreduce_latency_scale=base.allreduce_latency_scale * d,
            compute_fraction=min(base.compute_fraction / p, 1.0),
            runtime_reserve_gib=max(base.runtime_reserve_gib + self.kv_reserve_delta_gib, 0.0),
        )

    def prior_factor(self, term: str, margin: float) -> float:
        """What is left of the pessimistic prior on a speed term (1 once the evidence replaced it)."""
        if term not in PRIOR_TERMS or margin <= 0.0:
            return 1.0
        return float((1.0 + margin) ** math.exp(-self.terms[term].windows / SMOOTHING_WINDOWS))

    def planning(self, margin: float) -> Calibration:
        """The calibration the plan sizes with: the speed terms carry what is left of the prior."""
        if margin <= 0.0:
            return self
        terms = {t: dataclasses.replace(term, scale=term.scale * self.prior_factor(t, margin))
                 for t, term in self.terms.items()}
        return dataclasses.replace(self, terms=terms)

    def prior_note(self, margin: float) -> str:
        """A clause for a decision's reason, "" once the prior no longer matters."""
        factors = {t: self.prior_factor(t, margin) for t in PRIOR_TERMS}
        if all(f < 1.005 for f in factors.values()):
            return ""
        parts = " and ".join(f"{t} ×{f:.2f}" for t, f in factors.items())
        return f"engines assumed slower than the model until calibrated ({parts}; spec.scaling.uncalibratedMargin)"

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {t: self.terms[t].to_status() for t in TERMS}
        out["kvReserveDeltaGib"] = round(self.kv_reserve_delta_gib, 4)
        out["pods"] = {role: {"count": n, "since": since, "rose": rose}
                       for role, (n, since, rose) in sorted(self.pods.items())}
        return out

    @classmethod
    def from_status(cls, data: Any, legacy_step_scale: float | None = None) -> Calibration:
        """From ``status.autoscaler.calibration``; a status written before the terms existed has one
        step-time scale for everything, which seeds decode and prefill."""
        if not isinstance(data, Mapping):
            seed = Term(scale=legacy_step_scale) if legacy_step_scale is not None else Term()
            return cls({t: seed if t in ("decode", "prefill") else Term() for t in TERMS})
        pods: dict[str, tuple[int, str, bool]] = {}
        for role, v in (data.get("pods") or {}).items():
            if isinstance(v, Mapping) and isinstance(v.get("count"), int) and isinstance(v.get("since"), str):
                pods[str(role)] = (int(v["count"]), str(v["since"]), v.get("rose") is True)
        return cls({t: Term.from_status(data.get(t), t) for t in TERMS},
                   _finite(data.get("kvReserveDeltaGib")) or 0.0, pods)


@dataclass(frozen=True)
class PoolConfig:
    """A pool as it runs: what the model needs to predict its replicas."""

    role: str
    tp: int
    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass(frozen=True)
class Reading:
    """One term's evidence in one observation: the scale it asks for, or why there is none."""

    target: float | None
    note: str = ""
    observed: float | None = None
    effect: float | None = None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def replica(resolved: ResolvedSpec, pool: PoolConfig, eff: Efficiency) -> ReplicaModel:
    return ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, pool.tp, resolved.kv_cache_dtype, eff,
                        max_num_seqs=pool.max_num_seqs, max_num_batched_tokens=pool.max_num_batched_tokens)


# --- what each term predicts ---------------------------------------------------------------------
def decode_batch(pm: PoolMetrics) -> float | None:
    """Sequences decoding per replica over the window, by Little's law: each produces one token per
    step, so tokens/s per replica x mean ITL. Consistent with the mean ITL over the same window
    (the running gauge is one instant)."""
    if not pm.pods_reporting or pm.generation_tokens_tps is None or pm.itl_mean_ms is None:
        return None
    return pm.generation_tokens_tps / pm.pods_reporting * pm.itl_mean_ms / 1e3


def predicted_decode_step_ms(r: ReplicaModel, workload: Workload, role: str, batch: float) -> float:
    return mean_step_at_batch(r, workload, role, batch) * 1e3


def predicted_prefill_ms(r: ReplicaModel, workload: Workload, role: str, pm: PoolMetrics,
                         decoding: float) -> float | None:
    """Mean time from a prompt's scheduling to its first token. The prompts in prefill at once
    (Little: completions per replica x the observed mean prefill time, at least one) share the
    steps that compute them; in an aggregated pool each such step also carries ``decoding``
    sequences' decode tokens and has only the token budget they leave."""
    if not pm.pods_reporting or not pm.request_rate_rps or pm.prefill_time_mean_ms is None:
        return None
    hit = pm.prefix_cache_hit_rate or 0.0
    length = pm.input_len_mean or workload.input_len.mean
    computed = max(length * (1.0 - hit), 1.0)
    concurrent = max(pm.request_rate_rps / pm.pods_reporting * pm.prefill_time_mean_ms / 1e3, 1.0)
    batch = decoding if role == "aggregated" else 0.0
    room = max(r.max_num_batched_tokens - batch, 1.0)
    tokens = concurrent * computed
    steps = math.ceil(tokens / room - 1e-9)
    chunk = tokens / steps
    context = workload.input_len.mean + workload.output_len.mean / 2.0
    # Causal attention of each prompt's own tokens, after its cached prefix.
    pairs = chunk * (length * hit + (computed + 1.0) / 2.0)
    step = r.step_time_s(batch, batch * context, chunk, pairs, concurrent / steps)
    return float(steps * step) * 1e3


def predicted_ttft(r: ReplicaModel, workload: Workload, role: str, resolved: ResolvedSpec,
                   per_replica_rps: float) -> tuple[float, float]:
    """(TTFT at the SLO percentile in ms, prefill utilization) at an arrival rate per replica."""
    rate = np.array([max(per_replica_rps, 1e-9)])
    if role == "prefill":
        point = evaluate_prefill(r, workload, resolved.slo, rate, 0.0)[0]
    else:
        point = evaluate_aggregated(r, workload, resolved.slo, rate)[0]
    return point.ttft_ms, point.prefill_utilization


# --- the readings ----------------------------------------------------------------------------------
def physical_floor(term: str, base: Efficiency) -> float:
    """The fastest a term may calibrate: the bandwidth (decode) or compute (prefill) fraction at 1."""
    lo = BOUNDS[term][0]
    fraction = base.bandwidth_fraction if term == "decode" else base.compute_fraction if term == "prefill" else lo
    return max(lo, min(fraction, 1.0))


def _newton(scale: float, observed: float, predict: Any, term: str, floor: float | None = None) -> float:
    """The scale at which the prediction would equal the observation, one Newton step in log space."""
    now = predict(scale)
    probe = predict(scale * NEWTON_PROBE)
    if not (now and now > 0 and probe and probe > 0):
        return scale
    sensitivity = max(math.log(probe / now) / math.log(NEWTON_PROBE), SENSITIVITY_FLOOR)
    lo, hi = BOUNDS[term]
    lo = max(lo, floor) if floor is not None else lo
    return float(min(max(scale * (observed / now) ** (1.0 / sensitivity), lo), hi))


def read_decode(cal: Calibration, pm: PoolMetrics, pool: PoolConfig, resolved: ResolvedSpec, workload: Workload,
                base: Efficiency, window_s: float) -> Reading:
    batch = decode_batch(pm)
    if batch is None or pm.itl_mean_ms is None:
        return Reading(None, "no ITL or generated tokens observed")
    if batch < 1.0:
        return Reading(None, f"low load: {batch:.2f} sequences decoding per replica (needs at least 1)")
    if (pm.generation_tokens_tps or 0.0) * window_s < MIN_TOKENS_PER_WINDOW:
        return Reading(None, f"low load: fewer than {MIN_TOKENS_PER_WINDOW:.0f} tokens generated in the window")

    def predict(scale: float) -> float:
        trial = _with(cal, "decode", scale)
        return predicted_decode_step_ms(replica(resolved, pool, trial.efficiency(base)), workload, pool.role, batch)

    shipped = predicted_decode_step_ms(replica(resolved, pool, base), workload, pool.role, batch)
    target = _newton(cal.scale("decode"), pm.itl_mean_ms, predict, "decode", physical_floor("decode", base))
    return Reading(target, observed=pm.itl_mean_ms / predict(cal.scale("decode")),
                   effect=predict(target) / shipped if shipped > 0 else None)


def read_prefill(cal: Calibration, pm: PoolMetrics, pool: PoolConfig, resolved: ResolvedSpec, workload: Workload,
                 base: Efficiency, window_s: float, decoding: float) -> Reading:
    if pm.prefill_time_mean_ms is None or not pm.request_rate_rps:
        return Reading(None, "no prefill time observed")
    if pm.request_rate_rps * window_s < MIN_REQUESTS_PER_WINDOW:
        return Reading(None, f"low load: fewer than {MIN_REQUESTS_PER_WINDOW:.0f} requests in the window")
    observed = pm.prefill_time_mean_ms

    def predict(scale: float) -> float:
        r = replica(resolved, pool, _with(cal, "prefill", scale).efficiency(base))
        return predicted_prefill_ms(r, workload, pool.role, pm, decoding) or 0.0

    now = predict(cal.scale("prefill"))
    if not now > 0:
        return Reading(None, "no prediction for the observed prompts")
    target = _newton(cal.scale("prefill"), observed, predict, "prefill", physical_floor("prefill", base))
    # The effect a person reads: one mean prompt alone, calibrated against shipped.
    length = max((pm.input_len_mean or workload.input_len.mean) * (1.0 - (pm.prefix_cache_hit_rate or 0.0)), 1.0)
    shipped = float(replica(resolved, pool, base).prefill_s(1.0, length))
    calibrated = float(replica(resolved, pool, _with(cal, "prefill", target).efficiency(base)).prefill_s(1.0, length))
    return Reading(target, observed=observed / now, effect=calibrated / shipped if shipped > 0 else None)


def _observed(buckets: Any, mean: float | None, pm: PoolMetrics, resolved: ResolvedSpec,
              what: str) -> tuple[PercentileReading, float] | Reading:
    """The SLO percentile the buckets prove, and the arrival rate per replica; or why there is none."""
    reading = read_percentile(buckets, resolved.slo.quantile, mean)
    if reading is None:
        return Reading(None, f"too few {what} observations in the window for its percentile")
    rate = pm.arrival_rate_rps
    if not pm.pods_reporting or not rate:
        return Reading(None, "no arrivals observed")
    return reading, rate / pm.pods_reporting


def _bracket_ratio(reading: PercentileReading, predicted: float, held: float, term: str) -> Reading:
    """observed / predicted, bounded. Where the histogram sees the tail's slope the estimate is read;
    where the tail ends inside a bucket it proves only a bracket, and ``held`` (the figure the term
    stands by) counts as far as the bracket allows."""
    value = reading.estimate if reading.shape_known else held
    ratio = min(max(value, reading.lo), reading.hi) / predicted
    b_lo, b_hi = BOUNDS[term]
    return Reading(min(max(ratio, b_lo), b_hi), observed=ratio, effect=min(max(ratio, b_lo), b_hi))


def read_ttft(cal: Calibration, pm: PoolMetrics, pool: PoolConfig, resolved: ResolvedSpec, workload: Workload,
              base: Efficiency) -> Reading:
    seen = _observed(pm.ttft_buckets, pm.ttft_mean_ms, pm, resolved, "TTFT")
    if isinstance(seen, Reading):
        return seen
    reading, per_replica_rps = seen
    r = replica(resolved, pool, cal.efficiency(base))
    predicted, utilization = predicted_ttft(r, workload, pool.role, resolved, per_replica_rps)
    lo, hi = TTFT_UTILIZATION
    if not lo <= utilization <= hi or not math.isfinite(predicted) or predicted <= 0:
        return Reading(None, f"prefill utilization {utilization:.0%} is outside {lo:.0%}-{hi:.0%}: the queueing "
                             "term is immaterial or saturated there")
    # Only as far as the bracket proves the model wrong.
    return _bracket_ratio(reading, predicted, predicted, "ttft")


def predicted_itl_ms(r: ReplicaModel, workload: Workload, role: str, resolved: ResolvedSpec,
                     per_replica_rps: float, margin_ms: float) -> float:
    """The model's ITL at the SLO percentile at an arrival rate per replica (a decode pool: plus the
    batch-fluctuation margin its plan keeps, so that the term sees only what the plan does not)."""
    rate = np.array([max(per_replica_rps, 1e-9)])
    evaluate = evaluate_decode if role == "decode" else evaluate_aggregated
    return float(evaluate(r, workload, resolved.slo, rate)[0].itl_ms) + (margin_ms if role == "decode" else 0.0)


def read_itl(cal: Calibration, pm: PoolMetrics, pool: PoolConfig, resolved: ResolvedSpec, workload: Workload,
             base: Efficiency, margin_ms: float) -> Reading:
    seen = _observed(pm.itl_buckets, pm.itl_mean_ms, pm, resolved, "ITL")
    if isinstance(seen, Reading):
        return seen
    reading, per_replica_rps = seen
    r = replica(resolved, pool, cal.efficiency(base))
    predicted = predicted_itl_ms(r, workload, pool.role, resolved, per_replica_rps, margin_ms)
    target = resolved.slo.itl_ms
    if not math.isfinite(predicted) or predicted < ITL_MATERIAL * target:
        return Reading(None, f"ITL {resolved.slo.label} predicted {predicted:.1f} ms at this load, under "
                             f"{ITL_MATERIAL:.0%} of the {target:g} ms target: the tail decides nothing here")
    if predicted > ITL_SATURATED * target:
        return Reading(None, f"ITL {resolved.slo.label} predicted {predicted:.1f} ms at this load, past the "
                             f"{target:g} ms target: an overloaded pool says nothing about the tail")
    # Kept while the bracket allows it: moving it to 1 there would undo what a proven miss taught.
    return _bracket_ratio(reading, predicted, predicted * cal.scale("itl"), "itl")


def read_kv(pm: PoolMetrics, pool: PoolConfig, resolved: ResolvedSpec, base: Efficiency) -> tuple[Reading, float]:
    """(reading, the reserve change per GPU it implies)."""
    if pm.kv_capacity_tokens is None or pm.kv_capacity_tokens <= 0:
        return Reading(None, "vllm:cache_config_info gives no num_gpu_blocks"), 0.0
    r = replica(resolved, pool, base)
    modelled = float(r.kv_capacity_tokens)
    if modelled <= 0:
        return Reading(None, "the model leaves no KV cache for this configuration"), 0.0
    lo, hi = BOUNDS["kv"]
    ratio = min(max(pm.kv_capacity_tokens / modelled, lo), hi)
    delta_gib = (modelled - ratio * modelled) * r.kv_bytes_per_token_per_gpu / GIB
    return Reading(ratio, observed=pm.kv_capacity_tokens / modelled, effect=ratio), delta_gib


def _with(cal: Calibration, term: str, scale: float) -> Calibration:
    return dataclasses.replace(cal, terms={**cal.terms, term: dataclasses.replace(cal.terms[term], scale=scale)})


# --- one update ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """Whether this observation may calibrate at all, and the pools' steadiness."""

    settled: bool  # metrics available for at least one short window
    pods: dict[str, tuple[int, str, bool]]
    steady: dict[str, bool]  # role -> its replicas reporting have not changed within the window


def evidence(cal: Calibration, obs: Observation, now: dt.datetime, settled: bool) -> Evidence:
    pods: dict[str, tuple[int, str, bool]] = {}
    steady: dict[str, bool] = {}
    for role, pm in obs.pools.items():
        n = int(pm.pods_reporting or 0)
        before = cal.pods.get(role)
        if before is not None and before[0] == n:
            pods[role] = before
        else:
            pods[role] = (n, status_time(now), before is not None and n > before[0])
        since = pods[role][1]
        steady[role] = before is not None and (now - parse_status_time(since)).total_seconds() >= obs.window_s
    return Evidence(settled, pods, steady)


def update(cal: Calibration, obs: Observation | None, running: Mapping[str, PoolConfig], resolved: ResolvedSpec,
           workload: Workload, base: Efficiency, now: dt.datetime, settled: bool,
           itl_margin_ms: float = 0.0) -> Calibration:
    """Fold one observation into the terms (see the module docstring for when it counts);
    ``itl_margin_ms``: the batch-fluctuation margin a decode pool's plan keeps."""
    if obs is None or not obs.available:
        return cal
    ev = evidence(cal, obs, now, settled)
    serving = "aggregated" if "aggregated" in running else "decode"
    entry = "aggregated" if "aggregated" in running else "prefill"
    readings: dict[str, Reading] = {}
    kv_delta = cal.kv_reserve_delta_gib

    def blocked(role: str) -> str:
        if role not in running or role not in obs.pools:
            return f"no {role} pool observed"
        if not ev.settled:
            return f"metrics came back less than {obs.window_s:g} s ago"
        if not ev.steady[role]:
            return f"warm-up: the {role} pool's serving replicas changed within the last {obs.window_s:g} s"
        return ""

    for term, role in (("decode", serving), ("prefill", entry), ("ttft", entry), ("itl", serving)):
        why = blocked(role)
        if why:
            readings[term] = Reading(None, why)
    if "decode" not in readings:
        readings["decode"] = read_decode(cal, obs.pools[serving], running[serving], resolved, workload, base,
                                         obs.window_s)
    decoding = decode_batch(obs.pools[entry]) or 0.0 if entry in obs.pools and entry == "aggregated" else 0.0
    if "prefill" not in readings:
        readings["prefill"] = read_prefill(cal, obs.pools[entry], running[entry], resolved, workload, base,
                                           obs.window_s, decoding)
    if "ttft" not in readings:
        readings["ttft"] = read_ttft(cal, obs.pools[entry], running[entry], resolved, workload, base)
    if "itl" not in readings:
        readings["itl"] = read_itl(cal, obs.pools[serving], running[serving], resolved, workload, base,
                                   itl_margin_ms)
    kv_roles = [role for role in (serving, entry) if role in running and role in obs.pools]
    kv_readings = [read_kv(obs.pools[role], running[role], resolved, base) for role in dict.fromkeys(kv_roles)]
    usable = [(rd, delta) for rd, delta in kv_readings if rd.target is not None]
    if usable:
        readings["kv"], kv_delta = min(usable, key=lambda x: x[0].target or 0.0)  # the tightest pool decides
    else:
        readings["kv"] = kv_readings[0][0] if kv_readings else Reading(None, "no pool observed")

    terms = dict(cal.terms)
    for term, rd in readings.items():
        terms[term] = _fold(cal.terms[term], rd, now, obs.window_s, smooth=term != "kv")
    return Calibration(terms, kv_delta if readings["kv"].target is not None else cal.kv_reserve_delta_gib, ev.pods)


def _fold(term: Term, rd: Reading, now: dt.datetime, window_s: float, smooth: bool) -> Term:
    if rd.target is None:
        return dataclasses.replace(term, note=rd.note)
    if not smooth:
        return Term(rd.target, term.windows + 1.0, rd.observed, rd.effect, status_time(now), "")
    elapsed = window_s if term.updated is None else (now - parse_status_time(term.updated)).total_seconds()
    elapsed = min(max(elapsed, 0.0), window_s)  # a reading after a long gap counts as one window, not more
    alpha = 1.0 - math.exp(-elapsed / (SMOOTHING_WINDOWS * window_s))
    scale = math.exp((1.0 - alpha) * math.log(term.scale) + alpha * math.log(rd.target))
    return Term(scale, term.windows + elapsed / window_s, rd.observed, rd.effect, status_time(now), "")
