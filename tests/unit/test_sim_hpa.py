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


# ------------------------------------------------------------------------------------------
# the benchmark's sweep: hpa-best, a baseline of its own
# ------------------------------------------------------------------------------------------
def _bench():  # type: ignore[no-untyped-def]
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:  # `benchmarks` is a package at the repository root
        sys.path.insert(0, root)
    from benchmarks import simulate_targets

    return simulate_targets


def _report(hpa_runs: dict[str, tuple[float, float]], goodput: tuple[float, float]) -> dict[str, object]:
    policies = {name: {"attainment": a, "gpu_hours": g} for name, (a, g) in hpa_runs.items()}
    for name in ("keda-queue", "dynamo", "static-peak"):
        policies[name] = {"attainment": 0.5, "gpu_hours": 100.0}
    policies["goodput"] = {"attainment": goodput[0], "gpu_hours": goodput[1], "gpu_hours_vs_oracle": 1.2}
    policies["oracle"] = {"attainment": 0.995, "gpu_hours": goodput[1] / 1.2}
    return {"policies": policies, "config": {"details": {name: {"peak_replicas": {}} for name in policies}}}


def test_hpa_best_is_the_cheapest_hpa_run_at_99_percent() -> None:
    bench = _bench()
    names = ["hpa", *(bench.sweep_name(x) for x in bench.HPA_SWEEP)]
    # The default misses; two targets of the sweep reach 99%; the cheaper of them is hpa-best.
    figures = dict(zip(names, [(0.95, 10.0), (0.999, 16.0), (0.995, 13.0), (0.985, 11.0), (0.90, 9.0)],
                       strict=True))
    report = _report(figures, goodput=(0.992, 14.0))
    picked = bench.add_hpa_best(report)["picked"]
    assert picked == names[2] and report["policies"]["hpa-best"]["gpu_hours"] == 13.0
    assert report["config"]["details"]["hpa-best"]["picked"] == names[2]
    # As a baseline: it reaches goodput's attainment for fewer GPU-hours, so goodput is not cheaper.
    same = bench.judge(report["policies"])["fewer_gpu_hours_than_baselines_at_same_attainment"]
    assert "hpa-best" in same["baselines_at_or_above_goodput_attainment"]
    assert same["beaten"]["hpa-best"] is False and same["met"] is False
    # No target of the sweep reaches 99%: there is no hpa-best, and judging does without it.
    none = _report(dict.fromkeys(names, (0.9, 5.0)), goodput=(0.992, 14.0))
    assert bench.add_hpa_best(none)["picked"] is None and "hpa-best" not in none["policies"]
    assert bench.judge(none["policies"])["fewer_gpu_hours_than_baselines_at_same_attainment"]["met"] is True
