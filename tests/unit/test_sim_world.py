"""A world apart from the belief: engines that differ from the planner's capacity model.

Known answers: a world of every factor x 1 is the belief and reproduces its figures bit for
bit; ``speed=X`` makes every engine step exactly 1/X as long; scale products are bound-checked
with a message that names the factor; the planner's belief does not move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_sim_replay import BASE, COLD_START_S, _cli, _trace_file, even_trace

from goodput.engine.replica import EngineReplica
from goodput.engine.world import World, WorldReplicaModel, build_world, parse_scale, preset_world, scaled
from goodput.model.architecture import get_model
from goodput.model.efficiency import calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.sim.simulate import Setup, build_spec, make_policy, prepare, run_policy, summarize


def _belief() -> ReplicaModel:
    return ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1)


def test_parse_scale_names_and_numbers() -> None:
    assert parse_scale("bandwidth_fraction=0.9, decode_speed=1.25") == {"bandwidth_fraction": 0.9,
                                                                        "decode_speed": 1.25}
    for bad, message in (("foo=2", "unknown world factor 'foo'"), ("speed", "expected NAME=FACTOR"),
                         ("speed=x", "'x' is not a number"), ("speed=0", "positive"),
                         ("speed=1,speed=2", "given twice"), ("", "expected NAME=FACTOR")):
        with pytest.raises(CapacityModelError, match=message):
            parse_scale(bad)


def test_a_product_out_of_bounds_names_the_factor_and_the_way_out() -> None:
    shipped = calibrated_efficiency().bandwidth_fraction
    product = f"{shipped:g} x 1.25 = {shipped * 1.25:g}"
    with pytest.raises(CapacityModelError, match=rf"bandwidth_fraction=1.25: {product} is out of bounds "
                                                 r".*must be in \(0, 1\].*\); .*use decode_speed"):
        build_world(scale="bandwidth_fraction=1.25")
    with pytest.raises(CapacityModelError, match="roofline_sharpness"):
        build_world(scale="roofline_sharpness=0.5")


def test_factors_times_one_are_the_belief() -> None:
    world = build_world(scale="bandwidth_fraction=1,speed=1")
    assert world.is_belief
    belief = _belief()
    assert world.engine_model(belief) is belief  # the same object: bit-identical engines
    assert not build_world(scale="speed=0.9").is_belief


def test_speed_makes_every_step_exactly_that_much_longer() -> None:
    belief = _belief()
    slow = WorldReplicaModel(belief, World(speed=0.8))
    args = (np.array([1.0, 32.0, 128.0]), np.array([2e3, 6e4, 3e5]), np.array([0.0, 512.0, 4096.0]))
    np.testing.assert_allclose(slow.step_time_s(*args), belief.step_time_s(*args) / 0.8, rtol=1e-12)
    # Decode speed shortens the memory-bound part only: a big decode batch gains almost all of it,
    # a pure 8k-token prefill (compute-bound) almost nothing; prefill speed the other way round.
    fast_decode = WorldReplicaModel(belief, World(decode_speed=1.25))
    fast_prefill = WorldReplicaModel(belief, World(prefill_speed=1.25))
    decode = (64.0, 64.0 * 2000.0)
    prefill = (0.0, 0.0, 8192.0, 8192.0 * 8193.0 / 2.0, 1.0)
    assert belief.step_time_s(*decode) / fast_decode.step_time_s(*decode) > 1.15
    assert belief.step_time_s(*prefill) / fast_decode.step_time_s(*prefill) < 1.03
    assert belief.step_time_s(*prefill) / fast_prefill.step_time_s(*prefill) > 1.2
    assert belief.step_time_s(*decode) / fast_prefill.step_time_s(*decode) < 1.05
    # The engine emulator runs the world's model: a slower world, a slower engine.
    times = []
    for model in (belief, slow):
        engine = EngineReplica(model, rng=np.random.default_rng(1), noise_cv=0.0)
        engine.submit(0, 0.0, 1000, 50)
        done = engine.advance(100.0)
        times.append(done[0].finish_s)
    assert times[1] == pytest.approx(times[0] / 0.8, rel=1e-9)


def test_documents_and_presets() -> None:
    world = build_world("w.json", None, {"factors": {"bandwidth_fraction": 0.6, "speed": 0.9}, "source": "lab"})
    assert world.efficiency.bandwidth_fraction == 0.6 and world.speed == 0.9 and world.source == "lab"
    # Left-out factors keep the shipped value.
    assert world.efficiency.compute_fraction == calibrated_efficiency().compute_fraction
    presets = {"a100-vllm": {"description": "slower decode", "source": "fit on X",
                             "factors": {"bandwidth_fraction": 0.7}}}
    preset = preset_world("a100-vllm", presets)
    assert preset.name == "preset:a100-vllm" and preset.source == "fit on X"
    assert scaled(preset, {"bandwidth_fraction": 0.5}).efficiency.bandwidth_fraction == pytest.approx(0.35)
    with pytest.raises(CapacityModelError, match="unknown engine preset 'b'; known: a100-vllm"):
        preset_world("b", presets)
    with pytest.raises(CapacityModelError, match="no engine presets are shipped"):
        preset_world("b", {})
    with pytest.raises(CapacityModelError, match="factor compute_fraction must be a number"):
        build_world("w.json", None, {"factors": {"compute_fraction": "fast"}})


def _setup(world: World | None = None) -> Setup:
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                      cold_start_s=COLD_START_S)
    return prepare(spec, even_trace([(240.0, 6.0)]), world=world)


def test_the_planner_keeps_its_belief_and_the_fleet_runs_the_world() -> None:
    belief, slow = _setup(), _setup(build_world(scale="speed=0.7"))
    # The plan (and so every count the planner derives) is the same; only the engines differ.
    assert belief.targets["aggregated"] == slow.targets["aggregated"]
    assert slow.pools["aggregated"].model is not slow.pools["aggregated"].engine_model
    assert slow.world_goodput_rps("aggregated") < 0.8 * belief.world_goodput_rps("aggregated")
    # A world of every factor x 1 reproduces the belief's figures exactly.
    same = _setup(build_world(scale="speed=1"))
    for name in ("static-peak", "goodput"):
        a = summarize(run_policy(belief, make_policy(name, belief)), belief, None)
        b = summarize(run_policy(same, make_policy(name, same)), same, None)
        assert a == b
    # The same fixed fleet in a 30% slower world: every step 1/0.7 as long, and at the same load
    # its batches only grow (requests stay longer), so its ITL grows by at least that ratio.
    fast = summarize(run_policy(belief, make_policy("static-peak", belief)), belief, None)
    slower = summarize(run_policy(slow, make_policy("static-peak", slow)), slow, None)
    assert slower["itl_p50_ms"] >= 0.98 * fast["itl_p50_ms"] / 0.7


def test_cli_records_the_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
                 "--world-scale", "decode_speed=0.8", "--json"]) == 0
    world = json.loads(capsys.readouterr().out)["config"]["world"]
    assert world["name"] == "scale:decode_speed=0.8" and not world["is_belief"]
    assert world["vs_belief"] == {"decode_speed": 0.8} and world["speed"]["decode_speed"] == 0.8
    factors = tmp_path / "world.json"
    factors.write_text(json.dumps({"factors": {"bandwidth_fraction": 0.7}}), encoding="utf-8")
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
                 "--world-efficiency", str(factors)]) == 0
    assert f"world: file:{factors} (bandwidth_fraction x" in capsys.readouterr().out
    factors.write_text("{", encoding="utf-8")
    with pytest.raises(CapacityModelError, match="is not JSON"):
        _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--world-efficiency", str(factors)])


def test_a_miss_is_charged_to_the_pool_that_caused_it() -> None:
    from goodput.sim.fleet import DONE
    from goodput.sim.simulate import PolicyRun, caused_misses

    spec = build_spec("llama-3.1-8b", "h100-sxm-80gb", "bf16", 1000, 40, mode="disaggregated",
                      cold_start_s=COLD_START_S)
    setup = prepare(spec, even_trace([(120.0, 4.0)]))
    assert set(setup.pools) == {"prefill", "decode"}
    n = len(setup.trace)
    arrival = setup.trace.times
    ttft = np.full(n, 0.5)
    ttft[0] = ttft[1] = 3.0  # both miss the 1000 ms TTFT target...
    handoff = arrival + 0.3
    handoff[0] = arrival[0] + 2.0  # ...the first because its prefill took 2 s,
    # the second waited 2.7 s at the decode pool for admission.
    run = PolicyRun("x", ttft, np.full(n, 0.02), np.full(n, DONE, dtype=np.int8), 1.0, 0, [], 0,
                    handoff_s=handoff)
    misses = caused_misses(run, setup)
    assert misses["prefill"].tolist()[:3] == [True, False, False]
    assert misses["decode"].tolist()[:3] == [False, True, False]


def test_the_oracle_is_sized_for_the_world_and_meets_the_goal() -> None:
    from goodput.sim.simulate import run_oracle

    belief, slow = _setup(), _setup(build_world(scale="speed=0.6"))
    fast_run, slow_run = run_oracle(belief), run_oracle(slow)
    for setup, run in ((belief, fast_run), (slow, slow_run)):
        assert summarize(run, setup, None)["attainment"] >= 0.99
    # Slower engines need more replicas, found from the start rather than round by round.
    assert slow_run.gpu_hours > fast_run.gpu_hours
    assert any("replays" in note for note in slow_run.notes)


def test_the_emulator_takes_the_same_world(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from goodput.emulator.process import ClusterWatcher, build_parser, main

    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main's handlers stay out of the test process

    args = build_parser().parse_args(["--kubeconfig", "k", "--namespace", "n", "--name", "d", "--targets-file", "t",
                                      "--rate-schedule", "0:1", "--world-scale", "decode_speed=0.8"])
    assert args.world_scale == "decode_speed=0.8"
    assert "world" in ClusterWatcher.__init__.__code__.co_varnames
    # Bad input: one line and exit 2, before any cluster is contacted.
    assert main(["--kubeconfig", "k", "--namespace", "n", "--name", "d", "--targets-file", "t",
                 "--rate-schedule", "0:1", "--world-scale", "bandwidth_fraction=2"]) == 2
