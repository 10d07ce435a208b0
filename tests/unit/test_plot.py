"""The roofline plot of a plan: written as a real PNG, directly and through `goodput plan --plot`."""

import itertools
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from goodput.cli import main
from goodput.model.architecture import get_model
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.model.sizing import Plan, plan
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.plot import decode_point, plot_plan, prefill_point

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORKLOAD = Workload(5, LengthDistribution.fixed(1000), LengthDistribution.fixed(200))


def _assert_png(path: Path) -> None:
    assert path.exists()
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


def test_plot_plan_writes_png(tmp_path: Path) -> None:
    arch = get_model("llama-3.1-8b")
    result = plan(arch, [get_accelerator("h100-sxm-80gb")], "bf16", WORKLOAD, SLO(1000, 40))
    assert result.chosen is not None
    out = tmp_path / "roofline.png"
    plot_plan(result, arch, "bf16", "auto", out)
    _assert_png(out)


def test_plot_plan_without_a_plan_raises(tmp_path: Path) -> None:
    arch = get_model("llama-3.1-8b")
    empty = Plan(None, [], WORKLOAD, SLO(1000, 40), message="nothing fits")
    with pytest.raises(ValueError, match="nothing fits"):
        plot_plan(empty, arch, "bf16", "auto", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_points_sit_where_the_roofline_says() -> None:
    """Decode at batch 1 is far below the ridge; prefill is near it; nothing beats the achievable roof."""
    r = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1)
    ridge = (r.gemm_flops_s / r.tp) / r.bandwidth_bytes_s
    small, big = decode_point(r, 1, 1100, "d"), decode_point(r, 64, 1100, "d")
    pre = prefill_point(r, 1000)
    assert small.intensity < 2.0 < ridge / 50
    assert small.intensity < big.intensity < ridge < pre.intensity
    for p in (small, big, pre):
        assert p.flops_s <= min(r.gemm_flops_s / r.tp, p.intensity * r.bandwidth_bytes_s) * 1.0001
    assert pre.flops_s > 0.5 * r.gemm_flops_s / r.tp


def test_cli_plan_plot(tmp_path: Path) -> None:
    out = tmp_path / "cli.png"
    rc = main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16",
               "--rate", "5", "--input-len", "1000", "--output-len", "200",
               "--ttft-p99-ms", "1000", "--itl-p99-ms", "40", "--plot", str(out)])
    assert rc == 0
    _assert_png(out)


def test_cli_plot_without_a_plan_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "none.png"
    rc = main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16",
               "--rate", "5", "--input-len", "1000", "--output-len", "200",
               "--ttft-p99-ms", "1", "--itl-p99-ms", "1", "--plot", str(out)])
    assert rc != 0
    assert not out.exists()
    assert "Traceback" not in capsys.readouterr().err


def test_coincident_points_share_one_label() -> None:
    from goodput.plot import StepPoint, merge_coincident

    points = [StepPoint("decode at goodput", 50.0, 1e14, 10.0), StepPoint("decode, KV cache full", 55.0, 1.1e14, 11.0),
              StepPoint("prefill", 500.0, 5e14, 100.0)]
    merged = merge_coincident(points)
    assert [p.label for p in merged] == ["decode at goodput = decode, KV cache full", "prefill"]


def test_fleet_curves_grow_with_the_rate_and_draw(tmp_path: Path) -> None:
    from goodput.plot import fleet_curves, fleet_path, plot_fleet

    arch = get_model("llama-3.1-8b")
    gpus = [get_accelerator("h100-sxm-80gb"), get_accelerator("a100-sxm-80gb")]
    curves = fleet_curves(arch, gpus, "bf16", WORKLOAD, SLO(1000, 40), "auto", ("aggregated", "disaggregated"))
    assert {(c.gpu.gpu_id, c.mode) for c in curves} == {(g.gpu_id, m) for g in gpus
                                                         for m in ("aggregated", "disaggregated")}
    for c in curves:
        assert c.rates_rps[0] == pytest.approx(0.5) and c.rates_rps[-1] == pytest.approx(50.0)
        finite = [float(n) for n in c.gpus if n == n]  # more load never needs fewer GPUs (NaN: none meets)
        assert all(b >= a for a, b in itertools.pairwise(finite))
    out = fleet_path(tmp_path / "plan.png")
    assert out.name == "plan-fleet.png"
    plot_fleet(curves, WORKLOAD.rate_rps, "title", out)
    _assert_png(out)


def test_cli_plan_plot_writes_both_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.png"
    assert main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--rate", "5", "--input-len", "1000",
                 "--output-len", "200", "--ttft-p99-ms", "1000", "--itl-p99-ms", "40", "--plot", str(out)]) == 0
    _assert_png(out)
    _assert_png(tmp_path / "p-fleet.png")
    assert f"GPUs and $/hour against request rate in {tmp_path / 'p-fleet.png'}" in capsys.readouterr().out
