"""Reading an SLO percentile back from vLLM's latency histograms, honestly.

Pure. vLLM's latency buckets are wide where SLOs live (ITL: 25, 50, 75 ms; TTFT: 0.5, 0.75, 1,
2.5 s) and Prometheus' ``histogram_quantile`` interpolates linearly inside a bucket, as if its
observations were spread evenly. Near a tail they are not: a decode pool whose every token takes
28-33 ms reads "p99 = 49.8 ms" (all of its mass is in the 25-50 ms bucket). An operator acting on
that number against a 40 ms SLO would add replicas forever and never scale down.

`read_percentile` gives the bracket the histogram proves, (lo, hi], and an estimate inside it:

* the quantile's rank falls in bucket (lo, hi] with mass above hi as well: the survival function
  is interpolated log-linearly between the bounds (an exponential tail: the shape of queueing
  delay and of a mixture of step times), not linearly;
* the quantile falls in the bucket that holds the rest of the mass (nothing observed above hi):
  the histogram says nothing about where in the bucket the tail sits (28-33 ms and 45-49 ms read
  the same); the estimate shown is the bucket's mass spread evenly from lo to twice its own mean
  (the exact sum less the other buckets at their midpoints), but it decides nothing;
* a rank at a bound exactly is that bound.

``definitely_over`` (lo >= target) and ``definitely_within`` (hi <= target) are what the data
prove whatever the shape. ``over`` is what the operator acts on: proven, or estimated from a tail
the histogram sees past the bucket. Where the histogram cannot tell (``ambiguous``), the
calibrated model decides, as it does for everything the metrics cannot show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from goodput.api.vocabulary import Reason
from goodput.planner.observation import PoolMetrics

# Fewest observations for a percentile q to mean anything: two beyond it (200 for p99).
MIN_TAIL_OBSERVATIONS = 2.0


@dataclass(frozen=True)
class PercentileReading:
    estimate: float  # ms
    lo: float  # the true percentile is above lo ...
    hi: float  # ... and at most hi (inf: beyond the last finite bound)
    observations: float
    shape_known: bool = True  # False: the tail ends inside the bucket; the estimate is a guess

    def definitely_over(self, target: float) -> bool:
        return self.lo >= target

    def definitely_within(self, target: float) -> bool:
        return self.hi <= target

    def ambiguous(self, target: float) -> bool:
        return not self.shape_known and self.lo < target < self.hi

    def over(self, target: float) -> bool:
        """Proven over the target, or estimated over it from a tail the histogram sees."""
        if self.definitely_within(target):
            return False
        return self.definitely_over(target) or (self.shape_known and self.estimate > target)

    def text(self) -> str:
        hi = "∞" if math.isinf(self.hi) else f"{self.hi:g}"
        value = f"{self.estimate:.0f}" if self.estimate >= 100 else f"{self.estimate:.1f}"
        return f"{'~' if not self.shape_known else ''}{value} ms (histogram: {self.lo:g}-{hi} ms)"


def enough_observations(count: float, quantile: float) -> bool:
    return count >= MIN_TAIL_OBSERVATIONS / max(1.0 - quantile, 1e-6)


def read_percentile(buckets: Sequence[tuple[float, float]] | None, quantile: float,
                    mean: float | None = None) -> PercentileReading | None:
    """The percentile ``quantile`` (0-1) of cumulative ``buckets`` ((upper bound, count <= it), +Inf
    last, as `PoolMetrics.ttft_buckets`); ``mean``: the exact mean (sum / count) when known. None
    when there are too few observations for that percentile."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    total = buckets[-1][1]
    if not total > 0 or not enough_observations(total, quantile):
        return None
    rank = quantile * total
    prev_bound, prev_count = 0.0, 0.0
    for i, (bound, count) in enumerate(buckets):
        if count + 1e-9 * total < rank:
            prev_bound, prev_count = bound, count
            continue
        if math.isinf(bound):  # beyond every finite bound: at least the last one
            return PercentileReading(prev_bound, prev_bound, math.inf, total)
        if abs(count - rank) <= 1e-9 * total:
            return PercentileReading(bound, prev_bound, bound, total)
        above = total - count
        if above > 0:
            estimate = _log_linear(prev_bound, bound, total - prev_count, above, total - rank)
        else:
            estimate = _even_from_mean(buckets, i, prev_bound, bound, prev_count, quantile, mean)
        return PercentileReading(min(max(estimate, prev_bound), bound), prev_bound, bound, total, above > 0)
    return None


def _log_linear(lo: float, hi: float, above_lo: float, above_hi: float, above_q: float) -> float:
    """Where the survival count falls to ``above_q``, log-linearly between (lo, above_lo) and (hi, above_hi)."""
    if above_lo <= above_hi or above_q >= above_lo:
        return lo
    return lo + (hi - lo) * math.log(above_lo / above_q) / math.log(above_lo / above_hi)


def _even_from_mean(buckets: Sequence[tuple[float, float]], i: int, lo: float, hi: float, below: float,
                    quantile: float, mean: float | None) -> float:
    """The last occupied bucket (lo, hi]: its mass spread evenly from lo up to twice its own mean
    less lo (Prometheus' reading when the mean is unknown)."""
    total = buckets[-1][1]
    mass = buckets[i][1] - below
    fraction = (quantile * total - below) / mass if mass > 0 else 1.0
    top = hi
    if mean is not None and math.isfinite(mean) and mass > 0:
        others = 0.0
        start = 0.0
        for j, (bound, count) in enumerate(buckets[:i]):
            in_bucket = count - (buckets[j - 1][1] if j else 0.0)
            others += in_bucket * (start + bound) / 2.0
            start = bound
        own_mean = (mean * total - others) / mass
        if lo < own_mean < hi:
            top = min(hi, 2.0 * own_mean - lo)
    return lo + (top - lo) * fraction


# --- feedback on the SLO itself ------------------------------------------------------------------
# A pool that misses an SLO the model says it meets gets this share more replicas (at least one) per
# decision, once the replicas asked for earlier serve; the extra is remembered as a factor on the
# model's count, at most SLO_HEADROOM_MAX (SLO feedback does not spend without limit), and decays
# (half-life: the scale-down window) once the pool is comfortably within both SLOs.
SLO_STEP_SHARE = 0.1
SLO_HEADROOM_MAX = 2.0
COMFORT = 0.8  # within this share of the target: comfortably within


@dataclass(frozen=True)
class SloReading:
    """One SLO of one pool, as observed, and what the calibrated model predicts at this load."""

    role: str
    quantity: str  # "TTFT" or "ITL"
    reading: PercentileReading
    target_ms: float
    label: str  # "p99"
    predicted_ms: float | None = None

    @property
    def missing(self) -> bool:
        return self.reading.over(self.target_ms)

    @property
    def comfortable(self) -> bool:
        return self.reading.definitely_within(self.target_ms) or self.reading.estimate <= COMFORT * self.target_ms

    def text(self) -> str:
        out = f"observed {self.quantity} {self.label} {self.reading.text()} > {self.target_ms:g} ms"
        if self.predicted_ms is not None and math.isfinite(self.predicted_ms):
            out += f" while the model predicts {self.predicted_ms:.1f} ms at this load"
        return out


def _shifted(r: PercentileReading, by: float) -> PercentileReading:
    return PercentileReading(r.estimate + by, r.lo + by, r.hi + by, r.observations)


def slo_readings(pools: Mapping[str, PoolMetrics], ttft_ms: float, itl_ms: float, quantile: float,
                 label: str) -> list[SloReading]:
    """The SLOs each pool answers for, read from its histograms (pools without enough observations
    are left out). Aggregated: both. Disaggregated: ITL is the decode pool's; a client's TTFT is the
    prefill pool's first token plus the decode pool's own (the KV pull and admission), charged to
    the decode pool when its part is at least half the target (requests wait for decode
    admission), else to prefill."""
    out: list[SloReading] = []
    agg = pools.get("aggregated")
    if agg is not None:
        for quantity, buckets, mean, target in (("TTFT", agg.ttft_buckets, agg.ttft_mean_ms, ttft_ms),
                                                ("ITL", agg.itl_buckets, agg.itl_mean_ms, itl_ms)):
            r = read_percentile(buckets, quantile, mean)
            if r is not None:
                out.append(SloReading("aggregated", quantity, r, target, label))
        return out
    decode, prefill = pools.get("decode"), pools.get("prefill")
    if decode is not None:
        r = read_percentile(decode.itl_buckets, quantile, decode.itl_mean_ms)
        if r is not None:
            out.append(SloReading("decode", "ITL", r, itl_ms, label))
    p = read_percentile(prefill.ttft_buckets, quantile, prefill.ttft_mean_ms) if prefill is not None else None
    d = read_percentile(decode.ttft_buckets, quantile, decode.ttft_mean_ms) if decode is not None else None
    if p is not None:
        decode_part = (decode.ttft_mean_ms or 0.0) if decode is not None else 0.0
        blame = "decode" if d is not None and d.estimate >= 0.5 * ttft_ms else "prefill"
        out.append(SloReading(blame, "TTFT", d if blame == "decode" and d is not None else _shifted(p, decode_part),
                              ttft_ms, label))
    return out


@dataclass(frozen=True)
class Feedback:
    """What the SLO feedback step decided for one pool."""

    target: int
    reason: str
    message: str
    headroom: float


def feedback(role: str, current: int, target: int, model_replicas: int, starting: int, headroom: float,
             misses: Sequence[SloReading], unattainable: Mapping[str, str], max_replicas: int,
             stale: str = "") -> Feedback | None:
    """The SLO-feedback decision for a pool that misses (None when ``misses`` is empty). ``stale``:
    why the readings do not yet show the replicas the pool has (their window opens before the
    last rise of the pool's serving replicas); "" when they do."""
    if not misses:
        return None
    actionable = [m for m in misses if m.quantity not in unattainable]
    what = "; ".join(m.text() for m in misses)
    if target > current:  # the model (or an emergency) adds already
        return Feedback(target, "", "", headroom)
    if not actionable:
        why = "; ".join(unattainable[m.quantity] for m in misses)
        return Feedback(current, Reason.SLO_MISS,
                        f"{role} stays at {current}: {what}; no replica count meets it: {why}", headroom)
    if starting > 0:
        return Feedback(current, Reason.SLO_MISS, f"{role} stays at {current}: {what}; {starting} replica(s) still "
                                            "starting", headroom)
    if stale:
        # A miss read over a window that opens before the last replica served is the old pool's miss:
        # acting on it again adds a replica per tick for as long as the window remembers the overload.
        return Feedback(current, Reason.SLO_MISS, f"{role} stays at {current}: {what}; {stale}", headroom)
    limit = min(max_replicas, math.floor(SLO_HEADROOM_MAX * max(model_replicas, 1)))
    want = min(current + max(1, math.ceil(SLO_STEP_SHARE * current)), limit)
    if want <= current:
        return Feedback(current, Reason.SLO_MISS,
                        f"{role} stays at {current}: {what}; SLO feedback stops at {limit} replicas "
                        f"({SLO_HEADROOM_MAX:g}x the model's {model_replicas}, or maxReplicas): the engines are "
                        "slower than calibration can explain, see the calibration terms", headroom)
    return Feedback(want, Reason.SLO_MISS, f"{role} {current}→{want}: {what}; adding capacity on the observation",
                    min(max(headroom, want / max(model_replicas, 1)), SLO_HEADROOM_MAX))
