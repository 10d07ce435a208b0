"""Calibration terms, table-driven against a world apart from the model.

The world's engines are the shipped model with a known correction applied (`Calibration.efficiency`
at a true scale), so the truth each term must find is known exactly. Each term: it converges to
the truth within a few windows, stays within its bounds, ignores idle load, warm-up and settling,
and survives a restart through status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.model.efficiency import calibrated_efficiency
from goodput.planner import calibration as cal
from goodput.planner.observation import Observation, PoolMetrics
from goodput.planner.recommend import hinted_workload, resolve

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WINDOW_S = 60.0
SPEC = InferenceDeploymentSpec.model_validate({
    "model": {"id": "llama-3.1-8b"}, "accelerator": {"gpu": "a100-sxm-80gb"},
    "slo": {"ttftMs": 1000, "itlMs": 40}, "mode": "aggregated",
    "workload": {"requestRate": 10, "inputTokens": {"mean": 1000, "p99": 4000},
                 "outputTokens": {"mean": 200, "p99": 800}},
})
RESOLVED = resolve(SPEC, "x")
WORKLOAD = hinted_workload(SPEC)
BASE = calibrated_efficiency()
POOL = cal.PoolConfig("aggregated", 1, 2048, 64)
RUNNING = {"aggregated": POOL}
PODS = 2


def world(term: str, truth: float) -> cal.Calibration:
    """The world's engines: the shipped model with ``term`` truly ``truth`` times slower."""
    return cal._with(cal.Calibration(), term, truth)


def decode_metrics(truth: float, batch: float = 16.0, pods: int = PODS) -> PoolMetrics:
    """What the world's pool reports when each replica decodes ``batch`` sequences: the mean ITL is
    its step at that batch, and tokens/s follow from Little's law."""
    step_ms = cal.predicted_decode_step_ms(cal.replica(RESOLVED, POOL, world("decode", truth).efficiency(BASE)),
                                           WORKLOAD, "aggregated", batch)
    return PoolMetrics("aggregated", pods_reporting=pods, request_rate_rps=8.0,
                       generation_tokens_tps=batch * pods / (step_ms / 1e3), itl_mean_ms=step_ms,
                       input_len_mean=1000.0, output_len_mean=200.0)


def prefill_metrics(truth: float, rate_rps: float = 8.0) -> PoolMetrics:
    """The world's mean prefill time at ``rate_rps`` (self-consistent: the prompts in prefill at once
    follow from that time by Little's law), with no decodes beside them."""
    r = cal.replica(RESOLVED, POOL, world("prefill", truth).efficiency(BASE))
    pm = PoolMetrics("aggregated", pods_reporting=PODS, request_rate_rps=rate_rps, input_len_mean=1000.0,
                     output_len_mean=200.0, prefill_time_mean_ms=100.0)
    for _ in range(50):
        pm = dataclasses.replace(pm, prefill_time_mean_ms=cal.predicted_prefill_ms(r, WORKLOAD, "aggregated", pm, 0.0))
    return pm


def observation(pm: PoolMetrics, at: dt.datetime) -> Observation:
    return Observation(at, WINDOW_S, 600.0, {"aggregated": pm}, {"aggregated": pm})


def feed(pm: PoolMetrics, windows: int, start: cal.Calibration | None = None,
         settled: bool = True) -> cal.Calibration:
    """One observation per short window, the first one only seeding the pods' steadiness."""
    c = start or cal.Calibration()
    for k in range(windows + 1):
        c = cal.update(c, observation(pm, T0 + dt.timedelta(seconds=WINDOW_S * k)), RUNNING, RESOLVED, WORKLOAD,
                       BASE, T0 + dt.timedelta(seconds=WINDOW_S * k), settled)
    return c


@pytest.mark.parametrize("truth", [0.6, 0.8, 1.0, 1.25, 1.5, 2.0])
def test_decode_term_converges_to_the_worlds_step(truth: float) -> None:
    pm = decode_metrics(truth)
    c = feed(pm, windows=10)
    assert c.terms["decode"].windows >= 9 and c.terms["decode"].note == ""
    # The calibrated model predicts the world's step at the observed batch.
    predicted = cal.predicted_decode_step_ms(cal.replica(RESOLVED, POOL, c.efficiency(BASE)), WORKLOAD,
                                             "aggregated", 16.0)
    assert predicted >= pm.itl_mean_ms * 0.95
    floor = cal.physical_floor("decode", BASE)
    if truth < floor:
        # Faster than the bandwidth bound: the term stops at the datasheet (the fraction at 1) and
        # the model stays conservative rather than putting the speed into its fixed overheads.
        assert c.scale("decode") == pytest.approx(floor, rel=1e-3)
        return
    assert predicted == pytest.approx(pm.itl_mean_ms, rel=0.05)
    assert c.scale("decode") == pytest.approx(truth, rel=0.10)


@pytest.mark.parametrize("truth", [0.6, 1.0, 1.5, 2.0])
def test_prefill_term_converges_to_the_worlds_prefill(truth: float) -> None:
    c = feed(prefill_metrics(truth), windows=10)
    assert c.scale("prefill") == pytest.approx(truth, rel=0.10)


def test_decode_term_1_5x_slower_within_10_percent_in_10_minutes() -> None:
    # The convergence target: a world 1.5x slower, within 10% in 10 one-minute windows.
    c = feed(decode_metrics(1.5), windows=10)
    assert abs(c.scale("decode") / 1.5 - 1.0) <= 0.10


@pytest.mark.parametrize("term,truth", [("decode", 10.0), ("decode", 0.1)])
def test_a_term_stays_within_its_bounds(term: str, truth: float) -> None:
    lo, hi = cal.BOUNDS[term]
    c = feed(decode_metrics(truth), windows=30)
    assert lo <= c.scale(term) <= hi
    assert c.scale(term) == pytest.approx(hi if truth > 1 else cal.physical_floor(term, BASE), rel=0.02)


def test_kv_term_takes_the_engines_blocks_as_read_and_bounded() -> None:
    modelled = cal.replica(RESOLVED, POOL, BASE).kv_capacity_tokens
    pm = dataclasses.replace(decode_metrics(1.0), kv_capacity_tokens=0.8 * modelled)
    c = feed(pm, windows=1)
    assert c.scale("kv") == pytest.approx(0.8, rel=1e-6)
    assert c.kv_reserve_delta_gib > 0  # the engines hold back more than the model's reserve
    # The corrected model now gives the engines' own capacity.
    assert cal.replica(RESOLVED, POOL, c.efficiency(BASE)).kv_capacity_tokens == pytest.approx(0.8 * modelled,
                                                                                              rel=0.02)
    tiny = feed(dataclasses.replace(pm, kv_capacity_tokens=1.0), windows=1)
    assert tiny.scale("kv") == cal.BOUNDS["kv"][0]


@pytest.mark.parametrize("pm,why", [
    (dataclasses.replace(decode_metrics(1.5, batch=0.5)), "low load"),
    (dataclasses.replace(decode_metrics(1.5), itl_mean_ms=None), "no ITL"),
    (dataclasses.replace(decode_metrics(1.5), generation_tokens_tps=1.0, itl_mean_ms=1000.0), "low load"),
])
def test_idle_or_missing_load_does_not_calibrate(pm: PoolMetrics, why: str) -> None:
    c = feed(pm, windows=5)
    assert c.scale("decode") == 1.0 and c.terms["decode"].windows == 0
    assert why in c.terms["decode"].note


def test_prefill_ignores_too_few_requests() -> None:
    c = feed(prefill_metrics(1.5, rate_rps=0.1), windows=5)
    assert c.scale("prefill") == 1.0 and "low load" in c.terms["prefill"].note


def test_warm_up_and_settling_are_not_trusted() -> None:
    # Unsettled metrics (just back from an outage): nothing moves, and the note says why.
    c = feed(decode_metrics(1.5), windows=5, settled=False)
    assert c.scale("decode") == 1.0 and "came back" in c.terms["decode"].note
    # A pool whose replica count changes every window is always warming up.
    c = cal.Calibration()
    for k in range(6):
        at = T0 + dt.timedelta(seconds=WINDOW_S * k)
        c = cal.update(c, observation(decode_metrics(1.5, pods=2 + k), at), RUNNING, RESOLVED, WORKLOAD, BASE, at,
                       True)
    assert c.scale("decode") == 1.0 and "warm-up" in c.terms["decode"].note


def test_calibration_survives_a_restart_through_status() -> None:
    pm = dataclasses.replace(decode_metrics(1.5), kv_capacity_tokens=1e5)
    c = feed(pm, windows=4)
    restored = cal.Calibration.from_status(c.to_status())
    for term in cal.TERMS:
        assert restored.scale(term) == pytest.approx(c.scale(term), abs=1e-4), term
        assert restored.terms[term].windows == pytest.approx(c.terms[term].windows, abs=0.01), term
    assert restored.kv_reserve_delta_gib == pytest.approx(c.kv_reserve_delta_gib, abs=1e-4)
    # It carries on from there: the pods' steadiness is in status too, so no warm-up after a restart.
    at = T0 + dt.timedelta(seconds=WINDOW_S * 5)
    nxt = cal.update(restored, observation(pm, at), RUNNING, RESOLVED, WORKLOAD, BASE, at, True)
    assert nxt.terms["decode"].windows > restored.terms["decode"].windows


def test_status_from_a_broken_or_foreign_writer_is_bounded() -> None:
    restored = cal.Calibration.from_status({"decode": {"scale": 99.0}, "prefill": {"scale": "x"}, "ttft": None})
    assert restored.scale("decode") == cal.BOUNDS["decode"][1]
    assert restored.scale("prefill") == 1.0 and restored.scale("ttft") == 1.0


# --- the ITL tail term and the physical floor ------------------------------------------------------
# A decode pool (disaggregated): its ITL percentile is the decode step at its batch, monotone in load.
DECODE_POOL = cal.PoolConfig("decode", 1, 8192, 256)


def predicted_itl(rate_rps: float) -> float:
    r = cal.replica(RESOLVED, DECODE_POOL, BASE)
    return cal.predicted_itl_ms(r, WORKLOAD, "decode", RESOLVED, rate_rps / PODS, 0.0)


def rate_with_predicted_itl(share: float) -> float:
    """A pool arrival rate at which the shipped model predicts ITL p99 = share x the target."""
    lo, hi = 0.01, 200.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if predicted_itl(mid) < share * RESOLVED.slo.itl_ms else (lo, mid)
    return (lo + hi) / 2.0


def itl_metrics(rate_rps: float, fractions: dict[float, float]) -> PoolMetrics:
    """A pool whose ITL histogram holds these cumulative fractions at vLLM's bounds (ms)."""
    total = 1e5
    bounds = (10.0, 25.0, 50.0, 75.0, 100.0, 150.0)
    buckets, frac = [], 0.0
    for b in bounds:
        frac = fractions.get(b, frac)
        buckets.append((b, frac * total))
    return PoolMetrics("decode", pods_reporting=PODS, request_rate_rps=rate_rps, itl_mean_ms=20.0,
                       itl_buckets=(*buckets, (float("inf"), total)))


def feed_decode(pm: PoolMetrics, windows: int, start: cal.Calibration | None = None) -> cal.Calibration:
    c = start or cal.Calibration()
    for k in range(windows + 1):
        at = T0 + dt.timedelta(seconds=WINDOW_S * k)
        obs = Observation(at, WINDOW_S, 600.0, {"decode": pm}, {"decode": pm})
        c = cal.update(c, obs, {"decode": DECODE_POOL}, RESOLVED, WORKLOAD, BASE, at, True)
    return c


# 98% of tokens within 25 ms, 99% within 50 (p99 exactly 50 ms), 1% beyond: a tail the histogram sees.
TAIL = {25.0: 0.98, 50.0: 0.99, 75.0: 0.995, 100.0: 1.0}


def test_itl_term_converges_to_the_observed_tail() -> None:
    rate = rate_with_predicted_itl(0.95)
    c = feed_decode(itl_metrics(rate, TAIL), windows=10)
    assert c.terms["itl"].note == "" and c.terms["itl"].windows >= 9
    assert c.scale("itl") == pytest.approx(50.0 / predicted_itl(rate), rel=0.05)
    # The plan then sizes the mean step for the ITL target divided by it.
    from goodput.planner.autoscale import planning_resolved
    assert planning_resolved(RESOLVED, c).slo.itl_ms == pytest.approx(40.0 / c.scale("itl"), rel=1e-6)


def test_itl_term_is_bounded_and_never_below_the_model() -> None:
    rate = rate_with_predicted_itl(0.95)
    far = {25.0: 0.5, 50.0: 0.6, 75.0: 0.7, 100.0: 0.8, 150.0: 0.985}  # p99 beyond 150 ms
    assert feed_decode(itl_metrics(rate, far), windows=30).scale("itl") == pytest.approx(cal.BOUNDS["itl"][1])
    tight = {10.0: 0.995, 25.0: 1.0}  # p99 within 10 ms: better than the model, but the term stays at 1
    assert feed_decode(itl_metrics(rate, tight), windows=10).scale("itl") == 1.0


@pytest.mark.parametrize("share,why", [(0.4, "decides nothing"), (1.5, "overloaded")])
def test_itl_term_ignores_light_and_overloaded_pools(share: float, why: str) -> None:
    c = feed_decode(itl_metrics(rate_with_predicted_itl(share), TAIL), windows=5)
    assert c.scale("itl") == 1.0 and why in c.terms["itl"].note


@pytest.mark.parametrize("start,kept", [(1.1, True), (1.6, False)])
def test_itl_term_is_kept_where_the_histogram_proves_only_a_bracket(start: float, kept: bool) -> None:
    # Every token within 50 ms, p99 somewhere in (25, 50]: the histogram cannot say where.
    rate = rate_with_predicted_itl(0.95)
    ambiguous = {25.0: 0.95, 50.0: 1.0}
    c = feed_decode(itl_metrics(rate, ambiguous), windows=10, start=cal._with(cal.Calibration(), "itl", start))
    if kept:  # 1.1 x the prediction is inside the bracket: nothing proves it wrong
        assert c.scale("itl") == pytest.approx(start, rel=1e-6)
    else:  # 1.6 x is past 50 ms, which the bracket rules out: the term comes down to the bracket's edge
        assert c.scale("itl") == pytest.approx(50.0 / predicted_itl(rate), rel=0.05)


def test_decode_never_calibrates_past_the_datasheet() -> None:
    # A world faster than the bandwidth bound allows: the term stops where the fraction reaches 1
    # rather than driving the fixed overheads down to its bound.
    c = feed(decode_metrics(0.5), windows=20)
    assert c.scale("decode") == pytest.approx(cal.physical_floor("decode", BASE), rel=1e-3)
    assert c.efficiency(BASE).bandwidth_fraction == pytest.approx(1.0, rel=1e-3)
