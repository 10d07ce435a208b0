"""Issue 16: arrival variability and the rise over one cold start, on synthetic arrival processes
with known answers; the G/G/1 queueing term; headroom held, explained, and kept across a restart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import numpy as np
import pytest
from test_autoscale import T0, decide, obs, spec

from goodput.model.goodput import prefill_capacity
from goodput.model.replica import ReplicaModel
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.planner.autoscale import AutoscalerState, arrival_scv
from goodput.planner.burst import (
    BINS_PER_DOUBLING,
    RiseHistory,
    dispersion_index,
    headroom,
    observe_rate,
    per_replica_scv,
)
from goodput.planner.observation import Observation, PoolMetrics

BIN = 2.0 ** (1.0 / BINS_PER_DOUBLING)  # one histogram bin: a quantile is read to within this factor


# --- the dispersion index ------------------------------------------------------------------------
def poisson_counts(means: np.ndarray, seed: int = 1) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).poisson(means)]


@pytest.mark.parametrize(("name", "counts", "lo", "hi"), [
    # Poisson at a constant rate: 1.
    ("poisson", poisson_counts(np.full(2000, 20.0)), 0.9, 1.1),
    # A step 10 -> 40 per bin halfway: successive differences see one jump, not a variance of 225.
    ("poisson step", poisson_counts(np.r_[np.full(200, 10.0), np.full(200, 40.0)]), 0.85, 1.35),
    # A ramp 5 -> 50 per bin: a trend is not burstiness.
    ("poisson ramp", poisson_counts(np.linspace(5.0, 50.0, 400)), 0.85, 1.15),
    # On/off, bin by bin, c then 0: E[(dN)^2] = c^2, E[N] = c/2, so the index is c.
    ("on/off", [30.0, 0.0] * 50, 30.0, 30.0),
    # Clumps: every arrival a batch of 5 (Poisson batches): index 5.
    ("batches of 5", [5.0 * x for x in poisson_counts(np.full(2000, 4.0))], 4.5, 5.5),
])
def test_dispersion_index_of_synthetic_processes(name: str, counts: list[float], lo: float, hi: float) -> None:
    index = dispersion_index(counts)
    assert index is not None and lo <= index <= hi, (name, index)


def test_plain_variance_would_read_a_step_as_burstiness() -> None:
    # The reason for successive differences: the variance/mean of the step above is ~9.
    counts = poisson_counts(np.r_[np.full(200, 10.0), np.full(200, 40.0)])
    assert float(np.var(counts) / np.mean(counts)) > 8.0
    assert (dispersion_index(counts) or 0.0) < 1.35


@pytest.mark.parametrize("counts", [[], [3.0] * 7, [1.0] * 20])  # too few bins; too few arrivals (20 < 50)
def test_no_index_without_evidence(counts: list[float]) -> None:
    assert dispersion_index(counts) is None


@pytest.mark.parametrize(("index", "replicas", "bound", "expected"), [
    (None, 4, 16.0, 1.0),  # unmeasured: Poisson
    (1.0, 4, 16.0, 1.0),
    (0.4, 1, 16.0, 1.0),  # never planned smoother than Poisson
    (9.0, 4, 16.0, 3.0),  # random splitting over 4 replicas keeps a quarter of the excess
    (9.0, 1, 16.0, 9.0),
    (9.0, 4, 2.0, 2.0),  # the spec's bound
    (9.0, 4, 1.0, 1.0),  # the default bound: Poisson whatever is measured
    (math.nan, 4, 16.0, 1.0),
])
def test_per_replica_scv(index: float | None, replicas: int, bound: float, expected: float) -> None:
    assert per_replica_scv(index, replicas, bound) == pytest.approx(expected)


def test_the_planner_reads_the_entry_pools_long_window_dispersion() -> None:
    o = obs(20.0)
    long = dataclasses.replace(o.long_pools["aggregated"], arrival_dispersion=9.0)
    o = dataclasses.replace(o, long_pools={"aggregated": long})  # 2 pods reporting
    assert arrival_scv(o, 16.0)[0] == pytest.approx(5.0)
    scv, note = arrival_scv(o, 1.0)
    assert scv == 1.0 and "ca² 5.00 per aggregated replica" in note and "maxArrivalScv" in note
    assert arrival_scv(obs(20.0), 16.0) == (1.0, "")  # not measured: Poisson, nothing said


# --- the G/G/1 queueing term ---------------------------------------------------------------------
def _prefill(scv: float) -> float:
    from goodput.model.architecture import get_model
    from goodput.model.hardware import get_accelerator

    r = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1, "auto")
    w = Workload(1.0, LengthDistribution.lognormal(1000.0, 4000.0), LengthDistribution.fixed(200.0), 0.0, scv)
    return prefill_capacity(r, w, SLO(1000.0, 40.0), 0.01).goodput_rps


def test_poisson_arrivals_leave_the_model_as_it_was_and_burstier_ones_lower_its_goodput() -> None:
    g1, g2, g4 = _prefill(1.0), _prefill(2.0), _prefill(4.0)
    assert g1 > g2 > g4 > 0
    w = Workload(1.0, LengthDistribution.fixed(1000.0), LengthDistribution.fixed(200.0))
    assert w.arrival_scv == 1.0 and w.with_rate(3.0).arrival_scv == 1.0
    assert w.with_arrival_scv(2.5).with_rate(3.0).arrival_scv == 2.5


# --- the rise over one cold start ----------------------------------------------------------------
def feed(rates: list[float], horizon_s: float = 180.0, step_s: float = 30.0,
         history: RiseHistory | None = None, start: dt.datetime = T0) -> RiseHistory:
    """One decision per step: the rate seen, planned for as it is (base = rate)."""
    h = history or RiseHistory()
    for i, r in enumerate(rates):
        h = observe_rate(h, start + dt.timedelta(seconds=i * step_s), r, r, horizon_s)
    return h


def test_constant_load_learns_no_rise() -> None:
    h = feed([10.0] * 240)
    assert headroom(h, 10.0, 0.99).rise == 1.0 and not headroom(h, 10.0, 0.99).active


def test_a_step_is_learnt_as_its_ratio_at_a_quantile_it_reaches() -> None:
    # A minute at 30 req/s sets the envelope (10 is then a middle load, before the step and after),
    # two hours at 10 req/s, then x3: six records (30 s apart) lie within 180 s before the step.
    h = feed([30.0] * 2 + [10.0] * 240 + [30.0] * 7)
    share = 6 / (240 + 6)
    high = headroom(h, 10.0, 0.99)
    assert share > 0.01 and 3.0 <= high.rise <= 3.0 * BIN
    assert high.level == 1 and high.target_rps == pytest.approx(min(10.0 * high.rise, 30.0))  # the envelope
    assert headroom(h, 10.0, 0.99 - share - 0.01).rise == 1.0  # below its share the step is not seen


def test_a_ramp_is_learnt_as_its_rise_over_the_horizon() -> None:
    # 10 -> 10 + 0.05 t req/s: a record at rate r sees r + 9 one cold start later.
    rates = [10.0 + 0.05 * 30.0 * i for i in range(121)]
    h = feed(rates)
    finished = [(r + 9.0) / r for r in rates[:-6]]
    expected = float(np.quantile(finished, 0.5))
    got = headroom(h, rates[-1], 0.5).rise
    assert expected / BIN <= got <= expected * BIN


def test_on_off_load_holds_the_envelope_from_quiet_and_nothing_at_the_peak() -> None:
    # 5 min at 2 req/s, 5 min at 20, for two hours: from quiet the load rises 10x (held up to the
    # envelope), from the peak it does not rise at all.
    rates = ([2.0] * 10 + [20.0] * 10) * 12
    h = feed(rates)
    quiet, peak = headroom(h, 2.0, 0.99), headroom(h, 20.0, 0.99)
    assert quiet.level == 0 and 10.0 <= quiet.rise <= 10.0 * BIN and quiet.target_rps == pytest.approx(20.0)
    # (the first cycle's quiet minutes were near-peak when 2 req/s was the envelope: their 10x rise
    # is in the near-peak histogram, and the envelope is what keeps it from holding anything there)
    assert peak.level == 2 and peak.target_rps == 20.0 and not peak.active


def test_poisson_noise_is_a_small_rise() -> None:
    rng = np.random.default_rng(3)
    rates = list(rng.poisson(20.0 * 60.0, 480) / 60.0)  # 60 s windows of a 20 req/s Poisson stream
    rise = headroom(feed(rates), 20.0, 0.99).rise
    assert 1.0 <= rise <= 1.3


def test_a_burst_in_progress_counts_at_once() -> None:
    # The records of the last 180 s have not finished their cold start; 6 of 60 saw a 4x rise.
    h = feed([10.0] * 60 + [40.0])
    assert h.evidence == pytest.approx(60 - 6, rel=0.06)  # finished ones (30 min of forgetting: -5.6%)
    assert headroom(h, 30.0, 0.99).rise >= 4.0


def test_a_metrics_gap_drops_the_records_it_spans() -> None:
    h = feed([10.0] * 3)
    later = T0 + dt.timedelta(seconds=3 * 30 + 600)
    h = observe_rate(h, later, 50.0, 50.0, 180.0)
    assert h.evidence == 0 and len(h.records) == 1  # the 5x "rise" across the gap is not learnt


def test_another_cold_start_starts_over() -> None:
    h = feed([10.0] * 240 + [30.0] * 7)
    h = observe_rate(h, T0 + dt.timedelta(hours=3), 10.0, 10.0, 600.0)
    assert h.evidence == 0 and h.horizon_s == 600.0


def test_history_is_forgotten_with_its_half_life() -> None:
    h = feed([10.0] * 240 + [30.0] * 7)
    before = h.evidence
    h = observe_rate(h, T0 + dt.timedelta(hours=2 + 6), 10.0, 10.0, 180.0)
    assert h.evidence == pytest.approx(before / 2.0, rel=0.01)


# --- explained, persisted, never forgotten across a restart --------------------------------------
def test_history_round_trips_through_status_json() -> None:
    h = feed(([0.5] * 10 + [20.0] * 10) * 6 + [0.5, 3.0])
    back = RiseHistory.from_status(json.loads(json.dumps(h.to_status())))
    for base in (0.5, 5.0, 20.0):
        a, b = headroom(back, base, 0.99), headroom(h, base, 0.99)
        assert (a.rise, a.target_rps, a.level) == (b.rise, b.target_rps, b.level)
        assert a.evidence == pytest.approx(b.evidence, rel=1e-6)
    assert len(back.records) == len(h.records) > 0


@pytest.mark.parametrize("bad", [None, "x", {"rises": [[1.0]]}, {"pending": [{"time": "nope"}], "envelopeRps": "a"}])
def test_a_malformed_status_costs_evidence_not_a_crash(bad: object) -> None:
    h = RiseHistory.from_status(bad)
    assert headroom(h, 10.0, 0.99).rise == 1.0


def _on_off_run(restart_at: int | None) -> list[tuple[float, str]]:
    """The planner over an on/off load; optionally restarted (state read back from status) once."""
    s = spec(coldStartSeconds=180, burstQuantile=0.99)  # opt-in
    state = AutoscalerState(metrics_seen=True, metrics_since="2026-11-23T11:00:00Z")
    rates = ([1.0] * 10 + [30.0] * 10) * 4
    out = []
    for i, r in enumerate(rates):
        now = T0 + dt.timedelta(seconds=30 * i)
        if i == restart_at:
            state = AutoscalerState.from_status(json.loads(json.dumps(state.to_status())))
        res = decide(s, obs(r, at=now), {"aggregated": 4}, state, now)
        state = res.state
        out.append((res.demand.rate_rps, res.pools[0].message))
    return out


def test_headroom_is_held_priced_and_explained_and_a_restart_keeps_it() -> None:
    steady = _on_off_run(None)
    # In the last quiet stretch the planner holds well above the 1 req/s it sees, and says why.
    rate, message = steady[-11]
    assert rate > 10.0
    assert "replica(s) of burst headroom: 99th-percentile rise over 180 s from a quiet load is" in message
    # A restart in the middle (status written, read back) changes no decision after it.
    assert _on_off_run(restart_at=45) == steady


def test_no_headroom_when_the_spec_says_zero() -> None:
    s = spec(coldStartSeconds=180, burstQuantile=0)
    state = AutoscalerState(metrics_seen=True)
    for i, r in enumerate(([1.0] * 10 + [30.0] * 10) * 2 + [1.0] * 5):
        now = T0 + dt.timedelta(seconds=30 * i)
        res = decide(s, obs(r, at=now), {"aggregated": 4}, state, now)
        state = res.state
    assert res.demand.base_rps is None and "burst headroom" not in res.pools[0].message
    assert state.burst.evidence > 0  # still learnt (and shown), only not held


def test_no_learning_from_missing_metrics() -> None:
    s = spec(coldStartSeconds=180)
    state = AutoscalerState(metrics_seen=True)
    down = Observation.unavailable(T0, "prometheus down")
    res = decide(s, down, {"aggregated": 4}, state, T0)
    assert res.state.burst.updated is None and res.state.burst.evidence == 0


def test_the_observation_carries_the_dispersion() -> None:
    assert "arrival_dispersion" in PoolMetrics.__dataclass_fields__
