"""`goodput demo`'s bookkeeping: load profile, decision lines, GPU-hours, attainment from histograms,
the example it applies, the summary and the plot. (The run itself: tests/integration/test_demo.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.cli import build_parser
from goodput.demo.report import (
    DecisionLine,
    LoadProfile,
    Sample,
    Series,
    Summary,
    base_rate,
    decision_line,
    epoch,
    fraction_at_most,
    gpu_hours,
    offered_rate,
    plot_demo,
    replicas_path,
)
from goodput.demo.run import DEFAULT_EXAMPLE, DemoError, load_example


def sample(t: float, gpus: int = 1, desired: int = 1, arrivals: int = 0) -> Sample:
    return Sample(t, arrivals, 0, desired, gpus, desired, gpus)


def test_the_demo_is_a_goodput_command() -> None:
    args = build_parser().parse_args(["demo", "--duration-s", "90", "--speed", "3", "--keep"])
    assert args.func.__name__ == "cmd_demo"
    assert (args.duration_s, args.speed, args.surge, args.keep, args.trace) == (90.0, 3.0, 3.0, True, "azure-conv")
    assert args.example == DEFAULT_EXAMPLE and DEFAULT_EXAMPLE.exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--speed", "0"])


def test_load_profile_ramps_up_holds_and_comes_back() -> None:
    p = LoadProfile.default(300, 3.0)
    assert (p.start_s, p.end_s, p.ramp_s) == (54, 135, 45)
    assert p.multiplier(0) == 1.0 and p.multiplier(53.9) == 1.0
    assert p.multiplier(54 + 22.5) == pytest.approx(2.0)
    assert p.multiplier(110) == 3.0
    assert p.multiplier(135 + 22.5) == pytest.approx(2.0)
    assert p.multiplier(200) == 1.0
    steps = p.changes(step_s=5)
    times = [t for t, _, _ in steps]
    assert times == sorted(times) and times[0] == 0.0
    values = [m for _, m, _ in steps]
    assert values[0] == 1.0 and max(values) == 3.0 and values[-1] == 1.0
    peak = values.index(3.0)
    assert values[:peak + 1] == sorted(values[:peak + 1]) and values[peak:] == sorted(values[peak:], reverse=True)
    assert [n for _, _, n in steps if n] == ["load rising to ×3 over 45 s", "load ×3",
                                            "load falling back to ×1 over 45 s", "load ×1"]
    flat = LoadProfile.default(100, 1.0)
    assert flat.changes() == [(0.0, 1.0, "")] and flat.multiplier(50) == 1.0 and flat.describe() == "no surge"


def test_base_rate_is_the_trace_played_faster() -> None:
    times = [float(t) for t in range(100)]  # 1 req/s for 100 s
    assert base_rate(times, 2.0, 20.0) == pytest.approx(2.0)
    assert base_rate([], 2.0, 20.0) == 0.0


def test_decision_lines_name_time_reason_and_change_once() -> None:
    t0 = epoch("2025-01-01T00:00:00Z")
    d = decision_line({"time": "2025-01-01T00:01:25Z", "reason": "ScaleUp", "pool": "aggregated",
                       "fromReplicas": 1, "toReplicas": 2, "message": "aggregated 1→2: forecast 26 req/s"}, t0)
    assert d.t == 85 and d.scales
    assert d.text() == "t=+85s ScaleUp: aggregated 1→2: forecast 26 req/s"
    other = DecisionLine(-3, "Hold", "aggregated", 2, 2, "stays")
    assert other.text() == "t=-3s Hold aggregated 2→2: stays" and not other.scales
    assert DecisionLine(5, "InvalidSpec", None, None, None, "bad").text() == "t=+5s InvalidSpec: bad"


def test_gpu_hours_integrate_gpus_held_between_samples() -> None:
    samples = [sample(0, gpus=1), sample(1800, gpus=4), sample(2700, gpus=2)]
    # 1 GPU for 30 min, 4 for 15 min, 2 until t_end (15 min more)
    assert gpu_hours(samples, 3600) == pytest.approx(0.5 + 1.0 + 0.5)
    assert gpu_hours(samples, 900) == pytest.approx(0.25)
    assert gpu_hours([], 100) == 0.0


def test_fraction_at_most_reads_cumulative_buckets() -> None:
    buckets = {0.025: 50.0, 0.05: 90.0, 0.075: 100.0, math.inf: 100.0}
    assert fraction_at_most(buckets, 0.05) == (0.9, True)
    frac, exact = fraction_at_most(buckets, 0.04)  # 60 % of the way from 0.025 to 0.05
    assert not exact and frac == pytest.approx((50 + 0.6 * 40) / 100)
    assert fraction_at_most(buckets, 0.01) == (pytest.approx(0.2), False)  # from 0 to the first bound
    assert fraction_at_most({1.0: 70.0, math.inf: 100.0}, 5.0) == (0.7, False)  # beyond the last bound
    assert fraction_at_most({}, 1.0) == (None, True)
    assert fraction_at_most({1.0: 0.0, math.inf: 0.0}, 1.0) == (None, True)


def test_offered_rate_and_replicas_path() -> None:
    samples = [sample(t, arrivals=10 * t, desired=d) for t, d in ((0, 1), (5, 1), (10, 2), (15, 3), (20, 3),
                                                                  (25, 1))]
    mids, rates = offered_rate(samples, bin_s=10)
    assert mids == [5.0, 15.0, 22.5] and rates == [10.0, 10.0, 10.0]
    assert replicas_path(samples) == [1, 2, 3, 1]


def test_load_example_sets_the_demo_settings_and_keeps_the_files_own(tmp_path: Path) -> None:
    m = load_example(DEFAULT_EXAMPLE, namespace="ns", cold_start_s=20, request_rate=9.456)
    assert m["metadata"]["namespace"] == "ns"
    spec = InferenceDeploymentSpec.model_validate(m["spec"])
    assert spec.scaling.cold_start_seconds == 20 and spec.workload.request_rate == 9.46
    assert spec.scaling.scale_down_stabilization_seconds == 30
    assert (spec.slo.ttft_ms, spec.slo.itl_ms) == (1000, 40)  # the example's SLO as it is
    own = tmp_path / "own.yaml"
    own.write_text(DEFAULT_EXAMPLE.read_text().replace("maxReplicas: 8}", "maxReplicas: 8}\n"
                                                       "    scaleDownStabilizationSeconds: 120"))
    spec = InferenceDeploymentSpec.model_validate(load_example(own, namespace="ns", cold_start_s=20,
                                                               request_rate=1)["spec"])
    assert spec.scaling.scale_down_stabilization_seconds == 120
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Deployment\n")
    with pytest.raises(DemoError, match="not an InferenceDeployment"):
        load_example(bad, namespace="ns", cold_start_s=20, request_rate=1)
    with pytest.raises(DemoError, match="cannot read"):
        load_example(tmp_path / "missing.yaml", namespace="ns", cold_start_s=20, request_rate=1)


def test_summary_lines_and_plot(tmp_path: Path) -> None:
    ups = DecisionLine(40, "ScaleUp", "aggregated", 1, 3, "aggregated 1→3: more")
    down = DecisionLine(90, "ScaleDown", "aggregated", 3, 1, "aggregated 3→1: less")
    summary = Summary(duration_s=100, arrivals=1000, completed=990, dropped=0, rejected=0, in_flight=10,
                      ttft_slo_ms=1000, itl_slo_ms=40, ttft_ok=0.95, ttft_exact=True, itl_ok=0.9, itl_exact=False,
                      gpu_hours=0.05, price_per_gpu_hour=6.88, peak_gpus=3, load_s=100,
                      decisions=[ups, down, DecisionLine(0, "Initial", "aggregated", None, 1, "x")],
                      replicas_path=[1, 3, 1])
    lines = summary.lines()
    assert lines[-1] == ("summary: SLO attainment 95.0% (TTFT) / ≈90.0% (ITL), 0.050 GPU-hours, cost $0.34, "
                         "2 scaling actions")
    assert any("replicas 1→3→1; 2 scaling actions (1 up, 1 down)" in line for line in lines)
    samples = [Sample(t, 10 * t, 9 * t, 1 if t < 40 else 3, 1 if t < 40 else 3, 1, 1 if t < 40 else 3)
               for t in range(0, 100, 5)]
    path = tmp_path / "plot" / "demo.png"
    plot_demo(path, "title", samples, [ups, down], (10, 100), Series([10, 20], [5, 6]), Series([10, 20], [200, 3000]),
              Series(), 1000, 40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
