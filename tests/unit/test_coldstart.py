"""Cold start measured from pods (issue 16): what the kube side reads from a pod, what the planner
keeps across ticks and restarts, and the horizon its forecast projects over."""

from __future__ import annotations

import datetime as dt

from kubernetes import client

from goodput.kube.actions import cold_start
from goodput.planner.autoscale import AutoscalerState, estimate_demand
from goodput.planner.coldstart import ColdStarts, quantile
from goodput.planner.observation import Observation, PoolMetrics

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def pod(created: dt.datetime, ready: dt.datetime | None, restarts: int = 0) -> client.V1Pod:
    conditions = [client.V1PodCondition(type="Ready", status="True", last_transition_time=ready)] if ready else []
    return client.V1Pod(metadata=client.V1ObjectMeta(name="p", creation_timestamp=created),
                        status=client.V1PodStatus(phase="Running", conditions=conditions, container_statuses=[
                            client.V1ContainerStatus(name="vllm", image="i", image_id="", ready=bool(ready),
                                                     restart_count=restarts)]))


def test_a_pods_start_is_creation_to_ready_and_a_restart_is_not_one() -> None:
    ready = T0 + dt.timedelta(seconds=212, microseconds=400_000)
    assert cold_start(pod(T0, ready)) == (T0 + dt.timedelta(seconds=212), 212.0)
    assert cold_start(pod(T0, None)) is None  # still loading
    assert cold_start(pod(T0, ready, restarts=1)) is None  # Ready moved with the restart


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def test_each_pod_counts_once_though_it_is_seen_every_tick() -> None:
    starts = ColdStarts()
    tick = {"aggregated": [(at(200), 200.0)]}
    for _ in range(5):
        starts = starts.observe(tick)
    assert starts.samples == {"aggregated": (200.0,)}
    starts = starts.observe({"aggregated": [(at(200), 200.0), (at(900), 250.0)]})
    assert starts.samples == {"aggregated": (200.0, 250.0)}


def test_the_horizon_is_a_high_quantile_over_the_slowest_pool_and_says_so() -> None:
    assert ColdStarts().horizon(180.0) == (180.0, "")  # no pod seen: the spec's value
    starts = ColdStarts().observe({"prefill": [(at(i), 100.0 + i) for i in range(10)],
                                   "decode": [(at(5), 300.0)]})
    seconds, why = starts.horizon(180.0)
    assert seconds == 300.0 and "decode pool" in why and "1 pod start" in why and "coldStartSeconds 180" in why
    assert starts.horizon(400.0) == (400.0, "")  # pods start faster than the spec says: the spec stands
    assert quantile([100.0 + i for i in range(10)], 0.9) == 108.0  # one slow start in ten does not set it
    assert quantile([100.0] * 8 + [400.0, 500.0], 0.9) == 400.0  # two do


def test_only_the_last_starts_are_kept_and_they_survive_a_restart() -> None:
    starts = ColdStarts().observe({"aggregated": [(at(i), float(i)) for i in range(1, 15)]})
    assert starts.samples["aggregated"] == tuple(float(i) for i in range(5, 15))
    state = AutoscalerState(cold_starts=starts)
    back = AutoscalerState.from_status(state.to_status()).cold_starts
    assert back == starts
    # the pods seen before the restart are not counted again after it
    assert back.observe({"aggregated": [(at(14), 14.0)]}) == starts
    assert ColdStarts.from_status({"aggregated": {"seconds": ["x", -1, 5.0], "lastReady": "garbage"}}) == ColdStarts()


def test_the_forecast_projects_over_the_measured_cold_start() -> None:
    from goodput.api.v1alpha1 import InferenceDeploymentSpec

    spec = InferenceDeploymentSpec.model_validate({
        "model": {"id": "llama-3.1-8b"}, "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": 1000, "itlMs": 40}, "workload": {"requestRate": 10},
        "scaling": {"coldStartSeconds": 60}})
    short = PoolMetrics("aggregated", pods_reporting=1, request_rate_rps=6.0, queue_growth_rps=0.0)
    long = PoolMetrics("aggregated", pods_reporting=1, request_rate_rps=4.0, queue_growth_rps=0.0)
    obs = Observation(T0, 60.0, 600.0, {"aggregated": short}, {"aggregated": long})
    spec_only = estimate_demand(spec, obs)
    measured = estimate_demand(spec, obs, cold_start=(240.0, "cold start 240 s measured (...)"))
    slope = (6.0 - 4.0) / 270.0
    assert abs(spec_only.rate_rps - (6.0 + slope * 60)) < 1e-9
    assert abs(measured.rate_rps - (6.0 + slope * 240)) < 1e-9 and measured.horizon_s == 240.0
    assert "cold start 240 s measured" in measured.note and "in 240 s" in measured.note


def test_the_planner_learns_the_cold_start_from_the_pools_pods() -> None:
    from goodput.api.v1alpha1 import InferenceDeploymentSpec
    from goodput.planner.autoscale import PlannerInput, autoscale
    from goodput.planner.observation import PoolObservation
    from goodput.planner.recommend import resolve

    spec = InferenceDeploymentSpec.model_validate({
        "model": {"id": "llama-3.1-8b"}, "accelerator": {"gpu": "h100-sxm-80gb"}, "mode": "aggregated",
        "slo": {"ttftMs": 1000, "itlMs": 40}, "workload": {"requestRate": 10},
        "scaling": {"coldStartSeconds": 60}})
    pods = {"aggregated": PoolObservation(2, 2, pod_starts=((at(300), 300.0), (at(320), 310.0)))}
    pm = PoolMetrics("aggregated", pods_reporting=2, request_rate_rps=8.0, queue_growth_rps=0.0)
    obs = Observation(T0 + dt.timedelta(hours=1), 60.0, 600.0, {"aggregated": pm}, {"aggregated": pm})
    result = autoscale(PlannerInput(spec, resolve(spec, "x"), obs, pods, {"aggregated": 2},
                                    AutoscalerState(metrics_seen=True), T0 + dt.timedelta(hours=1)))
    assert result.state.cold_starts.samples == {"aggregated": (300.0, 310.0)}
    assert result.demand.horizon_s == 310.0
    assert "cold start 310 s measured (p90 of 2 pod starts of the aggregated pool" in result.demand.note
