"""The engine presets shipped as data (`data/efficiency_presets.json`, written by
``tools/calibrate.py --presets --write``): each loads as a world within the bounds the model
enforces, they were fitted on the measurements the repository holds, they ship in the wheel, and
`goodput simulate --world-efficiency preset:NAME` runs them (an unknown name: one line, exit 2)."""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import tomllib
from pathlib import Path

import pytest
from test_sim_replay import BASE, _trace_file

from goodput.cli import main
from goodput.engine.world import FACTOR_NAMES, PRESETS_FILE, preset_world, shipped_presets
from goodput.model.efficiency import Efficiency, class_efficiency

ROOT = Path(__file__).resolve().parents[2]
PRESETS_PATH = ROOT / "operator" / "goodput" / "data" / PRESETS_FILE
MEASUREMENTS = ROOT / "tests" / "data" / "published-dev.csv"


def _document() -> dict[str, object]:
    return json.loads(PRESETS_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_presets_ship_in_the_package() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["goodput"]
    rel = str(PRESETS_PATH.relative_to(ROOT / "operator" / "goodput"))
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would not be in the wheel"
    assert shipped_presets(), "the loader found no presets"


@pytest.mark.parametrize("name", sorted(shipped_presets()))
def test_every_preset_loads_within_the_bounds(name: str) -> None:
    entry = shipped_presets()[name]
    assert entry["description"] and entry["source"]
    assert set(entry["factors"]) <= set(FACTOR_NAMES)
    world = preset_world(name)
    assert world.name == f"preset:{name}"
    # Every factor given is the world's (none silently dropped), and the whole set passes the
    # bounds check the model applies to its own factors (fractions in (0, 1], sharpness >= 1, ...).
    values = world.efficiency.to_dict()
    for factor, value in entry["factors"].items():
        assert values[factor] == pytest.approx(value, rel=1e-12), factor
    Efficiency.from_dict(values).validate()


def test_one_preset_per_engine_class_and_per_measurement_source() -> None:
    with MEASUREMENTS.open(encoding="utf-8") as fh:
        sources = {row["source"] for row in csv.DictReader(fh)}
    presets = shipped_presets()
    assert {"cuda-graph", "eager"} <= set(presets)
    per_source = {entry["source"] for name, entry in presets.items() if name.startswith("source:")}
    assert per_source == sources


def test_presets_were_fitted_on_the_measurements_in_the_repository() -> None:
    # Regenerate with tools/calibrate.py --presets --write when the measurements change.
    doc = _document()
    assert doc["fitted_on_sha256"] == hashlib.sha256(MEASUREMENTS.read_bytes()).hexdigest()
    shipped = json.loads((ROOT / "operator" / "goodput" / "data" / "efficiency.json").read_text(encoding="utf-8"))
    assert doc["fitted_on_sha256"] == shipped["fitted_on_sha256"]
    # The class presets are the same fit as the planner's shipped classes (same data, same code).
    for klass in ("cuda-graph", "eager"):
        assert preset_world(klass).efficiency == class_efficiency(klass), klass
    assert preset_world("cuda-graph").is_belief  # the default engine's class: the belief itself
    assert not preset_world("eager").is_belief


def test_simulate_runs_a_preset_and_records_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
            "--world-efficiency", "preset:eager", "--json"]
    assert main(argv) == 0
    world = json.loads(capsys.readouterr().out)["config"]["world"]
    assert world["name"] == "preset:eager" and not world["is_belief"]
    assert world["source"] == shipped_presets()["eager"]["source"]
    # Eager engines launch every kernel from the host: their fixed step overhead is larger.
    assert world["vs_belief"]["step_overhead_s"] > 1.5


def test_an_unknown_preset_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--world-efficiency", "preset:h100-magic"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert "unknown engine preset 'h100-magic'; known: " in lines[0]
    for name in shipped_presets():
        assert name in lines[0]
    assert captured.out == ""

