"""The operator's own /metrics: what it decided, what it predicted, what it saw, and why.

Every InferenceDeployment is labelled by namespace and name (and pool where it applies).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, start_http_server

from goodput.api.v1alpha1 import PlanStatus

_LABELS = ("namespace", "name")
DESIRED = Gauge("goodput_desired_replicas", "Replicas the operator decided, per pool", (*_LABELS, "pool"))
TENSOR_PARALLEL = Gauge("goodput_tensor_parallel", "Tensor-parallel degree per pool", (*_LABELS, "pool"))
GPUS = Gauge("goodput_planned_gpus", "GPUs of the current plan", _LABELS)
COST = Gauge("goodput_planned_cost_usd_per_hour", "Cost of the current plan, USD per hour", _LABELS)
COST_PER_MTOK = Gauge("goodput_planned_cost_usd_per_million_tokens", "Cost per million tokens", _LABELS)
PREDICTED = Gauge("goodput_predicted_latency_ms", "Predicted latency at the SLO percentile", (*_LABELS, "kind"))
OBSERVED = Gauge("goodput_observed_latency_ms", "Observed latency at the SLO percentile", (*_LABELS, "kind"))
DEMAND = Gauge("goodput_planned_request_rate_rps", "The demand the plan is sized for", _LABELS)
CALIBRATION = Gauge("goodput_calibration_step_time_scale", "Observed/predicted step time (1 = as modelled)",
                    _LABELS)
CALIBRATION_TERM = Gauge("goodput_calibration_scale", "Each calibrated capacity term, observed/modelled "
                         "(decode, prefill, ttft, itl, kv; 1 = as modelled)", (*_LABELS, "term"))
DECISIONS = Counter("goodput_decisions", "Decisions by reason code", (*_LABELS, "reason"))
STATUS_WRITES = Counter("goodput_status_writes", "Status writes by result: written (a merge-patch diff) or "
                        "unchanged (nothing to write, skipped)", (*_LABELS, "result"))
RECONCILE_ERRORS = Counter("goodput_reconcile_errors", "Reconciles that failed and were retried", _LABELS)


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")


def record(namespace: str, name: str, status: dict[str, Any], event_reasons: list[str]) -> None:
    plan = PlanStatus.read(status.get("plan"))
    labels = {"namespace": namespace, "name": name}
    if plan is not None:
        tps = plan.pool_tp()
        for pool, replicas in plan.pool_replicas().items():
            DESIRED.labels(**labels, pool=pool).set(replicas)
            TENSOR_PARALLEL.labels(**labels, pool=pool).set(tps[pool])
        for gauge, value in ((GPUS, plan.gpus), (COST, plan.cost_per_hour),
                             (COST_PER_MTOK, plan.cost_per_million_tokens)):
            if value is not None:
                gauge.labels(**labels).set(value)
        for kind, latency in (("ttft", plan.predicted_ttft_ms), ("itl", plan.predicted_itl_ms)):
            if latency is not None:
                PREDICTED.labels(**labels, kind=kind).set(latency)
    observed = status.get("observed") or {}
    serving = observed.get("aggregated") or observed.get("decode") or {}
    for kind, key in (("ttft", "ttftMs"), ("itl", "itlMs")):
        if serving.get(key) is not None:
            OBSERVED.labels(**labels, kind=kind).set(serving[key])
    if observed.get("plannedRequestRate") is not None:
        DEMAND.labels(**labels).set(observed["plannedRequestRate"])
    if observed.get("stepTimeScale") is not None:
        CALIBRATION.labels(**labels).set(observed["stepTimeScale"])
    for term, scale in (observed.get("calibration") or {}).items():
        if isinstance(scale, int | float):
            CALIBRATION_TERM.labels(**labels, term=term).set(scale)
    for reason in event_reasons:
        DECISIONS.labels(**labels, reason=reason).inc()


def forget(namespace: str, name: str) -> None:
    """Drop a deleted resource's series so dashboards do not show ghosts."""
    for metric in (DESIRED, TENSOR_PARALLEL, GPUS, COST, COST_PER_MTOK, PREDICTED, OBSERVED, DEMAND, CALIBRATION,
                   CALIBRATION_TERM, DECISIONS, RECONCILE_ERRORS, STATUS_WRITES):
        for labels in list(metric._metrics):  # prometheus_client keeps children by label tuple
            if labels[:2] == (namespace, name):
                metric.remove(*labels)
