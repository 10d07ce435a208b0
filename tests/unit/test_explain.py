"""`goodput explain`'s pure formatter, on statuses written by the real pure `reconcile` (from the
example manifests, with a fixed clock) and on hand-made unhealthy and half-written ones."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from goodput.planner.observation import Observation, PoolMetrics
from goodput.render.explain import NO_STATUS, ago, explain_data, explain_text
from goodput.render.reconcile import Outcome, PoolObservation, reconcile

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(minutes=3)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def example(filename: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((EXAMPLES / filename).read_text())
    obj["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    return obj


def event_dicts(out: Outcome, at: dt.datetime) -> list[dict[str, Any]]:
    """The Events as the apiserver serves them (what kube/actions.py posts)."""
    return [{"type": e.type, "reason": e.reason, "message": e.message, "count": 1, "lastTimestamp": iso(at),
             "involvedObject": {"kind": "InferenceDeployment", "uid": "uid-1"}} for e in out.events]


def reconciled(filename: str, observed: dict[str, PoolObservation] | None = None,
               steps: int = 1, request_rate: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The example after `steps` reconciles at T0 (the cluster showing `observed` after the first),
    planned for `request_rate` instead of its own hint when given: then at the model's own count
    (no pessimistic prior before calibration), which the rate was chosen for."""
    obj = example(filename)
    if request_rate is not None:
        obj["spec"]["workload"]["requestRate"] = request_rate
        obj["spec"].setdefault("scaling", {})["uncalibratedMargin"] = 0
    events: list[dict[str, Any]] = []
    for i in range(steps):
        out = reconcile(obj, observed if (observed and i) else {}, T0)
        obj["status"] = out.status
        events += event_dicts(out, T0)
    return obj, events


# --- table: every example, as the operator writes its status -------------------------------------
CASES = [
    # (manifest, headline starts, healthy, must appear in the text besides the plan's own figures)
    ("aggregated-small.yaml", "serving/llama-8b-chat: UNHEALTHY", False,
     ["Ready=False (ReplicasNotReady)", "Plan: aggregated on h100-sxm-80gb",
      "sized for 20.00 req/s from spec.workload hints", "3m ago  Initial",
      "→ look at the pods: kubectl get pods -n serving -l goodput.dev/inference-deployment=llama-8b-chat",
      "NoMetricsSource (as configured)", "never seen: sizing from spec.workload hints"]),
    ("budget-capped.yaml", "serving/mistral-capped: UNHEALTHY", False,
     ["ScalingLimited=True BudgetOrBounds", "over the budget", "raise them, or accept the SLO risk",
      "SLOAtRisk=True SLOAtRisk", "see ScalingLimited", "(+2 more)"]),
    ("disaggregated-70b-fp8-h100.yaml", "serving/llama-70b: UNHEALTHY", False,
     ["Plan: disaggregated on h100-sxm-80gb", "sized for 6.00 req/s from spec.workload hints"]),
    ("dry-run.yaml", "serving/qwen-72b-what-if: DRY RUN", True,
     ["no Deployment is managed", "set spec.dryRun: false to apply the plan"]),
]


def plan_figures(status: dict[str, Any], dry_run: bool) -> list[str]:
    """What the text must show of the plan the operator wrote, pool by pool."""
    plan = status["plan"]
    out = [f"{plan['gpus']} GPUs, ${plan['costPerHour']:.2f}/h", f"${plan['costPerMillionTokens']:.4f} per million"]
    for d in status["decisions"]:
        pool, n = d["pool"], d["toReplicas"]
        tp = plan["prefillTensorParallel"] if pool == "prefill" else plan["tensorParallel"]
        args = plan["engineArgs"][pool]
        latency = (f"{plan['predictedTtftMs']:,.1f} ms" if pool != "decode" else "") + (
            f"{plan['predictedItlMs']:,.2f} ms" if pool != "prefill" else "")
        ready = "—" if dry_run else "0"
        out += [f"  {pool:<11}{tp:>3}  {ready + '/' + str(n):>14}  {tp * n:>4}", latency.split(" ms")[0],
                f"{args['maxNumBatchedTokens']}/{args['maxNumSeqs']}", f"why: {pool} 0→{n}", f"{pool} 0→{n}"]
    return out


@pytest.mark.parametrize(("manifest", "headline", "healthy", "expected"), CASES, ids=[c[0] for c in CASES])
def test_examples_explained(manifest: str, headline: str, healthy: bool, expected: list[str]) -> None:
    obj, events = reconciled(manifest)
    text = explain_text(obj, events, NOW)
    first = text.splitlines()[0]
    assert first.startswith(headline), first
    for piece in expected + plan_figures(obj["status"], obj["spec"].get("dryRun", False)):
        assert piece in text, f"{piece!r} not in:\n{text}"
    data = explain_data(obj, events, NOW)
    assert data["healthy"] is healthy
    json.dumps(data, allow_nan=False)  # --json never writes NaN
    plan = obj["status"]["plan"]
    assert sum(p["gpus"] for p in data["plan"]["pools"]) == plan["gpus"]
    assert data["plan"]["costPerHourUsd"] == plan["costPerHour"]
    assert {p["pool"]: p["desiredReplicas"] for p in data["plan"]["pools"]} == {
        d["pool"]: d["toReplicas"] for d in obj["status"]["decisions"]}
    assert [d["reason"] for d in data["decisions"]] == ["Initial"] * len(obj["status"]["decisions"])


# The example's demand doubled: 40 req/s needs two replicas of Llama-3.1-8B on H100 (about 26 req/s each).
TWO_REPLICA_RPS = 40.0


def test_settled_deployment_is_healthy_and_uses_the_deployments_read() -> None:
    obj, events = reconciled("aggregated-small.yaml", {"aggregated": PoolObservation(2, 2)}, steps=2,
                             request_rate=TWO_REPLICA_RPS)
    deployments = {"aggregated": PoolObservation(2, 2)}
    data = explain_data(obj, events, NOW, deployments=deployments)
    assert data["healthy"]
    assert data["headline"].startswith("serving/llama-8b-chat: HEALTHY — 2×aggregated TP1 ready, within SLO")
    assert "no metrics source" in data["headline"]
    assert data["plan"]["pools"][0]["readyReplicas"] == 2
    text = explain_text(obj, events, NOW, deployments=deployments)
    assert "2/2" in text and "ready/desired*" not in text
    # Reconciling an unchanged object again adds no decision: still only the Initial one.
    assert [d["reason"] for d in data["decisions"]] == ["Initial"]


def test_ready_replicas_from_deployments_override_the_condition() -> None:
    obj, events = reconciled("disaggregated-70b-fp8-h100.yaml")
    data = explain_data(obj, events, NOW, deployments={"prefill": PoolObservation(2, 1)})
    ready = {p["pool"]: (p["readyReplicas"], p["runningReplicas"]) for p in data["plan"]["pools"]}
    assert ready == {"prefill": (1, 2), "decode": (0, None)}


# --- live metrics: the model against what was observed ----------------------------------------
def ttft_buckets(p99_ms: float, count: float) -> tuple[tuple[float, float], ...]:
    """Cumulative TTFT buckets (vLLM's bounds, ms) whose p99, read with an exponential tail, is p99_ms:
    2% of the requests above the bound below it, decaying to the next bound."""
    import math

    from goodput.engine.vllm_metrics import TTFT_BUCKETS

    bounds = [b * 1000.0 for b in TTFT_BUCKETS]
    hi = next(b for b in bounds if b > p99_ms)
    lo = bounds[bounds.index(hi) - 1]
    above_hi = 0.02 * math.exp(-math.log(2.0) * (hi - lo) / (p99_ms - lo))
    return (*((b, count * (0.98 if b <= lo else 1.0 - above_hi)) for b in bounds), (math.inf, count))


def live_obj() -> tuple[dict[str, Any], list[dict[str, Any]], dt.datetime]:
    """aggregated-small with a Prometheus: load rises and latency goes over the SLO."""
    obj = example("aggregated-small.yaml")
    obj["spec"]["prometheus"] = {"url": "http://prometheus:9090"}
    out = reconcile(obj, {}, T0)
    obj["status"], events, t = out.status, event_dicts(out, T0), T0
    seen = {"aggregated": PoolObservation(2, 2)}
    for rate, ttft, itl in ((20, 300, 30), (30, 700, 38), (45, 1400, 52)):
        t += dt.timedelta(minutes=2)
        pool = PoolMetrics("aggregated", pods_reporting=2, request_rate_rps=rate, queue_growth_rps=0.0, ttft_ms=ttft,
                           itl_ms=itl, itl_mean_ms=itl * 0.8, kv_cache_usage=0.8, running=60, waiting=5,
                           input_len_mean=1000, output_len_mean=200, generation_tokens_tps=rate * 200.0,
                           ttft_buckets=ttft_buckets(ttft, rate * 60.0))
        out = reconcile(obj, seen, t, Observation(t, 60, 600, {"aggregated": pool}, {"aggregated": pool}))
        obj["status"] = out.status
        events += event_dicts(out, t)
        seen = {"aggregated": PoolObservation(out.status["plan"]["aggregatedReplicas"], 2)}
    return obj, events, t + dt.timedelta(seconds=30)


def test_live_metrics_compare_predicted_with_observed() -> None:
    obj, events, now = live_obj()
    data = explain_data(obj, events, now)
    rows = {r["quantity"]: r for r in data["comparison"]["rows"]}
    ttft = rows["TTFT p99 (ms)"]
    assert ttft["observed"] == 1400 and ttft["predicted"] == obj["status"]["plan"]["predictedTtftMs"]
    assert ttft["ratio"] == pytest.approx(1400 / ttft["predicted"], abs=1e-3) and ttft["diverges"]
    assert rows["request rate (req/s)"]["ratio"] == pytest.approx(1.0) and not rows["request rate (req/s)"]["diverges"]
    assert rows["KV cache usage (0-1)"]["observed"] == 0.8
    assert data["plan"]["demand"]["source"] == "live metrics"
    assert data["autoscaler"]["metricsSeen"] and data["autoscaler"]["calibrationStepTimeScale"] != 1.0
    assert [d["reason"] for d in data["decisions"]][:2] == ["ScaleUp", "ScaleUp"]
    assert data["decisions"][0]["ago"] == "30s ago"
    text = explain_text(obj, events, now)
    assert "<-- off by" in text and "<-- over target" in text
    assert "SLOAtRisk=True SLOAtRisk" in text
    assert "observed TTFT p99 1400 ms (histogram: 1000-2500 ms) > 1000 ms" in text
    assert "(the decode term below)" in text


@pytest.mark.parametrize(("observed", "predicted", "diverges"), [
    (120.0, 100.0, False), (121.0, 100.0, True), (79.0, 100.0, True), (80.0, 100.0, False), (None, 100.0, False),
])
def test_divergence_flag_at_twenty_percent(observed: float | None, predicted: float, diverges: bool) -> None:
    obj, events = reconciled("aggregated-small.yaml")
    obj["status"]["plan"]["predictedItlMs"] = predicted
    obj["status"]["observed"]["aggregated"] = {} if observed is None else {"itlMs": observed}
    rows = {r["quantity"]: r for r in explain_data(obj, events, NOW)["comparison"]["rows"]}
    assert rows["ITL p99 (ms)"]["diverges"] is diverges


# --- unhealthy and half-written ------------------------------------------------------------------
def test_invalid_spec_from_reconcile_says_what_to_fix() -> None:
    obj = example("aggregated-small.yaml")
    obj["spec"]["accelerator"]["gpu"] = "no-such-gpu"
    out = reconcile(obj, {}, T0)
    obj["status"] = out.status
    text = explain_text(obj, event_dicts(out, T0), NOW)
    assert text.startswith("serving/llama-8b-chat: UNHEALTHY — Degraded=True (InvalidSpec)")
    assert "no-such-gpu" in text and "fix the spec field named above" in text
    assert "Plan: none yet" in text
    assert "InvalidSpec" in text.split("Events")[1]


def hand_made_outage() -> dict[str, Any]:
    """A fleet that scaled up in an emergency, then lost Prometheus: replicas are held."""
    obj, _ = reconciled("aggregated-small.yaml", {"aggregated": PoolObservation(2, 2)}, steps=2)
    status = obj["status"]
    status["autoscaler"].update(metricsSeen=True, metricsSince=iso(T0 - dt.timedelta(hours=2)), stepTimeScale=1.3)
    status["observed"] = {"source": "spec.workload", "plannedRequestRate": 20.0, "stepTimeScale": 1.3,
                          "time": iso(NOW), "error": "Prometheus at http://prom:9090 unreachable: timed out"}
    status["decisions"].append({"time": iso(T0 + dt.timedelta(minutes=1)), "reason": "Emergency", "pool": "aggregated",
                                "fromReplicas": 2, "toReplicas": 3,
                                "message": "aggregated 2→3 now: KV cache 96% full"})
    for c in status["conditions"]:
        if c["type"] == "MetricsAvailable":
            c.update(reason="MetricsUnavailable", lastTransitionTime=iso(T0 + dt.timedelta(minutes=2)),
                     message="metrics unavailable, holding replicas: Prometheus at http://prom:9090 unreachable")
    return obj


def test_hand_made_outage_hold_and_emergency() -> None:
    obj = hand_made_outage()
    data = explain_data(obj, [], NOW)
    assert not data["healthy"]
    assert data["headline"].startswith("serving/llama-8b-chat: UNHEALTHY — MetricsAvailable=False (MetricsUnavailable)")
    assert data["autoscaler"]["outageHold"]["since"] == iso(T0 + dt.timedelta(minutes=2))
    assert data["autoscaler"]["emergencies"]["count"] == 1
    text = explain_text(obj, [], NOW)
    assert "HOLDING replicas since 1m ago" in text
    assert "1, last 2m ago: aggregated 2→3 now: KV cache 96% full" in text
    assert "no observation: Prometheus at http://prom:9090 unreachable: timed out" in text
    assert "goodput observe --prometheus URL --name llama-8b-chat -n serving" in text
    assert "steps ×1.30 the modelled time" in text
    assert text.index("Emergency") < text.index("Initial")  # newest decision first


@pytest.mark.parametrize("status", [None, {}, {"observedGeneration": 1}, {"conditions": []}])
def test_no_status_yet(status: dict[str, Any] | None) -> None:
    obj = example("aggregated-small.yaml")
    obj["status"] = status
    text = explain_text(obj, [], NOW)
    assert text.splitlines()[0] == f"serving/llama-8b-chat: NOT RECONCILED — {NO_STATUS}"
    assert "Events: none" in text
    data = explain_data(obj, [], NOW)
    assert data["healthy"] is False and data["plan"] is None and NO_STATUS in data["notes"]


def test_stale_generation_is_noted() -> None:
    obj, events = reconciled("aggregated-small.yaml")
    obj["metadata"]["generation"] = 2
    assert "status is for generation 1 but the spec is at 2" in explain_text(obj, events, NOW)


def test_paused_headline() -> None:
    obj, events = reconciled("aggregated-small.yaml", {"aggregated": PoolObservation(2, 2)}, steps=1)
    obj["spec"]["paused"] = True
    out = reconcile(obj, {"aggregated": PoolObservation(2, 2)}, T0)
    obj["status"] = out.status
    text = explain_text(obj, events + event_dicts(out, T0), NOW)
    assert text.startswith("serving/llama-8b-chat: PAUSED")
    assert "set spec.paused: false to resume scaling" in text


def test_every_status_field_missing_or_mangled_never_crashes() -> None:
    obj, events = reconciled("disaggregated-70b-fp8-h100.yaml")
    for key in list(obj["status"]):
        broken: Any
        for broken in (None, "garbage", 7, [], {}):
            bad = copy.deepcopy(obj)
            bad["status"][key] = broken
            explain_text(bad, events, NOW)
            json.dumps(explain_data(bad, events, NOW), allow_nan=False)
    for key in list(obj["status"]["plan"]):
        bad = copy.deepcopy(obj)
        del bad["status"]["plan"][key]
        bad["status"]["plan"]["gpus"] = float("nan")
        explain_text(bad, events, NOW)
        json.dumps(explain_data(bad, events, NOW), allow_nan=False)
    explain_text({}, [{}], NOW)


# --- events and clocks -------------------------------------------------------------------------
def test_events_newest_first_and_limited() -> None:
    events = [{"type": "Normal", "reason": f"R{i}", "message": f"m{i}", "lastTimestamp": iso(T0 + dt.timedelta(
        seconds=10 * i))} for i in range(5)]
    events.append({"type": "Warning", "reason": "Old", "message": "series", "eventTime": "2026-03-02T08:00:00.123456Z"})
    obj, _ = reconciled("aggregated-small.yaml")
    data = explain_data(obj, events, NOW, max_events=3)
    assert [e["reason"] for e in data["events"]] == ["R4", "R3", "R2"]
    assert [e["reason"] for e in explain_data(obj, events, NOW, max_events=10)["events"]][-1] == "Old"
    assert "Events" not in explain_text(obj, events, NOW, max_events=0)


@pytest.mark.parametrize(("seconds_before", "expected"), [
    (0, "just now"), (59, "59s ago"), (180, "3m ago"), (3599, "59m ago"), (7500, "2h05m ago"),
    (3 * 86400 + 3600, "3d1h ago"), (-60, "in 1m (clock skew?)"),
])
def test_relative_times(seconds_before: int, expected: str) -> None:
    assert ago(iso(NOW - dt.timedelta(seconds=seconds_before)), NOW) == expected


@pytest.mark.parametrize("text", [None, "", "yesterday", 12])
def test_unreadable_times(text: Any) -> None:
    assert ago(text, NOW) == "?"


def test_apiserver_time_formats() -> None:
    assert ago("2026-03-02T09:02:00+00:00", NOW) == "1m ago"
    assert ago("2026-03-02T09:02:00.5Z", NOW) == "59s ago"


def test_scale_down_held_by_the_stabilization_window() -> None:
    obj, events = reconciled("aggregated-small.yaml", {"aggregated": PoolObservation(2, 2)}, steps=2,
                             request_rate=TWO_REPLICA_RPS)
    obj["spec"]["prometheus"] = {"url": "http://prometheus:9090"}
    t = T0 + dt.timedelta(seconds=30)
    idle = PoolMetrics("aggregated", pods_reporting=2, request_rate_rps=0.5, queue_growth_rps=0.0, ttft_ms=90,
                       itl_ms=12, itl_mean_ms=10, kv_cache_usage=0.02, running=1, waiting=0)
    out = reconcile(obj, {"aggregated": PoolObservation(2, 2)}, t,
                    Observation(t, 60, 600, {"aggregated": idle}, {"aggregated": idle}))
    obj["status"] = out.status
    data = explain_data(obj, events, t + dt.timedelta(seconds=5), deployments={"aggregated": PoolObservation(2, 2)})
    assert data["autoscaler"]["heldBack"] and "the model asks 1" in data["autoscaler"]["heldBack"][0]
    text = explain_text(obj, events, t + dt.timedelta(seconds=5), deployments={"aggregated": PoolObservation(2, 2)})
    assert "held back       aggregated stays at 2" in text
    assert "waiting for the stabilization window" in text
    assert text.startswith("serving/llama-8b-chat: HEALTHY")  # holding is the autoscaler working, not a fault


def test_every_calibration_term_is_explained() -> None:
    obj, _ = reconciled("aggregated-small.yaml", {"aggregated": PoolObservation(2, 2)}, steps=2)
    auto = obj["status"]["autoscaler"]
    auto["calibration"].update(decode={"scale": 1.36, "windows": 12.0},
                               itl={"scale": 1.1, "windows": 3.0, "note": "warm-up: the decode pool changed"})
    data = explain_data(obj, [], NOW)
    terms = {t["term"]: t for t in data["autoscaler"]["calibrationTerms"]}
    assert set(terms) == {"decode", "prefill", "ttft", "itl", "kv"}
    text = explain_text(obj, [], NOW)
    assert "decode step    ×1.360 the model (12 windows of evidence)" in text
    assert "ITL tail       ×1.100 the model (3 windows of evidence); not updated: warm-up" in text
    assert "KV capacity    as modelled" in text
    assert "TTFT queueing  as modelled" in text
