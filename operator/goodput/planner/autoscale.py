"""The planner's one entry point: from the whole observation to replicas per pool, with reasons.

    result = autoscale(PlannerInput(spec, resolved, observation, pods, current, state, now, ...))

Pure: `now` is passed in, nothing is read or written. The operator's reconcile
(`goodput.render.reconcile`) and the simulator's goodput policy (`goodput.sim.policies.GoodputPolicy`)
call this same function with the same inputs: the metrics (`Observation`, None when no source is
configured), the pods of every pool as the cluster shows them (running, ready, pending), the
replicas last decided, the planner's own history (`AutoscalerState`, kept in
``status.autoscaler``), and the shape the fleet runs (mode, TP, engine arguments).

The steps, in order, each named for what it does (every number comes with its reason):

1. **demand** (`estimate_demand`, `observed_workload`): the short-window arrival rate
   (completions plus queue growth), forecast over the cold start along the trend between the long
   and the short window once metrics cover a whole long window; the larger (safer) of that forecast
   and the long-window rate is planned for. Lengths from the observed histograms. Without metrics
   ever seen: the spec's workload hints.
2. **calibration** (`goodput.planner.calibration`): decode step, prefill throughput, the TTFT
   queueing term and KV capacity, each from vLLM's own metrics for the pools as they run, bounded,
   smoothed, trusted only with evidence. The model then plans with the calibrated factors and the
   TTFT target divided by the queueing term.
3. **recommendation** (`recommend`): the cheapest configuration for the demand; metric-driven
   decisions keep the running mode and TP. Where no configuration meets the SLOs on the engines
   as calibrated (an ITL below the batch-1 step, say), the plan is for the closest SLOs they can
   meet, and the result says so (`unattainable`): more replicas cannot buy what one replica cannot do.
4. **engine arguments** (`goodput.planner.engine_args`): --max-num-seqs for the range the fleet
   scales over; on a running fleet the running arguments are kept unless a rollout pays for itself.
5. **SLO headroom**: the model's count times what earlier SLO misses taught (step 7), decaying once
   the pool is comfortably within its SLOs.
6. **stabilization** (`goodput.planner.stabilize`): HPA windows, tolerance, rate limits, emergencies.
7. **SLO feedback** (`goodput.planner.slo`): a pool whose observed TTFT or ITL percentile is over
   its SLO while the model says it is not gets capacity on the observation (reason ``SLOMiss``);
   no pool is scaled down while it misses its SLO.
8. **outage hold**, 9. **settling**, 10. **capacity cap** (`goodput.planner.guards`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from goodput.api.times import parse_status_time, status_time
from goodput.api.v1alpha1 import InferenceDeploymentSpec, PlanStatus
from goodput.api.vocabulary import Reason
from goodput.engine.vllm_metrics import build_1_2_5_buckets
from goodput.model.efficiency import Efficiency, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.workload import SLO, LengthDistribution, Workload, p99_behind_bucketed_quantile
from goodput.planner import calibration as cal_terms
from goodput.planner import engine_args, guards
from goodput.planner.burst import LEVEL_NAMES, SCV_MAX, RiseHistory, headroom, observe_rate, per_replica_scv
from goodput.planner.calibration import Calibration, PoolConfig
from goodput.planner.coldstart import ColdStarts
from goodput.planner.observation import Observation, PoolMetrics, PoolObservation
from goodput.planner.recommend import (
    Recommendation,
    ResolvedSpec,
    hinted_workload,
    max_model_len,
    recommend,
)
from goodput.planner.slo import SloReading, feedback, slo_readings
from goodput.planner.stabilize import (
    RATE_LIMIT_PERIOD_S,
    DemandEstimate,
    History,
    PoolDecision,
    compact_recommendations,
    stabilize,
)

__all__ = ["AutoscaleResult", "AutoscalerState", "DemandEstimate", "PlannerInput", "PoolDecision", "RunningShape",
           "autoscale", "estimate_demand", "observed_workload", "recommend_keeping", "scaled_efficiency"]

# Relaxations tried, in order, when no configuration meets the SLOs on the calibrated engines.
SLO_RELAXATIONS = (1.25, 1.5, 2.0, 3.0, 4.0)
DECODE_SEQS_PROBE = 1024  # the largest batch a decode replica is asked about (sizing.DECODE_MAX_NUM_SEQS)


@dataclass
class AutoscalerState:
    """Kept in status.autoscaler so that decisions survive an operator restart."""

    recommendations: list[dict[str, Any]] = field(default_factory=list)  # {"time": iso, "replicas": {role: n}}
    scale_events: list[dict[str, Any]] = field(default_factory=list)  # {"time", "replicas", "before"}
    calibration: Calibration = field(default_factory=Calibration)
    metrics_seen: bool = False
    metrics_since: str | None = None  # when metrics were first available: the trend needs a full long window
    metrics_available: bool = False  # at the last decision
    available_since: str | None = None  # since when they are available without a gap (settling)
    slo_headroom: dict[str, tuple[float, str]] = field(default_factory=dict)  # role -> (factor, since)
    last_rollout: str | None = None
    rollout_candidates: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)  # role -> (args, since)
    burst: RiseHistory = field(default_factory=RiseHistory)  # rises over one cold start (goodput.planner.burst)
    cold_starts: ColdStarts = field(default_factory=ColdStarts)  # measured pod starts (goodput.planner.coldstart)

    @property
    def step_time_scale(self) -> float:
        """The decode step-time scale (the one calibration term older operators had)."""
        return self.calibration.scale("decode")

    @classmethod
    def from_status(cls, data: dict[str, Any] | None) -> AutoscalerState:
        data = data or {}

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        legacy = data.get("stepTimeScale")
        legacy_scale = float(legacy) if isinstance(legacy, int | float) and math.isfinite(legacy) else None
        headroom: dict[str, tuple[float, str]] = {}
        for role, v in (data.get("sloHeadroom") or {}).items():
            if isinstance(v, dict) and isinstance(v.get("factor"), int | float) and isinstance(v.get("since"), str):
                headroom[str(role)] = (min(max(float(v["factor"]), 1.0), 2.0), v["since"])
        candidates: dict[str, tuple[tuple[int, int], str]] = {}
        for role, v in (data.get("rolloutCandidates") or {}).items():
            args = v.get("args") if isinstance(v, dict) else None
            if isinstance(args, list) and len(args) == 2 and all(isinstance(a, int) for a in args) \
                    and isinstance(v.get("since"), str):
                candidates[str(role)] = ((int(args[0]), int(args[1])), v["since"])
        return cls(
            recommendations=list(data.get("recommendations", [])),
            scale_events=list(data.get("scaleEvents", [])),
            calibration=Calibration.from_status(data.get("calibration"), legacy_scale),
            metrics_seen=bool(data.get("metricsSeen", False)),
            metrics_since=text("metricsSince"),
            metrics_available=bool(data.get("metricsAvailable", False)),
            available_since=text("availableSince"),
            slo_headroom=headroom,
            last_rollout=text("lastRollout"),
            rollout_candidates=candidates,
            burst=RiseHistory.from_status(data.get("burst")),
            cold_starts=ColdStarts.from_status(data.get("coldStarts")),
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recommendations": self.recommendations, "scaleEvents": self.scale_events,
                               "stepTimeScale": round(self.step_time_scale, 4),
                               "calibration": self.calibration.to_status(),
                               "metricsSeen": self.metrics_seen, "metricsAvailable": self.metrics_available}
        for key, value in (("metricsSince", self.metrics_since), ("availableSince", self.available_since),
                           ("lastRollout", self.last_rollout)):
            if value:
                out[key] = value
        if self.rollout_candidates:
            out["rolloutCandidates"] = {role: {"args": list(args), "since": since}
                                        for role, (args, since) in sorted(self.rollout_candidates.items())}
        if self.burst.updated is not None:
            out["burst"] = self.burst.to_status()
        if self.cold_starts.samples:
            out["coldStarts"] = self.cold_starts.to_status()
        if self.slo_headroom:
            out["sloHeadroom"] = {role: {"factor": round(f, 4), "since": since}
                                  for role, (f, since) in sorted(self.slo_headroom.items())}
        return out

    def copy(self) -> AutoscalerState:
        return dataclasses.replace(self, recommendations=list(self.recommendations),
                                   scale_events=list(self.scale_events), slo_headroom=dict(self.slo_headroom),
                                   rollout_candidates=dict(self.rollout_candidates), burst=self.burst.copy())


def estimate_demand(spec: InferenceDeploymentSpec, obs: Observation | None, long_window_full: bool = True,
                    cold_start: tuple[float, str] | None = None) -> DemandEstimate:
    """The demand to size for: the short-window arrival rate, projected over the cold start when
    it rises. ``cold_start``: the horizon and its reason when measured from pods
    (`goodput.planner.coldstart`); the spec's coldStartSeconds otherwise."""
    horizon, measured = cold_start if cold_start is not None else (float(spec.scaling.cold_start_seconds), "")
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
    if measured:
        note += f" ({measured})"
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


def entry_pool(obs: Observation) -> tuple[str, PoolMetrics | None, PoolMetrics | None]:
    """The pool whose queue every prompt waits in first (prefill when disaggregated): its short-
    and long-window metrics."""
    role = "prefill" if "prefill" in obs.pools or "prefill" in obs.long_pools else (
        "aggregated" if "aggregated" in obs.pools or "aggregated" in obs.long_pools else "decode")
    return role, obs.pools.get(role), obs.long_pools.get(role)


def arrival_scv(obs: Observation | None, bound: float) -> tuple[float, str]:
    """ca² per replica for the TTFT queueing term, from the entry pool's dispersion of arrivals
    over the long window spread over its replicas (`goodput.planner.burst.per_replica_scv`);
    Poisson (1) when unmeasured. With the reading, in words."""
    if obs is None or not obs.available:
        return 1.0, ""
    role, short, long = entry_pool(obs)
    index = long.arrival_dispersion if long is not None else None
    pods = short.pods_reporting if short is not None else None
    if index is None or not pods:
        return 1.0, ""
    scv = per_replica_scv(index, pods, bound)
    raw = per_replica_scv(index, pods, SCV_MAX)
    held = f" (planned with {scv:.2f}: spec.scaling.maxArrivalScv)" if raw > scv + 1e-6 else ""
    return scv, (f"arrivals {index:.1f}x as dispersed as Poisson per 30 s over {obs.long_window_s:.0f} s, "
                 f"ca² {raw:.2f} per {role} replica{held}")


def with_burst_headroom(spec: InferenceDeploymentSpec, demand: DemandEstimate, obs: Observation | None,
                        state: AutoscalerState, now: dt.datetime, learn: bool) -> DemandEstimate:
    """Record this decision's load in the rise history (`learn`: metrics available) and hold the
    spec's quantile of the rise over one cold start from this load level."""
    if not learn or obs is None or demand.source != "metrics":
        return demand
    serving = obs.serving_pool()
    seen = serving.arrival_rate_rps if serving is not None else None
    if seen is None:
        return demand
    horizon = demand.horizon_s or float(spec.scaling.cold_start_seconds)
    state.burst = observe_rate(state.burst, now, seen, demand.rate_rps, horizon)
    q = spec.scaling.burst_quantile
    h = headroom(state.burst, demand.rate_rps, q)
    if q <= 0 or not h.active:
        return demand
    capped = " (capped at the highest load seen)" if h.target_rps < demand.rate_rps * h.rise - 1e-6 else ""
    note = (f"{q * 100:g}th-percentile rise over {horizon:.0f} s from a {LEVEL_NAMES[h.level]} load is "
            f"{h.rise:.2f}x ({h.evidence:.0f} cold starts of history){capped}")
    return dataclasses.replace(demand, rate_rps=h.target_rps, base_rps=demand.rate_rps, burst_note=note,
                               note=f"{demand.note}; held at {h.target_rps:.2f} req/s for bursts: {note}")


@dataclass(frozen=True)
class RunningShape:
    """What runs now and is kept by metric-driven decisions: mode, TP per pool, engine arguments."""

    mode: str
    tp: dict[str, int]
    engine_args: dict[str, tuple[int, int]]  # role -> (max_num_batched_tokens, max_num_seqs)

    @classmethod
    def from_plan(cls, plan: PlanStatus | None) -> RunningShape | None:
        if plan is None:
            return None
        return cls(plan.mode, plan.pool_tp(), plan.pool_engine_args())

    def pools(self) -> dict[str, PoolConfig]:
        """The pools whose engine arguments are known: what calibration predicts for."""
        return {role: PoolConfig(role, tp, *self.engine_args[role]) for role, tp in self.tp.items()
                if role in self.engine_args}


def recommend_keeping(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, workload: Workload,
                      eff: Efficiency, shape: RunningShape | None) -> Recommendation:
    """`recommend`, restricted to the running mode and TP degrees (engine arguments: `keep_args`)."""
    if shape is None:
        return recommend(spec, resolved, workload, eff)
    try:
        pinned_spec = spec.model_copy(update={"mode": shape.mode})
        pinned = dataclasses.replace(resolved, tp_degrees=tuple(sorted(set(shape.tp.values()))),
                                     pool_tp=tuple(sorted(shape.tp.items())))
        return recommend(pinned_spec, pinned, workload, eff)
    except CapacityModelError:
        return recommend(spec, resolved, workload, eff)  # the running shape cannot be planned any more


@dataclass(frozen=True)
class PlannerInput:
    """Everything the planner sees. The operator builds it from status, the cluster and Prometheus;
    the simulator from its fleet; `autoscale` cannot tell them apart."""

    spec: InferenceDeploymentSpec
    resolved: ResolvedSpec
    observation: Observation | None  # None: no metrics source configured
    pods: Mapping[str, PoolObservation]  # per pool, the Deployment's replicas, ready and pending pods
    current: Mapping[str, int]  # replicas last decided per pool (pods still starting included)
    state: AutoscalerState
    now: dt.datetime
    spec_changed: bool = False  # a person edited the spec: its plan applies at once (bounds hold)
    shape: RunningShape | None = None  # what runs; None before the first plan


@dataclass(frozen=True)
class AutoscaleResult:
    recommendation: Recommendation
    pools: tuple[PoolDecision, ...]
    demand: DemandEstimate
    state: AutoscalerState
    metrics_available: bool
    metrics_message: str
    efficiency: Efficiency
    slo: tuple[SloReading, ...] = ()  # the observed SLO percentiles, with the model's prediction
    unattainable: dict[str, str] = field(default_factory=dict)  # "TTFT"/"ITL" -> why no replica count meets it
    rollouts: tuple[engine_args.Rollout, ...] = ()  # engine-argument changes that pay for themselves
    structural: bool = False  # a first plan, a mode or TP change: not a replica count step
    steps: tuple[str, ...] = ()  # the named steps that changed a decision, in order


def scaled_efficiency(scale: float, base: Efficiency | None = None) -> Efficiency:
    """The efficiency factors with every step `scale` times slower (or faster)."""
    return (base or calibrated_efficiency()).slower(scale)


# --- the steps ---------------------------------------------------------------------------------
def track_availability(state: AutoscalerState, obs: Observation | None, now: dt.datetime) -> None:
    """Metrics seen, since when, and since when without a gap (for settling and calibration)."""
    have = obs is not None and obs.available
    if have:
        state.metrics_seen = True
        state.metrics_since = state.metrics_since or status_time(now)
        if not state.metrics_available or state.available_since is None:
            state.available_since = status_time(now)
    else:
        state.available_since = None
    state.metrics_available = have


def batch_fluctuation_ms(resolved: ResolvedSpec, workload: Workload, eff: Efficiency, tp: int) -> float:
    """How much the decode step grows between the batch a decode replica is sized for and the batch
    it meets at the SLO percentile. The model sizes a decode replica for its mean batch (Little's
    law), but the sequences in decode at once are a count of independent requests: Poisson about
    that mean (M/G/inf), so at the SLO percentile the batch is z standard deviations larger. A
    decode pool sized to its ITL-bound goodput runs into the ITL target at the mean batch, and every
    request misses at once when the batch swings up: the cliff needs this margin, whatever the model's
    other errors."""
    z = NormalDist().inv_cdf(resolved.slo.quantile)
    r = cal_terms.replica(resolved, PoolConfig("decode", tp, DECODE_SEQS_PROBE, DECODE_SEQS_PROBE), eff)
    context = workload.input_len.mean + workload.output_len.mean_square / (2.0 * max(workload.output_len.mean, 1.0))
    at_slo = engine_args.max_batch_within_itl(r, workload, resolved.slo.itl_ms, DECODE_SEQS_PROBE)
    if at_slo < 4:
        return 0.0
    # The mean batch whose percentile reaches the SLO's batch: b + z sqrt(b) = at_slo.
    planned = ((-z + math.sqrt(z * z + 4.0 * at_slo)) / 2.0) ** 2
    return float(r.decode_step_s(float(at_slo), context) - r.decode_step_s(planned, context)) * 1e3


def planning_resolved(resolved: ResolvedSpec, cal: Calibration, margin_ms: float = 0.0) -> ResolvedSpec:
    """The SLOs the model sizes for: the TTFT target divided by the calibrated queueing term, and the
    ITL target divided by the calibrated tail term, less the batch-fluctuation margin of a decode
    pool (`batch_fluctuation_ms`)."""
    q, tail = cal.scale("ttft"), cal.scale("itl")
    if abs(q - 1.0) < 1e-6 and abs(tail - 1.0) < 1e-6 and margin_ms <= 0.0:
        return resolved
    slo = resolved.slo
    itl = max(slo.itl_ms / tail - margin_ms, slo.itl_ms * 0.5)
    return dataclasses.replace(resolved, slo=SLO(slo.ttft_ms / q, itl, slo.percentile))


def unattainable_slos(resolved: ResolvedSpec, rec: Recommendation, workload: Workload, eff: Efficiency,
                      cal: Calibration) -> dict[str, str]:
    """The SLOs no replica count can meet on the engines as calibrated: one sequence's decode step
    over the ITL target, or one p99 prompt's prefill alone over the TTFT target."""
    out: dict[str, str] = {}
    slo = resolved.slo
    context = workload.input_len.mean + workload.output_len.mean
    for p in rec.pools:
        r = cal_terms.replica(resolved, PoolConfig(p.role, p.tp, p.max_num_batched_tokens, p.max_num_seqs), eff)
        if p.role != "prefill":
            step = float(r.decode_step_s(1.0, context)) * 1e3
            if step > slo.itl_ms:
                out["ITL"] = (f"one sequence alone takes {step:.1f} ms per token at TP{p.tp} on these engines "
                              f"(decode steps ×{cal.scale('decode'):.2f} the model's, calibrated), over the "
                              f"{slo.itl_ms:g} ms ITL target")
        if p.role != "decode":
            prompt = workload.input_len.quantile(slo.quantile) * (1.0 - workload.prefix_cache_hit_rate)
            alone = float(r.prefill_s(1.0, max(prompt, 1.0))) * 1e3
            if alone > slo.ttft_ms:
                out["TTFT"] = (f"a {slo.label} prompt ({prompt:.0f} tokens) alone takes {alone:.0f} ms to prefill "
                               f"at TP{p.tp} on these engines (prefill ×{cal.scale('prefill'):.2f} the model's, "
                               f"calibrated), over the {slo.ttft_ms:g} ms TTFT target")
    return out


def recommend_for(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, workload: Workload, eff: Efficiency,
                  keep: RunningShape | None, cal: Calibration) -> tuple[Recommendation, str, ResolvedSpec]:
    """The recommendation, (non-empty) why it is for relaxed SLOs: on the engines as calibrated no
    configuration meets the SLOs, so it is sized for the closest ones they can meet; and the spec
    with the SLOs it was sized for (what a kept pool's capacity is computed for too). A spec that
    no engine could serve even as modelled is still an error."""
    target = planning_resolved(resolved, cal)
    try:
        rec = recommend_keeping(spec, target, workload, eff, keep)
        decode = rec.pool("decode")
        if decode is None:
            return rec, "", target
        margin = batch_fluctuation_ms(resolved, workload, eff, decode.tp)
        if margin <= 0.0:
            return rec, "", target
        with_margin = planning_resolved(resolved, cal, margin)
        try:
            return recommend_keeping(spec, with_margin, workload, eff, keep), "", with_margin
        except CapacityModelError:
            return rec, "", target  # no room for the margin: the plan without it
    except CapacityModelError as exc:
        calibrated = any(abs(t.scale - 1.0) > 0.01 for t in cal.terms.values())
        if not calibrated:
            raise
        first = str(exc)
    slo = target.slo
    for factor in SLO_RELAXATIONS:
        relaxed = dataclasses.replace(target, slo=SLO(slo.ttft_ms * factor, slo.itl_ms * factor, slo.percentile))
        try:
            rec = recommend_keeping(spec, relaxed, workload, eff, keep)
        except CapacityModelError:
            continue
        return rec, (f"no configuration meets the SLOs on these engines as calibrated ({first}); sized for "
                     f"TTFT {slo.label} ≤ {relaxed.slo.ttft_ms:.0f} ms and ITL ≤ {relaxed.slo.itl_ms:.1f} ms, the "
                     f"closest they meet"), relaxed
    raise CapacityModelError(first)


def plan_with_prior(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, workload: Workload, base: Efficiency,
                    keep: RunningShape | None, cal: Calibration,
                    ) -> tuple[Recommendation, str, ResolvedSpec, Efficiency, str]:
    """`recommend_for` on the engines the plan sizes for: the calibration with what is left of the
    pessimistic prior (`Calibration.planning`). Where the prior alone would make the SLOs look
    unattainable, the plan is the calibrated model's own: a prior is caution, not evidence.
    Returns the recommendation, why it is relaxed (""), the spec it was sized for, the efficiency
    used and the prior's clause for the decisions' reasons ("" when none applied)."""
    margin = spec.scaling.uncalibrated_margin
    planning = cal.planning(margin)
    eff = planning.efficiency(base)
    rec, relaxed, sized_for = recommend_for(spec, resolved, workload, eff, keep, planning)
    note = cal.prior_note(margin)
    if relaxed and note:
        plain = cal.efficiency(base)
        rec0, relaxed0, sized_for0 = recommend_for(spec, resolved, workload, plain, keep, cal)
        if not relaxed0:
            return rec0, relaxed0, sized_for0, plain, ""
    return rec, relaxed, sized_for, eff, note


def keep_args(rec: Recommendation, inp: PlannerInput, workload: Workload, eff: Efficiency,
              state: AutoscalerState, cold_start_s: float, sized_for: ResolvedSpec | None = None,
              ) -> tuple[Recommendation, tuple[engine_args.Rollout, ...]]:
    """Metric-driven decisions keep the running engine arguments (a change restarts every pod),
    unless a rollout pays for itself (`goodput.planner.engine_args`; ``cold_start_s``: what each
    restarted pod costs, the horizon the demand was planned over); a kept pool's capacity is the
    running arguments' own. A pool with no replicas running keeps nothing: no pod restarts."""
    shape, obs = inp.shape, inp.observation
    target = sized_for or inp.resolved
    if shape is None or inp.spec_changed:
        state.rollout_candidates.clear()
        return rec, ()
    # A rollout restarts every pod: the case for it must hold for a whole scale-down window first.
    settle_s = max(float(inp.spec.scaling.scale_down_stabilization_seconds), engine_args.ROLLOUT_EVIDENCE_S)
    cooling = (state.last_rollout is not None
               and (inp.now - parse_status_time(state.last_rollout)).total_seconds() < engine_args.ROLLOUT_COOLDOWN_S)
    live = obs is not None and obs.available
    pools, rollouts = [], []
    for p in rec.pools:
        running = shape.engine_args.get(p.role)
        # Kept arguments save a restart of the pods that run them: a pool with none running (the
        # first plan, a new pool) has nothing to restart and starts with the arguments planned for it.
        if running is None or shape.tp.get(p.role) != p.tp or running == (p.max_num_batched_tokens, p.max_num_seqs) \
                or inp.current.get(p.role, 0) <= 0:
            pools.append(p)
            continue
        why = ""
        wanted = (p.max_num_batched_tokens, p.max_num_seqs)
        if live and not cooling:
            pm = obs.pools.get(p.role) if obs is not None else None
            why = engine_args.batch_at_cap(pm, running[1]) or engine_args.rollout_gain(
                target, p, workload, eff, running, inp.current.get(p.role, p.replicas),
                cold_start_s, rec.demand_rps)
        if why and _persistent(state, p.role, wanted, inp.now, settle_s):
            change = engine_args.changed_args(running, wanted)
            rollouts.append(engine_args.Rollout(p.role, wanted, f"{p.role} {change}: {why}"))
            pools.append(p)
            continue
        if not why:
            state.rollout_candidates.pop(p.role, None)
        kept = dataclasses.replace(p, max_num_batched_tokens=running[0], max_num_seqs=running[1])
        # For the SLOs the plan sized for (calibrated TTFT and ITL terms, the batch margin), not the raw ones.
        goodput = engine_args.goodput_with_args(target, p, workload, eff, *running)
        if goodput is not None and goodput > 0:
            bounds = getattr(inp.spec.scaling, p.role)
            need = max(1, math.ceil(rec.demand_rps / goodput - 1e-9))
            kept = dataclasses.replace(kept, goodput_rps=goodput,
                                       replicas=min(max(need, bounds.min_replicas), bounds.max_replicas))
        pools.append(kept)
    if rollouts:
        state.last_rollout = status_time(inp.now)
        state.rollout_candidates.clear()
    return with_pools(rec, tuple(pools)), tuple(rollouts)


def _persistent(state: AutoscalerState, role: str, wanted: tuple[int, int], now: dt.datetime,
                seconds: float) -> bool:
    """The same arguments have been worth a rollout for `seconds` (remembered from call to call)."""
    since = state.rollout_candidates.get(role)
    if since is None or since[0] != wanted:
        state.rollout_candidates[role] = (wanted, status_time(now))
        return False
    return (now - parse_status_time(since[1])).total_seconds() >= seconds


def with_pools(rec: Recommendation, pools: tuple[Any, ...]) -> Recommendation:
    """`rec` with its pools replaced, GPUs, cost and served rate recomputed."""
    gpus = sum(p.tp * p.replicas for p in pools)
    price = rec.usd_per_hour / rec.gpus if rec.gpus else 0.0
    served = min((p.replicas * p.goodput_rps for p in pools), default=0.0)
    return dataclasses.replace(rec, pools=pools, gpus=gpus, usd_per_hour=gpus * price, served_rps=served)


def with_headroom(rec: Recommendation, spec: InferenceDeploymentSpec, headroom: Mapping[str, float]) -> Recommendation:
    """The model's counts times the factors earlier SLO misses left (within maxReplicas)."""
    if not any(f > 1.0 + 1e-9 for f in headroom.values()):
        return rec
    pools = []
    for p in rec.pools:
        f = headroom.get(p.role, 1.0)
        n = min(math.ceil(p.replicas * f - 1e-9), getattr(spec.scaling, p.role).max_replicas)
        pools.append(dataclasses.replace(p, replicas=max(n, p.replicas)))
    return with_pools(rec, tuple(pools))


def with_standby(rec: Recommendation, spec: InferenceDeploymentSpec,
                 gpu_usd_per_hour: float) -> tuple[Recommendation, dict[str, int]]:
    """The counts plus each pool's `standbyReplicas`, within maxReplicas and the budget (maxGpus,
    maxCostPerHour), pool by pool in plan order; the standby each pool got."""
    budget_gpus = spec.scaling.max_gpus
    if spec.scaling.max_cost_per_hour is not None and gpu_usd_per_hour > 0:
        by_cost = math.floor(spec.scaling.max_cost_per_hour / gpu_usd_per_hour + 1e-9)
        budget_gpus = by_cost if budget_gpus is None else min(budget_gpus, by_cost)
    spare = None if budget_gpus is None else budget_gpus - sum(p.tp * p.replicas for p in rec.pools)
    pools, added = [], {}
    for p in rec.pools:
        bounds = getattr(spec.scaling, p.role)
        n = max(min(bounds.standby_replicas, bounds.max_replicas - p.replicas), 0)
        if spare is not None:
            n = max(min(n, spare // p.tp), 0)
            spare -= n * p.tp
        if n:
            added[p.role] = n
        pools.append(dataclasses.replace(p, replicas=p.replicas + n))
    return (with_pools(rec, tuple(pools)) if added else rec), added


def decayed_headroom(state: AutoscalerState, readings: tuple[SloReading, ...], now: dt.datetime,
                     half_life_s: float) -> dict[str, float]:
    """Headroom factors now: halved toward 1 per half-life while a pool is comfortably within its SLOs."""
    out: dict[str, float] = {}
    for role, (factor, since) in list(state.slo_headroom.items()):
        mine = [r for r in readings if r.role == role]
        if mine and all(r.comfortable for r in mine):
            elapsed = max((now - parse_status_time(since)).total_seconds(), 0.0)
            factor = 1.0 + (factor - 1.0) * 0.5 ** (elapsed / max(half_life_s, 60.0))
            since = status_time(now)
        if factor > 1.01:
            state.slo_headroom[role] = (factor, since)
            out[role] = factor
        else:
            state.slo_headroom.pop(role, None)
    return out


def predicted_at_load(reading: SloReading, inp: PlannerInput, workload: Workload, eff: Efficiency,
                      ttft_scale: float) -> float | None:
    """The calibrated model's percentile for a pool as it runs, at its observed arrival rate."""
    obs = inp.observation
    config = (inp.shape.pools() if inp.shape is not None else {}).get(reading.role)
    pm = obs.pools.get(reading.role) if obs is not None else None
    serving = obs.serving_pool() if obs is not None else None
    if config is None or pm is None or serving is None or not pm.pods_reporting or not serving.arrival_rate_rps:
        return None
    per_replica_rps = serving.arrival_rate_rps / pm.pods_reporting
    r = cal_terms.replica(inp.resolved, config, eff)
    if reading.quantity == "TTFT":
        if reading.role == "decode":
            return None
        ttft, _ = cal_terms.predicted_ttft(r, workload, reading.role, inp.resolved, per_replica_rps)
        return ttft * ttft_scale
    return cal_terms.predicted_itl_ms(r, workload, reading.role, inp.resolved, per_replica_rps, 0.0)


def slo_feedback(decisions: list[PoolDecision], readings: tuple[SloReading, ...], rec: Recommendation,
                 inp: PlannerInput, state: AutoscalerState, unattainable: Mapping[str, str]) -> list[PoolDecision]:
    """Capacity on an observed SLO miss, and no scale-down while a pool misses (see goodput.planner.slo)."""
    out = []
    for d in decisions:
        misses = [r for r in readings if r.role == d.role and r.missing]
        pods = inp.pods.get(d.role)
        pm = inp.observation.pools.get(d.role) if inp.observation is not None else None
        reporting = pm.pods_reporting if pm is not None and pm.pods_reporting is not None else None
        starting = d.current - reporting if reporting is not None else (
            d.current - pods.ready_replicas if pods is not None else 0)
        model = rec.pool(d.role)
        fb = feedback(d.role, d.current, d.target, model.replicas if model else d.current, max(starting, 0),
                      state.slo_headroom.get(d.role, (1.0, ""))[0], misses, unattainable,
                      getattr(inp.spec.scaling, d.role).max_replicas, _readings_predate(state, d.role, inp)) \
            if d.current > 0 and d.reason != Reason.EMERGENCY else None
        if fb is None or not fb.reason:
            out.append(d)
            continue
        if fb.headroom > state.slo_headroom.get(d.role, (1.0, ""))[0]:
            state.slo_headroom[d.role] = (fb.headroom, status_time(inp.now))
        out.append(dataclasses.replace(d, target=fb.target, reason=fb.reason, message=fb.message))
    return out


def _readings_predate(state: AutoscalerState, role: str, inp: PlannerInput) -> str:
    """Why this pool's SLO readings still cover the time before its newest replica served, or ""."""
    obs = inp.observation
    seen = state.calibration.pods.get(role)
    if obs is None or seen is None:
        return ""
    n, since, rose = seen
    age_s = (inp.now - parse_status_time(since)).total_seconds()
    if not rose or age_s >= obs.window_s:
        return ""
    return (f"the {obs.window_s:.0f} s window of these readings opens before the pool rose to {n} serving "
            f"replica(s) {age_s:.0f} s ago; waiting for readings of the pool as it is")


def _history(state: AutoscalerState, spec: InferenceDeploymentSpec, now: dt.datetime) -> History:
    longest = max(spec.scaling.scale_down_stabilization_seconds, spec.scaling.scale_up_stabilization_seconds,
                  RATE_LIMIT_PERIOD_S)
    # Keep the window plus the newest entry before it: that entry proves the history reaches back
    # a full window even when reconciles do not land on exact multiples of it.
    cutoff = now - dt.timedelta(seconds=longest)
    older = [h for h in state.recommendations if parse_status_time(h["time"]) < cutoff]
    state.recommendations = older[-1:] + [h for h in state.recommendations if parse_status_time(h["time"]) >= cutoff]
    start = parse_status_time(state.recommendations[0]["time"])
    covers = (now - start).total_seconds() >= spec.scaling.scale_down_stabilization_seconds
    return History(state.recommendations, state.scale_events, covers, start)


def _structural(rec: Recommendation, shape: RunningShape | None) -> bool:
    return shape is None or rec.mode != shape.mode or any(shape.tp.get(p.role) != p.tp for p in rec.pools)


def _metrics_message(spec: InferenceDeploymentSpec, obs: Observation | None, demand: DemandEstimate) -> str:
    if obs is not None and not obs.available:
        return f"metrics unavailable, holding replicas: {obs.error or ''}"
    if obs is not None:
        return f"live metrics: {demand.note}"
    return f"no metrics source: planning for spec.workload hints ({spec.workload.request_rate:g} req/s)"


# --- the entry point -----------------------------------------------------------------------------
def autoscale(inp: PlannerInput) -> AutoscaleResult:
    """Decide replicas per pool (and engine arguments when a rollout pays) from the whole observation."""
    spec, obs, now = inp.spec, inp.observation, inp.now
    state = inp.state.copy()
    track_availability(state, obs, now)
    have_metrics = obs is not None and obs.available
    settle = guards.settling(parse_status_time(state.available_since) if state.available_since else None, obs, now)
    long_window_full = (obs is not None and state.metrics_since is not None
                        and (now - parse_status_time(state.metrics_since)).total_seconds() >= obs.long_window_s)
    state.cold_starts = state.cold_starts.observe({role: p.pod_starts for role, p in inp.pods.items()})
    cold_start = state.cold_starts.horizon(float(spec.scaling.cold_start_seconds))
    demand = estimate_demand(spec, obs, long_window_full, cold_start)
    demand = with_burst_headroom(spec, demand, obs, state, now, have_metrics and not inp.spec_changed)
    scv, scv_note = arrival_scv(obs, spec.scaling.max_arrival_scv)
    if scv_note:
        demand = dataclasses.replace(demand, arrival_scv=scv, note=f"{demand.note}; {scv_note}")
    workload = observed_workload(spec, obs, demand.rate_rps).with_arrival_scv(scv)

    base = inp.resolved.efficiency  # spec.engine's shipped factors; the calibration corrects them
    running = inp.shape.pools() if inp.shape is not None else {}
    if have_metrics and running:
        margin = (batch_fluctuation_ms(inp.resolved, workload, state.calibration.efficiency(base), running["decode"].tp)
                  if "decode" in running else 0.0)
        state.calibration = cal_terms.update(state.calibration, obs, running, inp.resolved, workload, base, now,
                                             settled=not settle, itl_margin_ms=margin)
    best = state.calibration.efficiency(base)  # the calibrated model: what "the model says" means below
    keep = None if inp.spec_changed else inp.shape
    rec, relaxed, sized_for, eff, prior = plan_with_prior(spec, inp.resolved, workload, base, keep, state.calibration)
    rec, rollouts = keep_args(rec, inp, workload, eff, state, cold_start[0], sized_for)
    ttft_scale = state.calibration.scale("ttft")
    rec = dataclasses.replace(rec, predicted_ttft_ms=rec.predicted_ttft_ms * ttft_scale)
    unattainable = unattainable_slos(inp.resolved, rec, workload, best, state.calibration) if relaxed or \
        state.calibration.terms["decode"].windows > 0 else {}
    if relaxed and not unattainable:
        unattainable = {"SLO": relaxed}

    readings: tuple[SloReading, ...] = ()
    if have_metrics and obs is not None:
        slo = inp.resolved.slo
        raw = slo_readings(obs.pools, slo.ttft_ms, slo.itl_ms, slo.quantile, slo.label)
        readings = tuple(dataclasses.replace(r, predicted_ms=predicted_at_load(r, inp, workload, best, ttft_scale))
                         for r in raw)
    headroom = decayed_headroom(state, readings, now, spec.scaling.scale_down_stabilization_seconds)
    rec = with_headroom(rec, spec, headroom)
    rec, standby = with_standby(rec, spec, inp.resolved.gpu.usd_per_gpu_hour)

    recorded = {p.role: p.replicas for p in rec.pools}
    state.recommendations.append({"time": status_time(now), "replicas": recorded})
    history = _history(state, spec, now)
    current = dict(inp.current)
    decisions = stabilize(spec, rec, demand, obs, current, history, now, inp.spec_changed, headroom, prior, standby)
    steps: list[str] = []

    def step(name: str, new: list[PoolDecision]) -> list[PoolDecision]:
        if new != decisions:
            steps.append(name)
        return new

    if have_metrics and not inp.spec_changed:
        decisions = step("slo-feedback", slo_feedback(decisions, readings, rec, inp, state, unattainable))
    hold_all = obs is not None and not obs.available and state.metrics_seen
    metrics_message = _metrics_message(spec, obs, demand)
    if hold_all:
        decisions = step("outage-hold", guards.outage_hold(decisions, metrics_message))
        recorded.update(guards.held_recommendations(recorded, current))
    elif settle:
        decisions = step("settling", guards.settling_hold(decisions, obs.window_s if obs else 0.0))
    structural = _structural(rec, inp.shape)
    if not structural:
        decisions = step("capacity-cap", guards.capacity_cap(decisions, inp.pods))

    # Targets added past the model (an emergency, SLO feedback) are remembered like a recommendation,
    # so the stabilization window keeps the replicas they added while they start.
    for d in decisions:
        if d.reason in (Reason.EMERGENCY, Reason.SLO_MISS) and d.target > d.current:
            recorded[d.role] = max(recorded.get(d.role, 0), d.target)
    # New pools (current 0) start at their plan: they are not a step the rate limit counts.
    # A person's spec edit is not a step of the autoscaler's per-minute budget.
    changed = {d.role: d.target for d in decisions
               if d.target != d.current and d.current > 0 and d.reason != Reason.SPEC_CHANGED}
    if changed:
        state.scale_events.append({"time": status_time(now), "replicas": changed,
                                   "before": {d.role: d.current for d in decisions if d.role in changed}})
    state.scale_events = [e for e in state.scale_events
                          if parse_status_time(e["time"]) >= now - dt.timedelta(seconds=RATE_LIMIT_PERIOD_S)]
    state.recommendations = compact_recommendations(state.recommendations)
    targets = {d.role: d.target for d in decisions}
    final = with_pools(rec, tuple(dataclasses.replace(p, replicas=targets.get(p.role, p.replicas))
                                  for p in rec.pools))
    return AutoscaleResult(final, tuple(decisions), demand, state, have_metrics, metrics_message, eff, readings,
                           unattainable, rollouts, structural, tuple(steps))
