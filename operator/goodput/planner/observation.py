"""What the operator saw: per-pool load and latency from vLLM's metrics, with gaps said out loud.

Built by `goodput.metrics` from Prometheus (I/O); read by the planner (pure). A value that
could not be read is None and `missing` says why, so the planner can tell "zero load" from
"no data" and never scales down on the latter.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from goodput.api.vocabulary import VLLM_ROLES

ROLES = VLLM_ROLES


@dataclass(frozen=True)
class PoolMetrics:
    """One pool (the pods of one role) over one window. None: not available."""

    role: str
    pods_reporting: int | None = None  # pods with a live vLLM series
    request_rate_rps: float | None = None  # completed requests per second
    queue_growth_rps: float | None = None  # d(running + waiting)/dt: arrivals minus completions
    prompt_tokens_tps: float | None = None
    generation_tokens_tps: float | None = None
    input_len_mean: float | None = None
    input_len_p99: float | None = None
    output_len_mean: float | None = None
    output_len_p99: float | None = None
    ttft_ms: float | None = None  # at the SLO percentile
    itl_ms: float | None = None  # at the SLO percentile
    # Mean inter-token latency, exact from the histogram's sum/count. The percentile above is
    # interpolated inside vLLM's coarse ITL buckets (25/50/75 ms...) and can overstate by half a
    # bucket, so calibration reads the mean.
    itl_mean_ms: float | None = None
    kv_cache_usage: float | None = None  # max over pods, 0..1
    running: float | None = None  # sum over pods
    waiting: float | None = None  # sum over pods
    preemptions_rps: float | None = None
    prefix_cache_hit_rate: float | None = None
    # What calibration reads (goodput.planner.calibration). Means are exact (histogram sum / count).
    ttft_mean_ms: float | None = None
    prefill_time_mean_ms: float | None = None  # vllm:request_prefill_time_seconds: scheduled -> first token
    # Cumulative bucket counts over the window, (upper bound in ms, observations <= it), +Inf last:
    # the planner reads percentiles from these itself (goodput.planner.slo) instead of trusting a
    # linear interpolation inside vLLM's wide latency buckets (25-50 ms for ITL).
    ttft_buckets: tuple[tuple[float, float], ...] | None = None
    itl_buckets: tuple[tuple[float, float], ...] | None = None
    # KV-cache capacity in tokens: vllm:cache_config_info's num_gpu_blocks x block_size (min over pods).
    kv_capacity_tokens: float | None = None
    # Index of dispersion (variance / mean) of the pool's completions per 30 s bin over the window,
    # from successive differences (goodput.planner.burst.dispersion_index): 1 for Poisson arrivals.
    arrival_dispersion: float | None = None

    @property
    def arrival_rate_rps(self) -> float | None:
        """Demand: what completed plus what piled up in the queue, or less what drained from it.

        Requests are conserved: arrivals = completions + growth of the requests in the system
        (running + waiting). A backlog that drains (negative growth) after a scale-up counts as
        such: its completions come from the backlog, not from clients, and counting them as demand
        (clipping the growth at zero) read a draining pool as load rising and scaled up again."""
        if self.request_rate_rps is None:
            return None
        return max(self.request_rate_rps + (self.queue_growth_rps or 0.0), 0.0)


@dataclass(frozen=True)
class Observation:
    time: dt.datetime
    window_s: float  # the short window: current load and latency
    long_window_s: float  # the long window: the trend baseline
    pools: dict[str, PoolMetrics] = field(default_factory=dict)  # short window
    long_pools: dict[str, PoolMetrics] = field(default_factory=dict)  # long window
    missing: tuple[str, ...] = ()  # what could not be read, one sentence each
    error: str | None = None  # the whole source failed (unreachable, timeout)

    @property
    def available(self) -> bool:
        """Enough to plan with: the source answered and the serving pool reported a request rate."""
        if self.error is not None:
            return False
        serving = self.serving_pool()
        return serving is not None and serving.request_rate_rps is not None and math.isfinite(
            serving.request_rate_rps)

    def serving_pool(self, long: bool = False) -> PoolMetrics | None:
        """The pool that answers clients: aggregated, else decode."""
        pools = self.long_pools if long else self.pools
        return pools.get("aggregated") or pools.get("decode")

    @classmethod
    def unavailable(cls, time: dt.datetime, error: str, window_s: float = 60.0,
                    long_window_s: float = 600.0) -> Observation:
        return cls(time=time, window_s=window_s, long_window_s=long_window_s, error=error)


@dataclass(frozen=True)
class PoolObservation:
    """What the cluster shows for one pool's Deployment: the pods running and pending, as the
    planner sees them beside the metrics."""

    replicas: int
    ready_replicas: int = 0
    # Pods the scheduler could not place (Pending, PodScheduled=False/Unschedulable), and its message.
    pending_replicas: int = 0
    pending_message: str = ""
    # Pods that became Ready without a restart: (Ready at, seconds from creation to Ready), the
    # cold start a scale-up really waits for (goodput.planner.coldstart).
    pod_starts: tuple[tuple[dt.datetime, float], ...] = ()
