"""Speed of the vLLM replica emulator (goodput.engine): a 1-hour trace across a fleet.

    python benchmarks/engine_speed.py [--requests 20000] [--replicas 10] [--hours 1]

Llama-3.1-70B in FP8 on H100 TP=2 (the replica of benchmarks/speed.py), Poisson arrivals,
lognormal prompts (mean 1200, p99 4100) and outputs (mean 210, p99 600). Two ways to drive it:

* round-robin: each replica gets every n-th request up front and is advanced once to the end;
* least-loaded: at every arrival all replicas are advanced to it and the request goes to the one
  with the fewest running + waiting requests (what a fleet simulator with a router does: many
  short ``advance`` calls).

Prints simulated seconds, wall seconds and the speed-up; the target is "well under 30 s" for 20k
requests on 10 replicas. Measured here, not asserted in tests.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from goodput.engine.replica import EngineReplica, Finished
from goodput.model.architecture import get_model
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.model.workload import LengthDistribution


def _lengths(dist: LengthDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """Continuous lognormal samples matching the distribution's mean and p99."""
    mean, p99 = dist.mean, dist.quantile(0.99)
    z99 = 2.3263478740408408
    sigma = z99 - np.sqrt(max(z99**2 - 2.0 * np.log(p99 / mean), 0.0))
    mu = np.log(mean) - sigma**2 / 2.0
    return np.maximum(np.round(rng.lognormal(mu, sigma, n)), 1).astype(int)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = ReplicaModel(get_model("llama-3.1-70b"), get_accelerator("h100-sxm-80gb"), "fp8", 2, "fp8")
    horizon = args.hours * 3600.0
    rng = np.random.default_rng(args.seed)
    arrivals = np.sort(rng.uniform(0.0, horizon, args.requests))
    prompts = np.minimum(_lengths(LengthDistribution.lognormal(1200, 4100), rng, args.requests), 30000)
    outputs = np.minimum(_lengths(LengthDistribution.lognormal(210, 600), rng, args.requests), 2000)
    drain = horizon + 600.0  # let the last requests finish

    print(f"{args.requests} requests over {horizon:.0f} s on {args.replicas} replicas "
          f"({args.requests / horizon / args.replicas:.2f} req/s each); python {platform.python_version()}")

    def fleet() -> list[EngineReplica]:
        return [EngineReplica(model, "aggregated", np.random.default_rng(args.seed * 1000 + i), 0.05)
                for i in range(args.replicas)]

    # Round-robin, one advance per replica.
    start = time.perf_counter()
    engines = fleet()
    done: list[Finished] = []
    for i in range(args.requests):
        engines[i % args.replicas].submit(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]))
    for e in engines:
        done += e.advance(drain)
    wall_rr = time.perf_counter() - start
    report("round-robin", wall_rr, drain, engines, done)

    # Least-loaded, every replica advanced to every arrival.
    start = time.perf_counter()
    engines = fleet()
    done = []
    for i in range(args.requests):
        t = float(arrivals[i])
        for e in engines:
            done += e.advance(t)
        target = min(engines, key=lambda e: e.running + e.waiting)
        target.submit(i, t, int(prompts[i]), int(outputs[i]))
    for e in engines:
        done += e.advance(drain)
    wall_ll = time.perf_counter() - start
    report("least-loaded", wall_ll, drain, engines, done)
    return 0


def report(name: str, wall: float, simulated: float, engines: list[EngineReplica], done: list[Finished]) -> None:
    steps = sum(e.steps for e in engines)
    jumped = sum(e.jumped_steps for e in engines)
    ttft = np.array([f.ttft_s for f in done])
    itl = sum(f.itl_mean_s * f.itl_count for f in done) / max(sum(f.itl_count for f in done), 1)
    print(f"{name:>13}: {wall:6.2f} s wall for {simulated:.0f} s simulated ({simulated / wall:,.0f}x real time); "
          f"{len(done)} finished, {steps:,} engine steps ({jumped / max(steps, 1):.0%} in decode jumps, "
          f"{wall / max(steps, 1) * 1e6:.1f} us/step); TTFT p50 {np.median(ttft) * 1e3:.0f} ms, "
          f"p99 {np.quantile(ttft, 0.99) * 1e3:.0f} ms; mean ITL {itl * 1e3:.1f} ms; "
          f"preemptions {sum(e.stats.preemptions for e in engines):.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
