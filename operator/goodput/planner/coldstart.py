"""Cold start as a measured input: the horizon the planner forecasts over is how long the pools'
pods really take from creation to Ready, once pods have shown it, not only the spec's
``scaling.coldStartSeconds``.

A pod's creation-to-Ready time is everything a scale-up waits for: scheduling (and a node the
cluster autoscaler may add), the image pull, vLLM loading its weights and compiling, the readiness
probe. `goodput.kube` reads it from the pods (Ready's lastTransitionTime minus creationTimestamp,
pods that never restarted); here it is remembered per pool, so a restart of the operator and pods
that are long-lived keep it. Each pool keeps the last `KEPT_SAMPLES` measurements; the horizon is
a high quantile of them (`HORIZON_QUANTILE`: one slow start of ten should not make every forecast
look far ahead, two should), over the slowest pool (every pool must be up for capacity to serve).
Until a pool has shown one start, and while the pods start faster than it says, the spec's value stands:
the horizon is the larger of the two.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goodput.api.times import parse_status_time, status_time

KEPT_SAMPLES = 10
HORIZON_QUANTILE = 0.9


@dataclass(frozen=True)
class ColdStarts:
    """Per pool, the most recent creation-to-Ready times seen (seconds, oldest first), and when
    the newest of them became Ready (a pod is seen on every tick while it lives: only pods Ready
    after that are new evidence)."""

    samples: dict[str, tuple[float, ...]] = field(default_factory=dict)
    last_ready: dict[str, dt.datetime] = field(default_factory=dict)

    def observe(self, seen: Mapping[str, Sequence[tuple[dt.datetime, float]]]) -> ColdStarts:
        """Add each pool's pods that became Ready since the newest one kept: (Ready at, seconds)."""
        samples, last = dict(self.samples), dict(self.last_ready)
        for role, starts in seen.items():
            since = last.get(role)
            new = sorted((at, s) for at, s in starts if (since is None or at > since) and math.isfinite(s) and s >= 0)
            if not new:
                continue
            samples[role] = (*samples.get(role, ()), *(round(s, 1) for _, s in new))[-KEPT_SAMPLES:]
            last[role] = new[-1][0]
        return ColdStarts(samples, last)

    def horizon(self, spec_s: float) -> tuple[float, str]:
        """The cold start to plan over, and where it comes from, in words ("" for the spec's)."""
        per_pool = {role: quantile(times, HORIZON_QUANTILE) for role, times in self.samples.items() if times}
        if not per_pool:
            return spec_s, ""
        role = max(per_pool, key=lambda r: per_pool[r])
        seconds = per_pool[role]
        if seconds <= spec_s:
            # Starts faster than the spec says: the spec stands. The user's figure may cover what
            # the pods seen so far did not meet (a node to add, an image not cached on it).
            return spec_s, ""
        n = len(self.samples[role])
        what = f"p{HORIZON_QUANTILE * 100:.0f} of {n} pod starts" if n > 1 else "1 pod start"
        return seconds, (f"cold start {seconds:.0f} s measured ({what} of the {role} pool, creation to Ready), "
                         f"longer than coldStartSeconds {spec_s:.0f}")

    def to_status(self) -> dict[str, Any]:
        return {role: {"seconds": list(times), "lastReady": status_time(self.last_ready[role])}
                for role, times in sorted(self.samples.items()) if role in self.last_ready}

    @classmethod
    def from_status(cls, data: Any) -> ColdStarts:
        samples: dict[str, tuple[float, ...]] = {}
        last: dict[str, dt.datetime] = {}
        for role, v in (data.items() if isinstance(data, Mapping) else ()):
            times = v.get("seconds") if isinstance(v, Mapping) else None
            when = v.get("lastReady") if isinstance(v, Mapping) else None
            if not isinstance(times, list) or not isinstance(when, str):
                continue
            kept = tuple(float(t) for t in times if isinstance(t, int | float) and math.isfinite(t) and t >= 0)
            try:
                at = parse_status_time(when)
            except ValueError:
                continue
            if kept:
                samples[str(role)], last[str(role)] = kept[-KEPT_SAMPLES:], at
        return cls(samples, last)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile: an observed value, never one between two starts."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
