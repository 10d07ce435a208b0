"""The roofline plot of a plan: written as a real PNG, directly and through `goodput plan --plot`."""

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
