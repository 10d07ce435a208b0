"""The import contracts hold for the package, and they do catch violations.

Two checkers: import-linter with the contracts in pyproject.toml ([tool.importlinter]: layers,
forbidden imports, no cycles), and tools/check_imports.py, a small AST check of the pure core kept
as a second opinion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from check_imports import violations  # noqa: E402

PACKAGE = ROOT / "operator" / "goodput"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's contracts (pyproject.toml, found in the working directory) on
    the `goodput` package found in package_parent."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_package_keeps_every_import_contract() -> None:
    result = lint_imports(ROOT / "operator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 7 kept, 0 broken." in result.stdout


def test_import_linter_catches_io_upward_harness_imports_and_cycles(tmp_path: Path) -> None:
    copy = tmp_path / "src" / "goodput"
    shutil.copytree(PACKAGE, copy, ignore=lambda _d, names: [n for n in names if not (
        n.endswith(".py") or (Path(_d, n).is_dir() and n != "__pycache__" and n != "data"))])

    def add(relative: str, line: str) -> None:
        path = copy / relative
        path.write_text(path.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")

    add("model/hardware.py", "import kopf  # noqa")  # the core imports an I/O library
    add("planner/guards.py", "from goodput.render import vllm  # noqa")  # a layer imports one above it
    add("kube/actions.py", "from goodput.sim import trace  # noqa")  # the runtime imports the simulator
    add("model/errors.py", "from goodput.model import sizing  # noqa")  # sizing imports errors: a cycle
    result = lint_imports(tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "Contracts: 3 kept, 4 broken." in out, out
    assert "goodput.model is not allowed to import kopf" in out
    assert "goodput.planner is not allowed to import goodput.render" in out
    assert "goodput.kube is not allowed to import goodput.sim" in out
    assert "No cycles are allowed in goodput.model." in out and ".errors -> .sizing" in out


@pytest.mark.parametrize("layer", ["model", "engine", "api", "planner", "render", "sim"])
def test_second_opinion_core_imports_no_io(layer: str) -> None:
    assert [v for v in violations(PACKAGE) if f"'{layer}'" in v] == []


def test_checker_catches_io_and_upward_imports(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "bad.py").write_text(
        "import kopf\nfrom kubernetes import client\nfrom goodput.planner import x\nfrom goodput.kube import y\n"
        "import numpy\nfrom goodput.model.replica import ReplicaModel\n"
    )
    for layer in ("api", "planner", "render"):
        (tmp_path / layer).mkdir()
    found = violations(tmp_path)
    assert len(found) == 4, found
    assert any("I/O library 'kopf'" in f for f in found)
    assert any("I/O library 'kubernetes'" in f for f in found)
    assert any("higher layer 'goodput.planner'" in f for f in found)
    assert any("I/O package 'goodput.kube'" in f for f in found)
