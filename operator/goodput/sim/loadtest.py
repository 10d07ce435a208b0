"""The HPA's default target as a user sets it: from a load test of one replica of the real engine.

A user who puts an HPA on ``vllm:num_requests_running`` (or ``vllm:kv_cache_usage_perc``) runs one
replica under a steady load of their own traffic, raises the load until the replica just meets
the SLOs, and sets the target to the metric's level there. In the simulator the real engine is
the world's (`PoolConfig.engine_model`), which may differ from the planner's belief, so the
target is measured on it rather than read off the capacity model:

* **Load**: the trace's (prompt, output) pairs drawn at random, Poisson arrivals at a steady rate
  for about ``LOAD_REQUESTS`` requests (at least ``MIN_LOAD_S``, at most ``MAX_LOAD_S``); no
  prefix-cache hits (a load generator's prompts rarely share prefixes). The draws are the same at
  every rate (common random numbers), so the search compares rates, not luck.
* **Replica**: one engine of the pool's role and configuration. A prefill replica's TTFT is its
  prefill plus the KV transfer (it hands off at its first token); a decode replica admits each
  request as its KV arrives, and its TTFT is that admission wait plus the first step.
* **Meets the SLOs** when at least the SLO percentile of the requests that arrived in the second
  half (the first half fills the replica) have TTFT <= the TTFT target and mean ITL <= the ITL
  target (ITL does not apply to prefill); requests the engine refuses (too long) are left out. The
  replica runs until every measured request has either finished or can no longer meet the SLOs
  (a request unfinished at arrival + TTFT target + (output - 1) x ITL target is a miss whatever
  follows), so an overloaded probe stops early and is still judged exactly.
* **Search**: from the capacity model's per-replica goodput of the world's engine, steps of x1.5
  up or down until the goal is bracketed, then bisection to 5%.
* **Target**: the metric's time average over the second half at the highest rate that met the
  goal (the level a dashboard shows during the test).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from goodput.engine.replica import EngineReplica, Finished, as_role
from goodput.sim.fleet import PoolConfig
from goodput.sim.trace import Trace

LOAD_REQUESTS = 2000.0  # per probe, about half of them measured
MIN_LOAD_S = 120.0  # long enough to fill a replica whatever the rate
MAX_LOAD_S = 600.0
BRACKET_STEP = 1.5
MAX_BRACKET_STEPS = 8  # x1.5^8 = 25x either way of the capacity model's guess
PRECISION = 1.05  # bisect until the bracket is within 5%
MIN_RUNNING_TARGET = 0.1
MIN_KV_TARGET = 0.01


@dataclass(frozen=True)
class Probe:
    """One load test at one rate."""

    rate_rps: float
    attainment: float  # of the measured requests
    meets: bool
    running: float  # mean vllm:num_requests_running over the measured half
    kv_usage: float  # mean vllm:kv_cache_usage_perc over the measured half


@dataclass(frozen=True)
class LoadTest:
    """The highest steady rate at which one replica met the SLOs, and the metric's level there."""

    role: str
    best: Probe  # the highest rate that met the goal (the lowest rate tried, if none did)
    met: bool  # False: even the lowest rate tried missed the goal
    probes: int

    def target(self, metric: str) -> float:
        """The HPA target this test gives for ``metric`` (running | kv; a prefill pool: running)."""
        if metric == "kv" and self.role != "prefill":
            return max(self.best.kv_usage, MIN_KV_TARGET)
        return max(self.best.running, MIN_RUNNING_TARGET)

    def describe(self) -> dict[str, object]:
        """For ``config.pools[role].hpa_load_test`` of the simulator's JSON."""
        return {"rate_rps": round(self.best.rate_rps, 4), "attainment": round(self.best.attainment, 5),
                "met": self.met, "running": round(self.best.running, 3), "kv_usage": round(self.best.kv_usage, 4),
                "probes": self.probes, "load_s": round(load_s(self.best.rate_rps), 1)}


@dataclass(frozen=True)
class LoadTestInputs:
    pool: PoolConfig
    trace: Trace
    ttft_s: float
    itl_s: float
    goal: float  # the SLO percentile, as a fraction
    seed: int
    noise_cv: float


def load_s(rate_rps: float) -> float:
    """How long a probe at ``rate_rps`` lasts."""
    return min(max(LOAD_REQUESTS / rate_rps, MIN_LOAD_S), MAX_LOAD_S)


def probe(inputs: LoadTestInputs, rate_rps: float) -> Probe:
    """One replica under ``rate_rps`` of steady Poisson load for `load_s`."""
    duration = load_s(rate_rps)
    times, prompts, outputs = _load(inputs, rate_rps, duration)
    pool = inputs.pool
    engine = EngineReplica(pool.engine_model, role=as_role(pool.role), rng=np.random.default_rng([inputs.seed, 1]),
                           noise_cv=inputs.noise_cv, max_model_len=pool.max_model_len)
    refused: set[int] = set()
    for i in range(times.size):
        if not engine.submit(i, float(times[i]), int(prompts[i]), int(outputs[i])):
            refused.add(i)
    half = duration / 2.0
    done = engine.advance(half)
    running0, kv0 = engine.running_seconds, engine.kv_seconds
    done += engine.advance(duration)
    running = (engine.running_seconds - running0) / half
    kv = (engine.kv_seconds - kv0) / half
    measured = [i for i in range(times.size) if times[i] >= half and i not in refused]
    done += engine.advance(max(duration, _last_chance_s(inputs, measured, times, outputs)))
    attainment = _attainment(inputs, {int(f.request_id): f for f in done}, measured, times, outputs)
    return Probe(rate_rps, attainment, attainment >= inputs.goal, running, kv)


def _last_chance_s(inputs: LoadTestInputs, measured: list[int], times: npt.NDArray[np.float64],
                   outputs: npt.NDArray[np.int64]) -> float:
    """The time after which every measured request still unfinished is a miss: with TTFT and mean
    ITL within target, a request ends by arrival + TTFT target + (output - 1) x ITL target."""
    if not measured:
        return 0.0
    idx = np.asarray(measured)
    tail = 0.0 if inputs.pool.role == "prefill" else inputs.itl_s
    return float(np.max(times[idx] + inputs.ttft_s + (outputs[idx] - 1) * tail)) + 1e-6


def _load(inputs: LoadTestInputs, rate_rps: float, duration_s: float) -> tuple[
        npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Arrivals and lengths: separate generators, so that the first k draws are the same at every rate."""
    expected = rate_rps * duration_s
    n = math.ceil(expected + 5.0 * math.sqrt(expected) + 10.0)  # enough gaps to cover the whole test
    gaps = np.random.default_rng([inputs.seed, 2]).exponential(1.0, n) / rate_rps
    times = np.cumsum(gaps)
    times = times[times < duration_s]
    pick = np.random.default_rng([inputs.seed, 3]).integers(0, len(inputs.trace), times.size)
    return times, inputs.trace.prompts[pick].astype(np.int64), inputs.trace.outputs[pick].astype(np.int64)


def _attainment(inputs: LoadTestInputs, finished: dict[int, Finished], measured: list[int],
                times: npt.NDArray[np.float64], outputs: npt.NDArray[np.int64]) -> float:
    if not measured:
        return 1.0
    prefill = inputs.pool.role == "prefill"
    ok = 0
    for i in measured:
        f = finished.get(i)
        if f is None:
            continue  # unfinished after the drain: a miss
        ttft = f.first_token_s - float(times[i]) + (f.kv_transfer_s if prefill else 0.0)
        itl_ok = prefill or outputs[i] <= 1 or f.itl_mean_s <= inputs.itl_s
        ok += int(ttft <= inputs.ttft_s and itl_ok)
    return ok / len(measured)


def load_test(inputs: LoadTestInputs, guess_rps: float) -> LoadTest:
    """The highest rate (within 5%) at which one replica meets the SLOs, searched from ``guess_rps``."""
    rate = max(guess_rps, 1e-3)
    met: Probe | None = None
    missed: Probe | None = None
    lowest: Probe | None = None
    probes = 0
    for _ in range(MAX_BRACKET_STEPS):
        p = probe(inputs, rate)
        probes += 1
        lowest = p if lowest is None or p.rate_rps < lowest.rate_rps else lowest
        if p.meets:
            met = p if met is None or p.rate_rps > met.rate_rps else met
            if missed is not None:
                break
            rate *= BRACKET_STEP
        else:
            missed = p if missed is None or p.rate_rps < missed.rate_rps else missed
            if met is not None:
                break
            rate /= BRACKET_STEP
    while met is not None and missed is not None and missed.rate_rps / met.rate_rps > PRECISION:
        p = probe(inputs, math.sqrt(met.rate_rps * missed.rate_rps))
        probes += 1
        if p.meets:
            met = p
        else:
            missed = p
    assert lowest is not None
    return LoadTest(inputs.pool.role, met or lowest, met is not None, probes)
