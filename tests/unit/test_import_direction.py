"""The import-direction rule holds for the package, and the checker does catch violations."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from check_imports import violations  # noqa: E402


def test_package_core_imports_no_io() -> None:
    assert violations(ROOT / "operator" / "goodput") == []


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
