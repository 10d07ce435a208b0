"""The goodput operator against the real KEDA + HPA, on the same emulated fleet and trace (issue 17).

    python benchmarks/real_peers.py [--duration-s 270] [--speed 2] [--surge 3] [--cold-start-s 20] \\
        [--autoscalers goodput,keda] [--out benchmarks/results/real_peers.md]

Each autoscaler gets a run of ``goodput demo`` of its own (a fresh control plane, Prometheus and
vLLM emulator; the bundled aggregated-small example: Llama-3.1-8B bf16 on H100, SLO TTFT 1000 ms /
ITL 40 ms; the Azure conversation trace ``--speed`` times faster with ``--surge`` times more of it
in the middle; the same seed, cold start and duration):

* ``goodput``: the goodput operator (timer 5 s, windows 20 s / 60 s), as ``goodput demo``;
* ``keda``: no goodput operator; the Deployment it would render first, applied once, scaled by the
  real KEDA v2.21.0 and the real HPA controller (Kubernetes v1.34.4, 15 s sync, default behavior)
  with the vLLM production-stack tutorial's ScaledObject: Prometheus scaler on
  ``sum(vllm:num_requests_waiting)``, threshold 5 (AverageValue), 1 to maxReplicas.

Attainment comes from vLLM's TTFT and ITL histograms in Prometheus (interpolated inside a bucket
where the SLO falls inside one), GPU-hours from the pods that existed (cold start included), the
scaling actions from the operator's decisions or the HPA's SuccessfulRescale Events.

The simulator then replays the very arrivals the emulator made (the trace through the same speed and
surge steps, `goodput.emulator.process.LoadGenerator`, written as a CSV) with its ``goodput``,
``keda-queue`` and ``oracle`` policies, same model, SLOs and cold start. Its attainment counts the
requests within both SLOs (ITL as each request's mean), not the histograms' per-token ITL, and its
``keda-queue`` cap is the simulator's shared maxReplicas, not the example's 8: the figures sit side
by side, they are not the same measure. The results (a table, the runs' summaries verbatim and the
simulator's table) go to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(autoscaler: str, args: argparse.Namespace, plot: Path) -> tuple[list[str], float, int]:
    cmd = [sys.executable, "-m", "goodput.cli", "demo", "--autoscaler", autoscaler, "--trace", args.trace,
           "--speed", f"{args.speed:g}", "--surge", f"{args.surge:g}", "--duration-s", f"{args.duration_s:g}",
           "--cold-start-s", f"{args.cold_start_s:g}", "--plot", str(plot)]
    print(f"==> {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = (proc.stdout + proc.stderr).splitlines()
    for line in lines:
        print(f"    [{autoscaler}] {line}", file=sys.stderr)
    return lines, time.monotonic() - t0, proc.returncode


def demo_arrivals(args: argparse.Namespace) -> list[tuple[float, int, int]]:
    """The arrivals `goodput demo` offers: the trace on the emulator's intensity clock, ``--speed``
    times faster, through the demo's surge steps, for ``--duration-s`` (seconds from the load's start)."""
    from goodput.demo.report import LoadProfile
    from goodput.emulator.process import LoadGenerator, _TraceEvents, load_trace

    gen = LoadGenerator(_TraceEvents(load_trace(args.trace)), None, args.speed)
    steps = LoadProfile.default(args.duration_s, args.surge).changes()
    ends = [t for t, _, _ in steps[1:]] + [args.duration_s]
    rows: list[tuple[float, int, int]] = []
    for (t, mult, _), end in zip(steps, ends, strict=True):
        rows += gen.arrivals(t, min(end, args.duration_s), mult)
    return rows


def simulate(args: argparse.Namespace, csv_path: Path) -> list[str]:
    rows = demo_arrivals(args)
    csv_path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                        + "".join(f"{t:.4f},{p},{o}\n" for t, p, o in rows), encoding="utf-8")
    cmd = [sys.executable, "-m", "goodput.cli", "simulate", "--trace", str(csv_path), "--model", "llama-3.1-8b",
           "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--ttft-p99-ms", "1000", "--itl-p99-ms", "40",
           "--mode", "aggregated", "--policy", "goodput,keda-queue,oracle", "--cold-start-s", f"{args.cold_start_s:g}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return [f"$ goodput simulate {' '.join(cmd[4:])}", *proc.stdout.splitlines(),
            *(line for line in proc.stderr.splitlines() if not line.startswith("simulate: "))]


def summary_of(lines: list[str]) -> dict[str, str]:
    """The figures of a demo's summary lines."""
    text = "\n".join(lines)
    out: dict[str, str] = {}
    patterns = {
        "offered": r"requests\s+([\d,]+) offered",
        "served": r"offered, ([\d,]+) served",
        "ttft": r"TTFT ≤ [\d.]+ ms for (≈?[\d.]+%|n/a)",
        "itl": r"ITL ≤ [\d.]+ ms for (≈?[\d.]+%|n/a)",
        "replicas": r"scaling\s+replicas (\S+);",
        "actions": r"; (\d+ scaling actions \(\d+ up, \d+ down\))",
        "gpu_hours": r"GPU-hours\s+([\d.]+) GPU-h",
        "peak": r"sized for the peak \((\d+) GPUs\)",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        out[key] = m.group(1) if m else "-"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--duration-s", type=float, default=270.0)
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--surge", type=float, default=3.0)
    p.add_argument("--cold-start-s", type=float, default=20.0)
    p.add_argument("--autoscalers", default="goodput,keda")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_peers.md")
    p.add_argument("--sim-only", action="store_true", help="only the simulator's replay (print it)")
    args = p.parse_args()
    sim_csv = Path(tempfile.mkdtemp(prefix="real-peers-")) / "arrivals.csv"
    if args.sim_only:
        print("\n".join(simulate(args, sim_csv)))
        return 0

    rows = []
    logs = []
    for autoscaler in args.autoscalers.split(","):
        plot = args.out.with_name(f"real_peers-{autoscaler}.png").resolve()
        if plot.is_relative_to(ROOT):
            plot = plot.relative_to(ROOT)  # the demo runs in ROOT; the results name no machine's paths
        lines, took, code = run_demo(autoscaler, args, plot)
        start = next((i for i, line in enumerate(lines) if line.startswith("==> summary")), None)
        body = lines[start:] if start is not None else lines[-30:]
        decisions = [line for line in lines if re.match(r"t=[+-]\d+s (ScaleUp|ScaleDown|RateLimited|Emergency)",
                                                        line)]
        logs.append((autoscaler, code, took, decisions, body))
        rows.append((autoscaler, code, took, summary_of(lines)))

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        "# Real peers: the goodput operator against the real KEDA + HPA (issue 17)",
        "",
        f"`python benchmarks/real_peers.py --trace {args.trace} --speed {args.speed:g} --surge {args.surge:g} "
        f"--duration-s {args.duration_s:g} --cold-start-s {args.cold_start_s:g}`, {stamp}, on a shared 2-core "
        "machine. One `goodput demo` run per autoscaler: the same emulated fleet (Llama-3.1-8B bf16 on H100, "
        "SLO TTFT 1000 ms / ITL 40 ms, aggregated, 1-8 replicas), trace, surge profile and cold start. "
        "`keda`: the vLLM production-stack ScaledObject (Prometheus scaler on `sum(vllm:num_requests_waiting)`, "
        "threshold 5, AverageValue) run by the real KEDA v2.21.0 and the real HPA controller (Kubernetes "
        "v1.34.4, 15 s sync, default behavior: 300 s scale-down window).",
        "",
        "| autoscaler | exit | wall s | offered | served | TTFT ≤ SLO | ITL ≤ SLO | GPU-h | peak GPUs | replicas | "
        "scaling actions |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for autoscaler, code, took, s in rows:
        md.append(f"| {autoscaler} | {code} | {took:.0f} | {s['offered']} | {s['served']} | {s['ttft']} | {s['itl']} "
                  f"| {s['gpu_hours']} | {s['peak']} | {s['replicas']} | {s['actions']} |")
    md.append("")
    for autoscaler, code, took, decisions, body in logs:
        md += [f"## {autoscaler} (exit {code}, {took:.0f} s)", "", "Scaling decisions:", "", "```",
               *(decisions or ["(none)"]), "```", "", "Summary:", "", "```", *body, "```", ""]
    md += ["## The simulator on the same arrivals", "", "```", *simulate(args, sim_csv), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
