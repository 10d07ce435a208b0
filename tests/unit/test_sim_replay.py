"""Replays of small synthetic traces with known answers, the planner the goodput policy calls, and
the `simulate` command line.

Fleet: Llama-3.1-8B bf16 on A100, aggregated, prompts of 1500 and outputs of 150 tokens, SLOs
TTFT p99 <= 1000 ms and ITL <= 40 ms; 60 s cold start. Arrivals are evenly spaced.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from goodput.cli.simulate import add_simulate_parser
from goodput.sim.simulate import (
    PolicyRun,
    Setup,
    SimConfig,
    Simulation,
    build_spec,
    make_policy,
    prepare,
    run_policy,
    simulate,
)
from goodput.sim.trace import Trace, TraceError, parse_trace

COLD_START_S = 60.0
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def even_trace(segments: list[tuple[float, float]], tail_request_at: float | None = None) -> Trace:
    """(seconds, req/s) segments of evenly spaced requests; optionally one more request later."""
    lines = [HEADER]
    t0 = 0.0
    for seconds, rate in segments:
        for k in range(int(seconds * rate)):
            lines.append(f"{t0 + k / rate:.4f},1500,150")
        t0 += seconds
    if tail_request_at is not None:
        lines.append(f"{tail_request_at:.1f},1500,150")
    return parse_trace(lines, name="synthetic")


def setup_for(trace: Trace) -> Setup:
    # These replays hold the policies to the model's own count in the matched world, so the goodput
    # policy's pessimistic prior before calibration is off (tests/unit/test_autoscale.py has it).
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                      cold_start_s=COLD_START_S, uncalibrated_margin=0.0)
    return prepare(spec, trace)


def replicas(run: PolicyRun, since: float = 0.0) -> list[int]:
    return [row["replicas"]["aggregated"] for row in run.timeline if row["t"] >= since]


@pytest.fixture(scope="module")
def constant() -> Simulation:
    # 5 req/s for 300 s (the capacity model: 2 replicas of one A100 each).
    return simulate(setup_for(even_trace([(300.0, 5.0)])),
                    ["hpa", "keda-queue", "dynamo", "static-peak", "goodput", "goodput-nocal"])


@pytest.fixture(scope="module")
def step() -> Simulation:
    # 2 req/s for 200 s, then 8 req/s for 300 s.
    return simulate(setup_for(even_trace([(200.0, 2.0), (300.0, 8.0)])), ["goodput", "goodput-nocal"])


@pytest.fixture(scope="module")
def idle() -> Simulation:
    # A minute at 8 req/s, then nothing for 20 minutes but one request.
    return simulate(setup_for(even_trace([(60.0, 8.0)], tail_request_at=1260.0)), ["all"])


def test_constant_rate_gives_steady_replicas(constant: Simulation) -> None:
    setup = constant.setup
    want = setup.replicas_for(5.0)["aggregated"]
    assert setup.peak_replicas["aggregated"] == want
    for name in ("static-peak", "hpa", "keda-queue", "goodput-nocal"):
        assert set(replicas(constant.runs[name])) == {want}, name
        assert constant.runs[name].scaling_actions == 0, name
    # The oracle searches below the model's count (it is a bound, not the model): evenly spaced
    # arrivals let fewer replicas batch past the plan's point within the SLOs.
    assert max(replicas(constant.runs["oracle"])) <= want
    # Dynamo profiles the engines' own --max-num-seqs (for the load's range, not the plan's batch):
    # it settles on its own count after its first adjustment.
    assert len(set(replicas(constant.runs["dynamo"], since=2 * setup.config.interval_s + 1))) == 1
    report = constant.report()["policies"]
    for name, figures in report.items():
        assert figures["attainment"] >= 0.99, name


def test_constant_rate_goodput_policy_holds_steady(constant: Simulation) -> None:
    assert set(replicas(constant.runs["goodput"])) == {constant.setup.replicas_for(5.0)["aggregated"]}


def _scale_ups(run: PolicyRun) -> list[tuple[float, int, int]]:
    """(decision time, replicas before, after) of every scale-up (decisions fall on scrape times)."""
    return [(b["t"], a["replicas"]["aggregated"], b["replicas"]["aggregated"])
            for a, b in itertools.pairwise(run.timeline) if b["replicas"]["aggregated"] > a["replicas"]["aggregated"]]


def test_step_scales_up_after_the_cold_start(step: Simulation) -> None:
    for name in ("goodput", "goodput-nocal"):
        run = step.runs[name]
        assert any(t >= 200.0 for t, _, _ in _scale_ups(run)), f"{name} never scaled up after the step"
        added = [r for r in run.replicas if r.created_s > 0.0]
        assert added and all(r.ready_s == r.created_s + COLD_START_S for r in added), name
        assert all(r.ready_s == 0.0 for r in run.replicas if r.created_s == 0.0)  # the warm start
        # The ready count seen at scrapes never runs ahead of what the cold starts allow.
        for row in run.timeline:
            allowed = sum(1 for r in run.replicas if r.ready_s <= row["t"]
                          and (r.removed_s is None or r.removed_s > row["t"]))
            assert row["ready"]["aggregated"] == allowed, (name, row["t"])
    # Without the calibration drift (see the xfail above) nothing happens before the load rises.
    assert min(t for t, _, _ in _scale_ups(step.runs["goodput-nocal"])) >= 200.0
    # The oracle (no cold start) serves with the high-load fleet from its first decision whose interval
    # lies after the step (at 210 s; a scrape at a decision time shows the fleet before the decision).
    oracle = step.runs["oracle"]
    assert all(r.ready_s == r.created_s for r in oracle.replicas)
    high = step.setup.replicas_for(8.0)["aggregated"]
    at_step = [row for row in oracle.timeline if 210.0 < row["t"] < 480.0]
    assert at_step and all(row["ready"]["aggregated"] == high for row in at_step)


def test_idle_goes_to_the_minimum(idle: Simulation) -> None:
    for name, run in idle.runs.items():
        if name == "dynamo":
            # Dynamo's planner skips an interval without requests (its metrics are NaN): it keeps
            # the replicas it had, as the real one does.
            assert replicas(run, since=1200.0)[-1] == replicas(run)[0], name
        elif name != "static-peak":
            assert replicas(run, since=1200.0)[-1] == 1, name
    figures = idle.report()["policies"]
    assert figures["static-peak"]["gpu_hours"] > figures["oracle"]["gpu_hours"]


def test_oracle_spends_the_fewest_gpu_hours(constant: Simulation, idle: Simulation, step: Simulation) -> None:
    for sim in (constant, idle):
        report = sim.report()["policies"]
        oracle = report["oracle"]["gpu_hours"]
        for name, figures in report.items():
            if name == "dynamo":
                # The oracle is the capacity model's count (M/G/1 arrivals); with evenly spaced arrivals and
                # engines free to batch past the plan's point, Dynamo's 1 replica serves these within SLO.
                continue
            assert oracle <= figures["gpu_hours"] + 1e-9, name
            assert figures["gpu_hours_vs_oracle"] >= 1.0 - 1e-9, name
    # With a load step, against every policy serving at least as many requests within the SLOs.
    report = step.report()["policies"]
    for name, figures in report.items():
        if figures["attainment"] >= report["oracle"]["attainment"]:
            assert report["oracle"]["gpu_hours"] <= figures["gpu_hours"] + 1e-9, name


def _bursty_trace(seed: int = 3) -> Trace:
    """Five minutes of Poisson arrivals whose rate steps 2 -> 9 -> 4 req/s, lognormal lengths:
    chunked prefills, planned decode runs cut by arrivals, scale-ups and drains."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.exponential(1 / rate, int(100 * rate)) for rate in (2.0, 9.0, 4.0)])
    times = np.cumsum(gaps) - gaps[0]
    n = times.size
    prompts = np.clip(rng.lognormal(7.0, 0.8, n), 1, 7000).astype(np.int64)
    outputs = np.clip(rng.lognormal(4.8, 0.9, n), 1, 1500).astype(np.int64)
    return Trace(times, prompts, outputs, name="bursty")


def _fingerprint(sim: Simulation) -> dict[str, tuple[object, ...]]:
    return {name: (run.ttft_s.tobytes(), run.itl_s.tobytes(), run.status.tobytes(), run.gpu_hours,
                   run.scaling_actions, repr(run.timeline),
                   None if run.handoff_s is None else run.handoff_s.tobytes())
            for name, run in sim.runs.items()}


@pytest.mark.parametrize("mode", ["aggregated", "disaggregated"])
def test_same_seed_gives_bit_identical_results(mode: str) -> None:
    """The simulator is deterministic: the same seed replays to the same bits (every speed-up of
    the engine, the fleet or the oracle's search must keep this), another seed does not."""
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode=mode, cold_start_s=COLD_START_S)
    trace = _bursty_trace()
    first = simulate(prepare(spec, trace), ["goodput", "hpa", "dynamo"])  # and the oracle's search
    again = simulate(prepare(spec, trace), ["goodput", "hpa", "dynamo"])
    assert _fingerprint(first) == _fingerprint(again)
    assert first.report()["policies"] == again.report()["policies"]
    other = simulate(prepare(spec, trace, SimConfig(seed=1)), ["hpa"])
    assert other.runs["hpa"].ttft_s.tobytes() != first.runs["hpa"].ttft_s.tobytes()


def test_jobs_give_the_same_bits_as_one_process() -> None:
    """--jobs N runs policies in other processes (the oracle first): the same results, in the same order."""
    from goodput.cli.simulate import Progress, run_all

    setup = setup_for(even_trace([(120.0, 4.0)]))
    one = run_all(setup, ["hpa", "static-peak"], 1, Progress(False))
    two = run_all(setup, ["hpa", "static-peak"], 2, Progress(False))
    assert list(two.runs) == list(one.runs) == ["hpa", "static-peak", "oracle"]
    assert _fingerprint(two) == _fingerprint(one)


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="goodput")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    lines = [HEADER] + [f"2023-11-16 18:{k // 60:02d}:{k % 60:02d}.0000000,1500,150" for k in range(0, 120)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


BASE = ["--model", "llama-3.1-8b", "--gpu", "a100-sxm-80gb", "--precision", "bf16", "--ttft-p99-ms", "1000",
        "--itl-p99-ms", "40", "--mode", "aggregated", "--quiet"]


def test_cli_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli(["simulate", "--trace", str(_trace_file(tmp_path)), "--rate-scale", "2", *BASE,
                 "--policy", "static-peak,hpa", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"policies", "trace", "config"}
    assert list(out["policies"]) == ["static-peak", "hpa", "oracle"]
    keys = {"attainment", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "gpu_hours", "cost_usd",
            "scaling_actions", "gpu_hours_vs_oracle", "gpu_hours_vs_reference"}
    for figures in out["policies"].values():
        assert set(figures) == keys
    assert out["policies"]["oracle"]["gpu_hours_vs_oracle"] == 1.0
    # The default --rate-scale-mode replicate: twice the users, on the trace's own two minutes.
    assert out["trace"]["requests"] == 240 and out["trace"]["rate_scale"] == 2.0
    assert out["trace"]["duration_s"] == pytest.approx(119.0, abs=1.0)
    assert out["config"]["model"] == "llama-3.1-8b"


def test_cli_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "sim.png"
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "static-peak" in text and "oracle" in text and "attain" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_malformed_trace_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{HEADER}\n0,100,10\n1,100,ten\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"bad\.csv:3: GeneratedTokens 'ten' is not a number"):
        _cli(["simulate", "--trace", str(bad), *BASE])
    mooncake = tmp_path / "bad.jsonl"
    mooncake.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2}\n{"timestamp": 1}\n',
                        encoding="utf-8")
    with pytest.raises(TraceError, match=r"bad\.jsonl:2: missing 'input_length'"):
        _cli(["simulate", "--trace", str(mooncake), *BASE])


def test_mooncake_prefix_hits_reach_the_engines() -> None:
    lines = [json.dumps({"timestamp": k * 250, "input_length": 2048, "output_length": 20,
                         "hash_ids": [1, 2, 3, 100 + k]}) for k in range(200)]
    setup = setup_for(parse_trace(lines))
    run = run_policy(setup, make_policy("static-peak", setup))
    assert np.count_nonzero(run.status == 1) == 200
    # After the first request on each replica, 3 of 4 blocks (1536 of 2048 tokens) are cached.
    setup_no_hash = setup_for(parse_trace([json.dumps({"timestamp": k * 250, "input_length": 2048,
                                                       "output_length": 20}) for k in range(200)]))
    plain = run_policy(setup_no_hash, make_policy("static-peak", setup_no_hash))
    assert np.nanmean(run.ttft_s) < np.nanmean(plain.ttft_s)


def test_simulate_a_model_from_its_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_cli import LLAMA_8B_CONFIG

    folder = tmp_path / "my-llama"
    folder.mkdir()
    config = folder / "config.json"
    config.write_text(json.dumps({**LLAMA_8B_CONFIG, "max_position_embeddings": 8192}), encoding="utf-8")
    without_model = [a for i, a in enumerate(BASE) if a != "--model" and (i == 0 or BASE[i - 1] != "--model")]
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), "--model-config", str(config), *without_model,
                 "--policy", "static-peak", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["model"] == "my-llama"
    # The same engines as the catalog's Llama-3.1-8B: the same plan.
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert report["config"]["pools"] == catalog["config"]["pools"]
    assert report["config"]["max_model_len"] == catalog["config"]["max_model_len"]
