"""Stabilization, tolerance, rate limits and emergencies: from the model's count to a pool's target.

Pure; Kubernetes HPA semantics. Recommendations are remembered for the longest window; scaling up
goes to the *lowest* recommendation of the scale-up window, scaling down to the *highest* of the
scale-down window. A change within `tolerance` of the current replicas is ignored. Rate limits:
per minute at most +max(1, up% of current) and -max(1, down% of current), counted from the replicas
a minute ago, and a limit only slows a move, never turns it around. An emergency (KV cache above
90%, preemptions, a growing queue) adds one replica at once, unless replicas of that pool are still
starting (capacity already on its way).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from goodput.api.times import parse_status_time, status_time
from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.api.vocabulary import Reason
from goodput.planner.observation import Observation, PoolMetrics
from goodput.planner.recommend import Recommendation

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
    target: int  # after stabilization, tolerance, rate limits, emergency, SLO feedback, guards and bounds
    reason: str  # ScaleUp, ScaleDown, Hold, Emergency, SLOMiss, Stabilizing, RateLimited, WithinTolerance, ...
    message: str


@dataclass(frozen=True)
class DemandEstimate:
    rate_rps: float
    source: str  # "metrics" or "spec.workload"
    short_rps: float | None = None
    long_rps: float | None = None
    horizon_s: float = 0.0
    note: str = ""
    base_rps: float | None = None  # the forecast before burst headroom (None: no headroom held)
    burst_note: str = ""  # the headroom's reason: the rise quantile it holds for
    arrival_scv: float = 1.0  # ca² per replica the TTFT queueing term planned with (1: Poisson)


def window(history: list[dict[str, Any]], now: dt.datetime, seconds: float, role: str) -> list[int]:
    """The recommendations in force at some moment of the last ``seconds``. The history records a
    recommendation when it differs from the one before (`compact_recommendations`): each stands
    until the next, so the newest entry not after the window's start was in force then."""
    cutoff = now - dt.timedelta(seconds=seconds)
    entries = [(parse_status_time(h["time"]), int(h["replicas"][role]))
               for h in history if role in h.get("replicas", {})]
    at_start = [n for t, n in entries if t <= cutoff][-1:]  # in force when the window opens
    return at_start + [n for t, n in entries if t > cutoff]


def compact_recommendations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the newest entry when it repeats the one before: the history is the moments the
    recommendation changed, so that a steady tick leaves the status as it was (no write)."""
    if len(history) >= 2 and history[-1].get("replicas") == history[-2].get("replicas"):
        return history[:-1]
    return history


def base_for_rate_limit(scale_events: list[dict[str, Any]], now: dt.datetime, role: str, current: int) -> int:
    """Replicas at the start of the rate-limit period: the limit applies per minute, not per decision."""
    cutoff = now - dt.timedelta(seconds=RATE_LIMIT_PERIOD_S)
    earlier = [h for h in scale_events if role in h.get("replicas", {}) and parse_status_time(h["time"]) >= cutoff]
    return int(earlier[0]["before"][role]) if earlier and role in earlier[0].get("before", {}) else current


def emergency(pool: PoolMetrics | None) -> str:
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


def why(role: str, rec: Recommendation, demand: DemandEstimate, headroom: float = 1.0, prior: str = "",
        standby: int = 0) -> str:
    p = rec.pool(role)
    assert p is not None
    source = "forecast" if demand.source == "metrics" else "hinted"
    latency = f"ITL {rec.predicted_itl_ms:.1f} ms" if role != "prefill" else f"TTFT {rec.predicted_ttft_ms:.0f} ms"
    horizon = f" in {demand.horizon_s:.0f} s" if demand.source == "metrics" and demand.horizon_s else ""
    extra = (f", ×{headroom:.2f} kept from earlier SLO misses" if headroom > 1.0 + 1e-9 else "")
    extra += f", {prior}" if prior else ""
    extra += f", +{standby} standby (spec.scaling.{role}.standbyReplicas)" if standby else ""
    if role != "decode" and demand.arrival_scv > 1.0 + 1e-6:
        latency += f" with arrivals ca² {demand.arrival_scv:.2f}"
    g = max(p.goodput_rps, 1e-9)
    if demand.base_rps is not None and demand.burst_note:
        # The replicas the headroom adds, priced in replicas: what the forecast alone would need, and more.
        held = math.ceil(demand.rate_rps / g - 1e-9) - math.ceil(demand.base_rps / g - 1e-9)
        return (f"{source} {demand.base_rps:.2f} req/s{horizon}, held at {demand.rate_rps:.2f} req/s, needs "
                f"{demand.rate_rps / g:.1f} replicas at {p.goodput_rps:.2f} req/s each{extra} ({latency} predicted; "
                f"then {p.limit}); holds {held} replica(s) of burst headroom: {demand.burst_note}")
    return (f"{source} {demand.rate_rps:.2f} req/s{horizon} needs {demand.rate_rps / g:.1f} "
            f"replicas at {p.goodput_rps:.2f} req/s each{extra} ({latency} predicted; then {p.limit})")


@dataclass(frozen=True)
class History:
    recommendations: list[dict[str, Any]]
    scale_events: list[dict[str, Any]]
    covers_down_window: bool
    start: dt.datetime


def stabilize(spec: InferenceDeploymentSpec, rec: Recommendation, demand: DemandEstimate, obs: Observation | None,
              current: dict[str, int], history: History, now: dt.datetime, immediate: bool,
              headroom: dict[str, float], prior: str = "", standby: Mapping[str, int] | None = None,
              ) -> list[PoolDecision]:
    """One decision per pool of `rec` (its replicas: the model's count)."""
    have_metrics = obs is not None and obs.available
    decisions = []
    for p in rec.pools:
        role = p.role
        bounds = getattr(spec.scaling, role)
        cur = current.get(role)
        reason_text = why(role, rec, demand, headroom.get(role, 1.0), prior, (standby or {}).get(role, 0))
        if cur is None:  # a new pool (first plan, or a mode change): start where the model says
            decisions.append(PoolDecision(role, 0, p.replicas, p.replicas, Reason.SCALE_UP,
                                          f"{role} 0→{p.replicas}: {reason_text}"))
            continue
        if immediate:
            target = min(max(p.replicas, bounds.min_replicas), bounds.max_replicas)
            verb = "→".join((str(cur), str(target)))
            decisions.append(PoolDecision(role, cur, p.replicas, target,
                                          Reason.SPEC_CHANGED if target != cur else Reason.HOLD,
                                          f"{role} {verb} after a spec change: {reason_text}"))
            continue
        pool_metrics = obs.pools.get(role) if have_metrics and obs is not None else None
        decisions.append(_pool(spec, role, cur, p.replicas, emergency(pool_metrics), pool_metrics, history, now,
                               reason_text))
    return decisions


def _pool(spec: InferenceDeploymentSpec, role: str, cur: int, asked: int, urgent: str,
          pool_metrics: PoolMetrics | None, history: History, now: dt.datetime, reason_text: str) -> PoolDecision:
    bounds = getattr(spec.scaling, role)
    target, reason, message = asked, "", ""
    if asked > cur:
        up = window(history.recommendations, now, spec.scaling.scale_up_stabilization_seconds, role)
        target = max(min(up) if up else asked, cur)
    elif asked < cur:
        down = window(history.recommendations, now, spec.scaling.scale_down_stabilization_seconds, role)
        target = min(max(down) if down else cur, cur)
        if not history.covers_down_window and target < cur:
            target, reason = cur, Reason.STABILIZING
            message = (f"{role} stays at {cur}: the model asks {asked}, but recommendations since "
                       f"{status_time(history.start)} do not cover the "
                       f"{spec.scaling.scale_down_stabilization_seconds} s scale-down window yet")
    # Replicas asked for earlier and still loading (no metrics yet) are capacity on its way: an
    # emergency adds one more only when none is, or every decision of a cold start would add one.
    reporting = pool_metrics.pods_reporting if pool_metrics is not None else None
    starting = cur - reporting if reporting is not None else 0
    if urgent and target <= cur and starting > 0:
        target, reason = cur, Reason.HOLD
        message = f"{role} stays at {cur}: {urgent}, and {starting} replica(s) are still starting"
    elif urgent and target <= cur:
        target = cur + 1
        reason, message = Reason.EMERGENCY, f"{role} {cur}→{cur + 1} now: {urgent}"
    if not reason and target != cur and abs(target - cur) / cur <= spec.scaling.tolerance:
        target, reason = cur, Reason.WITHIN_TOLERANCE
        message = (f"{role} stays at {cur}: the model asks {asked}, within the "
                   f"{spec.scaling.tolerance:.0%} tolerance")
    base = base_for_rate_limit(history.scale_events, now, role, cur)
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
        target, reason = limited, Reason.RATE_LIMITED
        message = (f"{role} {cur}→{limited}: {reason_text}; the model asks {asked}, "
                   f"the rate limit allows {limited} this minute")
    clamped = min(max(target, bounds.min_replicas), bounds.max_replicas)
    if clamped != target:
        target = clamped
        message = (message + "; " if message else "") + f"clamped to [{bounds.min_replicas}, {bounds.max_replicas}]"
    if not reason:
        if target > cur:
            reason, message = Reason.SCALE_UP, f"{role} {cur}→{target}: {reason_text}"
        elif target < cur:
            reason, message = Reason.SCALE_DOWN, f"{role} {cur}→{target}: {reason_text}"
        else:
            reason = Reason.HOLD
            message = (f"{role} stays at {cur}: the model asks {asked}; waiting for the stabilization window"
                       if asked != cur else f"{role} stays at {cur}: {reason_text}")
    return PoolDecision(role, cur, asked, target, reason, message)
