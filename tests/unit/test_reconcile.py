"""The pure reconcile step: decisions, conditions, events and desired objects, with an explicit clock."""

import copy
import datetime as dt
import json

from goodput.planner.observation import Observation, PoolMetrics
from goodput.render.reconcile import PoolObservation, reconcile

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
OBJ = {
    "metadata": {"name": "llm", "namespace": "serving", "uid": "uid-1", "generation": 1},
    "spec": {
        "model": {"id": "llama-3.1-8b"}, "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": 1000, "itlMs": 40}, "mode": "aggregated",
        "workload": {"requestRate": 20, "inputTokens": {"mean": 1000, "p99": 4000},
                     "outputTokens": {"mean": 200, "p99": 800}},
    },
}


def conds(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def settled(obj: dict, now: dt.datetime) -> tuple[dict, dict]:
    """Reconcile, then pretend the cluster converged to the plan. Editing the returned object's spec
    should go through `edited`, which bumps metadata.generation as the apiserver does."""
    out = reconcile(obj, {}, now)
    nxt = copy.deepcopy(obj)
    nxt["status"] = out.status
    replicas = out.status["plan"]["decodeReplicas"]
    return nxt, {"aggregated": PoolObservation(replicas, replicas)}


def edited(obj: dict) -> dict:
    obj["metadata"]["generation"] += 1
    return obj


def test_initial_plan_renders_vllm_deployment_and_event() -> None:
    out = reconcile(OBJ, {}, NOW)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in out.apply]
    assert kinds == [("Deployment", "llm-aggregated"), ("Service", "llm-aggregated"), ("Service", "llm")]
    dep = out.apply[0]
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    for flag in ("--model", "--served-model-name", "--tensor-parallel-size", "--max-num-seqs",
                 "--max-num-batched-tokens", "--max-model-len", "--gpu-memory-utilization", "--kv-cache-dtype",
                 "--port"):
        assert flag in args
    assert args[args.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    tp = int(args[args.index("--tensor-parallel-size") + 1])
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert dep["metadata"]["labels"]["goodput.dev/role"] == "aggregated"
    assert dep["spec"]["replicas"] == out.status["plan"]["decodeReplicas"] >= 1
    assert any(v["name"] == "dshm" for v in pod["volumes"])
    assert [e.reason for e in out.events] == ["Initial"]
    assert out.status["decisions"][0]["reason"] == "Initial"
    assert conds(out.status)["Ready"] == ("False", "ReplicasNotReady")


def test_unchanged_object_reconciled_again_changes_nothing() -> None:
    obj, observed = settled(OBJ, NOW)
    out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1))
    assert out.events == []
    assert out.status["decisions"] == obj["status"]["decisions"]
    assert conds(out.status)["Ready"] == ("True", "AllReplicasReady")
    # Transition times of unchanged conditions are kept.
    before = {c["type"]: c["lastTransitionTime"] for c in obj["status"]["conditions"]}
    after = {c["type"]: c["lastTransitionTime"] for c in out.status["conditions"]}
    assert after["Degraded"] == before["Degraded"]


def test_more_demand_scales_up_with_a_reason() -> None:
    obj, observed = settled(OBJ, NOW)
    obj["spec"]["workload"]["requestRate"] = 80
    edited(obj)
    out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1))
    assert [e.reason for e in out.events] == ["SpecChanged"]
    message = out.events[0].message
    assert "aggregated" in message and "req/s" in message and "→" in message
    assert out.status["plan"]["decodeReplicas"] > obj["status"]["plan"]["decodeReplicas"]
    assert out.status["lastScaleTime"] == "2026-11-23T12:01:00Z"


# SLOs (ttftMs, itlMs), each at least as tight as the one before it in both, from OBJ's own. At 20
# req/s the plan changes along the chain (2 GPUs at OBJ's SLO, 4 at a 150 ms TTFT, 8 at a 20 ms ITL,
# about 20 at 120/12): the assertion compares plans that differ, so it can fail.
TIGHTENING_SLOS = [(1000, 40), (400, 40), (150, 40), (150, 25), (150, 20), (150, 15), (120, 12), (100, 10)]


def test_tighter_slo_never_needs_fewer_gpus() -> None:
    gpus = []
    for ttft_ms, itl_ms in TIGHTENING_SLOS:
        obj, observed = settled(OBJ, NOW)
        obj["spec"]["slo"] = {"ttftMs": ttft_ms, "itlMs": itl_ms}
        edited(obj)
        out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1))
        assert conds(out.status)["Degraded"] == ("False", "SpecValid"), (ttft_ms, itl_ms)
        gpus.append(out.status["plan"]["gpus"])
    assert gpus == sorted(gpus), list(zip(TIGHTENING_SLOS, gpus, strict=True))
    assert len(set(gpus)) >= 3, f"the chain should move the plan, not hold it: {gpus}"


def test_invalid_spec_touches_nothing_and_warns_once() -> None:
    obj, observed = settled(OBJ, NOW)
    obj["spec"]["accelerator"]["gpu"] = "h100-sxm-80gb"
    obj["spec"]["model"]["id"] = "llama-3.1-405b"
    obj["spec"]["precision"] = {"weights": "bf16"}
    edited(obj)
    obj["spec"]["accelerator"]["gpu"] = "l4-24gb"
    out = reconcile(obj, observed, NOW)
    assert out.apply == [] and out.delete_pools == []
    assert conds(out.status)["Degraded"] == ("True", "InvalidSpec")
    assert [e.type for e in out.events] == ["Warning"]
    assert "does not fit" in out.events[0].message
    assert out.status["plan"] == obj["status"]["plan"], "the last good plan stays visible"
    again = copy.deepcopy(obj)
    again["status"] = out.status
    assert reconcile(again, observed, NOW).events == [], "the same problem is not re-announced"


def test_unsupported_precision_is_a_condition_not_a_crash() -> None:
    obj = copy.deepcopy(OBJ)
    obj["spec"]["accelerator"]["gpu"] = "a100-sxm-80gb"
    obj["spec"]["precision"] = {"weights": "fp8"}
    out = reconcile(obj, {}, NOW)
    assert conds(out.status)["Degraded"][0] == "True"
    assert "FP8 tensor cores" in out.events[0].message


def test_dry_run_plans_but_applies_nothing() -> None:
    obj = copy.deepcopy(OBJ)
    obj["spec"]["dryRun"] = True
    out = reconcile(obj, {}, NOW)
    assert out.apply == []
    assert out.status["plan"]["decodeReplicas"] >= 1
    assert conds(out.status)["ScalingActive"] == ("False", "DryRun")
    assert [e.reason for e in out.events] == ["Initial"]


def test_paused_changes_nothing() -> None:
    obj, observed = settled(OBJ, NOW)
    obj["spec"]["paused"] = True
    edited(obj)
    obj["spec"]["workload"]["requestRate"] = 200
    out = reconcile(obj, observed, NOW)
    assert out.apply == []
    assert out.status["plan"] == obj["status"]["plan"]
    assert [e.reason for e in out.events] == ["Paused"]


def test_replicas_edited_by_hand_are_restored() -> None:
    obj, _ = settled(OBJ, NOW)
    planned = obj["status"]["plan"]["decodeReplicas"]
    out = reconcile(obj, {"aggregated": PoolObservation(planned + 3, planned + 3)}, NOW)
    assert [e.reason for e in out.events] == ["ReplicasRestored"]
    assert out.apply[0]["spec"]["replicas"] == planned


def test_mode_change_deletes_the_old_pool_after_applying_the_new() -> None:
    obj, observed = settled(OBJ, NOW)
    obj["spec"]["mode"] = "disaggregated"
    edited(obj)
    out = reconcile(obj, observed, NOW)
    assert out.delete_pools == ["aggregated"]
    assert {o["metadata"]["name"] for o in out.apply if o["kind"] == "Deployment"} == {"llm-prefill", "llm-decode",
                                                                                  "llm-router"}
    assert out.delete_pools == ["aggregated"]
    assert "ModeChange" in [e.reason for e in out.events]
    prefill = next(o for o in out.apply if o["metadata"]["name"] == "llm-prefill")
    args = prefill["spec"]["template"]["spec"]["containers"][0]["args"]
    config = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert config == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}  # vLLM NixlConnector guide


def test_decisions_are_bounded() -> None:
    obj = copy.deepcopy(OBJ)
    obj["status"] = {"decisions": [{"time": "t", "reason": "Old", "message": str(i)} for i in range(40)]}
    out = reconcile(obj, {}, NOW)
    assert len(out.status["decisions"]) == 20
    assert out.status["decisions"][-1]["reason"] == "Initial"


def test_hf_token_is_referenced_never_copied() -> None:
    obj = copy.deepcopy(OBJ)
    obj["spec"]["template"] = {"huggingFaceTokenSecret": {"name": "hf", "key": "token"}}
    out = reconcile(obj, {}, NOW)
    env = out.apply[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}


def test_metric_driven_reconciles_keep_mode_tp_and_engine_args() -> None:
    """Changing vLLM's arguments restarts every pod: only a spec edit may do it; metrics change replicas."""
    from goodput.planner.observation import Observation, PoolMetrics

    obj, observed = settled(OBJ, NOW)
    before = obj["status"]["plan"]
    args_before = next(o for o in reconcile(obj, observed, NOW).apply if o["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    for minute, rate in enumerate((5.0, 60.0, 120.0), start=1):
        pm = PoolMetrics("aggregated", pods_reporting=before["decodeReplicas"], request_rate_rps=rate,
                         input_len_mean=3000.0, input_len_p99=12000.0, output_len_mean=100.0, output_len_p99=300.0,
                         running=4.0, waiting=0.0, queue_growth_rps=0.0, kv_cache_usage=0.2)
        obs = Observation(NOW + dt.timedelta(minutes=minute), 60.0, 600.0, {"aggregated": pm}, {"aggregated": pm})
        out = reconcile(obj, observed, NOW + dt.timedelta(minutes=minute), obs)
        plan = out.status["plan"]
        assert (plan["mode"], plan["tensorParallel"], plan["engineArgs"]) == (
            before["mode"], before["tensorParallel"], before["engineArgs"])
        dep = next(o for o in out.apply if o["kind"] == "Deployment")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if not a.isdigit()] == [a for a in args_before if not a.isdigit()]
        assert args == args_before, "the pod template is unchanged: no rollout"
        obj["status"] = out.status


# --- faults: drift, capacity, metrics gaps ------------------------------------------------------
UNSCHEDULABLE = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu. preemption: not helpful"


def test_deleted_deployment_is_recreated_with_an_event() -> None:
    obj, _ = settled(OBJ, NOW)
    planned = obj["status"]["plan"]["decodeReplicas"]
    out = reconcile(obj, {}, NOW + dt.timedelta(minutes=1))
    assert [(e.reason, e.type) for e in out.events] == [("DeploymentRestored", "Normal")]
    assert "llm-aggregated" in out.events[0].message and f"{planned} replicas" in out.events[0].message
    dep = next(o for o in out.apply if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == planned
    assert out.status["decisions"] == obj["status"]["decisions"], "drift put back is not a new decision"


def test_paused_puts_back_nothing() -> None:
    obj, _ = settled(OBJ, NOW)
    obj["spec"]["paused"] = True
    edited(obj)
    planned = obj["status"]["plan"]["decodeReplicas"]
    for observed in ({}, {"aggregated": PoolObservation(planned + 2, planned + 2)}):
        out = reconcile(obj, observed, NOW)
        assert out.apply == [] and out.delete_pools == []
        assert "DeploymentRestored" not in [e.reason for e in out.events]
        assert "ReplicasRestored" not in [e.reason for e in out.events]


def _pending(replicas: int, pending: int) -> dict[str, PoolObservation]:
    return {"aggregated": PoolObservation(replicas, replicas - pending, pending_replicas=pending,
                                          pending_message=UNSCHEDULABLE)}


def test_unschedulable_pods_stop_further_scale_up() -> None:
    obj, _ = settled(OBJ, NOW)
    before = obj["status"]["plan"]["decodeReplicas"]
    obj["spec"]["workload"]["requestRate"] = 200
    edited(obj)
    out = reconcile(obj, _pending(before, 1), NOW + dt.timedelta(minutes=1))
    dep = next(o for o in out.apply if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == before, "no more pods while some cannot be scheduled"
    assert out.status["plan"]["decodeReplicas"] == before
    assert out.status["decisions"] == obj["status"]["decisions"]
    limited = next(c for c in out.status["conditions"] if c["type"] == "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "InsufficientCapacity")
    assert f"aggregated: 1 of {before} pods cannot be scheduled" in limited["message"]
    assert UNSCHEDULABLE in limited["message"] and f"kept at {before} replicas" in limited["message"]
    assert [(e.reason, e.type) for e in out.events] == [("InsufficientCapacity", "Warning")]
    # Still stuck: the condition stays, the Warning is not repeated.
    obj["status"] = out.status
    again = reconcile(obj, _pending(before, 1), NOW + dt.timedelta(minutes=2))
    assert again.events == [] and conds(again.status)["ScalingLimited"] == ("True", "InsufficientCapacity")
    # Scheduled at last: the scale-up the demand asks for goes ahead, with its reason.
    obj["status"] = again.status
    free = reconcile(obj, {"aggregated": PoolObservation(before, before)}, NOW + dt.timedelta(minutes=3))
    assert free.status["plan"]["decodeReplicas"] > before
    assert [e.reason for e in free.events] in (["ScaleUp"], ["RateLimited"])  # no longer the spec edit's turn
    assert conds(free.status)["ScalingLimited"][1] != "InsufficientCapacity"


def test_unschedulable_pods_do_not_block_scaling_down() -> None:
    obj = copy.deepcopy(OBJ)
    obj["spec"]["workload"]["requestRate"] = 80
    obj, _ = settled(obj, NOW)
    before = obj["status"]["plan"]["decodeReplicas"]
    obj["spec"]["workload"]["requestRate"] = 5
    edited(obj)
    out = reconcile(obj, _pending(before, 2), NOW + dt.timedelta(minutes=1))
    assert out.status["plan"]["decodeReplicas"] < before
    assert "SpecChanged" in [e.reason for e in out.events]


def test_metrics_gaps_hold_replicas_and_say_what_is_missing() -> None:
    from goodput.planner.observation import Observation, PoolMetrics

    obj, observed = settled(OBJ, NOW)
    obj["status"]["autoscaler"]["metricsSeen"] = True
    before = obj["status"]["plan"]["decodeReplicas"]
    nan = ("request_rate_rps: vllm:request_success_total is NaN for the aggregated pool of serving/llm (60 s "
           "window); nothing observed in the window, taken as unknown")
    stale = "no vLLM series for serving/llm in the last 60 s (only in the 600 s window)"
    for missing, pools in (((nan,), {"aggregated": PoolMetrics("aggregated")}), ((stale,), {})):
        obs = Observation(NOW + dt.timedelta(minutes=1), 60.0, 600.0, pools, {}, missing=missing)
        out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1), obs)
        metrics = next(c for c in out.status["conditions"] if c["type"] == "MetricsAvailable")
        assert (metrics["status"], metrics["reason"]) == ("False", "MetricsUnavailable")
        assert metrics["message"].startswith("metrics unavailable, holding replicas: Prometheus answered, but ")
        assert missing[0] in metrics["message"] and "scraped" in metrics["message"]
        assert out.status["plan"]["decodeReplicas"] == before and out.events == []
    down = Observation.unavailable(NOW, "Prometheus at http://p:9090 is unreachable: Connection refused")
    out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1), down)
    metrics = next(c for c in out.status["conditions"] if c["type"] == "MetricsAvailable")
    assert metrics["message"] == ("metrics unavailable, holding replicas: Prometheus at http://p:9090 is "
                                  "unreachable: Connection refused")


def test_a_rate_limit_never_turns_a_scale_up_into_a_scale_down() -> None:
    """Right after spec edits moved a pool 1→4→6, the planner's per-minute budget counted from the
    1 replica a minute ago: a further scale-up came out as "RateLimited 6→2". A person's edits are
    not steps of that budget, and a limit only ever slows a move: the pool goes up."""
    obj = copy.deepcopy(OBJ)
    obj["spec"]["workload"].update(requestRate=3, inputTokens={"mean": 2000}, outputTokens={"mean": 1000})
    obj, observed = settled(obj, NOW)
    sizes = [obj["status"]["plan"]["decodeReplicas"]]
    for seconds, rate in ((10, 15), (20, 25)):
        obj["spec"]["workload"]["requestRate"] = rate
        edited(obj)
        out = reconcile(obj, observed, NOW + dt.timedelta(seconds=seconds))
        obj["status"] = out.status
        sizes.append(out.status["plan"]["decodeReplicas"])
        observed = {"aggregated": PoolObservation(sizes[-1], sizes[-1])}
    assert sizes[0] < sizes[1] < sizes[2], sizes
    obj["spec"]["workload"]["requestRate"] = 40  # more demand, as live metrics would show it (no spec edit)
    out = reconcile(obj, observed, NOW + dt.timedelta(seconds=30))
    assert out.status["plan"]["decodeReplicas"] > sizes[-1]
    assert [e.reason for e in out.events] == ["ScaleUp"]
    assert out.apply[0]["spec"]["replicas"] == out.status["plan"]["decodeReplicas"]


def _metrics_obj(rate: float) -> tuple[dict, dict]:
    """Settled at the plan for `rate`, with metrics seen; the hint then says 1 req/s (as if the
    plan had come from live metrics)."""
    obj = copy.deepcopy(OBJ)
    obj["spec"]["workload"]["requestRate"] = rate
    obj["spec"]["scaling"] = {"scaleDownStabilizationSeconds": 0}
    obj, observed = settled(obj, NOW)
    obj["spec"]["workload"]["requestRate"] = 1
    obj["status"]["autoscaler"]["metricsSeen"] = True
    return obj, observed


def _live(now: dt.datetime, rate: float) -> Observation:

    pm = PoolMetrics("aggregated", pods_reporting=1, request_rate_rps=rate, queue_growth_rps=0.0, running=1.0,
                     waiting=0.0, kv_cache_usage=0.1)
    return Observation(now, 60.0, 600.0, {"aggregated": pm}, {"aggregated": pm})


def test_an_outage_keeps_the_held_replicas_in_the_scale_down_window() -> None:
    """The planner plans from the spec's hints during an outage; the window remembers what is held."""
    from goodput.planner.observation import Observation

    obj, observed = _metrics_obj(60)
    held = obj["status"]["plan"]["decodeReplicas"]
    assert held > 1
    down = Observation.unavailable(NOW + dt.timedelta(minutes=1), "Prometheus at http://p is unreachable")
    out = reconcile(obj, observed, NOW + dt.timedelta(minutes=1), down)
    assert out.status["plan"]["decodeReplicas"] == held and out.events == []
    assert out.status["autoscaler"]["recommendations"][-1]["replicas"] == {"aggregated": held}


def test_no_scale_down_while_metrics_settle_after_an_outage() -> None:
    obj, observed = _metrics_obj(60)
    held = obj["status"]["plan"]["decodeReplicas"]
    metrics = next(c for c in obj["status"]["conditions"] if c["type"] == "MetricsAvailable")
    metrics.update(status="False", reason="MetricsUnavailable")
    back = NOW + dt.timedelta(minutes=1)
    out = reconcile(obj, observed, back, _live(back, 1.0))  # the first reading reads low
    assert out.status["plan"]["decodeReplicas"] == held and out.events == []
    assert "came back less than 60 s ago" in out.status["plan"]["reason"]
    obj["status"] = out.status
    later = back + dt.timedelta(seconds=61)  # the short window now lies after the gap
    out = reconcile(obj, observed, later, _live(later, 1.0))
    assert out.status["plan"]["decodeReplicas"] < held
    assert [e.reason for e in out.events] in (["ScaleDown"], ["RateLimited"])


def test_the_status_plan_is_read_and_written_through_one_model() -> None:
    """PlanStatus (goodput.api.v1alpha1) writes the plan and reads it back; a plan that does not
    parse is no plan (the cluster's Deployments then say what runs), and a newer operator's extra
    fields are ignored."""
    from goodput.api.v1alpha1 import PlanStatus

    obj, _ = settled(copy.deepcopy(OBJ), NOW)
    plan = PlanStatus.read(obj["status"]["plan"])
    assert plan is not None and plan.to_status() == obj["status"]["plan"]
    assert plan.pool_replicas() == {"aggregated": obj["status"]["plan"]["aggregatedReplicas"]}
    assert PlanStatus.read({**obj["status"]["plan"], "fromTheFuture": 1}) == plan
    assert PlanStatus.read({**obj["status"]["plan"], "gpus": "many"}) is None
    assert PlanStatus.read("a plan") is None and PlanStatus.read(None) is None
    disagg = PlanStatus(mode="disaggregated", tensor_parallel=2, prefill_tensor_parallel=1, prefill_replicas=3,
                        decode_replicas=2, gpus=7, cost_per_hour=1.0)
    assert disagg.pool_replicas() == {"prefill": 3, "decode": 2} and disagg.pool_tp() == {"prefill": 1, "decode": 2}
