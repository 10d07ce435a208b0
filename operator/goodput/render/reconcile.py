"""One reconcile step as a pure function: (object, what the cluster shows, now) -> Outcome.

The kopf handler reads the cluster, calls `reconcile`, and carries out the Outcome (server-side
apply, deletes, status patch, events). Everything that decides, and every message a person
reads, is here, testable without a cluster and with an explicit clock.

Invariants:
- an invalid spec changes nothing that runs: no apply, no delete, only conditions and an event;
- `paused` changes nothing; `dryRun` plans and reports but applies nothing;
- every change of replicas, mode or TP produces a Decision in status and an Event with its reason;
- an unchanged object reconciled again produces no Decision and no Event;
- a Deployment deleted or scaled by hand is put back, with an Event saying so (unless paused);
- a pool with pods the scheduler cannot place is not raised above its current replicas (the
  planner's capacity cap), and ScalingLimited says which pool, how many and why;
- missing metrics never lower replicas (the planner's outage hold and settling window), and
  MetricsAvailable=False says what is missing;
- an observed SLO miss is said in SLOAtRisk, with the percentile the histogram proves; an SLO no
  replica count can meet on the engines as calibrated is said plainly (SLOAtRisk=SLOUnattainable);
- an engine-argument rollout the planner found worth its cost is a Reconfigure decision and Event.

Deciding is the planner's (`goodput.planner.autoscale.autoscale`, the same call the simulator makes);
here are the conditions, the Events and the desired objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from goodput.api.times import status_time
from goodput.api.v1alpha1 import InferenceDeploymentSpec, PlanStatus
from goodput.api.vocabulary import CONDITION_ORDER, ConditionStatus, ConditionType, EventType, Reason
from goodput.model.errors import CapacityModelError
from goodput.planner import autoscale as planner
from goodput.planner.autoscale import AutoscaleResult, AutoscalerState, PlannerInput, RunningShape
from goodput.planner.observation import Observation, PoolObservation
from goodput.planner.recommend import Recommendation, resolve
from goodput.render.vllm import (
    DEFAULT_RENDER_CONFIG,
    RenderConfig,
    desired_objects,
    obsolete_pools,
    pool_name,
    resource_name,
)

MAX_DECISIONS = 20


@dataclass(frozen=True)
class Event:
    type: str  # EventType.NORMAL or EventType.WARNING
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete_pools: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def set_condition(conditions: list[dict[str, Any]], ctype: str, status: str, reason: str, message: str,
                  now: dt.datetime, generation: int | None) -> list[dict[str, Any]]:
    """Kubernetes condition semantics: lastTransitionTime changes only when status changes."""
    out = [c for c in conditions if c.get("type") != ctype]
    previous = next((c for c in conditions if c.get("type") == ctype), None)
    changed = previous is None or previous.get("status") != status
    cond = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": status_time(now) if changed or previous is None else previous["lastTransitionTime"],
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    order = CONDITION_ORDER
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c.get("type") == ctype), None)


def _plan_status(rec: Recommendation, reason: str, max_model_len: int, checkpoint: str) -> dict[str, Any]:
    decoding = rec.pool("decode") or rec.pool("aggregated")
    assert decoding is not None
    prefill = rec.pool("prefill")
    agg = rec.pool("aggregated")
    return PlanStatus(
        mode=rec.mode,
        tensor_parallel=decoding.tp,
        prefill_tensor_parallel=prefill.tp if prefill is not None else None,
        aggregated_replicas=agg.replicas if agg is not None else None,
        prefill_replicas=prefill.replicas if prefill is not None else None,
        decode_replicas=decoding.replicas,
        gpus=rec.gpus,
        cost_per_hour=round(rec.usd_per_hour, 2),
        cost_per_million_tokens=(round(rec.usd_per_million_tokens, 4)
                                 if rec.usd_per_million_tokens is not None else None),
        predicted_ttft_ms=round(rec.predicted_ttft_ms, 1),
        predicted_itl_ms=round(rec.predicted_itl_ms, 2),
        max_num_batched_tokens=decoding.max_num_batched_tokens,
        max_num_seqs=decoding.max_num_seqs,
        max_model_len=max_model_len,
        checkpoint=checkpoint,
        # The vLLM arguments each pool runs with: kept by metric-driven decisions (a change restarts pods).
        engine_args={p.role: {"maxNumBatchedTokens": p.max_num_batched_tokens, "maxNumSeqs": p.max_num_seqs}
                     for p in rec.pools},
        reason=reason,
    ).to_status()


def _structural_changes(previous: PlanStatus | None,
                        rec: Recommendation) -> list[tuple[str, str, int | None, int, str]]:
    """(reason code, pool, from, to, message) for a first plan, a mode change or a TP change."""
    out: list[tuple[str, str, int | None, int, str]] = []
    if previous is None:
        for p in rec.pools:
            out.append((Reason.INITIAL, p.role, None, p.replicas,
                        f"{p.role} 0→{p.replicas} × TP{p.tp}: {p.goodput_rps:.2f} req/s per replica "
                        f"({p.limit}) for {rec.demand_rps:.4g} req/s"))
        return out
    if previous.mode != rec.mode:
        out.append((Reason.MODE_CHANGE, rec.mode, None, sum(p.replicas for p in rec.pools),
                    f"mode {previous.mode}→{rec.mode}: {rec.summary}"))
        return out
    before = previous.pool_replicas()
    tps = previous.pool_tp()
    for p in rec.pools:
        old_tp = tps.get(p.role)
        if old_tp is not None and old_tp != p.tp:
            out.append((Reason.RECONFIGURE, p.role, before.get(p.role), p.replicas,
                        f"{p.role} TP{old_tp}→TP{p.tp}: {rec.summary}"))
    return out


def _observed_summary(result: AutoscaleResult, obs: Observation | None) -> dict[str, Any]:
    d = result.demand
    cal = result.state.calibration
    out: dict[str, Any] = {"source": d.source, "plannedRequestRate": round(d.rate_rps, 4),
                           "stepTimeScale": round(result.state.step_time_scale, 4),
                           "calibration": {term: round(t.scale, 4) for term, t in cal.terms.items()}}
    if result.slo:
        out["slo"] = [{"pool": r.role, "quantity": r.quantity, "observedMs": round(r.reading.estimate, 2),
                       "histogramMs": [r.reading.lo, r.reading.hi if r.reading.hi != float("inf") else None],
                       "targetMs": r.target_ms, "missing": r.missing,
                       **({"predictedMs": round(r.predicted_ms, 2)} if r.predicted_ms is not None else {})}
                      for r in result.slo]
    if obs is not None:
        out["time"] = status_time(obs.time)
        if obs.error:
            out["error"] = obs.error
        if obs.missing:
            out["missing"] = list(obs.missing)[:10]
        for role, pm in obs.pools.items():
            values = {k: round(v, 4) for k, v in (
                ("requestRate", pm.request_rate_rps), ("ttftMs", pm.ttft_ms), ("itlMs", pm.itl_ms),
                ("kvCacheUsage", pm.kv_cache_usage), ("running", pm.running), ("waiting", pm.waiting),
                ("inputLenMean", pm.input_len_mean), ("outputLenMean", pm.output_len_mean),
                ("preemptionsPerSecond", pm.preemptions_rps), ("pods", pm.pods_reporting)) if v is not None}
            out[role] = values
    if d.note:
        out["forecast"] = d.note
    return out


def reconcile(obj: dict[str, Any], observed: dict[str, PoolObservation], now: dt.datetime,
              observation: Observation | None = None,
              render_config: RenderConfig = DEFAULT_RENDER_CONFIG) -> Outcome:
    """One step. `observed`: the owned Deployments as the cluster shows them. `observation`: live
    metrics (None when no metrics source is configured). `render_config`: the operator's defaults
    for what it deploys (images, PodMonitor)."""
    meta = obj.get("metadata", {})
    name, namespace = meta.get("name", ""), meta.get("namespace", "default")
    uid = meta.get("uid", "")
    generation = meta.get("generation")
    previous: dict[str, Any] = dict(obj.get("status") or {})
    conditions: list[dict[str, Any]] = list(previous.get("conditions", []))
    decisions: list[dict[str, Any]] = list(previous.get("decisions", []))
    status: dict[str, Any] = {"observedGeneration": generation}
    events: list[Event] = []

    def cond(ctype: str, state: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, ctype, state, reason, message, now, generation)

    def decide(reason: str, message: str, pool: str | None = None, frm: int | None = None,
               to: int | None = None, event_type: str = EventType.NORMAL) -> None:
        d: dict[str, Any] = {"time": status_time(now), "reason": reason, "message": message}
        if pool is not None:
            d["pool"] = pool
        if frm is not None:
            d["fromReplicas"] = frm
        if to is not None:
            d["toReplicas"] = to
        decisions.append(d)
        events.append(Event(event_type, reason, message))

    previous_plan = PlanStatus.read(previous.get("plan"))
    # What the operator last decided is the current size; the cluster is made to match it.
    current = (previous_plan.pool_replicas() if previous_plan is not None else {}) or {
        role: o.replicas for role, o in observed.items()}
    spec_changed = previous.get("observedGeneration") not in (None, generation)

    # 1. The spec: admission checked its shape; here what only the capacity model can check.
    try:
        spec = InferenceDeploymentSpec.model_validate(obj.get("spec") or {})
        resolved = resolve(spec, name)
        state = AutoscalerState.from_status(previous.get("autoscaler"))
        result = planner.autoscale(PlannerInput(spec, resolved, observation, observed, current, state, now,
                                                spec_changed, RunningShape.from_plan(previous_plan)))
    except (ValidationError, CapacityModelError) as exc:
        message = _error_text(exc)
        old = _condition(previous, ConditionType.DEGRADED)
        if not (old and old.get("status") == ConditionStatus.TRUE and old.get("message") == message):
            decide(Reason.INVALID_SPEC, message, event_type=EventType.WARNING)
        cond(ConditionType.DEGRADED, ConditionStatus.TRUE, Reason.INVALID_SPEC, message)
        cond(ConditionType.READY, ConditionStatus.FALSE, Reason.INVALID_SPEC,
             "the spec cannot be served; what runs is left as it is")
        cond(ConditionType.SCALING_ACTIVE, ConditionStatus.FALSE, Reason.INVALID_SPEC, message)
        status.update(conditions=conditions, decisions=decisions[-MAX_DECISIONS:])
        for kept in ("plan", "autoscaler", "lastScaleTime"):
            if previous.get(kept):
                status[kept] = previous[kept]
        return Outcome(status, events=events)

    rec = result.recommendation
    cond(ConditionType.DEGRADED, ConditionStatus.FALSE, Reason.SPEC_VALID,
         "the spec resolves to a servable configuration")
    if observation is None:
        cond(ConditionType.METRICS_AVAILABLE, ConditionStatus.FALSE, Reason.NO_METRICS_SOURCE, result.metrics_message)
    elif result.metrics_available:
        cond(ConditionType.METRICS_AVAILABLE, ConditionStatus.TRUE, Reason.METRICS_AVAILABLE, result.metrics_message)
    else:
        cond(ConditionType.METRICS_AVAILABLE, ConditionStatus.FALSE, Reason.METRICS_UNAVAILABLE,
             metrics_unavailable_message(observation, result.state.metrics_seen, spec.workload.request_rate))
    status["observed"] = _observed_summary(result, observation)
    status["autoscaler"] = result.state.to_status()

    # 2. paused: report, change nothing.
    if spec.paused:
        if (_condition(previous, ConditionType.SCALING_ACTIVE) or {}).get("reason") != Reason.PAUSED:
            decide(Reason.PAUSED, "spec.paused is true: nothing is changed until it is cleared")
        cond(ConditionType.SCALING_ACTIVE, ConditionStatus.FALSE, Reason.PAUSED, "spec.paused is true")
        status.update(conditions=conditions, decisions=decisions[-MAX_DECISIONS:])
        for kept in ("plan", "autoscaler", "lastScaleTime"):
            if previous.get(kept):
                status[kept] = previous[kept]
        return Outcome(status, events=events)

    structural = _structural_changes(previous_plan, rec)
    pool_decisions = list(result.pools)
    caps = {d.role: d.target for d in pool_decisions if d.reason == Reason.CAPACITY_LIMITED}
    for code, pool, frm, to, message in structural:
        decide(code, message, pool, frm, to)
    if not structural:
        for d in pool_decisions:
            if d.target != d.current:
                decide(d.reason, d.message, d.role, d.current, d.target)
        for rollout in result.rollouts:
            decide(Reason.RECONFIGURE, rollout.message, rollout.role)
    changed = bool(structural) or bool(result.rollouts) or any(d.target != d.current for d in pool_decisions)
    if changed:
        status["lastScaleTime"] = status_time(now)
    elif previous.get("lastScaleTime"):
        status["lastScaleTime"] = previous["lastScaleTime"]
    plan_status = _plan_status(rec, "; ".join(d.message for d in pool_decisions), resolved.max_model_len,
                               resolved.hugging_face_name)

    if spec.dry_run:
        cond(ConditionType.SCALING_ACTIVE, ConditionStatus.FALSE, Reason.DRY_RUN,
             "spec.dryRun is true: the plan is reported, not applied")
    else:
        cond(ConditionType.SCALING_ACTIVE, ConditionStatus.TRUE, Reason.PLANNED, rec.summary)
    held_back = [d for d in pool_decisions if d.reason in (Reason.RATE_LIMITED, Reason.STABILIZING)]
    unschedulable = {p.role: observed[p.role] for p in rec.pools
                     if p.role in observed and observed[p.role].pending_replicas > 0}
    if unschedulable and not spec.dry_run:
        message = capacity_message(unschedulable, caps, {d.role: d.recommended for d in pool_decisions},
                                   resource_name(spec, resolved))
        if (_condition(previous, ConditionType.SCALING_LIMITED) or {}).get("reason") != Reason.INSUFFICIENT_CAPACITY:
            events.append(Event(EventType.WARNING, Reason.INSUFFICIENT_CAPACITY, message))
        cond(ConditionType.SCALING_LIMITED, ConditionStatus.TRUE, Reason.INSUFFICIENT_CAPACITY, message)
    elif rec.limited or any(p.clamped for p in rec.pools) or held_back:
        why = rec.limited or "; ".join([f"{p.role} {p.clamped}" for p in rec.pools if p.clamped]
                                       + [d.message for d in held_back])
        cond(ConditionType.SCALING_LIMITED, ConditionStatus.TRUE,
             Reason.BUDGET_OR_BOUNDS if rec.limited else Reason.RATE_OR_BOUNDS, why)
    else:
        cond(ConditionType.SCALING_LIMITED, ConditionStatus.FALSE, Reason.WITHIN_LIMITS,
             "the plan is within maxGpus, maxCostPerHour and replica bounds")
    slo_condition(cond, result, rec)

    apply: list[dict[str, Any]] = []
    delete: list[str] = []
    if not spec.dry_run:
        apply = desired_objects(name, namespace, uid, spec, resolved, rec, render_config)
        delete = [role for role in obsolete_pools(rec) if role in observed]
        events += restore_events(name, rec, observed, current)
    ready = not spec.dry_run and all(
        (o := observed.get(p.role)) is not None and o.replicas == p.replicas and o.ready_replicas >= p.replicas
        for p in rec.pools)
    if spec.dry_run:
        cond(ConditionType.READY, ConditionStatus.FALSE, Reason.DRY_RUN, "dry run: no Deployment is managed")
    elif ready:
        cond(ConditionType.READY, ConditionStatus.TRUE, Reason.ALL_REPLICAS_READY,
             "every pool has its planned replicas ready")
    else:
        waiting = ", ".join(f"{p.role} {observed[p.role].ready_replicas if p.role in observed else 0}/{p.replicas}"
                            for p in rec.pools)
        cond(ConditionType.READY, ConditionStatus.FALSE, Reason.REPLICAS_NOT_READY,
             f"waiting for ready replicas: {waiting}")
    status.update(conditions=conditions, decisions=decisions[-MAX_DECISIONS:], plan=plan_status)
    return Outcome(status, apply, delete, events)


def slo_condition(cond: Any, result: AutoscaleResult, rec: Recommendation) -> None:
    """SLOAtRisk: an observed miss (the percentile the histogram proves, and what the model
    predicted), an SLO no replica count meets on these engines, or planned capacity below demand."""
    over = [r.text() for r in result.slo if r.missing]
    if rec.served_rps + 1e-9 < rec.demand_rps:
        over.append(f"planned capacity {rec.served_rps:.2f} req/s below a demand of {rec.demand_rps:.4g} req/s")
    if result.unattainable:
        cannot = "; ".join(f"{what}: {why}" for what, why in result.unattainable.items())
        cond(ConditionType.SLO_AT_RISK, ConditionStatus.TRUE, Reason.SLO_UNATTAINABLE,
             "no replica count meets the SLO on these engines — " + cannot + ("; " + "; ".join(over) if over else ""))
    elif over:
        cond(ConditionType.SLO_AT_RISK, ConditionStatus.TRUE, Reason.SLO_AT_RISK, "; ".join(over))
    else:
        cond(ConditionType.SLO_AT_RISK, ConditionStatus.FALSE, Reason.WITHIN_SLO,
             f"planned capacity {rec.served_rps:.2f} req/s for a demand of {rec.demand_rps:.4g} req/s")


def restore_events(name: str, rec: Recommendation, observed: Mapping[str, PoolObservation],
                   current: Mapping[str, int]) -> list[Event]:
    """Drift that the apply puts back, said out loud: a Deployment deleted, or its replicas edited
    by hand, while the plan for that pool did not move (a plan that moves has its own Decision)."""
    out = []
    for p in rec.pools:
        if current.get(p.role) != p.replicas:
            continue
        seen = observed.get(p.role)
        if seen is None:
            out.append(Event(EventType.NORMAL, Reason.DEPLOYMENT_RESTORED,
                             f"{p.role} Deployment {pool_name(name, p.role)} was missing (deleted?); re-created "
                             f"with the planned {p.replicas} replicas"))
        elif seen.replicas != p.replicas:
            out.append(Event(EventType.NORMAL, Reason.REPLICAS_RESTORED,
                             f"{p.role} had {seen.replicas} replicas, set back to the planned {p.replicas}"))
    return out


def capacity_message(unschedulable: Mapping[str, PoolObservation], caps: Mapping[str, int],
                     asked: Mapping[str, int], resource: str) -> str:
    """ScalingLimited=InsufficientCapacity: which pool, how many pods, the scheduler's words, what to do."""
    parts = []
    for role, seen in unschedulable.items():
        why = f": {seen.pending_message.rstrip('. ')}" if seen.pending_message else ""
        part = f"{role}: {seen.pending_replicas} of {seen.replicas} pods cannot be scheduled{why}"
        if role in caps:
            part += f"; kept at {caps[role]} replicas (the plan asks {asked.get(role, caps[role])}) until they are"
        parts.append(part)
    return "; ".join(parts) + f". Add nodes with free {resource}, or lower the demand or maxReplicas"


def metrics_unavailable_message(observation: Observation, metrics_seen: bool, hinted_rps: float) -> str:
    """MetricsAvailable=False: what is done about it and why. When Prometheus answered (no error)
    the cause is in the notes: no series (pods gone or not scraped), or NaN values."""
    action = ("holding replicas" if metrics_seen
              else f"planning for spec.workload hints ({hinted_rps:g} req/s)")
    if observation.error:
        return f"metrics unavailable, {action}: {observation.error}"
    notes = list(observation.missing)
    key = [n for n in notes if n.startswith(("no vLLM series", "request_rate_rps"))] or notes
    cause = "; ".join(key[:2]) if key else "no request rate for the serving pool"
    return (f"metrics unavailable, {action}: Prometheus answered, but {cause}. Check that the vLLM pods are "
            "running and scraped (Prometheus target health) and export vllm:request_success_total")


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return f"spec.{where}: {first.get('msg')}"
    return str(exc)
