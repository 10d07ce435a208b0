"""The HPA's default target as a user sets it: a load test of one replica of the world's engine.

Known answers: the rate found meets the SLOs and a rate 10% higher does not; a world whose engines
are 30% slower sustains less (as the capacity model on that engine says, within a quarter); the
target is the metric's level the replica ran at (Little's law: running requests = rate x time
each spends running); --hpa-target and --hpa-target-scale override it; it is measured only when a
policy uses it."""

from __future__ import annotations

import dataclasses

import pytest
from test_sim_replay import COLD_START_S, even_trace

from goodput.engine.world import build_world
from goodput.sim.loadtest import LoadTestInputs, probe
from goodput.sim.simulate import Setup, SimConfig, build_spec, measure_shared, prepare


def _setup(config: SimConfig | None = None, scale: str | None = None) -> Setup:
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                      cold_start_s=COLD_START_S)
    world = build_world(scale=scale) if scale else None
    return prepare(spec, even_trace([(120.0, 6.0)]), config, world=world)


def _inputs(setup: Setup, role: str = "aggregated") -> LoadTestInputs:
    slo = setup.spec.slo
    return LoadTestInputs(setup.pools[role], setup.trace, slo.ttft_ms / 1000.0, slo.itl_ms / 1000.0,
                          slo.percentile / 100.0, setup.config.seed, setup.config.noise_cv)


@pytest.fixture(scope="module")
def belief() -> Setup:
    setup = _setup()
    setup.hpa_target("aggregated")
    return setup


def test_the_rate_found_is_where_one_replica_just_meets_the_slos(belief: Setup) -> None:
    test = belief.hpa_load_test("aggregated")
    assert test.met and test.probes >= 3
    assert probe(_inputs(belief), test.best.rate_rps).meets
    above = probe(_inputs(belief), test.best.rate_rps * 1.1)
    assert not above.meets and above.attainment < belief.spec.slo.percentile / 100.0
    # The target is the level the replica ran at there: the default metric, running requests.
    assert belief.hpa_target("aggregated") == pytest.approx(test.best.running)
    assert test.best.running > 1.0 and 0.0 < test.best.kv_usage < 1.0


def test_running_requests_follow_littles_law(belief: Setup) -> None:
    # Each request runs for about its output x the step time; at the found rate the mean running
    # batch is rate x that time (within the noise of a few minutes of Poisson load).
    test = belief.hpa_load_test("aggregated")
    outputs = belief.trace.outputs.astype(float)
    itl_s = belief.spec.slo.itl_ms / 1000.0
    upper = test.best.rate_rps * float(outputs.mean()) * itl_s  # every step at the ITL target
    assert 0.4 * upper < test.best.running <= 1.05 * upper


def test_the_target_is_measured_in_the_world_not_the_belief(belief: Setup) -> None:
    slow = _setup(scale="speed=0.7")
    # The planner's belief is the same in both; only the load test sees the slower engine.
    assert slow.targets["aggregated"] == belief.targets["aggregated"]
    fast_rate = belief.hpa_load_test("aggregated").best.rate_rps
    slow_rate = slow.hpa_load_test("aggregated").best.rate_rps
    assert slow_rate < 0.85 * fast_rate
    assert slow.hpa_target("aggregated") < belief.hpa_target("aggregated")
    # Slower steps shrink the batch that meets the ITL target more than in proportion (fixed
    # overheads take a larger share of the budget); the capacity model evaluated on the two
    # engines says the same to within a quarter.
    model_ratio = slow.world_goodput_rps("aggregated") / belief.world_goodput_rps("aggregated")
    assert slow_rate / fast_rate == pytest.approx(model_ratio, rel=0.25)


def test_explicit_target_and_scale(belief: Setup) -> None:
    measured = belief.hpa_target("aggregated")
    given = _setup(SimConfig(hpa_target=14.0))
    assert given.hpa_target("aggregated") == 14.0 and not given.hpa_load_tests  # no load test needed
    # A scaled target reuses the same load test, as the benchmark's sweep does.
    halved = dataclasses.replace(belief, config=dataclasses.replace(belief.config, hpa_target_scale=0.5),
                                 hpa_targets={})
    assert halved.hpa_target("aggregated") == pytest.approx(0.5 * measured)
    kv = dataclasses.replace(belief, config=dataclasses.replace(belief.config, hpa_metric="kv"), hpa_targets={})
    assert kv.hpa_target("aggregated") == pytest.approx(belief.hpa_load_test("aggregated").best.kv_usage)


def test_measured_only_for_the_policies_that_use_it() -> None:
    setup = _setup()
    measure_shared(setup, ["goodput", "keda-queue", "dynamo", "static-peak", "oracle"])
    assert not setup.hpa_targets
    measure_shared(setup, ["keda-queue-running"])
    assert set(setup.hpa_targets) == {"aggregated"}

