"""What `goodput demo` records while it runs, and what it makes of it: decision lines, the load
profile, GPU-hours, SLO attainment from vLLM's histograms, the summary and the plot.

No processes or network here: the demo's driver (`goodput.demo.run`) feeds samples in.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goodput.api.times import parse_status_time
from goodput.api.vocabulary import Reason

SCALING_REASONS = (Reason.SCALE_UP, Reason.SCALE_DOWN, Reason.RATE_LIMITED, Reason.EMERGENCY)


@dataclass(frozen=True)
class Sample:
    """One look at the loop, ``t`` seconds after the InferenceDeployment was applied."""

    t: float
    arrivals: int  # requests the emulator has offered so far
    completed: int
    desired: int  # replicas the Deployments ask for
    pods: int  # pods that exist (each holds its GPUs, cold start included)
    serving: int  # replicas the emulator serves with (cold start over)
    gpus: int  # GPUs held: pods x TP, summed over the pools
    observed_rps: float | None = None  # what the operator saw (status.observed), for the status line
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None


@dataclass(frozen=True)
class DecisionLine:
    t: float
    reason: str
    pool: str | None
    from_replicas: int | None
    to_replicas: int | None
    message: str

    @property
    def scales(self) -> bool:
        return (self.reason in SCALING_REASONS and self.from_replicas is not None and self.to_replicas is not None
                and self.from_replicas != self.to_replicas)

    def text(self) -> str:
        # The operator's messages mostly start with "<pool> a→b": then they say it already.
        if self.pool and self.message.startswith(f"{self.pool} "):
            return f"t={self.t:+.0f}s {self.reason}: {self.message}"
        change = ""
        if self.from_replicas is not None and self.to_replicas is not None:
            change = f" {self.from_replicas}→{self.to_replicas}"
        pool = f" {self.pool}" if self.pool else ""
        return f"t={self.t:+.0f}s {self.reason}{pool}{change}: {self.message}"


def epoch(stamp: str) -> float:
    """``2025-01-01T00:00:00Z`` (status times, 1 s resolution) -> seconds since the epoch."""
    return parse_status_time(stamp).timestamp()


def decision_line(d: Mapping[str, Any], t0_wall: float) -> DecisionLine:
    """A ``status.decisions`` entry, its time relative to ``t0_wall`` (seconds since the epoch)."""
    return DecisionLine(epoch(str(d["time"])) - t0_wall, str(d.get("reason", "")), d.get("pool"),
                        d.get("fromReplicas"), d.get("toReplicas"), str(d.get("message", "")))


# --------------------------------------------------------------------------------------------
# load


@dataclass(frozen=True)
class LoadProfile:
    """The rate multiplier over the load period (seconds from its start): 1, rising linearly to
    ``surge`` over ``ramp_s`` from ``start_s``, held, falling back to 1 over ``ramp_s`` from ``end_s``."""

    duration_s: float
    surge: float = 1.0
    start_s: float = 0.0
    end_s: float = 0.0
    ramp_s: float = 0.0

    @classmethod
    def default(cls, duration_s: float, surge: float) -> LoadProfile:
        """The surge rises from 18 % of the run over up to 45 s, about when the operator's 60 s long
        window holds metrics (so it sees a trend), and falls from 45 %: time for the long window and
        the scale-down stabilization to let go before the end."""
        if surge == 1.0:
            return cls(duration_s)
        return cls(duration_s, surge, round(0.18 * duration_s), round(0.45 * duration_s),
                   round(min(45.0, 0.15 * duration_s)))

    def multiplier(self, t: float) -> float:
        if self.surge == 1.0 or t < self.start_s or t >= self.end_s + self.ramp_s:
            return 1.0
        if t < self.start_s + self.ramp_s:
            return 1.0 + (self.surge - 1.0) * (t - self.start_s) / self.ramp_s
        if t < self.end_s:
            return self.surge
        return self.surge - (self.surge - 1.0) * (t - self.end_s) / self.ramp_s

    def changes(self, step_s: float = 5.0) -> list[tuple[float, float, str]]:
        """Piecewise-constant steps: (seconds from the start of the load, multiplier from then on, a
        note at the milestones, else "")."""
        if self.surge == 1.0:
            return [(0.0, 1.0, "")]
        notes = {self.start_s: f"load rising to ×{self.surge:g} over {self.ramp_s:.0f} s",
                 self.start_s + self.ramp_s: f"load ×{self.surge:g}",
                 self.end_s: f"load falling back to ×1 over {self.ramp_s:.0f} s",
                 self.end_s + self.ramp_s: "load ×1"}
        times = {0.0, *notes}
        for edge in (self.start_s, self.end_s):
            k = 1
            while k * step_s < self.ramp_s:
                times.add(edge + k * step_s)
                k += 1
        ordered = sorted(times)
        out = []
        for t, nxt in zip(ordered, [*ordered[1:], ordered[-1] + 2.0], strict=True):
            # the multiplier is linear inside each step: its mean is the value at the middle
            out.append((t, self.multiplier((t + nxt) / 2.0), notes.get(t, "")))
        return out

    def describe(self) -> str:
        if self.surge == 1.0:
            return "no surge"
        return (f"×{self.surge:g} surge: rising from +{self.start_s:.0f} s, falling from +{self.end_s:.0f} s "
                f"({self.ramp_s:.0f} s ramps)")


def base_rate(trace_times: Sequence[float], speed: float, horizon_s: float) -> float:
    """Requests per second the first ``horizon_s`` seconds of a trace offer when played ``speed`` times faster."""
    span = horizon_s * speed
    count = sum(1 for t in trace_times if t - trace_times[0] < span) if len(trace_times) else 0
    return count / horizon_s if horizon_s > 0 else 0.0


# --------------------------------------------------------------------------------------------
# accounting


def gpu_hours(samples: Sequence[Sample], t_end: float) -> float:
    """GPUs held (piecewise constant from each sample to the next) integrated up to ``t_end``, in hours."""
    total = 0.0
    for i, a in enumerate(samples):
        end = min(samples[i + 1].t, t_end) if i + 1 < len(samples) else t_end
        if end > a.t:
            total += a.gpus * (end - a.t)
    return total / 3600.0


def fraction_at_most(buckets: Mapping[float, float], bound: float) -> tuple[float | None, bool]:
    """The fraction of a cumulative histogram (``le`` -> count, ``+Inf`` included) at or below
    ``bound``; linear inside the bucket holding it. Returns (fraction, exact): exact when ``bound`` is a
    bucket bound. None when the histogram is empty."""
    if not buckets:
        return None, True
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if not total > 0:
        return None, True
    if bound in buckets:
        return buckets[bound] / total, True
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        if le > bound:
            if math.isinf(le):  # beyond the last finite bound: all we know is the count below it
                return lower_count / total, False
            share = (bound - lower_bound) / (le - lower_bound)
            return (lower_count + share * (buckets[le] - lower_count)) / total, False
        lower_bound, lower_count = le, buckets[le]
    return lower_count / total, False


@dataclass
class Summary:
    duration_s: float
    arrivals: int
    completed: int
    dropped: int
    rejected: int
    in_flight: int
    ttft_slo_ms: float
    itl_slo_ms: float
    ttft_ok: float | None  # fraction of requests with TTFT <= the target
    ttft_exact: bool
    itl_ok: float | None  # fraction of inter-token gaps <= the target
    itl_exact: bool
    gpu_hours: float
    price_per_gpu_hour: float | None
    peak_gpus: int
    load_s: float  # seconds of load, for the peak-sized comparison
    held_s: float = 0.0  # seconds the GPU-hours cover (from the apply)
    decisions: list[DecisionLine] = field(default_factory=list)
    replicas_path: list[int] = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        return None if self.price_per_gpu_hour is None else self.gpu_hours * self.price_per_gpu_hour

    @property
    def scaling_actions(self) -> list[DecisionLine]:
        return [d for d in self.decisions if d.scales]

    def lines(self) -> list[str]:
        def pct(x: float | None, exact: bool) -> str:
            return "n/a" if x is None else f"{'' if exact else '≈'}{x:.1%}"

        ups = sum(1 for d in self.scaling_actions if (d.to_replicas or 0) > (d.from_replicas or 0))
        downs = len(self.scaling_actions) - ups
        cost = "n/a" if self.cost is None else f"${self.cost:.2f}"
        price = "" if self.price_per_gpu_hour is None else f" at ${self.price_per_gpu_hour:.2f}/GPU-h"
        peak_h = self.peak_gpus * self.load_s / 3600.0
        peak = f"; a fleet sized for the peak ({self.peak_gpus} GPUs) for the {self.load_s:.0f} s of load: " \
               f"{peak_h:.3f} GPU-h" if self.peak_gpus else ""
        path = "→".join(str(n) for n in self.replicas_path) or "-"
        return [
            f"requests      {self.arrivals:,} offered, {self.completed:,} served ({self.dropped} dropped, "
            f"{self.rejected} rejected, {self.in_flight} in flight at the end)",
            f"SLO           TTFT ≤ {self.ttft_slo_ms:g} ms for {pct(self.ttft_ok, self.ttft_exact)} of requests; "
            f"ITL ≤ {self.itl_slo_ms:g} ms for {pct(self.itl_ok, self.itl_exact)} of output tokens "
            "(vLLM's histograms in Prometheus; ≈: interpolated inside a bucket)",
            f"scaling       replicas {path}; {len(self.scaling_actions)} scaling actions ({ups} up, {downs} down)",
            f"GPU-hours     {self.gpu_hours:.3f} GPU-h in {self.held_s:.0f} s, {cost}{price}{peak}",
            f"summary: SLO attainment {pct(self.ttft_ok, self.ttft_exact)} (TTFT) / "
            f"{pct(self.itl_ok, self.itl_exact)} (ITL), {self.gpu_hours:.3f} GPU-hours, cost {cost}, "
            f"{len(self.scaling_actions)} scaling actions",
        ]


def replicas_path(samples: Iterable[Sample]) -> list[int]:
    """The desired replica counts in the order they were seen, repeats collapsed: 1→3→1."""
    out: list[int] = []
    for s in samples:
        if s.desired and (not out or out[-1] != s.desired):
            out.append(s.desired)
    return out


def offered_rate(samples: Sequence[Sample], bin_s: float = 10.0) -> tuple[list[float], list[float]]:
    """Arrivals per second in bins of ``bin_s`` (from the emulator's counter): bin mid-points and rates."""
    mids: list[float] = []
    rates: list[float] = []
    if len(samples) < 2:
        return mids, rates
    start = samples[0]
    for s in samples[1:]:
        if s.t - start.t >= bin_s or s is samples[-1]:
            if s.t > start.t:
                mids.append((start.t + s.t) / 2.0)
                rates.append((s.arrivals - start.arrivals) / (s.t - start.t))
            start = s
    return mids, rates


# --------------------------------------------------------------------------------------------
# plot


@dataclass
class Series:
    """A Prometheus range query's values: times (s after apply) and values."""

    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)


def plot_demo(path: Path, title: str, samples: Sequence[Sample], decisions: Sequence[DecisionLine],
              load_window: tuple[float, float], served: Series, ttft_p99: Series, itl_p99: Series,
              ttft_slo_ms: float, itl_slo_ms: float) -> None:
    """Four panels over time since the InferenceDeployment was applied: offered and served load,
    replicas (desired, serving) with the scaling decisions, p99 TTFT and p99 ITL against their SLOs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    for ax in axes:
        ax.axvspan(*load_window, color="0.93", zorder=0)
        ax.grid(alpha=0.3)
    mids, rates = offered_rate(samples)
    axes[0].plot(mids, rates, color="black", label="offered (emulator arrivals)")
    axes[0].plot(served.t, served.v, color="tab:green", label="served (Prometheus, 20 s rate)")
    axes[0].set_ylabel("requests / s")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set_title(textwrap.fill(title, 120), fontsize=10)

    ts = [s.t for s in samples]
    axes[1].step(ts, [s.desired for s in samples], where="post", color="tab:blue", label="desired (Deployment)")
    axes[1].step(ts, [s.serving for s in samples], where="post", color="tab:orange", label="serving (loaded)")
    for d in decisions:
        if d.scales:
            up = (d.to_replicas or 0) > (d.from_replicas or 0)
            axes[1].axvline(d.t, color="tab:red" if up else "tab:purple", linestyle=":", linewidth=1)
            axes[1].annotate(f"{d.reason} {d.from_replicas}→{d.to_replicas}", (d.t, (d.to_replicas or 0) + 0.1),
                             fontsize=7, rotation=90, va="bottom", ha="right")
    axes[1].set_ylabel("replicas")
    axes[1].set_ylim(0, max((max(s.desired, s.serving) for s in samples), default=1) + 1.5)
    axes[1].legend(loc="upper left", fontsize=8)

    for ax, series, slo, name in ((axes[2], ttft_p99, ttft_slo_ms, "TTFT"), (axes[3], itl_p99, itl_slo_ms, "ITL")):
        bounds = "; vLLM's buckets: 0.5, 0.75, 1, 2.5 s" if name == "TTFT" else "; vLLM's buckets: 25, 50, 75 ms"
        ax.plot(series.t, series.v, color="tab:blue", label=f"p99 {name} (20 s window{bounds})")
        ax.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"{name} SLO {slo:g} ms")
        ax.set_ylabel(f"p99 {name} (ms)")
        if series.v and max(series.v) > 5 * slo:
            ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize=8)
    axes[3].set_xlabel("seconds since the InferenceDeployment was applied (grey: the load)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = [
    "SCALING_REASONS",
    "DecisionLine",
    "LoadProfile",
    "Sample",
    "Series",
    "Summary",
    "base_rate",
    "decision_line",
    "epoch",
    "fraction_at_most",
    "gpu_hours",
    "offered_rate",
    "plot_demo",
    "replicas_path",
]
