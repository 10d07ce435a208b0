"""`goodput demo`: the closed loop on a local cluster (the work itself is `goodput.demo.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from goodput.cli.args import number_arg
from goodput.demo.run import BUNDLED_EXAMPLES, DEFAULT_EXAMPLE, cmd_demo, example_arg
from goodput.sim.trace import BUNDLED_TRACES

_positive = number_arg(float, 0.0, inclusive=False)


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the subparsers of `goodput` (``sub`` from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="the closed loop on a local cluster: build, start, replay a trace, stream decisions, summarize",
        description="Build (once) and start a local control plane with fake GPU nodes, Prometheus, the vLLM "
                    "emulator and the operator; apply an example InferenceDeployment, replay a trace against it, "
                    "stream the operator's decisions, then print a summary and write a plot. Everything started is "
                    "stopped at the end, also on Ctrl-C.")
    p.add_argument("--trace", default="azure-conv",
                   help=f"bundled trace ({', '.join(BUNDLED_TRACES)}) or an Azure-format CSV (default azure-conv)")
    p.add_argument("--duration-s", type=_positive, default=270.0,
                   help="seconds of load after the first replica serves (default 270)")
    p.add_argument("--speed", type=_positive, default=2.0, help="play the trace this many times faster (default 2)")
    p.add_argument("--surge", type=_positive, default=3.0,
                   help="load multiplier in the middle of the run, ramped up from 18%% and down from 45%% of it "
                   "(default 3; 1: the base load alone)")
    p.add_argument("--engine", choices=("emulated", "vllm-cpu"), default="emulated",
                   help="what serves in the pods: emulated vLLM replicas (default), or real vLLM CPU servers "
                   "(vllm-cpu: the tiny Llama on one core per pod, at most two; this machine's core is the "
                   "accelerator the operator plans for; --trace, --speed and --example do not apply; a real server "
                   "takes 30-140 s to start, so give --duration-s 480 or more to see the second one serve)")
    p.add_argument("--autoscaler", choices=("goodput", "keda"), default="goodput",
                   help="who scales: the goodput operator (default), or the real KEDA and HPA with the vLLM "
                   "production-stack ScaledObject (sum(vllm:num_requests_waiting), threshold 5) on the Deployment "
                   "the operator would render first (KEDA is built from source on first use, 7-23 min on 2 cores)")
    p.add_argument("--example", type=example_arg, default=DEFAULT_EXAMPLE, metavar="NAME|FILE.yaml",
                   help="the InferenceDeployment to apply: a bundled example (" + ", ".join(BUNDLED_EXAMPLES)
                        + ") or a manifest file (default aggregated-small)")
    p.add_argument("--cold-start-s", type=_positive, default=20.0,
                   help="seconds a new replica takes to load (spec.scaling.coldStartSeconds; default 20)")
    p.add_argument("--plot", type=Path, default=Path("demo.png"), metavar="FILE.png", help="default demo.png")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, kubeconfig, TSDB)")
    p.add_argument("--work-dir", type=Path, metavar="DIR", help="work directory (default: a new temporary one)")
    p.set_defaults(func=cmd_demo)
    return p
