"""What Prometheus would hold about a simulated fleet, and the `Observation` the operator builds from it.

Pure. Every ``scrape_s`` (15 s, a usual PodMonitor interval) the simulator records, per pool, one
`Snapshot`: the pool's cumulative vLLM counters and histograms (`goodput.engine.vllm_metrics`
state of every replica the pool has had, gone ones included, so a removed replica still counts
for the work it did inside a window, as ``rate()`` over its series would) and its gauges
(running and waiting summed over the replicas that serve metrics, KV usage their max).

`observe` then computes every `PoolMetrics` field with the PromQL semantics that
`goodput.metrics.prometheus.build_queries` asks Prometheus for, over the same two windows the
operator uses (60 s and 600 s, `goodput.handlers.operator`):

==========================  =====================================================================
request_rate_rps            Δ request_success_total / window (``rate``; no extrapolation)
queue_growth_rps            least-squares slope of num_requests_waiting + running over the window (``deriv``)
prompt/generation_tokens    Δ counter / window
input/output_len_mean       Δ request_{prompt,generation}_tokens_sum / Δ _count
input/output_len_p99        ``histogram_quantile`` over the Δ buckets (1-2-5 buckets cut at max_model_len)
ttft_ms, itl_ms             ``histogram_quantile(q)`` of the Δ TTFT / inter-token-latency buckets
kv_cache_usage              max over pods: now (short window), average over the window (long)
running, waiting            sum over pods: now (short), average over the window (long)
preemptions_rps             Δ num_preemptions_total / window
prefix_cache_hit_rate       Δ hits / Δ queries
pods_reporting              replicas serving metrics now (vLLM opens /metrics once loaded)
arrival_dispersion          Δ request_success_total per 30 s bin: successive-difference variance / mean
==========================  =====================================================================

A quantity with nothing observed in its window (0/0, a histogram with no new observation) is
None, as NaN is for the collector. Before a window has passed since the start, it covers what
there is (rates divide by the elapsed time).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from goodput.engine.vllm_metrics import (
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TOKEN_BUCKETS_STORED,
    TTFT_BUCKETS,
    ReplicaStats,
)
from goodput.planner.burst import DISPERSION_BIN_S, dispersion_index
from goodput.planner.observation import ROLES, Observation, PoolMetrics

Vec = npt.NDArray[np.float64]

_SCALARS = ("success", "prompt_tokens", "generation_tokens", "preemptions", "prefix_queries", "prefix_hits")
_HISTS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("ttft", TTFT_BUCKETS),
    ("itl", ITL_BUCKETS),
    ("req_prompt", TOKEN_BUCKETS_STORED),
    ("req_gen", TOKEN_BUCKETS_STORED),
    ("prefill_time", REQUEST_LATENCY_BUCKETS),
)


@dataclass(frozen=True)
class _Layout:
    scalar: dict[str, int]
    hist: dict[str, tuple[int, int]]  # name -> (first bucket slot, end); then sum at end, count at end + 1
    size: int


def _layout() -> _Layout:
    scalar = {name: i for i, name in enumerate(_SCALARS)}
    pos = len(_SCALARS)
    hist: dict[str, tuple[int, int]] = {}
    for name, bounds in _HISTS:
        slots = len(bounds) + 1  # + the slot above every finite bound
        hist[name] = (pos, pos + slots)
        pos += slots + 2
    return _Layout(scalar, hist, pos)


LAYOUT = _layout()
BOUNDS = dict(_HISTS)


def stats_vector(stats: ReplicaStats) -> Vec:
    """One replica's counters and histograms, flattened (see LAYOUT)."""
    v = np.zeros(LAYOUT.size)
    s = LAYOUT.scalar
    v[s["success"]] = sum(stats.success.values())
    v[s["prompt_tokens"]] = stats.prompt_tokens
    v[s["generation_tokens"]] = stats.generation_tokens
    v[s["preemptions"]] = stats.preemptions
    v[s["prefix_queries"]] = stats.prefix_cache_queries
    v[s["prefix_hits"]] = stats.prefix_cache_hits
    for name, h in (("ttft", stats.time_to_first_token), ("itl", stats.inter_token_latency),
                    ("req_prompt", stats.request_prompt_tokens), ("req_gen", stats.request_generation_tokens),
                    ("prefill_time", stats.request_prefill_time)):
        a, b = LAYOUT.hist[name]
        v[a:b] = h.counts
        v[b] = h.sum
        v[b + 1] = h.count
    return v


@dataclass(frozen=True)
class Snapshot:
    """One pool at one scrape."""

    t: float
    counters: Vec  # cumulative, LAYOUT
    running: float
    waiting: float
    kv_max: float | None  # None when no replica serves metrics
    pods: int
    kv_capacity_tokens: float | None = None  # min over the replicas serving metrics (vllm:cache_config_info)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float] | Vec,
                       max_bound: float = math.inf) -> float | None:
    """Prometheus' ``histogram_quantile`` over per-bucket (not cumulative) counts whose last slot
    is above every bound. Bounds above ``max_bound`` are dropped (their counts fall in +Inf), as
    vLLM cuts its token buckets at max_model_len. None when the histogram is empty."""
    finite = [b for b in bounds if b <= max_bound]
    cum: list[float] = []
    acc = 0.0
    for i, c in enumerate(counts):
        acc += float(c)
        if i < len(finite):
            cum.append(acc)
    total = acc
    if not total > 0:
        return None
    rank = q * total
    for i, c in enumerate(cum):
        if c >= rank:
            start = finite[i - 1] if i > 0 else 0.0
            below = cum[i - 1] if i > 0 else 0.0
            end = finite[i]
            if i == 0 and end <= 0:
                return end
            in_bucket = c - below
            return start + (end - start) * ((rank - below) / in_bucket if in_bucket > 0 else 1.0)
    return finite[-1] if finite else None  # in the +Inf bucket: the largest finite bound


def deriv(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Prometheus' ``deriv``: the least-squares slope, per second; None with fewer than 2 samples."""
    if len(times) < 2:
        return None
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    tc = t - t.mean()
    den = float(tc @ tc)
    return float(tc @ (y - y.mean()) / den) if den > 0 else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def pool_metrics(role: str, history: Sequence[Snapshot], t: float, window_s: float, quantile: float,
                 max_model_len: int, long: bool) -> PoolMetrics | None:
    """A pool's PoolMetrics over (t - window_s, t] from its snapshots (oldest first, last at t)."""
    if not history:
        return None
    now = history[-1]
    start_t = t - window_s
    base = history[0]
    inside: list[Snapshot] = []
    for snap in history:
        if snap.t <= start_t + 1e-9:
            base = snap
        else:
            inside.append(snap)
    span = now.t - base.t
    if span <= 0:
        return None
    d = now.counters - base.counters
    s = LAYOUT.scalar

    def rate(name: str) -> float:
        return float(d[s[name]]) / span

    def hist(name: str) -> tuple[Vec, float, float]:
        a, b = LAYOUT.hist[name]
        return d[a:b], float(d[b]), float(d[b + 1])

    def quant(name: str, scale: float = 1.0, cut: float = math.inf) -> float | None:
        counts, _, _ = hist(name)
        value = histogram_quantile(quantile, BOUNDS[name], counts, cut)
        return None if value is None else value * scale

    def mean_ms(name: str) -> float | None:
        _, total, count = hist(name)
        mean = _ratio(total, count)
        return None if mean is None else mean * 1000.0

    def buckets_ms(name: str) -> tuple[tuple[float, float], ...] | None:
        counts, _, count = hist(name)
        if not count > 0:
            return None
        cum = np.cumsum(counts)
        return (*((b * 1000.0, float(c)) for b, c in zip(BOUNDS[name], cum[:-1], strict=True)),
                (math.inf, float(cum[-1])))

    _, p_sum, p_count = hist("req_prompt")
    _, g_sum, g_count = hist("req_gen")
    pods = [snap for snap in inside if snap.pods > 0]
    if long:
        running = float(np.mean([x.running for x in pods])) if pods else None
        waiting = float(np.mean([x.waiting for x in pods])) if pods else None
        kvs = [x.kv_max for x in pods if x.kv_max is not None]
        kv = float(np.mean(kvs)) if kvs else None
    else:
        running = now.running if now.pods else None
        waiting = now.waiting if now.pods else None
        kv = now.kv_max
    growth = deriv([x.t for x in pods], [x.waiting + x.running for x in pods])  # arrivals - completions
    dispersion = _dispersion([base, *inside], t, s["success"])
    return PoolMetrics(
        role=role,
        pods_reporting=now.pods,
        request_rate_rps=rate("success"),
        queue_growth_rps=growth,
        prompt_tokens_tps=rate("prompt_tokens"),
        generation_tokens_tps=rate("generation_tokens"),
        input_len_mean=_ratio(p_sum, p_count),
        input_len_p99=quant("req_prompt", cut=max_model_len),
        output_len_mean=_ratio(g_sum, g_count),
        output_len_p99=quant("req_gen", cut=max_model_len),
        ttft_ms=quant("ttft", 1000.0),
        itl_ms=quant("itl", 1000.0),
        itl_mean_ms=mean_ms("itl"),
        kv_cache_usage=kv,
        running=running,
        waiting=waiting,
        preemptions_rps=rate("preemptions"),
        prefix_cache_hit_rate=_ratio(float(d[s["prefix_hits"]]), float(d[s["prefix_queries"]])),
        ttft_mean_ms=mean_ms("ttft"),
        prefill_time_mean_ms=mean_ms("prefill_time"),
        ttft_buckets=buckets_ms("ttft"),
        itl_buckets=buckets_ms("itl"),
        kv_capacity_tokens=now.kv_capacity_tokens,
        arrival_dispersion=dispersion,
    )


def _dispersion(snaps: Sequence[Snapshot], t: float, slot: int) -> float | None:
    """`dispersion_index` of completions in DISPERSION_BIN_S bins ending at ``t``: the counter
    at every bin edge, as the collector's ``increase(...[30s])`` subquery at 30 s steps reads it
    (the last snapshot at or before each edge)."""
    edges: list[float] = []
    edge = t
    while edge >= snaps[0].t - 1e-9:
        edges.append(edge)
        edge -= DISPERSION_BIN_S
    edges.reverse()
    values: list[float] = []
    k = 0
    for e in edges:
        while k + 1 < len(snaps) and snaps[k + 1].t <= e + 1e-9:
            k += 1
        values.append(float(snaps[k].counters[slot]))
    counts = [b - a for a, b in itertools.pairwise(values)]
    return dispersion_index(counts)


def observe(histories: Mapping[str, Sequence[Snapshot]], t: float, when: dt.datetime, window_s: float,
            long_window_s: float, quantile: float, max_model_len: int) -> Observation:
    """The Observation the operator's collector would return at simulated time ``t``."""
    short: dict[str, PoolMetrics] = {}
    long: dict[str, PoolMetrics] = {}
    for role in ROLES:
        hist = histories.get(role)
        if not hist:
            continue
        pm = pool_metrics(role, hist, t, window_s, quantile, max_model_len, long=False)
        if pm is not None:
            short[role] = pm
        pm = pool_metrics(role, hist, t, long_window_s, quantile, max_model_len, long=True)
        if pm is not None:
            long[role] = pm
    missing = () if short else ("no scrape covers the window yet",)
    return Observation(time=when, window_s=window_s, long_window_s=long_window_s, pools=short, long_pools=long,
                       missing=missing)
