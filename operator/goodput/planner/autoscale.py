"""The autoscaler: from an Observation, the history kept in status and `now`, to replicas per pool.

Pure. Every number comes with its reason. The semantics, in order:

1. **Demand.** With live metrics: the short-window arrival rate (completions plus queue growth),
   forecast over the cold-start horizon along the trend between the long and the short window;
   the larger (safer) of that forecast and the long-window rate is planned for — once metrics cover
   a whole long window (before that a long window over partial data would read as a rising trend). Prompt/output
   lengths come from the observed histograms (mean and p99) when present. Without metrics ever
   seen: the spec's workload hints.
2. **Calibration.** The observed mean inter-token latency (exact, from the histogram's sum and
   count) against the model's mean step for the pools as they run now, at their observed
   per-replica load, gives a step-time scale (observed / predicted), smoothed (EWMA 0.3) and
   bounded to [0.5, 2]; the capacity model runs with its efficiency scaled by it. (Comparing with
   the fleet about to be recommended, or with a percentile read inside coarse buckets, would feed
   back on itself.)
3. **Recommendation.** The cheapest configuration for the forecast (`recommend`).
4. **Stabilization** (Kubernetes HPA semantics): recommendations are remembered for the longest
   window; scaling up goes to the *lowest* recommendation of the scale-up window, scaling down to
   the *highest* of the scale-down window. A change within `tolerance` of the current replicas is
   ignored. Rate limits: per minute at most +max(1, up% of current) and -max(1, down% of current).
5. **Emergency.** KV cache above 90%, preemptions, or a queue growing by over 5% of the arrivals (with
   more than one request waiting per replica) in a pool scale it up by at
   least one replica at once, past the scale-up window and the tolerance (never past max bounds),
   unless replicas of that pool are still starting (capacity already on its way).
6. **Shape.** Metric-driven decisions change replicas only: the running mode, TP degrees and vLLM
   engine arguments are kept (changing them restarts every pod); they are re-chosen when a person
   edits the spec, or when the running shape can no longer be planned at all.
7. **Safety.** On a metrics outage, or stale data: hold the current replicas; never scale down
   on missing data. After an operator restart the history in status is used as it is; if it does
   not cover the scale-down window yet, no scale-down happens until it does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.engine.vllm_metrics import build_1_2_5_buckets
from goodput.model.efficiency import Efficiency, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.goodput import evaluate_aggregated, evaluate_decode, mean_step_at_batch
from goodput.model.replica import DEFAULT_MAX_NUM_SEQS, ReplicaModel
from goodput.model.sizing import DECODE_MAX_NUM_SEQS
from goodput.model.workload import LengthDistribution, Workload, p99_behind_bucketed_quantile
from goodput.planner.observation import Observation, PoolMetrics
from goodput.planner.recommend import (
    PoolTarget,
    Recommendation,
    ResolvedSpec,
    hinted_workload,
    max_model_len,
    recommend,
)

CALIBRATION_BOUNDS = (0.5, 2.0)
CALIBRATION_SMOOTHING = 0.3
KV_PRESSURE = 0.90
# Queue growth that counts as an emergency: 5% of the pool's arrival rate, and at least 0.2 req/s.
QUEUE_GROWTH_SHARE = 0.05
QUEUE_GROWTH_MIN_RPS = 0.2
RATE_LIMIT_PERIOD_S = 60.0


@dataclass(frozen=True)
class PoolDecision:
    role: str
    current: int
    recommended: int  # what the capacity model asks for now
    target: int  # after stabilization, tolerance, rate limits, emergency and bounds
    reason: str  # code: ScaleUp, ScaleDown, Hold, Emergency, Stabilizing, RateLimited, WithinTolerance
    message: str


@dataclass(frozen=True)
class DemandEstimate:
    rate_rps: float
    source: str  # "metrics" or "spec.workload"
    short_rps: float | None = None
    long_rps: float | None = None
    horizon_s: float = 0.0
    note: str = ""


@dataclass
class AutoscalerState:
    """Kept in status.autoscaler so that decisions survive an operator restart."""

    recommendations: list[dict[str, Any]] = field(default_factory=list)  # {"time": iso, "replicas": {role: n}}
    scale_events: list[dict[str, Any]] = field(default_factory=list)  # {"time": iso, "replicas": {role: n}}
    step_time_scale: float = 1.0
    metrics_seen: bool = False
    metrics_since: str | None = None  # when metrics were first available: the trend needs a full long window

    @classmethod
    def from_status(cls, data: dict[str, Any] | None) -> AutoscalerState:
        data = data or {}
        scale = data.get("stepTimeScale", 1.0)
        return cls(
            recommendations=list(data.get("recommendations", [])),
            scale_events=list(data.get("scaleEvents", [])),
            step_time_scale=float(scale) if isinstance(scale, int | float) and math.isfinite(scale) else 1.0,
            metrics_seen=bool(data.get("metricsSeen", False)),
            metrics_since=data.get("metricsSince") if isinstance(data.get("metricsSince"), str) else None,
        )

    def to_status(self) -> dict[str, Any]:
        return {"recommendations": self.recommendations, "scaleEvents": self.scale_events,
                "stepTimeScale": round(self.step_time_scale, 4), "metricsSeen": self.metrics_seen,
                **({"metricsSince": self.metrics_since} if self.metrics_since else {})}


@dataclass(frozen=True)
class RunningShape:
    """What runs now and is kept by metric-driven decisions: mode, TP per pool, engine arguments."""

    mode: str
    tp: dict[str, int]
    engine_args: dict[str, tuple[int, int]]  # role -> (max_num_batched_tokens, max_num_seqs)

    @classmethod
    def from_plan(cls, plan: dict[str, Any] | None) -> RunningShape | None:
        if not plan or "mode" not in plan:
            return None
        tp: dict[str, int] = {}
        if plan["mode"] == "aggregated":
            tp["aggregated"] = int(plan.get("tensorParallel", 1))
        else:
            tp["decode"] = int(plan.get("tensorParallel", 1))
            tp["prefill"] = int(plan.get("prefillTensorParallel", plan.get("tensorParallel", 1)))
        args = {role: (int(v["maxNumBatchedTokens"]), int(v["maxNumSeqs"]))
                for role, v in (plan.get("engineArgs") or {}).items()
                if isinstance(v, dict) and "maxNumBatchedTokens" in v and "maxNumSeqs" in v}
        return cls(str(plan["mode"]), tp, args)


def recommend_keeping(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, workload: Workload,
                      eff: Efficiency, shape: RunningShape | None) -> Recommendation:
    """`recommend`, restricted to the running mode and TP degrees, with the running engine args."""
    if shape is None:
        return recommend(spec, resolved, workload, eff)
    try:
        pinned_spec = spec.model_copy(update={"mode": shape.mode})
        pinned = dataclasses.replace(resolved, tp_degrees=tuple(sorted(set(shape.tp.values()))),
                                     pool_tp=tuple(sorted(shape.tp.items())))
        rec = recommend(pinned_spec, pinned, workload, eff)
    except CapacityModelError:
        return recommend(spec, resolved, workload, eff)  # the running shape cannot be planned any more
    pools = tuple(
        dataclasses.replace(p, max_num_batched_tokens=shape.engine_args[p.role][0],
                            max_num_seqs=shape.engine_args[p.role][1])
        if p.role in shape.engine_args and shape.tp.get(p.role) == p.tp else p
        for p in rec.pools)
    return dataclasses.replace(rec, pools=pools)


@dataclass(frozen=True)
class AutoscaleResult:
    recommendation: Recommendation
    pools: tuple[PoolDecision, ...]
    demand: DemandEstimate
    state: AutoscalerState
    metrics_available: bool
    metrics_message: str
    efficiency: Efficiency


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(t: str) -> dt.datetime:
    return dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def scaled_efficiency(scale: float, base: Efficiency | None = None) -> Efficiency:
    """The efficiency factors with every step `scale` times slower (or faster)."""
    return (base or calibrated_efficiency()).slower(scale)


def estimate_demand(spec: InferenceDeploymentSpec, obs: Observation | None,
                    long_window_full: bool = True) -> DemandEstimate:
    horizon = float(spec.scaling.cold_start_seconds)
    if obs is None or not obs.available:
        return DemandEstimate(spec.workload.request_rate, "spec.workload")
    short = obs.serving_pool()
    long = obs.serving_pool(long=True)
    assert short is not None
    s = short.arrival_rate_rps or 0.0
    lng = long.arrival_rate_rps if long is not None else None
    forecast = s
    note = f"{s:.2f} req/s over {obs.window_s:.0f} s"
    if not long_window_full:
        note += f" (no trend yet: metrics cover less than the {obs.long_window_s:.0f} s long window)"
    elif lng is not None and obs.long_window_s > obs.window_s:
        # Windows centred at -w/2 and -W/2: the slope between them, projected over the cold start.
        slope = (s - lng) / ((obs.long_window_s - obs.window_s) / 2.0)
        if slope > 0:
            forecast = s + slope * horizon
            note += f", rising {slope * 60:.2f} req/s per minute → {forecast:.2f} req/s in {horizon:.0f} s"
        if lng > forecast:
            note += f"; the {obs.long_window_s:.0f} s rate {lng:.2f} req/s is higher and is kept"
        forecast = max(forecast, lng)
    return DemandEstimate(max(forecast, 0.0), "metrics", s, lng, horizon, note)


def observed_workload(spec: InferenceDeploymentSpec, obs: Observation | None, rate: float) -> Workload:
    hints = hinted_workload(spec)
    pool = obs.serving_pool(long=True) if obs is not None and obs.available else None
    if pool is None:
        return hints.with_rate(rate)

    # vLLM's token-length histograms have 1-2-5 buckets up to --max-model-len; the p99 read from
    # them is interpolated inside a bucket 2-2.5x wide and must be read back under a lognormal.
    bounds = [float(b) for b in build_1_2_5_buckets(max_model_len(spec))]

    def lengths(mean: float | None, p99: float | None, fallback: LengthDistribution) -> LengthDistribution:
        if mean is None or not mean > 0:
            return fallback
        if p99 is None or p99 <= mean * 1.01:
            return LengthDistribution.fixed(mean)
        p99 = max(p99_behind_bucketed_quantile(mean, p99, bounds), mean * 1.01)
        return LengthDistribution.lognormal(mean, min(p99, mean * 14.9))

    hit = pool.prefix_cache_hit_rate if pool.prefix_cache_hit_rate is not None else hints.prefix_cache_hit_rate
    return Workload(rate, lengths(pool.input_len_mean, pool.input_len_p99, hints.input_len),
                    lengths(pool.output_len_mean, pool.output_len_p99, hints.output_len),
                    min(max(hit, 0.0), 0.95))


def calibrate(state: AutoscalerState, predicted_step_ms: float | None, observed: PoolMetrics | None) -> float:
    """New step-time scale from the observed mean ITL against the predicted mean step of the same
    pools at the same load (the mean ITL is the mean step a decoding sequence sees)."""
    if observed is None or observed.itl_mean_ms is None or not predicted_step_ms or predicted_step_ms <= 0:
        return state.step_time_scale
    if not (observed.running or 0) > 0:
        return state.step_time_scale  # an idle replica says nothing about its step time
    ratio = observed.itl_mean_ms / predicted_step_ms * state.step_time_scale
    lo, hi = CALIBRATION_BOUNDS
    ratio = min(max(ratio, lo), hi)
    return (1 - CALIBRATION_SMOOTHING) * state.step_time_scale + CALIBRATION_SMOOTHING * ratio


def predicted_mean_step_ms(resolved: ResolvedSpec, pool: PoolTarget, workload: Workload, per_replica_rps: float,
                           eff: Efficiency, batch: float | None = None) -> float:
    """The model's mean engine step for one replica of `pool` (its TP and engine arguments), at the
    observed running batch when given, else at the batch `per_replica_rps` implies."""
    max_seqs = max(pool.max_num_seqs, DECODE_MAX_NUM_SEQS if pool.role == "decode" else DEFAULT_MAX_NUM_SEQS)
    r = ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, pool.tp, resolved.kv_cache_dtype, eff,
                     max_num_seqs=max_seqs, max_num_batched_tokens=pool.max_num_batched_tokens)
    if batch is not None:
        return mean_step_at_batch(r, workload, pool.role, batch) * 1e3
    rate = np.array([max(per_replica_rps, 1e-9)])
    evaluate = evaluate_aggregated if pool.role == "aggregated" else evaluate_decode
    return evaluate(r, workload, resolved.slo, rate)[0].step_ms


def _window(history: list[dict[str, Any]], now: dt.datetime, seconds: float, role: str) -> list[int]:
    cutoff = now - dt.timedelta(seconds=seconds)
    return [int(h["replicas"][role]) for h in history
            if role in h.get("replicas", {}) and _parse(h["time"]) >= cutoff]


def _base_for_rate_limit(state: AutoscalerState, now: dt.datetime, role: str, current: int) -> int:
    """Replicas at the start of the rate-limit period: the limit applies per minute, not per decision."""
    cutoff = now - dt.timedelta(seconds=RATE_LIMIT_PERIOD_S)
    earlier = [h for h in state.scale_events if role in h.get("replicas", {}) and _parse(h["time"]) >= cutoff]
    return int(earlier[0]["before"][role]) if earlier and role in earlier[0].get("before", {}) else current


def _emergency(pool: PoolMetrics | None) -> str:
    if pool is None:
        return ""
    if pool.kv_cache_usage is not None and pool.kv_cache_usage > KV_PRESSURE:
        return f"KV cache {pool.kv_cache_usage:.0%} full"
    if pool.preemptions_rps is not None and pool.preemptions_rps > 0:
        return f"{pool.preemptions_rps:.2f} preemptions/s"
    # A queue is an emergency when the pool falls behind by a material share of its arrivals and more
    # than one request waits per replica. A prefill pool runs a handful of prompts at a time, so a few
    # waiting requests and a queue that grows by 0.1 req/s at 50 req/s are noise, not a shortfall.
    growth = pool.queue_growth_rps or 0.0
    material = max(QUEUE_GROWTH_SHARE * (pool.request_rate_rps or 0.0), QUEUE_GROWTH_MIN_RPS)
    if growth > material and (pool.waiting or 0) > max(pool.pods_reporting or 1, 1):
        return f"queue growing {growth:.2f} req/s ({pool.waiting:.0f} waiting)"
    return ""


def autoscale(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, obs: Observation | None,
              current: dict[str, int], state: AutoscalerState, now: dt.datetime,
              immediate: bool = False, shape: RunningShape | None = None) -> AutoscaleResult:
    """Decide replicas per pool. `current`: replicas of each pool's Deployment now (pods still
    starting included). `obs` None: no metrics source configured. `immediate`: a person changed
    the spec; its plan applies at once (bounds still hold), without stabilization or rate limits."""
    state = dataclasses.replace(state, recommendations=list(state.recommendations),
                                scale_events=list(state.scale_events))
    have_metrics = obs is not None and obs.available
    outage = obs is not None and not obs.available
    if have_metrics:
        state.metrics_seen = True
        state.metrics_since = state.metrics_since or _iso(now)
    long_window_full = (obs is not None and state.metrics_since is not None
                        and (now - _parse(state.metrics_since)).total_seconds() >= obs.long_window_s)
    demand = estimate_demand(spec, obs, long_window_full)
    workload = observed_workload(spec, obs, demand.rate_rps)

    eff = scaled_efficiency(state.step_time_scale, resolved.efficiency)
    keep = None if immediate else shape
    rec = recommend_keeping(spec, resolved, workload, eff, keep)
    # Calibrate against what the model predicts for the pools as they run now, at the observed load.
    if have_metrics and obs is not None:
        serving = obs.serving_pool()
        decoding = rec.pool("aggregated") or rec.pool("decode")
        # Per-replica load over the replicas that serve: pods still loading weights export no
        # metrics and take no requests, so counting them would under-state the load per replica.
        replicas_now = (serving.pods_reporting if serving is not None and serving.pods_reporting
                        else current.get(decoding.role, 0) if decoding is not None else 0)
        if serving is not None and serving.request_rate_rps and decoding is not None and replicas_now:
            # At the observed batch (running ÷ serving replicas): the completion rate lags a load step.
            batch = (serving.running or 0.0) / replicas_now
            predicted = predicted_mean_step_ms(resolved, decoding, workload, serving.request_rate_rps / replicas_now,
                                               eff, batch if batch >= 1.0 else None)
            scale = calibrate(state, predicted, serving)
            if abs(scale - state.step_time_scale) > 1e-3:
                state.step_time_scale = scale
                eff = scaled_efficiency(scale, resolved.efficiency)
                rec = recommend_keeping(spec, resolved, workload, eff, keep)

    if outage:
        metrics_message = f"metrics unavailable, holding replicas: {obs.error if obs else ''}"
    elif have_metrics:
        metrics_message = f"live metrics: {demand.note}"
    else:
        metrics_message = f"no metrics source: planning for spec.workload hints ({spec.workload.request_rate:g} req/s)"
    # Holding on an outage only makes sense once something runs; before that, plan from hints.
    hold_all = outage and state.metrics_seen

    recorded = {p.role: p.replicas for p in rec.pools}
    state.recommendations.append({"time": _iso(now), "replicas": recorded})
    longest = max(spec.scaling.scale_down_stabilization_seconds, spec.scaling.scale_up_stabilization_seconds,
                  RATE_LIMIT_PERIOD_S)
    # Keep the window plus the newest entry before it: that entry proves the history reaches back
    # a full window even when reconciles do not land on exact multiples of it.
    cutoff = now - dt.timedelta(seconds=longest)
    older = [h for h in state.recommendations if _parse(h["time"]) < cutoff]
    state.recommendations = older[-1:] + [h for h in state.recommendations if _parse(h["time"]) >= cutoff]
    history_start = _parse(state.recommendations[0]["time"])
    history_covers_down_window = (now - history_start).total_seconds() >= spec.scaling.scale_down_stabilization_seconds

    decisions = []
    for p in rec.pools:
        role = p.role
        bounds = getattr(spec.scaling, role)
        cur = current.get(role)
        if cur is None:  # a new pool (first plan, or a mode change): start where the model says
            decisions.append(PoolDecision(role, 0, p.replicas, p.replicas, "ScaleUp",
                                          f"{role} 0→{p.replicas}: {_why(p.role, rec, demand)}"))
            continue
        pool_metrics = obs.pools.get(role) if have_metrics and obs is not None else None
        emergency = _emergency(pool_metrics) if have_metrics else ""
        if hold_all:
            decisions.append(PoolDecision(role, cur, p.replicas, cur, "Hold",
                                          f"{role} holds {cur}: {metrics_message}"))
            continue
        if immediate:
            target = min(max(p.replicas, bounds.min_replicas), bounds.max_replicas)
            verb = "→".join((str(cur), str(target)))
            decisions.append(PoolDecision(role, cur, p.replicas, target, "SpecChanged" if target != cur else "Hold",
                                          f"{role} {verb} after a spec change: {_why(role, rec, demand)}"))
            continue
        target, reason, message = p.replicas, "", ""
        if p.replicas > cur:
            window = _window(state.recommendations, now, spec.scaling.scale_up_stabilization_seconds, role)
            target = min(window) if window else p.replicas
            target = max(target, cur)
        elif p.replicas < cur:
            window = _window(state.recommendations, now, spec.scaling.scale_down_stabilization_seconds, role)
            target = max(window) if window else cur
            target = min(target, cur)
            if not history_covers_down_window and target < cur:
                target, reason = cur, "Stabilizing"
                message = (f"{role} stays at {cur}: the model asks {p.replicas}, but recommendations since "
                           f"{_iso(history_start)} do not cover the {spec.scaling.scale_down_stabilization_seconds} s "
                           "scale-down window yet")
        # Replicas asked for earlier and still loading (no metrics yet) are capacity on its way: an
        # emergency adds one more only when none is, or every decision of a cold start would add one.
        reporting = pool_metrics.pods_reporting if pool_metrics is not None else None
        starting = cur - reporting if reporting is not None else 0
        if emergency and target <= cur and starting > 0:
            target, reason = cur, "Hold"
            message = f"{role} stays at {cur}: {emergency}, and {starting} replica(s) are still starting"
        elif emergency and target <= cur:
            target = cur + 1
            reason, message = "Emergency", f"{role} {cur}→{cur + 1} now: {emergency}"
        if not reason and target != cur and abs(target - cur) / cur <= spec.scaling.tolerance:
            target, reason = cur, "WithinTolerance"
            message = (f"{role} stays at {cur}: the model asks {p.replicas}, within the "
                       f"{spec.scaling.tolerance:.0%} tolerance")
        # Rate limits (a per-minute budget measured from the replicas a minute ago).
        base = _base_for_rate_limit(state, now, role, cur)
        up_limit = base + max(1, math.ceil(base * spec.scaling.scale_up_max_percent_per_minute / 100))
        down_limit = base - max(1, math.floor(base * spec.scaling.scale_down_max_percent_per_minute / 100))
        # A limit only slows a move down, never turns it around: counted from the replicas a minute
        # ago, it could otherwise make a scale-up 6→2 right after a person moved the pool 1→6.
        if target > cur:
            limited = max(cur, min(target, up_limit))
        elif target < cur:
            limited = min(cur, max(target, down_limit))
        else:
            limited = target
        if limited != target:
            target, reason = limited, "RateLimited"
            message = (f"{role} {cur}→{limited}: {_why(role, rec, demand)}; the model asks {p.replicas}, "
                       f"the rate limit allows {limited} this minute")
        clamped = min(max(target, bounds.min_replicas), bounds.max_replicas)
        if clamped != target:
            target = clamped
            message = (message + "; " if message else "") + f"clamped to [{bounds.min_replicas}, {bounds.max_replicas}]"
        if not reason:
            if target > cur:
                reason, message = "ScaleUp", f"{role} {cur}→{target}: {_why(role, rec, demand)}"
            elif target < cur:
                reason, message = "ScaleDown", f"{role} {cur}→{target}: {_why(role, rec, demand)}"
            else:
                reason = "Hold"
                if p.replicas != cur:
                    message = (f"{role} stays at {cur}: the model asks {p.replicas}; waiting for the "
                               "stabilization window")
                else:
                    message = f"{role} stays at {cur}: {_why(role, rec, demand)}"
        decisions.append(PoolDecision(role, cur, p.replicas, target, reason, message))

    # An emergency target is remembered like a recommendation, so the stabilization window keeps the
    # replicas it added while they start instead of letting the next decision take them away.
    for d in decisions:
        if d.reason == "Emergency":
            recorded[d.role] = max(recorded.get(d.role, 0), d.target)
    # New pools (current 0) start at their plan: they are not a step the rate limit counts.
    # A person's spec edit is not a step of the autoscaler's per-minute budget.
    changed = {d.role: d.target for d in decisions
               if d.target != d.current and d.current > 0 and d.reason != "SpecChanged"}
    if changed:
        state.scale_events.append({"time": _iso(now), "replicas": changed,
                                   "before": {d.role: d.current for d in decisions if d.role in changed}})
    state.scale_events = [e for e in state.scale_events
                          if _parse(e["time"]) >= now - dt.timedelta(seconds=RATE_LIMIT_PERIOD_S)]
    final = _with_targets(rec, decisions)
    return AutoscaleResult(final, tuple(decisions), demand, state, have_metrics, metrics_message, eff)


def _why(role: str, rec: Recommendation, demand: DemandEstimate) -> str:
    p = rec.pool(role)
    assert p is not None
    source = "forecast" if demand.source == "metrics" else "hinted"
    latency = f"ITL {rec.predicted_itl_ms:.1f} ms" if role != "prefill" else f"TTFT {rec.predicted_ttft_ms:.0f} ms"
    horizon = f" in {demand.horizon_s:.0f} s" if demand.source == "metrics" and demand.horizon_s else ""
    return (f"{source} {demand.rate_rps:.2f} req/s{horizon} needs {demand.rate_rps / max(p.goodput_rps, 1e-9):.1f} "
            f"replicas at {p.goodput_rps:.2f} req/s each ({latency} predicted; then {p.limit})")


def _with_targets(rec: Recommendation, decisions: list[PoolDecision]) -> Recommendation:
    targets = {d.role: d.target for d in decisions}
    pools = tuple(dataclasses.replace(p, replicas=targets.get(p.role, p.replicas)) for p in rec.pools)
    gpus = sum(p.tp * p.replicas for p in pools)
    served = min((p.replicas * p.goodput_rps for p in pools), default=0.0)
    price = rec.usd_per_hour / rec.gpus if rec.gpus else 0.0
    return dataclasses.replace(rec, pools=pools, gpus=gpus, usd_per_hour=gpus * price, served_rps=served)
