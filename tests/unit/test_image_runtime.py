"""The operator's image leaves the dev harness out (Dockerfile: goodput.devcluster, .demo and
.emulator removed after install). The package without them must still run the operator, the CLI
and the planner, and `goodput demo` must say why it is not there, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "goodput"
HARNESS = ("devcluster", "demo", "emulator")


def _run(root: Path, *code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", *code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=root)


def test_the_package_without_the_dev_harness_runs_the_operator_and_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "goodput", ignore=shutil.ignore_patterns("__pycache__"))
    for name in HARNESS:
        shutil.rmtree(root / "goodput" / name)
    imported = _run(root, "import goodput.handlers.operator, goodput.metrics.shared, goodput.planner.autoscale, "
                          "goodput.render.reconcile; print('ok')")
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr[-2000:]
    cli = "import sys; from goodput.cli import main; sys.exit(main(sys.argv[1:]))"
    helped = _run(root, cli, "operator", "--help")
    assert helped.returncode == 0 and "--peering-lifetime" in helped.stdout, helped.stderr[-2000:]
    planned = _run(root, cli, "plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16",
                   "--rate", "5", "--ttft-p99-ms", "1000", "--itl-p99-ms", "40", "--input-len", "1000",
                   "--output-len", "200")
    assert planned.returncode == 0, planned.stderr[-2000:]
    demo = _run(root, cli, "demo")
    assert demo.returncode == 2 and demo.stderr.count("\n") == 1, demo.stderr
    assert "needs the dev harness (goodput.demo)" in demo.stderr and "Traceback" not in demo.stderr
