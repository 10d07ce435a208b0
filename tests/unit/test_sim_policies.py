"""Pure pieces of the simulator with known answers: PromQL functions, the HPA/KEDA replica
calculators and behavior, Dynamo's profile look-ups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from goodput.sim.metrics import deriv, histogram_quantile
from goodput.sim.policies import HPABehavior, external_average_replicas, plain_metric_replicas


def test_histogram_quantile_prometheus_semantics() -> None:
    bounds = (1.0, 2.0, 4.0)
    # 10 observations in (1, 2]: the median interpolates linearly inside that bucket.
    assert histogram_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(1.5)
    # The first bucket starts at 0.
    assert histogram_quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.5)
    # In the +Inf bucket: the largest finite bound.
    assert histogram_quantile(0.99, bounds, [0, 0, 1, 99]) == 4.0
    # Bounds above max_bound fall in +Inf (vLLM cuts its token buckets at max_model_len).
    assert histogram_quantile(0.99, bounds, [0, 0, 5, 0], max_bound=2.0) == 2.0
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 0]) is None


def test_deriv_is_least_squares_slope() -> None:
    assert deriv([0, 15, 30, 45], [1, 4, 7, 10]) == pytest.approx(0.2)
    assert deriv([0, 15, 30], [5, 5, 5]) == pytest.approx(0.0)
    assert deriv([0], [1]) is None


def test_hpa_pods_metric_calculator() -> None:
    # The Kubernetes documentation's example: 50 pods at 90 against 75 -> 60.
    assert plain_metric_replicas([90.0] * 50, 0, 50, 75.0) == 60
    # Within the 10% tolerance: no change.
    assert plain_metric_replicas([82.0] * 50, 0, 50, 75.0) == 50
    # Scale down: ceil(ratio * ready pods).
    assert plain_metric_replicas([10.0] * 4, 0, 4, 40.0) == 1
    # Pods without metrics yet (starting): 0 on a scale-up, the target on a scale-down.
    assert plain_metric_replicas([150.0, 150.0], 2, 4, 100.0) == 4  # (150+150+0+0)/4/100 = 0.75 < 1: hold
    assert plain_metric_replicas([300.0, 300.0], 2, 4, 100.0) == 6  # (300+300+0+0)/4/100 = 1.5
    assert plain_metric_replicas([], 3, 3, 10.0) is None  # no metrics: the HPA does nothing


def test_keda_average_value_calculator() -> None:
    assert external_average_replicas(23.0, 2, 5.0) == 5  # ceil(23 / 5)
    assert external_average_replicas(0.0, 3, 5.0) == 0  # then clamped to minReplicas by the behavior
    assert external_average_replicas(10.4, 2, 5.0) == 2  # 10.4 / (5 x 2) within 10%


def test_hpa_behavior_defaults() -> None:
    b = HPABehavior(recommendations=[(0.0, 4)])
    # Scale-down waits for the 300 s window: the highest recommendation in it wins.
    assert b.normalize(1, 4, 15.0) == 4
    assert b.normalize(1, 4, 290.0) == 4
    assert b.normalize(1, 4, 301.0) == 1
    # Scale-up is immediate but limited to max(2x, +4) per 15 s.
    assert b.normalize(50, 1, 316.0) == 5
    assert b.normalize(50, 10, 331.0) == 20
    assert HPABehavior(min_replicas=1).normalize(0, 1, 0.0) == 1


def test_dynamo_profile_lookups() -> None:
    from goodput.sim.policies import DynamoProfile
    from goodput.sim.simulate import build_spec, prepare
    from goodput.sim.trace import parse_trace

    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{k / 4:.2f},1500,150" for k in range(400)]
    setup = prepare(build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated"),
                    parse_trace(lines))
    prof = DynamoProfile(setup, "aggregated")
    # Prefill tokens/s per GPU: prompt / its batch-1 TTFT / GPUs.
    isl = 1500.0
    assert prof.prefill_thpt_per_gpu(isl) == pytest.approx(isl / prof.prefill_ttft_s(isl) / prof.tp)
    # A looser ITL target allows a larger batch: more tokens/s per GPU, never fewer.
    tight = prof.best_decode_thpt_per_gpu(0.015, 1575.0)
    loose = prof.best_decode_thpt_per_gpu(0.040, 1575.0)
    assert 0 < tight <= loose
    assert math.isfinite(prof.decode_itl_s(8.0, 1575.0))


def _setup_8b(rate_per_s: float = 4.0, seconds: int = 100):  # type: ignore[no-untyped-def]
    from goodput.sim.simulate import build_spec, prepare
    from goodput.sim.trace import parse_trace

    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{k / rate_per_s:.2f},1500,150"
                                                           for k in range(int(seconds * rate_per_s))]
    return prepare(build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated"),
                   parse_trace(lines))


def test_dynamo_native_aggregated_rate() -> None:
    from goodput.sim.policies import DynamoProfile

    prof = DynamoProfile(_setup_8b(rate_per_s=20.0), "aggregated")
    prof.max_seqs = 256.0  # vLLM's default, so that the ITL target (not --max-num-seqs) sets the batch
    base = prof.best_agg_rps(1500.0, 150.0, 1.0, 0.020)
    assert base > 0
    # Prefix hits discount the prefill part of every step: never fewer requests/s.
    assert prof.best_agg_rps(1500.0, 150.0, 1.0, 0.020, hit_rate=0.5) >= base
    # A looser ITL target, a larger batch: more requests/s.
    assert prof.best_agg_rps(1500.0, 150.0, 1.0, 0.030) > base
    # Unreachable at batch 1: Dynamo still answers one sequence's rate, 1 / (osl * step).
    one = prof.best_agg_rps(1500.0, 150.0, 1.0, 1e-6)
    step = float(prof._mixed_step_s(np.array([1.0]), np.array([1575.0]), np.array([10.0]), 1500.0)[0])
    assert one == pytest.approx(1.0 / (150.0 * step))


def test_dynamo_ignores_scaling_while_a_replica_starts() -> None:
    from goodput.sim.fleet import Completion, Fleet
    from goodput.sim.simulate import make_policy

    setup = _setup_8b(rate_per_s=20.0)
    policy = make_policy("dynamo", setup)
    assert policy.interval_s == 180.0  # Dynamo's own default, not the operator's 30 s
    fleet = Fleet(setup.pools, setup.trace)
    fleet.set_replicas("aggregated", 1, 0.0)
    fleet.advance(0.0)
    policy.decide(180.0, fleet)  # the first interval: a start-up artefact, skipped
    fleet.advance(200.0)
    fleet.set_replicas("aggregated", 2, 300.0)  # one more, serving from t = 500 s
    # 120 req/s finished over the last interval (an engine serves ~35 at these targets): Dynamo wants
    # several replicas...
    fleet.completions += [Completion(300.0, 0.2, 0.02, 149, 3.0, 1500, 150)] * (120 * 180)
    fleet.advance(360.0)
    assert policy.decide(360.0, fleet) == {"aggregated": 2}  # ...but the deployment is not ready
    assert any("not ready, ignoring this scaling" in note for note in policy.notes)
    fleet.completions += [Completion(520.0, 0.2, 0.02, 149, 3.0, 1500, 150)] * (120 * 180)
    fleet.advance(540.0)
    assert policy.decide(540.0, fleet)["aggregated"] > 2  # ready: the scaling goes through


def test_hpa_and_keda_read_scrapes_not_live_engines() -> None:
    from goodput.sim.fleet import Fleet
    from goodput.sim.policies import KedaQueueRunningPolicy, _running, _waiting

    setup = _setup_8b()
    fleet = Fleet(setup.pools, setup.trace)
    fleet.set_replicas("aggregated", 1, 0.0)
    fleet.advance(0.0)
    fleet.submit_arrivals(0, 40)
    fleet.advance(10.0)
    assert fleet.pod_gauges("aggregated", _running)[0]  # live: the engine is busy
    assert fleet.pod_gauges("aggregated", _running, age_s=15.0) == ([], 1)  # no scrape 15 s old yet
    fleet.scrape()
    live_waiting = fleet.pool_gauge_sum("aggregated", _waiting)
    fleet.advance(25.0)
    assert fleet.pool_gauge_sum("aggregated", _waiting, age_s=15.0) == live_waiting  # the scrape at 10 s
    # The two-trigger ScaledObject: the larger of the queue's and the running requests' counts.
    policy = KedaQueueRunningPolicy(setup)
    running = fleet.pool_gauge_sum("aggregated", _running, policy.age_s)
    assert policy.desired("aggregated", 1, fleet) == max(
        external_average_replicas(fleet.pool_gauge_sum("aggregated", _waiting, policy.age_s), 1, 5.0),
        external_average_replicas(running, 1, setup.hpa_target("aggregated")))


def test_the_goodput_policy_starts_with_the_specs_standby_replicas() -> None:
    """The simulation's replica bounds replace the spec's; its standbyReplicas must stay (it did
    not: the first standby benchmark ran the plain planner three times)."""
    from goodput.sim.policies import GoodputPolicy
    from goodput.sim.simulate import build_spec, prepare
    from goodput.sim.trace import parse_trace

    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{k / 4:.2f},1500,150" for k in range(400)]
    plain, held = (prepare(build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                                      standby_replicas=n), parse_trace(lines)) for n in (0, 2))
    assert held.spec.scaling.aggregated.standby_replicas == 2
    assert held.spec.scaling.aggregated.max_replicas == plain.spec.scaling.aggregated.max_replicas
    first = {role: n for role, n in GoodputPolicy(plain).initial().items()}
    assert GoodputPolicy(held).initial() == {role: n + 2 for role, n in first.items()}
