"""Pure pieces of the simulator with known answers: PromQL functions, the HPA/KEDA replica
calculators and behavior, Dynamo's profile look-ups."""

from __future__ import annotations

import math

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
