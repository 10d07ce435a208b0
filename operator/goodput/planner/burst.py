"""What the arrival history says about bursts: how variable arrivals are, and how far load rises
within one cold start. Pure: numbers in, numbers out; the state lives in ``status.autoscaler.burst``.

Arrival variability (the TTFT queueing term)
--------------------------------------------
`dispersion_index` is the index of dispersion of arrival counts in consecutive bins (30 s:
two scrapes), estimated from successive differences (the Allan variance): for Poisson arrivals it
is 1, for bursty ones larger, and a slow trend in the rate (a ramp, a step) barely moves it, where
the plain variance over a 10-minute window would read the trend as burstiness. A request router
spreads a pool's arrivals over its replicas; random splitting over n replicas leaves each one an
index of 1 + (I - 1) / n (`per_replica_scv`), which the capacity model takes as the squared CV of
inter-arrival times (ca²) in Kingman's G/G/1 wait. Bounded to [1, spec.scaling.maxArrivalScv]:
never assumed smoother than Poisson. The default bound is 1 (Poisson, the reading shown but not
planned with), measured: Prometheus cannot count finer than a scrape, so the 30 s index also counts
minute-scale rate changes, which the planned rate and the rise quantile below already carry. On the
Azure code trace it read 10-30 (ca² 2-8 per replica) while replicas below the Poisson goodput
missed nothing; planning with it (bound 2) cost 2.2x the GPU-hours on code/70B for no attainment
(measured once during development; `benchmarks/burst_headroom.py --with-scv2` reruns it).

Rise over one cold start (burst headroom)
-----------------------------------------
A replica asked for now serves one cold start later, so the capacity that matters is what the load
can reach within one cold start. At every decision the planner records the rate it planned for
(the base, b) and the arrival rate it saw. Once a cold start has passed since a record, the rise
``max(rate seen over the cold start after it) / b`` is final and goes into a histogram of rises
(log-spaced bins from 1x to RISE_MAX, exponentially forgotten with a half-life of HALF_LIFE_S: a
fixed-size summary of hours of history). Records still inside their cold start count with the rise
seen so far, a lower bound, so a burst in progress is learnt from at once.

A rise from a quiet minute is not a rise from the peak: the histograms are kept per load level,
the base against the envelope E (the highest rate seen, forgotten with the same half-life; classes
LEVELS). The planner then holds ``min(b x quantile(rise | level), max(E, b))``: never past the
highest load the history has seen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goodput.api.times import read_status_time, status_time

# --- arrival variability ---------------------------------------------------------------------
DISPERSION_BIN_S = 30.0  # two 15 s scrapes: rate()/increase() need two samples in a bin
MIN_DISPERSION_BINS = 8  # consecutive bins (7 differences) before the index is read at all
MIN_DISPERSION_ARRIVALS = 50.0  # arrivals over those bins: at a handful of requests every index is noise
SCV_MAX = 16.0  # the CRD's largest spec.scaling.maxArrivalScv


def dispersion_index(counts: Sequence[float]) -> float | None:
    """Var/mean of arrival counts in consecutive equal bins, from successive differences:
    E[(N[k+1] - N[k])²] / (2 E[N]). None without enough evidence (bins, arrivals)."""
    values = [float(c) for c in counts if math.isfinite(c)]
    if len(values) < MIN_DISPERSION_BINS or sum(values) < MIN_DISPERSION_ARRIVALS:
        return None
    mean = sum(values) / len(values)
    diffs = [(b - a) ** 2 for a, b in itertools.pairwise(values)]
    return (sum(diffs) / len(diffs)) / (2.0 * mean)


def per_replica_scv(index: float | None, replicas: int | None, bound: float = SCV_MAX) -> float:
    """ca² one replica sees when a pool's arrivals (index I) are spread over `replicas`: random
    splitting keeps 1/n of the excess over Poisson. Poisson (1) when unmeasured; within [1, bound]."""
    if index is None or not math.isfinite(index):
        return 1.0
    n = max(replicas or 1, 1)
    return min(max(1.0 + (index - 1.0) / n, 1.0), max(bound, 1.0))


# --- rise over one cold start ------------------------------------------------------------------
RISE_MAX = 16.0
BINS_PER_DOUBLING = 8
N_BINS = round(math.log2(RISE_MAX) * BINS_PER_DOUBLING) + 1  # bin 0: no rise (<= 1x)
HALF_LIFE_S = 6 * 3600.0  # hours of history, forgotten smoothly
LEVELS = (0.25, 0.6)  # base / envelope: quiet, middle, near the peak
RECORD_SPACING_S = 30.0  # at most one record per this (and at most RECORDS_PER_HORIZON per cold start)
RECORDS_PER_HORIZON = 12
GAP_S = 180.0  # records spanning a metrics gap this long are dropped: their rise is unknown
MIN_BASE_RPS = 1e-3


def bin_of(ratio: float) -> int:
    if not ratio > 1.0:
        return 0
    k = math.ceil(math.log2(min(ratio, RISE_MAX)) * BINS_PER_DOUBLING - 1e-9)
    return min(max(k, 1), N_BINS - 1)


def ratio_of(k: int) -> float:
    """The upper edge of bin k: a quantile read from the histogram is never below the rises in it."""
    return float(2.0 ** (k / BINS_PER_DOUBLING))


def level_of(base_rps: float, envelope_rps: float) -> int:
    share = base_rps / envelope_rps if envelope_rps > 0 else 1.0
    return sum(share >= edge for edge in LEVELS)


@dataclass(frozen=True)
class Record:
    time: dt.datetime
    base_rps: float
    level: int
    max_rps: float  # the highest arrival rate seen since (a lower bound of the max over the horizon)

    @property
    def rise(self) -> float:
        return self.max_rps / max(self.base_rps, MIN_BASE_RPS)


@dataclass
class RiseHistory:
    """Kept in ``status.autoscaler.burst``: the rise histograms per level, the envelope, and the
    records whose cold start has not passed yet."""

    horizon_s: float = 0.0
    weights: list[list[float]] = field(default_factory=lambda: [[0.0] * N_BINS for _ in range(len(LEVELS) + 1)])
    envelope_rps: float = 0.0
    updated: dt.datetime | None = None
    records: list[Record] = field(default_factory=list)

    def copy(self) -> RiseHistory:
        return dataclasses.replace(self, weights=[list(w) for w in self.weights], records=list(self.records))

    @property
    def evidence(self) -> float:
        """Finished cold starts in the histograms (forgotten ones count less)."""
        return sum(sum(w) for w in self.weights)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"horizonSeconds": round(self.horizon_s, 1), "envelopeRps": round(self.envelope_rps, 4),
                               "rises": [[round(x, 6) for x in w] for w in self.weights]}
        if self.updated is not None:
            out["updated"] = status_time(self.updated)
        if self.records:
            out["pending"] = [{"time": status_time(r.time), "baseRps": round(r.base_rps, 4), "level": r.level,
                               "maxRps": round(r.max_rps, 4)} for r in self.records]
        return out

    @classmethod
    def from_status(cls, data: Any) -> RiseHistory:
        """Read back; anything malformed is left out (a bad entry costs evidence, never a crash)."""
        if not isinstance(data, Mapping):
            return cls()
        out = cls(horizon_s=_num(data.get("horizonSeconds")) or 0.0, envelope_rps=_num(data.get("envelopeRps")) or 0.0,
                  updated=read_status_time(data.get("updated")))
        rises = data.get("rises")
        if isinstance(rises, list) and len(rises) == len(LEVELS) + 1 and all(
                isinstance(w, list) and len(w) == N_BINS for w in rises):
            out.weights = [[max(_num(x) or 0.0, 0.0) for x in w] for w in rises]
        for r in data.get("pending") or []:
            if not isinstance(r, Mapping):
                continue
            when, base, peak = read_status_time(r.get("time")), _num(r.get("baseRps")), _num(r.get("maxRps"))
            level = r.get("level")
            if when is not None and base is not None and peak is not None and isinstance(level, int) \
                    and 0 <= level <= len(LEVELS):
                out.records.append(Record(when, base, level, peak))
        return out


def forget(h: RiseHistory, now: dt.datetime) -> None:
    """Decay the histograms and the envelope to `now` (half-life HALF_LIFE_S)."""
    if h.updated is not None:
        factor = 0.5 ** (max((now - h.updated).total_seconds(), 0.0) / HALF_LIFE_S)
        h.weights = [[x * factor for x in w] for w in h.weights]
        h.envelope_rps *= factor
    h.updated = now


def observe_rate(h: RiseHistory, now: dt.datetime, rate_rps: float, base_rps: float, horizon_s: float) -> RiseHistory:
    """One decision's evidence: the arrival rate seen now, and the rate planned for (the base)."""
    h = h.copy()
    if h.horizon_s and abs(horizon_s - h.horizon_s) > 0.25 * h.horizon_s:
        h = RiseHistory()  # rises over another cold start say little about this one
    h.horizon_s = horizon_s
    if h.updated is not None and (now - h.updated).total_seconds() > GAP_S:
        h.records = []  # a gap in the metrics: the max over those horizons is unknown
    forget(h, now)
    h.envelope_rps = max(h.envelope_rps, rate_rps)
    kept = []
    for r in h.records:
        r = dataclasses.replace(r, max_rps=max(r.max_rps, rate_rps))
        if (now - r.time).total_seconds() >= horizon_s:
            h.weights[r.level][bin_of(r.rise)] += 1.0
        else:
            kept.append(r)
    spacing = max(RECORD_SPACING_S, horizon_s / RECORDS_PER_HORIZON)
    if not kept or (now - kept[-1].time).total_seconds() >= spacing - 1e-6:
        kept.append(Record(now, base_rps, level_of(base_rps, h.envelope_rps), rate_rps))
    h.records = kept
    return h


@dataclass(frozen=True)
class Headroom:
    rise: float  # the quantile of the rise at this load level (1: none learnt)
    target_rps: float  # what to hold: base x rise, within the envelope (never below the base)
    evidence: float  # rises behind the quantile (finished, plus records in progress)
    level: int

    base_rps: float = 0.0

    @property
    def active(self) -> bool:
        return self.target_rps > self.base_rps * (1.0 + 1e-9)


LEVEL_NAMES = ("quiet", "middle", "near-peak")


def headroom(h: RiseHistory, base_rps: float, quantile: float) -> Headroom:
    """The rate to hold for the next cold start: base x the `quantile` of the rises seen from this
    load level (finished ones and those in progress), never past the envelope."""
    level = level_of(base_rps, h.envelope_rps)
    weights = list(h.weights[level])
    for r in h.records:
        if r.level == level:
            weights[bin_of(r.rise)] += 1.0
    total = sum(weights)
    if total <= 0 or quantile <= 0:
        return Headroom(1.0, base_rps, total, level, base_rps)
    need, acc, top = quantile * total, 0.0, 0
    for top, w in enumerate(weights):  # noqa: B007 - the bin where the quantile falls is the answer
        acc += w
        if acc >= need - 1e-9:
            break
    rise = ratio_of(top) if top > 0 else 1.0
    target = max(min(base_rps * rise, max(h.envelope_rps, base_rps)), base_rps)
    return Headroom(rise, target, total, level, base_rps)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
