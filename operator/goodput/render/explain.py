"""`goodput explain`: an InferenceDeployment's status and Events, told to the engineer on call.

Pure: the object and its Events come in as dicts (as the apiserver serves them), the clock comes
in as `now`, and a report goes out: `explain_data` (a JSON-able dict, for ``--json``) and
`explain_text` (the same, as lines a person reads top-down: a one-line headline, the plan, the
autoscaler, predicted against observed, the last decisions, what is wrong and what to do).

Nothing here trusts the status to be complete: a resource the operator has not reconciled yet,
a dry run, no Prometheus, a half-written status from an older operator all print as sentences.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic.alias_generators import to_camel

from goodput.api.times import status_time
from goodput.api.v1alpha1 import ScalingSpec
from goodput.api.vocabulary import DEPLOYMENT_LABEL, ConditionStatus, ConditionType, Reason
from goodput.planner.observation import PoolObservation

# The status of each condition type when all is well.
HEALTHY_STATUS = {ConditionType.READY: ConditionStatus.TRUE, ConditionType.METRICS_AVAILABLE: ConditionStatus.TRUE,
                  ConditionType.SCALING_ACTIVE: ConditionStatus.TRUE,
                  ConditionType.SCALING_LIMITED: ConditionStatus.FALSE,
                  ConditionType.SLO_AT_RISK: ConditionStatus.FALSE, ConditionType.DEGRADED: ConditionStatus.FALSE}
# The headline names the first of these that is unhealthy: the root cause before its symptoms.
SEVERITY = (ConditionType.DEGRADED, ConditionType.METRICS_AVAILABLE, ConditionType.SLO_AT_RISK,
            ConditionType.SCALING_LIMITED, ConditionType.READY, ConditionType.SCALING_ACTIVE)
# Conditions that read unhealthy but say what the user asked for: reported, not alarmed on.
BY_CHOICE_REASONS = frozenset({Reason.DRY_RUN, Reason.PAUSED, Reason.NO_METRICS_SOURCE})
DIVERGENCE_FRACTION = 0.2  # observed more than 20% away from predicted is flagged
KV_PRESSURE_FRACTION = 0.9  # the autoscaler's emergency threshold
MAX_DECISIONS_SHOWN = 10
NO_STATUS = "no status yet: the operator has not reconciled this resource — is it running?"
POOL_ORDER = ("aggregated", "prefill", "decode")
_POOL_SPLIT = re.compile(r"; (?=(?:aggregated|prefill|decode) )")
_WAITING = re.compile(r"\b(aggregated|prefill|decode) (\d+)/(\d+)")

# What to do, by condition reason (only where the operator's message implies an action).
ACTIONS: dict[str, str] = {
    Reason.INVALID_SPEC: "fix the spec field named above (kubectl edit infd {name} -n {namespace}); "
                         "what runs is left as it is until the spec is servable",
    Reason.REPLICAS_NOT_READY: "look at the pods: kubectl get pods -n {namespace} -l " + DEPLOYMENT_LABEL + "={name} "
                               "(Pending: no free GPU node; not Ready: weights still loading, image pull, crash loop)",
    Reason.METRICS_UNAVAILABLE: "check Prometheus: goodput observe --prometheus URL --name {name} -n {namespace} "
                                "names every gap; replicas are held, never scaled down, while metrics are missing",
    Reason.NO_METRICS_SOURCE: "sizing from spec.workload hints only; give the operator --prometheus "
                              "(or set spec.prometheus.url) to size from live load",
    Reason.BUDGET_OR_BOUNDS: "capacity is held below demand by spec.scaling.maxGpus / maxCostPerHour / maxReplicas: "
                             "raise them, or accept the SLO risk",
    Reason.DRY_RUN: "set spec.dryRun: false to apply the plan",
    Reason.PAUSED: "set spec.paused: false to resume scaling",
}


# --- small readers ----------------------------------------------------------------------------
def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp as the apiserver writes it; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def ago(text: Any, now: dt.datetime) -> str:
    """'3m ago' for a timestamp, relative to `now`; '?' when unreadable."""
    t = parse_time(text)
    if t is None:
        return "?"
    seconds = (now - t).total_seconds()
    if seconds < -5:
        return f"in {_duration(-seconds)} (clock skew?)"
    return "just now" if seconds < 1 else f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _map(value: Any) -> Mapping[str, Any]:
    """`value` when it is an object, else empty: a status written by hand or by an older operator
    may hold anything."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _whole(value: Any) -> int | None:
    n = _number(value)
    return None if n is None else round(n)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


# --- the parts of the report ------------------------------------------------------------------
def _slo(spec: Mapping[str, Any]) -> dict[str, float | None]:
    slo = _map(_get(spec, "slo"))
    percentile = _number(slo.get("percentile"))
    return {"ttftMs": _number(slo.get("ttftMs")), "itlMs": _number(slo.get("itlMs")),
            "percentile": percentile if percentile is not None else 99.0}


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for c in _list(status.get("conditions")) if isinstance(c, Mapping) and c.get("type")]


def _condition(status: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((dict(c) for c in _conditions(status) if c["type"] == ctype), None)


def _ready_from_condition(status: Mapping[str, Any], desired: Mapping[str, int]) -> dict[str, int | None]:
    """Ready replicas per pool as the Ready condition tells them (when Deployments were not read)."""
    ready = _condition(status, ConditionType.READY) or {}
    if ready.get("status") == ConditionStatus.TRUE:
        return dict(desired)
    if ready.get("reason") == Reason.DRY_RUN:
        return dict.fromkeys(desired)  # nothing is managed: nothing to be ready
    if ready.get("reason") == Reason.REPLICAS_NOT_READY:
        seen = {m.group(1): int(m.group(2)) for m in _WAITING.finditer(str(ready.get("message", "")))}
        return {pool: seen.get(pool) for pool in desired}
    return dict.fromkeys(desired)


def _desired_pools(plan: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per pool: TP and desired replicas, from a status plan. Field by field, unlike the operator's
    own reading (`PlanStatus.read`, all or nothing): explain shows what a mangled status still says."""
    tp = _whole(plan.get("tensorParallel"))
    if plan.get("mode") == "aggregated":
        replicas = plan.get("aggregatedReplicas", plan.get("decodeReplicas"))
        return {"aggregated": {"tp": tp, "replicas": _whole(replicas)}}
    prefill_tp = _whole(plan.get("prefillTensorParallel"))
    return {"prefill": {"tp": prefill_tp if prefill_tp is not None else tp,
                        "replicas": _whole(plan.get("prefillReplicas"))},
            "decode": {"tp": tp, "replicas": _whole(plan.get("decodeReplicas"))}}


def _demand(status: Mapping[str, Any]) -> dict[str, Any]:
    observed = _map(status.get("observed"))
    rate = _number(observed.get("plannedRequestRate"))
    source = observed.get("source")
    forecast = str(observed.get("forecast") or "")
    if source == "metrics":
        kind = "forecast from live metrics" if "rising" in forecast else "live metrics"
    elif source == "spec.workload":
        kind = "spec.workload hints (no live metrics)"
    else:
        kind = "unknown (the status does not say)"
    return {"requestRateRps": rate, "source": kind, "detail": forecast or None}


def _plan(obj: Mapping[str, Any], status: Mapping[str, Any],
          deployments: Mapping[str, PoolObservation] | None) -> dict[str, Any] | None:
    plan = status.get("plan")
    if not isinstance(plan, Mapping) or "mode" not in plan:
        return None
    spec = _map(obj.get("spec"))
    slo = _slo(spec)
    desired = _desired_pools(plan)
    desired_n = {pool: int(d["replicas"]) for pool, d in desired.items() if d["replicas"] is not None}
    if deployments is not None:
        ready: dict[str, int | None] = {p: (deployments[p].ready_replicas if p in deployments else 0)
                                        for p in desired}
    else:
        ready = _ready_from_condition(status, desired_n)
    engine_args = _map(plan.get("engineArgs"))
    pools = []
    for pool, d in desired.items():
        tp, replicas = d["tp"], d["replicas"]
        args = engine_args.get(pool)
        pools.append({
            "pool": pool, "tensorParallel": tp, "desiredReplicas": replicas, "readyReplicas": ready.get(pool),
            "runningReplicas": deployments[pool].replicas if deployments and pool in deployments else None,
            "gpus": tp * replicas if tp is not None and replicas is not None else None,
            # The plan predicts TTFT for the pool that prefills and ITL for the one that decodes.
            "predictedTtftMs": _number(plan.get("predictedTtftMs")) if pool != "decode" else None,
            "predictedItlMs": _number(plan.get("predictedItlMs")) if pool != "prefill" else None,
            "maxNumBatchedTokens": _get(args, "maxNumBatchedTokens"), "maxNumSeqs": _get(args, "maxNumSeqs"),
        })
    reasons = [r for r in _POOL_SPLIT.split(str(plan.get("reason") or "")) if r]
    return {
        "mode": plan.get("mode"), "gpu": _get(spec, "accelerator", "gpu"), "model": _get(spec, "model", "id"),
        "gpus": _whole(plan.get("gpus")), "costPerHourUsd": _number(plan.get("costPerHour")),
        "costPerMillionTokensUsd": _number(plan.get("costPerMillionTokens")),
        "predictedTtftMs": _number(plan.get("predictedTtftMs")), "predictedItlMs": _number(plan.get("predictedItlMs")),
        "slo": slo, "pools": pools, "demand": _demand(status), "why": reasons,
        "deploymentsRead": deployments is not None,
    }


def _serving(observed: Mapping[str, Any]) -> Mapping[str, Any]:
    pool = observed.get("aggregated") or observed.get("decode")
    return pool if isinstance(pool, Mapping) else {}


def _row(quantity: str, predicted: float | None, observed: float | None, target: float | None) -> dict[str, Any]:
    ratio = observed / predicted if observed is not None and predicted else None
    diverges = ratio is not None and abs(ratio - 1.0) > DIVERGENCE_FRACTION
    return {"quantity": quantity, "predicted": predicted, "observed": observed,
            "ratio": round(ratio, 3) if ratio is not None else None, "diverges": diverges, "target": target}


def _comparison(status: Mapping[str, Any], slo: Mapping[str, float | None], now: dt.datetime) -> dict[str, Any]:
    plan = _map(status.get("plan"))
    observed = _map(status.get("observed"))
    serving = _serving(observed)
    pct = f"p{slo['percentile']:g}"
    rows = [
        _row(f"TTFT {pct} (ms)", _number(plan.get("predictedTtftMs")), _number(serving.get("ttftMs")), slo["ttftMs"]),
        _row(f"ITL {pct} (ms)", _number(plan.get("predictedItlMs")), _number(serving.get("itlMs")), slo["itlMs"]),
        _row("request rate (req/s)", _number(observed.get("plannedRequestRate")),
             _number(serving.get("requestRate")), None),
        _row("KV cache usage (0-1)", None, _number(serving.get("kvCacheUsage")), KV_PRESSURE_FRACTION),
    ]
    if not serving:
        if observed.get("error"):
            note = f"no observation: {observed['error']}"
        elif observed.get("source") == "spec.workload":
            note = "nothing observed: no live metrics (no Prometheus configured, or none yet); predictions only"
        else:
            note = "nothing observed yet"
    else:
        note = (f"observed {ago(observed.get('time'), now)}: the serving pool as it ran, over the operator's short "
                "window; predicted: the plan as sized, at the demand it is sized for")
    return {"rows": rows, "observedAt": observed.get("time"), "note": note,
            "missing": [str(m) for m in _list(observed.get("missing"))[:5]]}


def _stabilization(spec: Mapping[str, Any], auto: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    scaling = _map(_get(spec, "scaling"))
    history = [h for h in _list(auto.get("recommendations")) if isinstance(h, Mapping)]
    ranges: dict[str, list[int]] = {}
    for h in history:
        for pool, n in _map(h.get("replicas")).items():
            if _number(n) is not None:
                lo_hi = ranges.setdefault(pool, [int(n), int(n)])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], int(n)), max(lo_hi[1], int(n))
    return {
        "scaleUpWindowSeconds": _seconds(scaling, "scale_up_stabilization_seconds"),
        "scaleDownWindowSeconds": _seconds(scaling, "scale_down_stabilization_seconds"),
        "recommendationsRemembered": len(history),
        "historySince": history[0].get("time") if history else None,
        "recommendedRange": {p: ranges[p] for p in sorted(ranges, key=_pool_rank)},
        "scaleEventsLastMinute": len([e for e in _list(auto.get("scaleEvents"))
                                      if (t := parse_time(_get(e, "time"))) and (now - t).total_seconds() <= 60]),
    }


def _seconds(scaling: Mapping[str, Any], field: str) -> float:
    """A spec.scaling window, or its default when the spec leaves it out."""
    value = _number(scaling.get(to_camel(field)))
    return value if value is not None else float(ScalingSpec.model_fields[field].default)


def _pool_rank(pool: str) -> int:
    return POOL_ORDER.index(pool) if pool in POOL_ORDER else len(POOL_ORDER)


def _autoscaler(obj: Mapping[str, Any], status: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    auto = status.get("autoscaler")
    if not isinstance(auto, Mapping):
        return None
    metrics = _condition(status, ConditionType.METRICS_AVAILABLE) or {}
    holding = metrics.get("reason") == Reason.METRICS_UNAVAILABLE and bool(auto.get("metricsSeen"))
    emergencies = [d for d in _list(status.get("decisions")) if _get(d, "reason") == Reason.EMERGENCY]
    held_back = [r for r in _POOL_SPLIT.split(str(_get(status, "plan", "reason") or ""))
                 if "the model asks" in r]  # Stabilizing, WithinTolerance, RateLimited, waiting
    return {
        "calibrationStepTimeScale": _number(auto.get("stepTimeScale")),
        "calibrationTerms": _calibration_terms(auto.get("calibration")),
        "metricsSeen": bool(auto.get("metricsSeen")), "metricsSince": auto.get("metricsSince"),
        "stabilization": _stabilization(_map(obj.get("spec")), auto, now),
        "heldBack": held_back,
        "emergencies": {"count": len(emergencies), "last": emergencies[-1] if emergencies else None},
        "outageHold": ({"since": metrics.get("lastTransitionTime"), "message": metrics.get("message")}
                       if holding else None),
        "lastScaleTime": status.get("lastScaleTime"),
    }


def _decisions(status: Mapping[str, Any], now: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for d in reversed([d for d in _list(status.get("decisions")) if isinstance(d, Mapping)]):
        out.append({"time": d.get("time"), "ago": ago(d.get("time"), now), "reason": _text(d.get("reason")),
                    "pool": _text(d.get("pool")), "fromReplicas": _whole(d.get("fromReplicas")),
                    "toReplicas": _whole(d.get("toReplicas")), "message": _text(d.get("message"))})
    return out[:MAX_DECISIONS_SHOWN]


def _event_time(ev: Mapping[str, Any]) -> str | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if parse_time(ev.get(key)) is not None:
            return str(ev[key])
    created = _get(ev, "metadata", "creationTimestamp")
    return created if isinstance(created, str) else None


def _events(events: list[dict[str, Any]], now: dt.datetime, limit: int) -> list[dict[str, Any]]:
    def key(ev: Mapping[str, Any]) -> dt.datetime:
        return parse_time(_event_time(_map(ev))) or dt.datetime.min.replace(tzinfo=dt.UTC)

    # Newest first; among equal times the one posted last first (as decisions are listed).
    order = sorted(range(len(events)), key=lambda i: (key(events[i]), i), reverse=True)
    newest = [_map(events[i]) for i in order][:max(limit, 0)]
    return [{"time": _event_time(ev), "ago": ago(_event_time(ev), now), "type": _text(ev.get("type")),
             "reason": _text(ev.get("reason")), "message": _text(ev.get("message")), "count": _whole(ev.get("count"))}
            for ev in newest]


def _problems(obj: Mapping[str, Any], status: Mapping[str, Any], now: dt.datetime) -> list[dict[str, Any]]:
    """Every condition not in its healthy state, with what to do where the reason implies it."""
    meta = _map(obj.get("metadata"))
    out = []
    for c in _conditions(status):
        healthy = HEALTHY_STATUS.get(c["type"])
        if healthy is None or c.get("status") == healthy:
            continue
        reason, message = _text(c.get("reason")), _text(c.get("message"))
        action = _action(reason, message)
        out.append({"type": _text(c["type"]), "status": _text(c.get("status")), "reason": reason, "message": message,
                    "since": c.get("lastTransitionTime"), "sinceAgo": ago(c.get("lastTransitionTime"), now),
                    "byChoice": reason in BY_CHOICE_REASONS,
                    "action": action.format(name=meta.get("name", "NAME"), namespace=meta.get("namespace", "default"))
                    if action else None})
    return out


def _action(reason: str, message: str) -> str:
    if reason in ACTIONS:
        return ACTIONS[reason]
    if reason == Reason.RATE_OR_BOUNDS:
        if "capped at maxReplicas" in message:
            return "a pool is capped at its maxReplicas: raise spec.scaling.<pool>.maxReplicas if demand is real"
        return "the autoscaler is pacing a change (stabilization window or rate limit): wait, it resolves itself"
    if reason == Reason.SLO_AT_RISK:
        if "below a demand" in message:
            return "planned capacity is below demand: see ScalingLimited for what holds it back"
        return ("observed latency is over the SLO: the autoscaler scales up on its own unless limited; "
                "check ScalingLimited, pod readiness and the calibration factor")
    return ""


def _headline(obj: Mapping[str, Any], status: Mapping[str, Any], plan: Mapping[str, Any] | None,
              problems: list[dict[str, Any]]) -> tuple[bool, str]:
    spec = _map(obj.get("spec"))
    real = sorted((p for p in problems if not p["byChoice"]), key=lambda p: _severity(p["type"]))
    if not status or not _conditions(status):
        return False, f"NOT RECONCILED — {NO_STATUS}"
    if spec.get("paused"):
        return not real, "PAUSED — spec.paused is true: nothing is changed" + _worst(real)
    if spec.get("dryRun"):
        return not real, "DRY RUN — the plan is reported, no Deployment is managed" + _worst(real)
    if real:
        return False, f"UNHEALTHY — {real[0]['type']}={real[0]['status']} ({real[0]['reason']}): " \
                      f"{real[0]['message']}" + (f" (+{len(real) - 1} more)" if len(real) > 1 else "")
    size = ", ".join(f"{_int(p['desiredReplicas'])}×{p['pool']} TP{_int(p['tensorParallel'])}"
                     for p in (plan or {}).get("pools", []))
    hints = " (sized from spec.workload hints: no metrics source)" if any(
        p["reason"] == Reason.NO_METRICS_SOURCE for p in problems) else ""
    return True, f"HEALTHY — {size} ready, within SLO{hints}"


def _severity(ctype: str) -> int:
    return SEVERITY.index(ctype) if ctype in SEVERITY else len(SEVERITY)


def _worst(real: list[dict[str, Any]]) -> str:
    return f"; and {real[0]['type']}={real[0]['status']} ({real[0]['reason']})" if real else ""


def _int(value: Any) -> str:
    n = _number(value)
    return "?" if n is None else f"{n:.0f}"


def explain_data(obj: dict[str, Any], events: list[dict[str, Any]], now: dt.datetime, *,
                 deployments: Mapping[str, PoolObservation] | None = None, max_events: int = 10) -> dict[str, Any]:
    """The report as a JSON-able dict. `deployments`: the owned Deployments by pool, when read
    (else ready replicas come from the Ready condition); `events`: core/v1 Events as dicts."""
    meta = _map(obj.get("metadata"))
    status = _map(obj.get("status"))
    spec = _map(obj.get("spec"))
    plan = _plan(obj, status, deployments)
    problems = _problems(obj, status, now)
    healthy, headline = _headline(obj, status, plan, problems)
    notes = []
    if not status or not _conditions(status):
        notes.append(NO_STATUS)
    generation, seen = meta.get("generation"), status.get("observedGeneration")
    if status and generation is not None and seen is not None and seen != generation:
        notes.append(f"the status is for generation {seen} but the spec is at {generation}: "
                     "the operator has not caught up with the last edit — is it running?")
    return {
        "name": meta.get("name"), "namespace": meta.get("namespace", "default"), "healthy": healthy,
        "headline": f"{meta.get('namespace', 'default')}/{meta.get('name')}: {headline}",
        "notes": notes, "dryRun": bool(spec.get("dryRun")), "paused": bool(spec.get("paused")),
        "plan": plan, "autoscaler": _autoscaler(obj, status, now),
        "comparison": _comparison(status, _slo(spec), now) if status.get("plan") or status.get("observed") else None,
        "decisions": _decisions(status, now), "conditions": problems, "events": _events(events, now, max_events),
        "now": status_time(now),
    }


# --- text ---------------------------------------------------------------------------------------
def explain_text(obj: dict[str, Any], events: list[dict[str, Any]], now: dt.datetime, *,
                 deployments: Mapping[str, PoolObservation] | None = None, max_events: int = 10) -> str:
    """The report as text for a terminal: headline first, then one section per question."""
    data = explain_data(obj, events, now, deployments=deployments, max_events=max_events)
    lines = [data["headline"], *(f"  note: {n}" for n in data["notes"] if n != NO_STATUS)]
    lines += _subject_lines(obj)
    if NO_STATUS in data["notes"]:
        sections = [_event_lines(data["events"], max_events)]
        return "\n".join(lines + [line for s in sections if s for line in ["", *s]]) + "\n"
    for section in (_plan_lines(data["plan"], data["dryRun"]), _autoscaler_lines(data["autoscaler"], now),
                    _comparison_lines(data["comparison"]), _decision_lines(data["decisions"]),
                    _condition_lines(data["conditions"]), _event_lines(data["events"], max_events)):
        if section:
            lines += ["", *section]
    return "\n".join(lines) + "\n"


def _subject_lines(obj: Mapping[str, Any]) -> list[str]:
    spec = _map(obj.get("spec"))
    slo = _slo(spec)
    pct = f"p{slo['percentile']:g}"
    model = _get(spec, "model", "id") or _get(spec, "model", "huggingFaceName") or "?"
    return [f"  {model} ({_get(spec, 'precision', 'weights') or 'bf16'}) on {_get(spec, 'accelerator', 'gpu') or '?'}"
            f" · SLO TTFT {pct} ≤ {_fmt(slo['ttftMs'], 0)} ms, ITL {pct} ≤ {_fmt(slo['itlMs'], 0)} ms"]


def _plan_lines(plan: Mapping[str, Any] | None, dry_run: bool) -> list[str]:
    if plan is None:
        return ["Plan: none yet (the operator has written no plan: not reconciled, or the spec was never valid)"]
    per_mtok = plan["costPerMillionTokensUsd"]
    lines = [f"Plan: {plan['mode']} on {plan['gpu']}, {_int(plan['gpus'])} GPUs, "
             f"${_fmt(plan['costPerHourUsd'], 2)}/h"
             + (f", ${per_mtok:.4f} per million tokens" if per_mtok is not None else ", cost per token unknown")]
    pct = f"p{plan['slo']['percentile']:g}"
    ready_how = "ready/desired" if plan["deploymentsRead"] else "ready/desired*"
    lines.append(f"  {'pool':<11}{'TP':>3}  {ready_how:>14}  {'GPUs':>4}  {'TTFT ' + pct:>11}  {'ITL ' + pct:>10}"
                 "  batched tokens/seqs")
    for p in plan["pools"]:
        ready = ("—" if dry_run else "?") if p["readyReplicas"] is None else str(p["readyReplicas"])
        lines.append(f"  {p['pool']:<11}{_int(p['tensorParallel']):>3}  {ready + '/' + _int(p['desiredReplicas']):>14}"
                     f"  {_int(p['gpus']):>4}  {_fmt(p['predictedTtftMs'], 1, ' ms'):>11}"
                     f"  {_fmt(p['predictedItlMs'], 2, ' ms'):>10}"
                     f"  {p['maxNumBatchedTokens'] or '?'}/{p['maxNumSeqs'] or '?'}")
    if dry_run:
        lines.append("  (dry run: no Deployment is managed, so nothing is ready; the replicas are what would run)")
    elif not plan["deploymentsRead"]:
        lines.append("  (* ready replicas as the Ready condition reports them; the Deployments were not read)")
    demand = plan["demand"]
    lines.append(f"  sized for {_fmt(demand['requestRateRps'], 2)} req/s from {demand['source']}"
                 + (f": {demand['detail']}" if demand["detail"] else ""))
    lines += [f"  why: {why}" for why in plan["why"]]
    return lines


_TERM_MEANING = {"decode": "decode step", "prefill": "prefill time", "ttft": "TTFT queueing",
                 "itl": "ITL tail", "kv": "KV capacity"}


def _calibration_terms(data: Any) -> list[dict[str, Any]]:
    """status.autoscaler.calibration as rows: term, scale, trusted windows, and why it last did not move."""
    if not isinstance(data, Mapping):
        return []
    rows = []
    for term, meaning in _TERM_MEANING.items():
        t = data.get(term)
        if isinstance(t, Mapping) and _number(t.get("scale")) is not None:
            rows.append({"term": term, "meaning": meaning, "scale": _number(t.get("scale")),
                         "windows": _number(t.get("windows")) or 0.0, "note": str(t.get("note") or "")})
    return rows


def _calibration_lines(terms: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in terms:
        state = "as modelled" if abs(t["scale"] - 1.0) < 0.005 else f"×{t['scale']:.3f} the model"
        line = f"    {t['meaning']:<14} {state} ({t['windows']:.0f} windows of evidence)"
        lines.append(line + (f"; not updated: {t['note']}" if t["note"] else ""))
    return lines


def _autoscaler_lines(auto: Mapping[str, Any] | None, now: dt.datetime) -> list[str]:
    if auto is None:
        return ["Autoscaler: no state in status yet"]
    scale = auto["calibrationStepTimeScale"]
    calibration = "unknown" if scale is None else f"steps ×{scale:.2f} the modelled time" + (
        " (as modelled)" if abs(scale - 1) < 0.005 else " (the decode term below)")
    metrics = (f"live since {auto['metricsSince']} ({ago(auto['metricsSince'], now)})" if auto["metricsSeen"]
               else "never seen: sizing from spec.workload hints")
    stab = auto["stabilization"]
    ranges = ", ".join(f"{p} {lo}" + (f"..{hi}" if hi != lo else "")
                       for p, (lo, hi) in stab["recommendedRange"].items())
    since = f" since {ago(stab['historySince'], now)}" if stab["historySince"] else ""
    emergencies = auto["emergencies"]
    last_emergency = emergencies["last"]
    hold = auto["outageHold"]
    lines = [
        "Autoscaler:",
        f"  calibration     {calibration}",
        *_calibration_lines(auto.get("calibrationTerms") or []),
        f"  metrics         {metrics}",
        f"  stabilization   windows: up {stab['scaleUpWindowSeconds']:.0f} s, "
        f"down {stab['scaleDownWindowSeconds']:.0f} s; recommendations remembered: "
        f"{stab['recommendationsRemembered']}{since}" + (f" ({ranges})" if ranges else ""),
        f"  rate limit      {stab['scaleEventsLastMinute']} scale step(s) in the last minute",
        "  emergencies     " + ("none in the last decisions" if not emergencies["count"] else
                                f"{emergencies['count']}, last {ago(_get(last_emergency, 'time'), now)}: "
                                f"{_get(last_emergency, 'message')}"),
        "  outage hold     " + ("no" if hold is None else
                                f"HOLDING replicas since {ago(hold['since'], now)}: {hold['message']}"),
        f"  last scale      {ago(auto['lastScaleTime'], now) if auto['lastScaleTime'] else 'never'}",
    ]
    lines += [f"  held back       {h}" for h in auto["heldBack"]]
    return lines


def _comparison_lines(cmp: Mapping[str, Any] | None) -> list[str]:
    if cmp is None:
        return []
    lines = ["Predicted vs observed:",
             f"  {'':<22}{'predicted':>10}{'observed':>10}{'obs/pred':>10}{'target':>8}"]
    for r in cmp["rows"]:
        digits = 2 if "KV" in r["quantity"] else 1
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        flag = f"  <-- off by {abs(r['ratio'] - 1):.0%}" if r["diverges"] else ""
        target = r["target"]
        if target is not None and r["observed"] is not None and r["observed"] > target:
            flag += "  <-- over target"
        lines.append(f"  {r['quantity']:<22}{_fmt(r['predicted'], digits):>10}{_fmt(r['observed'], digits):>10}"
                     f"{ratio:>10}{_fmt(target, digits if target is not None and target < 10 else 0):>8}{flag}")
    if cmp["note"]:
        lines.append(f"  {cmp['note']}")
    lines += [f"  missing: {m}" for m in cmp["missing"]]
    return lines


def _replicas(d: Mapping[str, Any]) -> str:
    if d.get("toReplicas") is None:
        return d.get("pool") or ""
    frm = d.get("fromReplicas")
    return f"{d.get('pool') or ''} {'0' if frm is None else frm}→{d['toReplicas']}".strip()


def _decision_lines(decisions: list[dict[str, Any]]) -> list[str]:
    if not decisions:
        return ["Decisions: none recorded"]
    lines = ["Decisions (newest first):"]
    for d in decisions:
        lines.append(f"  {d['ago']:>10}  {d['reason'] or '?':<15} {_replicas(d):<15} {d['message']}")
    return lines


def _condition_lines(problems: list[dict[str, Any]]) -> list[str]:
    if not problems:
        return ["Conditions: all healthy"]
    lines = ["Conditions not healthy:"]
    for p in problems:
        choice = " (as configured)" if p["byChoice"] else ""
        lines.append(f"  {p['type']}={p['status']} {p['reason']}{choice}, since {p['sinceAgo']}: {p['message']}")
        if p["action"]:
            lines.append(f"    → {p['action']}")
    return lines


def _event_lines(events: list[dict[str, Any]], limit: int) -> list[str]:
    if limit <= 0:
        return []
    if not events:
        return ["Events: none (Events expire after an hour by default)"]
    lines = [f"Events (newest {len(events)}):"]
    for ev in events:
        count = f" ×{ev['count']}" if ev["count"] is not None and ev["count"] > 1 else ""
        lines.append(f"  {ev['ago']:>10}  {ev['type'] or '?':<8}{ev['reason'] or '?':<15}{count} {ev['message']}")
    return lines
